// The interactive half of the report: chart data carried by the SVG plots (data-chart), the page
// script that redraws them with Chart.js, the class gallery, and finding Chart.js on disk.
#include <algorithm>
#include <cmath>
#include <numbers>

#include "emcryo/core/error.hpp"
#include "emcryo/core/files.hpp"
#include "emcryo/core/log.hpp"
#include "emcryo/io/report.hpp"
#include "report_internal.hpp"

namespace emcryo::io {

namespace {

std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') out += '\\', out += c;
    else if (static_cast<unsigned char>(c) < 0x20) out += fmt::format("\\u{:04x}", static_cast<int>(c));
    else out += c;
  }
  return out + "\"";
}

std::string json_number(double v) { return std::isfinite(v) ? fmt::format("{:.6g}", v) : "null"; }

std::string json_numbers(const std::vector<double>& values) {
  std::string out = "[";
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i) out += ',';
    out += json_number(values[i]);
  }
  return out + "]";
}

// The page script: redraws every element with data-chart, wires the gallery's enlargement, and
// records errors and the number of charts drawn in #emcryo-status (what the browser test reads).
constexpr const char* kPageScript = R"JS(
(function () {
  var status = document.getElementById('emcryo-status');
  var errors = [];
  window.addEventListener('error', function (e) { errors.push(String(e.message)); show(); });
  var drawn = 0;
  function show() { status.textContent = 'charts ' + drawn + ', errors ' + errors.length + (errors.length ? ': ' + errors.join('; ') : ''); }
  var colors = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];
  function allIntegers(series) {
    return series.every(function (s) { return s.x.every(function (x) { return x === null || Math.round(x) === x; }); });
  }
  function lineChart(canvas, spec) {
    var frequency = spec.x_label.indexOf('1/\u00c5') >= 0;
    var xs = [].concat.apply([], spec.series.map(function (s) { return s.x; })).filter(function (x) { return x !== null; });
    var xmin = Math.min.apply(null, xs), xmax = Math.max.apply(null, xs);
    var datasets = spec.series.map(function (s, k) {
      return { label: s.name, data: s.x.map(function (x, i) { return { x: x, y: s.y[i] }; }),
               borderColor: colors[k % colors.length], backgroundColor: colors[k % colors.length],
               pointRadius: s.x.length > 60 ? 0 : 2, borderWidth: 1.5, showLine: true, spanGaps: false };
    });
    spec.hlines.forEach(function (h) {
      datasets.push({ label: String(h), data: [{ x: xmin, y: h }, { x: xmax, y: h }], borderColor: '#888',
                      borderDash: [5, 4], borderWidth: 1, pointRadius: 0, showLine: true });
    });
    var integerX = allIntegers(spec.series);
    return new Chart(canvas, {
      type: 'scatter',
      data: { datasets: datasets },
      options: {
        animation: false, responsive: false,
        interaction: { mode: 'nearest', intersect: false },
        plugins: {
          title: { display: true, text: spec.title },
          legend: { display: datasets.length > 1 },
          tooltip: { callbacks: { label: function (c) {
            var x = c.parsed.x, y = c.parsed.y;
            var where = frequency ? (x > 0 ? (1 / x).toFixed(2) + ' \u00c5' : '\u221e') : (integerX ? 'iteration ' + x : x.toPrecision(4));
            return c.dataset.label + ': ' + (Math.abs(y) >= 1e5 ? y.toExponential(4) : +y.toPrecision(5)) + ' at ' + where;
          } } }
        },
        scales: {
          x: { type: 'linear', min: xmin, max: xmax, title: { display: true, text: spec.x_label },
               ticks: integerX ? { precision: 0, stepSize: Math.max(1, Math.ceil((xmax - xmin) / 12)) } : {} },
          y: { title: { display: spec.y_label.length > 0, text: spec.y_label } }
        }
      }
    });
  }
  function orientationChart(canvas, spec) {
    var peak = Math.max.apply(null, spec.count.concat([1]));
    var data = spec.count.map(function (n, i) { return { x: spec.rot[i], y: spec.tilt[i], r: 2 + 10 * Math.sqrt(n / peak), n: n }; });
    return new Chart(canvas, {
      type: 'bubble',
      data: { datasets: [{ label: 'particles', data: data, backgroundColor: 'rgba(31,119,180,0.55)' }] },
      options: {
        animation: false, responsive: false,
        plugins: { title: { display: true, text: spec.title }, legend: { display: false },
                   tooltip: { callbacks: { label: function (c) {
                     var p = c.raw; return 'rot ' + p.x + '\u00b0, tilt ' + p.y + '\u00b0: ' + p.n + ' particles'; } } } },
        scales: { x: { min: -180, max: 180, title: { display: true, text: 'rot (\u00b0)' }, ticks: { stepSize: 45 } },
                  y: { min: 0, max: 180, reverse: true, title: { display: true, text: 'tilt (\u00b0)' }, ticks: { stepSize: 30 } } }
      }
    });
  }
  if (typeof Chart !== 'undefined') {
    document.querySelectorAll('[data-chart]').forEach(function (el) {
      var spec = JSON.parse(el.getAttribute('data-chart'));
      var box = document.createElement('div');
      box.className = 'chart';
      var canvas = document.createElement('canvas');
      canvas.width = spec.type === 'orientation' ? 640 : 600;
      canvas.height = spec.type === 'orientation' ? 380 : 360;
      box.appendChild(canvas);
      el.parentNode.replaceChild(box, el);
      if (spec.type === 'orientation') orientationChart(canvas, spec); else lineChart(canvas, spec);
      drawn++;
    });
  }
  var overlay = document.getElementById('emcryo-overlay');
  document.querySelectorAll('.gallery img').forEach(function (img) {
    img.addEventListener('click', function () {
      overlay.querySelector('img').src = img.src;
      overlay.querySelector('div').textContent = img.alt;
      overlay.style.display = 'flex';
    });
  });
  overlay.addEventListener('click', function () { overlay.style.display = 'none'; });
  show();
})();
)JS";

