#include "local_refine.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numbers>

#include "emcryo/core/error.hpp"
#include "emcryo/core/log.hpp"
#include "emcryo/em/projector.hpp"
#include "emcryo/image/ctf.hpp"
#include "emcryo/image/fft.hpp"
#include "emcryo/image/fourier.hpp"
#include "emcryo/io/mrc.hpp"
#include "emcryo/io/star.hpp"

namespace emcryo::jobs::local_refine {

namespace {
std::size_t sz(int v) { return static_cast<std::size_t>(v); }

/// (A f)_xy for the pose's rotation A.
std::pair<double, double> projected_fulcrum(const em::Pose3D& pose, const geometry::Vec3& f) {
  const geometry::Vec3 af = geometry::euler_to_matrix({pose.rot, pose.tilt, pose.psi}) * f;
  return {af.x, af.y};
}
}  // namespace

em::Pose3D Frame::to_fulcrum(em::Pose3D pose) const {
  const auto [x, y] = projected_fulcrum(pose, fulcrum);
  pose.shift_x += x, pose.shift_y += y;
  return pose;
}

em::Pose3D Frame::from_fulcrum(em::Pose3D pose) const {
  const auto [x, y] = projected_fulcrum(pose, fulcrum);
  pose.shift_x -= x, pose.shift_y -= y;
  return pose;
}

em::Hypothesis Frame::from_fulcrum(em::Hypothesis hypothesis) const {
  const geometry::Vec3 af = geometry::euler_to_matrix(hypothesis.orientation) * fulcrum;
  hypothesis.shift.first -= static_cast<float>(af.x), hypothesis.shift.second -= static_cast<float>(af.y);
  return hypothesis;
}

std::vector<float> Frame::move(const std::vector<float>& map, int n, int sign) const {
  auto spectrum = image::fft_forward_3d(map, n);
  const int h = n / 2 + 1;
  const double k = -2 * std::numbers::pi / n * sign;
  std::size_t idx = 0;
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < h; ++x, ++idx) {
        const double phase = k * (x * fulcrum.x + image::wrap_frequency(y, n) * fulcrum.y + image::wrap_frequency(z, n) * fulcrum.z);
        spectrum[idx] *= image::Complex(static_cast<float>(std::cos(phase)), static_cast<float>(std::sin(phase)));
      }
  return image::fft_inverse_3d(spectrum, n);
}

Frame make_frame(const std::vector<double>& fulcrum_angstrom, const std::vector<float>& mask, int n, double pixel) {
  Frame frame;
  if (fulcrum_angstrom.size() == 3) {
    frame.fulcrum = {fulcrum_angstrom[0] / pixel, fulcrum_angstrom[1] / pixel, fulcrum_angstrom[2] / pixel};
    return frame;
  }
  double sx = 0, sy = 0, sz_ = 0, total = 0;
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const double v = std::max(0.0f, mask[(sz(z) * sz(n) + sz(y)) * sz(n) + sz(x)]);
        sx += v * x, sy += v * y, sz_ += v * z, total += v;
      }
  if (total <= 0) fail("local-refine: the mask is empty");
  frame.fulcrum = {sx / total - n / 2, sy / total - n / 2, sz_ / total - n / 2};
  return frame;
}

std::vector<em::Pose3D> input_poses(const io::ParticleSet& set, const std::vector<std::size_t>& active, const std::string& source) {
  if (!set.has_poses()) fail("{}: no poses (rlnAngleRot/Tilt/Psi): local-refine searches around each particle's input pose", source);
  std::vector<em::Pose3D> poses;
  const double pixel = set.pixel_size();
  for (std::size_t i : active) {
    const io::Pose p = set.pose(i);
    em::Pose3D q;
    q.rot = p.rot, q.tilt = p.tilt, q.psi = p.psi;
    // RELION's origin re-centres the particle: the displacement is minus it.
    q.shift_x = -p.origin_x / pixel, q.shift_y = -p.origin_y / pixel;
    poses.push_back(q);
  }
  return poses;
}

