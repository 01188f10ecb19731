#include "posterior_output.hpp"

#include <algorithm>

#include "emcryo/io/posteriors.hpp"

namespace emcryo::jobs {

void write_top_hypotheses(const std::filesystem::path& dir, const io::ParticleSet& set, const std::vector<std::size_t>& active,
                          const std::vector<std::vector<em::Hypothesis>>& top, int count) {
  const double pixel = set.pixel_size();
  std::vector<std::string> names;
  std::vector<io::PosteriorHypothesis> rows;
  for (std::size_t a = 0; a < active.size(); ++a) {
    names.push_back(set.portable_image_name(active[a]));
    const std::size_t n = std::min(top[a].size(), static_cast<std::size_t>(std::max(count, 0)));
    for (std::size_t r = 0; r < n; ++r) {
      const em::Hypothesis& h = top[a][r];
      io::PosteriorHypothesis row;
      row.particle = static_cast<std::uint32_t>(a);
      row.rank = static_cast<std::uint32_t>(r + 1);
      row.class_number = h.k + 1;
      row.rot = h.orientation.rot, row.tilt = h.orientation.tilt, row.psi = h.orientation.psi;
      // RELION's origin re-centres the particle: minus its displacement.
      row.shift_x = -h.shift.first * pixel, row.shift_y = -h.shift.second * pixel;
      row.weight = h.weight;
      rows.push_back(row);
    }
  }
  io::write_posteriors_star(dir / "posteriors.star", names, rows);
  io::write_posteriors_cs(dir / "posteriors.cs", names, rows, pixel);
}

}  // namespace emcryo::jobs