constexpr const char* kStyle =
    "body{font-family:sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}figure{display:inline-block;margin:8px}"
    ".chart{display:inline-block;margin:8px;border:1px solid #eee}"
    ".gallery{display:flex;flex-wrap:wrap;gap:10px}.gallery figure{margin:0;text-align:center;font-size:13px}"
    ".gallery img{width:var(--tile);height:var(--tile);image-rendering:pixelated;cursor:zoom-in;display:block}"
    "#emcryo-overlay{display:none;position:fixed;inset:0;background:rgba(0,0,0,.85);align-items:center;"
    "justify-content:center;flex-direction:column;color:#fff;cursor:zoom-out}"
    "#emcryo-overlay img{height:80vh;image-rendering:pixelated}"
    "#emcryo-status{color:#999;font-size:11px}";

}  // namespace

namespace detail {

std::string line_chart_data(const std::string& title, const std::string& x_label, const std::string& y_label,
                            const std::vector<Series>& series, const std::vector<double>& hlines) {
  std::string s = fmt::format("{{\"type\":\"line\",\"title\":{},\"x_label\":{},\"y_label\":{},\"hlines\":{},\"series\":[",
                              json_string(title), json_string(x_label), json_string(y_label), json_numbers(hlines));
  for (std::size_t k = 0; k < series.size(); ++k)
    s += fmt::format("{}{{\"name\":{},\"x\":{},\"y\":{}}}", k ? "," : "", json_string(series[k].name),
                     json_numbers(series[k].x), json_numbers(series[k].y));
  return s + "]}";
}

std::string orientation_chart_data(const std::vector<double>& rot, const std::vector<double>& tilt,
                                   const std::string& title) {
  // 10-degree bins of rot (-180..180) and tilt (0..180); only occupied bins are sent.
  constexpr int kRotBins = 36, kTiltBins = 18;
  std::vector<int> count(kRotBins * kTiltBins, 0);
  for (std::size_t i = 0; i < rot.size() && i < tilt.size(); ++i) {
    const double r = std::remainder(rot[i], 360.0);  // -180..180
    const int br = std::clamp(static_cast<int>((r + 180) / 10), 0, kRotBins - 1);
    const int bt = std::clamp(static_cast<int>(tilt[i] / 10), 0, kTiltBins - 1);
    ++count[static_cast<std::size_t>(bt * kRotBins + br)];
  }
  std::vector<double> rots, tilts, counts;
  for (int bt = 0; bt < kTiltBins; ++bt)
    for (int br = 0; br < kRotBins; ++br)
      if (const int n = count[static_cast<std::size_t>(bt * kRotBins + br)]; n > 0) {
        rots.push_back(-175 + 10 * br);
        tilts.push_back(5 + 10 * bt);
        counts.push_back(n);
      }
  return fmt::format("{{\"type\":\"orientation\",\"title\":{},\"rot\":{},\"tilt\":{},\"count\":{}}}", json_string(title),
                     json_numbers(rots), json_numbers(tilts), json_numbers(counts));
}

std::string page(const std::string& title, const std::string& body) {
  static bool warned = false;
  std::string script;
  const std::filesystem::path chartjs = chartjs_path();
  if (!chartjs.empty()) {
    // Inline scripts end at the first "</script"; Chart.js holds none, but make sure.
    const std::string text = read_text_file(chartjs);
    script.reserve(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
      script += text[i];
      if (text[i] == '<' && text.compare(i + 1, 7, "/script") == 0) script += '\\';
    }
  } else if (!warned) {
    warned = true;
    log::warn("report: Chart.js not found (install Debian's libjs-chart.js); charts stay static SVG");
  }
  return "<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + html_escape(title) + "</title><style>" + kStyle +
         "</style>" + (script.empty() ? "" : "<script>" + script + "</script>") + "</head><body><h1>" +
         html_escape(title) + "</h1>\n" + body +
         "<div id='emcryo-overlay'><img alt=''/><div></div></div><p id='emcryo-status'>charts static</p><script>" +
         kPageScript + "</script></body></html>\n";
}

}  // namespace detail