std::filesystem::path subtract_outside_mask(const io::ParticleSet& set, const std::vector<float>& reference, const std::vector<float>& mask,
                                            bool use_ctf, const std::filesystem::path& dir) {
  if (!set.has_poses()) fail("{}: no poses: --subtract projects the map at each particle's input pose", set.path().string());
  const int n = set.box();
  const double pixel = set.pixel_size();
  std::vector<float> outside(reference.size());
  for (std::size_t v = 0; v < outside.size(); ++v) outside[v] = reference[v] * (1 - mask[v]);
  const em::Projector whole(reference, n), rest(outside, n);
  const std::size_t half = image::half_size(n, n), area = sz(n) * sz(n);
  const auto count = static_cast<int>(set.size());
  // The projection (CTF, shift) of a map at particle i's input pose, in real space.
  const auto project = [&](const em::Projector& p, int i, std::vector<image::Complex>& spectrum, std::vector<float>& out) {
    const io::Pose pose = set.pose(sz(i));
    p.project(geometry::euler_to_matrix({pose.rot, pose.tilt, pose.psi}), spectrum.data(), n, n / 2.0 - 1);
    if (use_ctf) {
      const auto ctf = image::ctf_half_grid(set.ctf(sz(i)), n, pixel);
      for (std::size_t k = 0; k < half; ++k) spectrum[k] *= ctf[k];
    }
    image::shift_half_grid_2d(spectrum.data(), n, -pose.origin_x / pixel, -pose.origin_y / pixel);
    image::fft_inverse_2d(spectrum.data(), out.data(), n, n);
  };
  // Grey scale: least squares of the whole map's projections to (up to 500 of) the images.
  double xy = 0, yy = 0;
  const int probe = std::min(count, 500);
#pragma omp parallel reduction(+ : xy, yy)
  {
    std::vector<image::Complex> spectrum(half);
    std::vector<float> model(area), img(area);
#pragma omp for schedule(dynamic, 4)
    for (int j = 0; j < probe; ++j) {
      const int i = static_cast<int>(static_cast<std::int64_t>(j) * count / probe);
      project(whole, i, spectrum, model);
      set.read_image(sz(i), img.data());
      for (std::size_t k = 0; k < area; ++k) xy += static_cast<double>(img[k]) * model[k], yy += static_cast<double>(model[k]) * model[k];
    }
  }
  if (yy <= 0) fail("local-refine --subtract: the reference projects to empty images");
  const double scale = xy / yy;
  log::info("local-refine: subtracting the map outside the mask from {} particles (grey scale {:.4g})", count, scale);
  io::MrcWriteOptions options;
  options.pixel_size = pixel;
  options.is_stack = true;
  io::MrcStackWriter stack(dir / "subtracted.mrcs", n, n, options);
  constexpr int batch = 128;
  std::vector<float> images(sz(batch) * area);
  for (int first = 0; first < count; first += batch) {
    const int bc = std::min(batch, count - first);
#pragma omp parallel
    {
      std::vector<image::Complex> spectrum(half);
      std::vector<float> model(area);
#pragma omp for schedule(dynamic, 4)
      for (int b = 0; b < bc; ++b) {
        float* img = images.data() + sz(b) * area;
        set.read_image(sz(first + b), img);
        project(rest, first + b, spectrum, model);
        for (std::size_t k = 0; k < area; ++k) img[k] -= static_cast<float>(scale * model[k]);
      }
    }
    for (int b = 0; b < bc; ++b) stack.append(images.data() + sz(b) * area);
  }
  stack.close();
  io::StarFile star = set.star();
  for (auto& block : star.blocks) {
    if (block.name != "particles" && !(star.blocks.size() == 1)) continue;
    auto& t = block.table;
    const int c = t.require("rlnImageName");
    for (std::size_t r = 0; r < t.rows(); ++r) t.set_text(r, c, fmt::format("{:06}@subtracted.mrcs", r + 1));
  }
  const auto path = dir / "subtracted.star";
  io::write_star(path, star);
  return path;
}

void pose_movement(const std::vector<em::Pose3D>& input, const std::vector<em::Pose3D>& refined, double pixel, std::vector<double>& degrees,
                   std::vector<double>& angstrom) {
  degrees.clear(), angstrom.clear();
  for (std::size_t p = 0; p < input.size() && p < refined.size(); ++p) {
    const auto& a = input[p];
    const auto& b = refined[p];
    degrees.push_back(geometry::rotation_angle_between(geometry::euler_to_matrix({a.rot, a.tilt, a.psi}),
                                                      geometry::euler_to_matrix({b.rot, b.tilt, b.psi})));
    angstrom.push_back(std::hypot(a.shift_x - b.shift_x, a.shift_y - b.shift_y) * pixel);
  }
}

}  // namespace emcryo::jobs::local_refine
