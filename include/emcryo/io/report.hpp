// What users look at: PNG pictures, SVG plots, one self-contained HTML report per job, and the
// curves as STAR tables for their own plots. In the report, every plot made here becomes an
// interactive Chart.js chart (Debian's libjs-chart.js, inlined when the report is written: the
// page needs no network); without Chart.js the static SVG stays and the log says why.
#pragma once
#include <filesystem>
#include <string>
#include <vector>

namespace emcryo::io {

/// 8-bit grayscale PNG bytes of a width x height float image, contrast from mean +- `sigmas` sd.
std::string png_from_floats(const float* data, int width, int height, double sigmas = 3.0);
/// The three central sections (xy, xz, yz) of an n^3 volume side by side, as PNG bytes.
std::string volume_sections_png(const std::vector<float>& volume, int n);
/// Images (n x n each) tiled in a grid `columns` wide, each normalised on its own, with a small
/// caption of digits/letters drawn under each tile. PNG bytes.
std::string gallery_png(const std::vector<const float*>& images, int n, int columns,
                        const std::vector<std::string>& captions);
void write_binary_file(const std::filesystem::path& path, const std::string& bytes);

struct Series {
  std::string name;
  std::vector<double> x, y;
};
/// An SVG line plot; `hlines` are dashed reference lines (e.g. FSC 0.143). The SVG carries its
/// data (data-chart) so that a report redraws it as an interactive chart; x values that are all
/// integers (iterations) get integer ticks there; an x label with "1/Å" shows resolutions in Å.
std::string svg_line_plot(const std::string& title, const std::string& x_label, const std::string& y_label,
                          const std::vector<Series>& series, const std::vector<double>& hlines = {});
std::string svg_fsc_plot(const std::vector<double>& fsc, int n, double pixel_size, const std::string& title);
/// Viewing directions as a (rot, tilt) density map on an equal-area projection, SVG; in a report,
/// a bubble chart of the same bins with counts on hover.
std::string svg_orientation_plot(const std::vector<double>& rot, const std::vector<double>& tilt,
                                 const std::string& title);
/// data_fsc loop: rlnSpectralIndex, rlnResolution (1/Å), rlnAngstromResolution, rlnFourierShellCorrelation.
void write_fsc_star(const std::filesystem::path& path, const std::vector<double>& fsc, int n, double pixel_size);

/// One class of a gallery.
struct GalleryClass {
  const float* image = nullptr;  // n x n
  int number = 0;                // 1-based class number
  std::size_t particles = 0;
  double fraction = 0;           // of all particles, 0..1
  double resolution = 0;         // Å; 0 when unknown
};

/// Chart.js from Debian's libjs-chart.js; empty when it is not installed.
std::filesystem::path chartjs_path();

class HtmlReport {
 public:
  explicit HtmlReport(std::string title);
  /// An interactive line chart (through svg_line_plot, so it also reads without Chart.js).
  void add_line_chart(const std::string& title, const std::string& x_label, const std::string& y_label,
                      const std::vector<Series>& series, const std::vector<double>& hlines = {});
  /// Class averages, largest class first, each captioned with its number, size and resolution,
  /// shown large enough to judge (at least 128 px) and enlarged on click.
  void add_class_gallery(const std::string& caption, int n, std::vector<GalleryClass> classes);
  void add_heading(const std::string& text);
  void add_paragraph(const std::string& text);
  void add_raw(const std::string& html);
  void add_image_png(const std::string& caption, const std::string& png_bytes);
  void add_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows);
  void write(const std::filesystem::path& path) const;

 private:
  std::string title_;
  std::string body_;
};

std::string base64(const std::string& bytes);
std::string html_escape(const std::string& text);

}  // namespace emcryo::io