std::filesystem::path chartjs_path() {
  for (const char* candidate : {"/usr/share/javascript/chart.js/chart.min.js", "/usr/share/javascript/chart.js/chart.js"})
    if (std::filesystem::exists(candidate)) return candidate;
  return {};
}

void HtmlReport::add_line_chart(const std::string& title, const std::string& x_label, const std::string& y_label,
                                const std::vector<Series>& series, const std::vector<double>& hlines) {
  add_raw(svg_line_plot(title, x_label, y_label, series, hlines));
}

void HtmlReport::add_class_gallery(const std::string& caption, int n, std::vector<GalleryClass> classes) {
  std::stable_sort(classes.begin(), classes.end(),
                   [](const GalleryClass& a, const GalleryClass& b) { return a.particles > b.particles; });
  const int tile = std::max(128, 2 * n);
  std::string html = fmt::format("<h3>{}</h3><div class='gallery' style='--tile:{}px'>", html_escape(caption), tile);
  for (const GalleryClass& c : classes) {
    const std::string resolution = c.resolution > 0 ? fmt::format("{:.1f} Å", c.resolution) : "-";
    const std::string label = fmt::format("class {}: {} particles ({:.1f}%), {}", c.number, c.particles,
                                          100 * c.fraction, resolution);
    html += fmt::format(
        "<figure><img src='data:image/png;base64,{}' alt='{}' title='{}'/><figcaption><b>{}</b> · {} "
        "({:.1f}%)<br>{}</figcaption></figure>",
        base64(png_from_floats(c.image, n, n)), html_escape(label), html_escape(label), c.number, c.particles,
        100 * c.fraction, resolution);
  }
  body_ += html + "</div>\n";
}

}  // namespace emcryo::io
