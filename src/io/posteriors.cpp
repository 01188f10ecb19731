#include "emcryo/io/posteriors.hpp"

#include <algorithm>
#include <charconv>

#include "emcryo/core/error.hpp"
#include "emcryo/io/cs.hpp"
#include "emcryo/io/cs_particles.hpp"
#include "emcryo/io/star.hpp"

namespace emcryo::io {

namespace {

const std::string& name_of(const std::filesystem::path& path, const std::vector<std::string>& names,
                           const PosteriorHypothesis& h, std::size_t row) {
  if (h.particle >= names.size())
    fail("{}: hypothesis {}: particle {} has no image name ({} names)", path.string(), row, h.particle, names.size());
  return names[h.particle];
}

// "000012@Particles/stack.mrcs" -> 11 and "Particles/stack.mrcs".
std::pair<std::uint64_t, std::string> split_image_name(const std::filesystem::path& path, const std::string& name) {
  const auto at = name.find('@');
  std::uint64_t index = 0;
  const auto [p, ec] = std::from_chars(name.data(), name.data() + (at == std::string::npos ? 0 : at), index);
  if (at == std::string::npos || ec != std::errc() || p != name.data() + at || index < 1)
    fail("{}: image name '{}' is not of the form N@stack.mrcs", path.string(), name);
  return {index - 1, name.substr(at + 1)};
}

}  // namespace

void write_posteriors_star(const std::filesystem::path& path, const std::vector<std::string>& image_names,
                           const std::vector<PosteriorHypothesis>& hypotheses) {
  StarFile star;
  star.path = path;
  star.version = 30001;
  StarBlock block{"posteriors", true, {}};
  StarTable& t = block.table;
  const int c_name = t.add_column("rlnImageName"), c_rank = t.add_column("emcryoHypothesisRank"),
            c_class = t.add_column("rlnClassNumber"), c_rot = t.add_column("rlnAngleRot"),
            c_tilt = t.add_column("rlnAngleTilt"), c_psi = t.add_column("rlnAnglePsi"),
            c_x = t.add_column("rlnOriginXAngst"), c_y = t.add_column("rlnOriginYAngst"),
            c_w = t.add_column("emcryoPosterior");
  for (std::size_t i = 0; i < hypotheses.size(); ++i) {
    const PosteriorHypothesis& h = hypotheses[i];
    const std::size_t r = t.add_row();
    t.set_text(r, c_name, name_of(path, image_names, h, i));
    t.set_integer(r, c_rank, h.rank);
    t.set_integer(r, c_class, h.class_number);
    t.set_number(r, c_rot, h.rot);
    t.set_number(r, c_tilt, h.tilt);
    t.set_number(r, c_psi, h.psi);
    t.set_number(r, c_x, h.shift_x);
    t.set_number(r, c_y, h.shift_y);
    t.set_number(r, c_w, h.weight, 8);
  }
  star.blocks.push_back(std::move(block));
  write_star(path, star);
}

void write_posteriors_cs(const std::filesystem::path& path, const std::vector<std::string>& image_names,
                         const std::vector<PosteriorHypothesis>& hypotheses, double pixel_size) {
  if (pixel_size <= 0) fail("{}: pixel size {} is not positive", path.string(), pixel_size);
  std::vector<std::pair<std::uint64_t, std::string>> images;
  images.reserve(image_names.size());
  std::size_t longest = 1;
  for (const auto& name : image_names) {
    images.push_back(split_image_name(path, name));
    longest = std::max(longest, images.back().second.size());
  }
  CsTable cs;
  cs.source_file = path.string();
  const int f_path = cs.add_field("blob/path", fmt::format("|S{}", longest)), f_idx = cs.add_field("blob/idx", "<u4"),
            f_rank = cs.add_field("posterior/rank", "<u4"), f_class = cs.add_field("alignments3D/class", "<u4"),
            f_pose = cs.add_field("alignments3D/pose", "<f4", {3}), f_shift = cs.add_field("alignments3D/shift", "<f4", {2}),
            f_psize = cs.add_field("alignments3D/psize_A", "<f4"), f_weight = cs.add_field("posterior/weight", "<f4");
  cs.resize(hypotheses.size());
  for (std::size_t i = 0; i < hypotheses.size(); ++i) {
    const PosteriorHypothesis& h = hypotheses[i];
    (void)name_of(path, image_names, h, i);
    const auto& [index, stack] = images[h.particle];
    cs.set_text(i, f_path, stack);
    cs.set_integer(i, f_idx, index);
    cs.set_integer(i, f_rank, h.rank);
    cs.set_number(i, f_class, std::max(h.class_number - 1, 0));
    const geometry::Vec3 v = cs_pose_from_euler({h.rot, h.tilt, h.psi});
    cs.set_number(i, f_pose, v.x, 0);
    cs.set_number(i, f_pose, v.y, 1);
    cs.set_number(i, f_pose, v.z, 2);
    cs.set_number(i, f_shift, h.shift_x / pixel_size, 0);
    cs.set_number(i, f_shift, h.shift_y / pixel_size, 1);
    cs.set_number(i, f_psize, pixel_size);
    cs.set_number(i, f_weight, h.weight);
  }
  write_cs(path, cs);
}

}  // namespace emcryo::io
