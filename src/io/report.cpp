#include "emcryo/io/report.hpp"

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBI_WRITE_NO_STDIO
#include <stb_image_write.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>

#include "emcryo/core/error.hpp"
#include "emcryo/core/files.hpp"
#include "emcryo/io/star.hpp"
#include "report_internal.hpp"

namespace emcryo::io {

namespace {

void append_bytes(void* context, void* data, int size) {
  static_cast<std::string*>(context)->append(static_cast<const char*>(data), static_cast<std::size_t>(size));
}

std::string encode_png(const std::vector<unsigned char>& pixels, int width, int height) {
  std::string bytes;
  stbi_write_png_to_func(append_bytes, &bytes, width, height, 1, pixels.data(), width);
  return bytes;
}

void to_gray(const float* data, int w, int h, double sigmas, unsigned char* out, int out_stride) {
  double s = 0, s2 = 0;
  const std::size_t count = static_cast<std::size_t>(w) * h;
  for (std::size_t i = 0; i < count; ++i) s += data[i], s2 += static_cast<double>(data[i]) * data[i];
  const double mean = s / static_cast<double>(count);
  const double sd = std::sqrt(std::max(1e-30, s2 / static_cast<double>(count) - mean * mean));
  const double lo = mean - sigmas * sd, hi = mean + sigmas * sd;
  // Images are stored with y up (MRC); PNG rows go down, so flip to show what ChimeraX/RELION show.
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const double v = (data[static_cast<std::size_t>(h - 1 - y) * w + x] - lo) / (hi - lo);
      out[static_cast<std::size_t>(y) * out_stride + x] = static_cast<unsigned char>(std::clamp(v, 0.0, 1.0) * 255);
    }
}

// A 3x5 pixel font for captions (digits, a few letters and signs).
const std::array<unsigned short, 128>& glyphs() {
  static const std::array<unsigned short, 128> table = [] {
    std::array<unsigned short, 128> g{};
    auto set = [&](char c, const char* rows) {
      unsigned short bits = 0;
      for (int i = 0; i < 15; ++i) bits = static_cast<unsigned short>(bits | ((rows[i] == '#') << i));
      g[static_cast<std::size_t>(c)] = bits;
    };
    set('0', "####.##.##.####"); set('1', ".#.##..#..#.###"); set('2', "###..#####..###");
    set('3', "###..####..####"); set('4', "#.##.####..#..#"); set('5', "####..###..####");
    set('6', "####..####.####"); set('7', "###..#..#..#..#"); set('8', "####.#####.####");
    set('9', "####.####..####"); set('.', "............#.."); set('A', ".#.#.#####.##.#");
    set('n', "......##.#.##.#"); set('#', "#.#####.#####.#"); set('%', "#.#..#.#.#..#.#");
    set('/', "..#..#.#..#.#.."); set('-', "......###......"); set(' ', "...............");
    return g;
  }();
  return table;
}

void draw_text(std::vector<unsigned char>& img, int stride, int x0, int y0, const std::string& text, int scale) {
  int x = x0;
  for (char c : text) {
    const unsigned short bits = glyphs()[static_cast<std::size_t>(c) & 127];
    for (int r = 0; r < 5; ++r)
      for (int col = 0; col < 3; ++col)
        if (bits & (1u << (r * 3 + col)))
          for (int dy = 0; dy < scale; ++dy)
            for (int dx = 0; dx < scale; ++dx) {
              const int px = x + col * scale + dx, py = y0 + r * scale + dy;
              if (px >= 0 && px < stride && py >= 0 && static_cast<std::size_t>(py * stride + px) < img.size())
                img[static_cast<std::size_t>(py) * stride + px] = 255;
            }
    x += 4 * scale;
  }
}

}  // namespace

std::string png_from_floats(const float* data, int width, int height, double sigmas) {
  std::vector<unsigned char> pixels(static_cast<std::size_t>(width) * height);
  to_gray(data, width, height, sigmas, pixels.data(), width);
  return encode_png(pixels, width, height);
}

