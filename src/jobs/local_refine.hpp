// `emcryo local-refine`'s choices on top of refine (private to jobs/refine): the fulcrum frame,
// the input poses, the subtraction of the map outside the mask, and how far poses moved.
#pragma once
#include <filesystem>
#include <string>
#include <vector>

#include "emcryo/em/model3d.hpp"
#include "emcryo/geometry/rotation.hpp"
#include "emcryo/io/particles.hpp"

namespace emcryo::jobs::local_refine {

/// Rotations about the fulcrum f (px from the box centre) are rotations about the origin of the
/// map moved by -f, V_f(x) = V(x + f). A particle's pose (A, displacement s) for V is the pose
/// (A, s + (A f)_xy) for V_f, so the search runs on V_f with the engine's rotations about the
/// origin, and poses and maps are moved back at the end.
struct Frame {
  geometry::Vec3 fulcrum{0, 0, 0};  // px
  em::Pose3D to_fulcrum(em::Pose3D pose) const;
  em::Pose3D from_fulcrum(em::Pose3D pose) const;
  /// A hypothesis kept for --save-posteriors, back in the input frame like its pose.
  em::Hypothesis from_fulcrum(em::Hypothesis hypothesis) const;
  /// V_f from V (sign -1) or V from V_f (sign +1): the map moved by sign * f (Fourier shift).
  std::vector<float> move(const std::vector<float>& map, int n, int sign) const;
};

/// The fulcrum: `fulcrum_angstrom` (x, y, z from the box centre) or the mask's centre of mass.
Frame make_frame(const std::vector<double>& fulcrum_angstrom, const std::vector<float>& mask, int n, double pixel);

/// Each particle's input pose (displacement in px), failing with the file's name when the STAR
/// has no angles.
std::vector<em::Pose3D> input_poses(const io::ParticleSet& set, const std::vector<std::size_t>& active, const std::string& source);

/// Writes subtracted.mrcs and subtracted.star into dir: each particle minus a * CTF * P_A[map
/// outside the mask] at its input pose, a fitted by least squares of the whole map's projections
/// to the images (the reference need not be on the data's grey scale). Returns the STAR's path.
std::filesystem::path subtract_outside_mask(const io::ParticleSet& set, const std::vector<float>& reference, const std::vector<float>& mask,
                                            bool use_ctf, const std::filesystem::path& dir);

/// Degrees and Å between each input pose and its refined one (both in the particle's frame).
void pose_movement(const std::vector<em::Pose3D>& input, const std::vector<em::Pose3D>& refined, double pixel, std::vector<double>& degrees,
                   std::vector<double>& angstrom);

}  // namespace emcryo::jobs::local_refine
