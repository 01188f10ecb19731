// cryoSPARC particle records <-> RELION 3.1 particle tables. The conventions (pose rotation
// transposed with respect to RELION's matrix, shifts in pixels with RELION's sign, radians,
// 0-based indices and classes, the '>' path prefix) are documented in docs/formats.md.
#pragma once
#include <filesystem>

#include "emcryo/geometry/rotation.hpp"
#include "emcryo/io/cs.hpp"
#include "emcryo/io/star.hpp"

namespace emcryo::io {

class ParticleSet;

/// RELION Euler angles (degrees) of a cryoSPARC alignments3D/pose (rotation vector, radians).
geometry::Euler euler_from_cs_pose(const geometry::Vec3& pose);
/// The cryoSPARC pose (rotation vector, radians) of RELION Euler angles (degrees).
geometry::Vec3 cs_pose_from_euler(const geometry::Euler& euler);

/// blob/path without cryoSPARC's leading '>' (which marks a path relative to the project folder).
std::string cs_blob_path(std::string_view stored);

/// A RELION 3.1 particle STAR (data_optics + data_particles) from cryoSPARC particle records.
/// Image names are "N@<image_root>/<blob/path>" (image_root may be empty: the path as stored).
/// Fails with "<file>: ..." when blob/path or blob/idx is missing.
StarFile star_from_cs(const CsTable& cs, const std::filesystem::path& image_root);

/// cryoSPARC particle records for a particle set: blob/*, ctf/* and alignments3D/* (or
/// alignments2D/* when the set has an in-plane angle only). Uids come from a ucsfUid column when
/// present, else they are derived from the row number.
CsTable cs_from_particles(const ParticleSet& set);

/// Writes particles.cs for a particle STAR as a job writes it (stacks need not exist).
void write_particles_cs(const std::filesystem::path& path, const StarFile& star);

/// `emcryo convert`: a particle STAR to a .cs or back, formats from the extensions. cs_root is
/// put before blob paths when a .cs becomes a STAR (empty: the paths as stored, without '>').
/// Returns the number of particles written.
std::size_t convert_particles(const std::filesystem::path& in, const std::filesystem::path& out,
                              const std::filesystem::path& cs_root = {});

}  // namespace emcryo::io
