// The report page: self-contained (Chart.js inlined, nothing fetched), and in headless Chromium it
// loads without a console error and draws its charts; a screenshot goes to the test's output
// folder (build/test-output/report/) for people to look at.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "emcryo/io/report.hpp"
#include "support/test_support.hpp"

namespace fs = std::filesystem;
using namespace emcryo;

namespace {

// A report with what the jobs put in it: convergence curves over iterations (through add_raw of
// svg_line_plot, as the jobs call it), an FSC curve, viewing directions and a class gallery.
fs::path write_sample_report(const fs::path& dir) {
  io::HtmlReport report("emcryo report test");
  report.add_paragraph("315 particles, 6 classes, box 48 px, 2.000 Å/px, 13 iterations.");
  io::Series ll{"log-likelihood", {}, {}}, changes{"class changes (%)", {}, {}}, psi{"psi change (°)", {}, {}};
  std::vector<io::Series> sizes;
  for (int c = 0; c < 3; ++c) sizes.push_back({"class " + std::to_string(c + 1), {}, {}});
  for (int it = 1; it <= 13; ++it) {
    ll.x.push_back(it), ll.y.push_back(-1.2e7 + 3e5 * std::log(it));
    changes.x.push_back(it), changes.y.push_back(60.0 / it);
    psi.x.push_back(it), psi.y.push_back(40.0 / it - 4.57 * (it > 10));
    for (int c = 0; c < 3; ++c) sizes[static_cast<std::size_t>(c)].x.push_back(it),
        sizes[static_cast<std::size_t>(c)].y.push_back((c + 1) / 6.0 + 0.01 * std::sin(it + c));
  }
  report.add_heading("Convergence");
  report.add_raw(io::svg_line_plot("Log-likelihood", "iteration", "sum over particles", {ll}));
  report.add_line_chart("Pose and class changes", "iteration", "", {changes, psi});
  report.add_line_chart("Class sizes", "iteration", "fraction", sizes);
  std::vector<double> fsc(25);
  for (std::size_t s = 0; s < fsc.size(); ++s) fsc[s] = 1 / (1 + std::exp((static_cast<double>(s) - 15) / 2));
  report.add_heading("Resolution");
  report.add_raw(io::svg_fsc_plot(fsc, 48, 2.0, "Half-map FSC"));
  std::vector<double> rot, tilt;
  for (int i = 0; i < 2000; ++i) rot.push_back(std::fmod(i * 137.5, 360.0) - 180), tilt.push_back(std::acos(1 - 2 * ((i * 0.618) - std::floor(i * 0.618))) * 180 / M_PI);
  report.add_raw(io::svg_orientation_plot(rot, tilt, "Viewing directions"));
  const int n = 48;
  std::vector<std::vector<float>> images(6, std::vector<float>(n * n));
  std::vector<io::GalleryClass> classes;
  for (int c = 0; c < 6; ++c) {
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const double r = std::hypot(x - n / 2 - 3 * c + 6, y - n / 2);
        images[static_cast<std::size_t>(c)][static_cast<std::size_t>(y * n + x)] = static_cast<float>(std::exp(-r * r / (20.0 + 10 * c)));
      }
    classes.push_back({images[static_cast<std::size_t>(c)].data(), c + 1, static_cast<std::size_t>(10 + 17 * ((c * 5) % 6)), 0, 8.5 + c});
  }
  for (auto& c : classes) c.fraction = static_cast<double>(c.particles) / 315;
  report.add_heading("Classes");
  report.add_class_gallery("Class averages, largest first", n, classes);
  const fs::path path = dir / "report.html";
  report.write(path);
  return path;
}

TEST(Report, IsSelfContainedAndSortsTheGallery) {
  const test::TempDir dir("report");
  const std::string html = test::read_text(write_sample_report(dir.path()));
  EXPECT_EQ(html.find("<script src"), std::string::npos);
  EXPECT_EQ(html.find("<link"), std::string::npos);
  if (!io::chartjs_path().empty()) {
    EXPECT_NE(html.find("Chart.js v"), std::string::npos);
  }
  // The largest class (class 2, 95 particles) comes first.
  const auto first = html.find("<figcaption><b>");
  ASSERT_NE(first, std::string::npos);
  EXPECT_EQ(html.substr(first + 15, 2), "2<") << html.substr(first, 80);
  EXPECT_NE(html.find("data-chart="), std::string::npos);
}

TEST(Report, LoadsInHeadlessChromiumWithoutErrorsAndDrawsTheCharts) {
  if (!test::have_program("chromium")) GTEST_SKIP() << "chromium is not installed (Debian package chromium)";
  if (io::chartjs_path().empty()) GTEST_SKIP() << "Chart.js is not installed (Debian package libjs-chart.js)";
  const fs::path out = fs::path(EMCRYO_BINARY_DIR) / "test-output/report";
  fs::create_directories(out);
  const fs::path page = write_sample_report(out);
  const std::string chromium = "chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir=" +
                               test::quoted(out / "profile") + " --enable-logging=stderr --v=0 ";
  const auto dom = test::run_capture(chromium + "--virtual-time-budget=5000 --dump-dom " + test::quoted("file://" + page.string()) + " 2>" +
                                     test::quoted(out / "console.log"));
  ASSERT_EQ(dom.exit_code, 0) << dom.output;
  EXPECT_NE(dom.output.find("charts 5, errors 0"), std::string::npos)
      << dom.output.substr(dom.output.find("emcryo-status") == std::string::npos ? 0 : dom.output.find("emcryo-status"), 300);
  const std::string console = test::read_text(out / "console.log");
  EXPECT_EQ(console.find("Uncaught"), std::string::npos) << console;
  EXPECT_EQ(console.find(":CONSOLE"), std::string::npos) << console;
  const fs::path shot = out / "report.png";
  fs::remove(shot);
  const auto screenshot = test::run_capture(chromium + "--window-size=1300,2600 --virtual-time-budget=5000 --screenshot=" +
                                            test::quoted(shot) + " " + test::quoted("file://" + page.string()) + " 2>/dev/null");
  ASSERT_EQ(screenshot.exit_code, 0) << screenshot.output;
  ASSERT_TRUE(fs::exists(shot));
  EXPECT_GT(fs::file_size(shot), 20000u);  // charts and gallery, not a blank page
  std::printf("report screenshot: %s\n", shot.c_str());
}

}  // namespace