std::string volume_sections_png(const std::vector<float>& v, int n) {
  const std::size_t plane = static_cast<std::size_t>(n) * n;
  std::vector<float> xy(plane), xz(plane), yz(plane);
  const int c = n / 2;
  for (int a = 0; a < n; ++a)
    for (int b = 0; b < n; ++b) {
      xy[static_cast<std::size_t>(a) * n + b] = v[(static_cast<std::size_t>(c) * n + a) * n + b];
      xz[static_cast<std::size_t>(a) * n + b] = v[(static_cast<std::size_t>(a) * n + c) * n + b];
      yz[static_cast<std::size_t>(a) * n + b] = v[(static_cast<std::size_t>(a) * n + b) * n + c];
    }
  return gallery_png({xy.data(), xz.data(), yz.data()}, n, 3, {"XY", "XZ", "YZ"});
}

std::string gallery_png(const std::vector<const float*>& images, int n, int columns, const std::vector<std::string>& captions) {
  const int count = static_cast<int>(images.size());
  columns = std::max(1, std::min(columns, count));
  const int rows = (count + columns - 1) / columns;
  const int scale = n >= 96 ? 2 : 1;
  const int caption_height = captions.empty() ? 0 : 5 * scale + 4;
  const int gap = 2;
  const int width = columns * (n + gap) + gap, height = rows * (n + caption_height + gap) + gap;
  std::vector<unsigned char> pixels(static_cast<std::size_t>(width) * height, 0);
  for (int i = 0; i < count; ++i) {
    const int x0 = gap + (i % columns) * (n + gap), y0 = gap + (i / columns) * (n + caption_height + gap);
    to_gray(images[static_cast<std::size_t>(i)], n, n, 3.0, pixels.data() + static_cast<std::size_t>(y0) * width + x0, width);
    if (static_cast<std::size_t>(i) < captions.size())
      draw_text(pixels, width, x0 + 1, y0 + n + 2, captions[static_cast<std::size_t>(i)], scale);
  }
  return encode_png(pixels, width, height);
}

void write_binary_file(const std::filesystem::path& path, const std::string& bytes) { write_text_file(path, bytes); }

