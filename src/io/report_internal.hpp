// Shared between report.cpp (static plots, the page) and report_charts.cpp (interactive charts).
#pragma once
#include <string>
#include <vector>

#include "emcryo/io/report.hpp"

namespace emcryo::io::detail {

/// JSON carried in an SVG's data-chart attribute, redrawn by the page script.
std::string line_chart_data(const std::string& title, const std::string& x_label, const std::string& y_label,
                            const std::vector<Series>& series, const std::vector<double>& hlines);
std::string orientation_chart_data(const std::vector<double>& rot, const std::vector<double>& tilt,
                                   const std::string& title);
/// The whole self-contained page: style, Chart.js inlined (when installed), body, page script.
std::string page(const std::string& title, const std::string& body);

}  // namespace emcryo::io::detail