std::string svg_line_plot(const std::string& title, const std::string& x_label, const std::string& y_label,
                          const std::vector<Series>& series, const std::vector<double>& hlines) {
  const double W = 560, H = 340, L = 60, R = 20, T = 30, B = 45;
  double xmin = 1e300, xmax = -1e300, ymin = 1e300, ymax = -1e300;
  for (const auto& s : series)
    for (std::size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      xmin = std::min(xmin, s.x[i]), xmax = std::max(xmax, s.x[i]);
      ymin = std::min(ymin, s.y[i]), ymax = std::max(ymax, s.y[i]);
    }
  for (double h : hlines) ymin = std::min(ymin, h), ymax = std::max(ymax, h);
  if (xmin > xmax) xmin = 0, xmax = 1, ymin = 0, ymax = 1;
  if (xmax == xmin) xmax = xmin + 1;
  if (ymax == ymin) ymax = ymin + 1;
  const double pad = 0.05 * (ymax - ymin);
  ymin -= pad, ymax += pad;
  auto sx = [&](double x) { return L + (x - xmin) / (xmax - xmin) * (W - L - R); };
  auto sy = [&](double y) { return H - B - (y - ymin) / (ymax - ymin) * (H - T - B); };
  std::string svg = fmt::format(
      "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' font-family='sans-serif' font-size='12' "
      "data-chart='{}'><rect width='100%' height='100%' fill='white'/><text x='{}' y='18' font-size='14'>{}</text>"
      "<line x1='{}' y1='{}' x2='{}' y2='{}' stroke='black'/><line x1='{}' y1='{}' x2='{}' y2='{}' stroke='black'/>"
      "<text x='{}' y='{}' text-anchor='middle'>{}</text>"
      "<text x='14' y='{}' transform='rotate(-90 14 {})' text-anchor='middle'>{}</text>",
      W, H, html_escape(detail::line_chart_data(title, x_label, y_label, series, hlines)), L, html_escape(title), L, H - B, W - R, H - B, L, T, L, H - B, (L + W - R) / 2, H - 8,
      html_escape(x_label), (T + H - B) / 2, (T + H - B) / 2, html_escape(y_label));
  for (int t = 0; t <= 4; ++t) {
    const double xv = xmin + t * (xmax - xmin) / 4, yv = ymin + t * (ymax - ymin) / 4;
    svg += fmt::format("<text x='{:.1f}' y='{:.1f}' text-anchor='middle'>{:.3g}</text>", sx(xv), H - B + 16, xv);
    svg += fmt::format("<text x='{:.1f}' y='{:.1f}' text-anchor='end'>{:.3g}</text>", L - 4, sy(yv) + 4, yv);
  }
  for (double h : hlines)
    svg += fmt::format("<line x1='{}' y1='{:.1f}' x2='{}' y2='{:.1f}' stroke='gray' stroke-dasharray='4 3'/>", L,
                       sy(h), W - R, sy(h));
  static const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};
  for (std::size_t k = 0; k < series.size(); ++k) {
    const auto& s = series[k];
    std::string points;
    for (std::size_t i = 0; i < s.x.size() && i < s.y.size(); ++i)
      if (std::isfinite(s.x[i]) && std::isfinite(s.y[i])) points += fmt::format("{:.1f},{:.1f} ", sx(s.x[i]), sy(s.y[i]));
    const char* color = colors[k % 8];
    svg += fmt::format("<polyline fill='none' stroke='{}' stroke-width='1.5' points='{}'/>", color, points);
    svg += fmt::format("<text x='{}' y='{}' fill='{}'>{}</text>", W - R - 150, T + 14 * (k + 1), color, html_escape(s.name));
  }
  return svg + "</svg>";
}

std::string svg_fsc_plot(const std::vector<double>& fsc, int n, double pixel_size, const std::string& title) {
  Series s{"FSC", {}, {}};
  for (std::size_t i = 1; i < fsc.size(); ++i) {
    s.x.push_back(static_cast<double>(i) / (n * pixel_size));
    s.y.push_back(fsc[i]);
  }
  return svg_line_plot(title, "spatial frequency (1/Å)", "FSC", {s}, {0.143, 0.5});
}

std::string svg_orientation_plot(const std::vector<double>& rot, const std::vector<double>& tilt, const std::string& title) {
  // Lambert azimuthal equal-area projection of the viewing direction onto a disc per hemisphere.
  const int bins = 36;
  std::vector<int> hist(static_cast<std::size_t>(bins * bins), 0);
  int peak = 1;
  for (std::size_t i = 0; i < rot.size(); ++i) {
    const int bx = std::clamp(static_cast<int>((std::fmod(rot[i] + 540.0, 360.0)) / 360 * bins), 0, bins - 1);
    const double ct = std::cos(tilt[i] * M_PI / 180);
    const int by = std::clamp(static_cast<int>((1 - ct) / 2 * bins), 0, bins - 1);  // equal-area in cos(tilt)
    peak = std::max(peak, ++hist[static_cast<std::size_t>(by * bins + bx)]);
  }
  const int cell = 12;
  std::string svg = fmt::format(
      "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' font-family='sans-serif' font-size='12' "
      "data-chart='{}'><rect width='100%' height='100%' fill='white'/><text x='50' y='16' font-size='14'>{}</text>",
      bins * cell + 70, bins * cell + 60, html_escape(detail::orientation_chart_data(rot, tilt, title)), html_escape(title));
  for (int y = 0; y < bins; ++y)
    for (int x = 0; x < bins; ++x) {
      const double v = static_cast<double>(hist[static_cast<std::size_t>(y * bins + x)]) / peak;
      const int c = static_cast<int>(255 * (1 - v));
      svg += fmt::format("<rect x='{}' y='{}' width='{}' height='{}' fill='rgb({},{},255)'/>", 50 + x * cell,
                         25 + y * cell, cell, cell, c, c);
    }
  svg += fmt::format("<text x='{}' y='{}' text-anchor='middle'>rot (0..360°)</text>", 50 + bins * cell / 2,
                     bins * cell + 45);
  svg += fmt::format("<text x='14' y='{}' transform='rotate(-90 14 {})' text-anchor='middle'>cos(tilt) 1..-1</text>",
                     25 + bins * cell / 2, 25 + bins * cell / 2);
  return svg + "</svg>";
}

void write_fsc_star(const std::filesystem::path& path, const std::vector<double>& fsc, int n, double pixel_size) {
  StarFile star;
  StarBlock block;
  block.name = "fsc";
  block.is_loop = true;
  auto& t = block.table;
  const int c_idx = t.add_column("rlnSpectralIndex"), c_res = t.add_column("rlnResolution"),
            c_ang = t.add_column("rlnAngstromResolution"), c_fsc = t.add_column("rlnFourierShellCorrelation");
  for (std::size_t s = 0; s < fsc.size(); ++s) {
    const std::size_t r = t.add_row();
    t.set_integer(r, c_idx, static_cast<std::int64_t>(s));
    t.set_number(r, c_res, static_cast<double>(s) / (n * pixel_size));
    t.set_number(r, c_ang, s ? n * pixel_size / static_cast<double>(s) : 999.0, 4);
    t.set_number(r, c_fsc, fsc[s]);
  }
  star.blocks.push_back(std::move(block));
  write_star(path, star);
}

HtmlReport::HtmlReport(std::string title) : title_(std::move(title)) {}
void HtmlReport::add_heading(const std::string& text) { body_ += "<h2>" + html_escape(text) + "</h2>\n"; }
void HtmlReport::add_paragraph(const std::string& text) { body_ += "<p>" + html_escape(text) + "</p>\n"; }
void HtmlReport::add_raw(const std::string& html) { body_ += "<div>" + html + "</div>\n"; }
void HtmlReport::add_image_png(const std::string& caption, const std::string& png) {
  body_ += "<figure><img src='data:image/png;base64," + base64(png) + "' style='image-rendering:pixelated;max-width:100%'/>"
           "<figcaption>" + html_escape(caption) + "</figcaption></figure>\n";
}
void HtmlReport::add_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
  body_ += "<table><tr>";
  for (const auto& h : header) body_ += "<th>" + html_escape(h) + "</th>";
  body_ += "</tr>\n";
  for (const auto& row : rows) {
    body_ += "<tr>";
    for (const auto& c : row) body_ += "<td>" + html_escape(c) + "</td>";
    body_ += "</tr>\n";
  }
  body_ += "</table>\n";
}
void HtmlReport::write(const std::filesystem::path& path) const {
  write_text_file(path, detail::page(title_, body_));
}

std::string base64(const std::string& bytes) {
  static const char* table = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const unsigned v = (static_cast<unsigned char>(bytes[i]) << 16) | (static_cast<unsigned char>(bytes[i + 1]) << 8) |
                       static_cast<unsigned char>(bytes[i + 2]);
    out += table[v >> 18], out += table[(v >> 12) & 63], out += table[(v >> 6) & 63], out += table[v & 63];
  }
  if (i + 1 == bytes.size()) {
    const unsigned v = static_cast<unsigned char>(bytes[i]) << 16;
    out += table[v >> 18], out += table[(v >> 12) & 63], out += "==";
  } else if (i + 2 == bytes.size()) {
    const unsigned v = (static_cast<unsigned char>(bytes[i]) << 16) | (static_cast<unsigned char>(bytes[i + 1]) << 8);
    out += table[v >> 18], out += table[(v >> 12) & 63], out += table[(v >> 6) & 63], out += '=';
  }
  return out;
}

std::string html_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '\'': out += "&#39;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

}  // namespace emcryo::io
