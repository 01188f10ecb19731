// The particle dataset: a RELION particles STAR (or a cryoSPARC particles .cs, seen as the STAR it
// converts to) joined with its optics groups and image stacks. It is the single input of every
// job; images are read lazily, in batches.
#pragma once
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "emcryo/image/ctf.hpp"
#include "emcryo/io/mrc.hpp"
#include "emcryo/io/star.hpp"

namespace emcryo::io {

struct OpticsGroup {
  int number = 1;  // rlnOpticsGroup (1-based)
  std::string name;
  double pixel_size = 0;  // Å
  int image_size = 0;
  double voltage = 300, cs = 2.7, amplitude_contrast = 0.1;
  bool ctf_premultiplied = false;
};

/// RELION's pose: Euler angles (degrees) and the origin shift in Å (rlnOriginX/YAngst; the image
/// is shifted by +origin to centre the particle).
struct Pose {
  double rot = 0, tilt = 0, psi = 0;
  double origin_x = 0, origin_y = 0;
};

struct ParticleReadOptions {
  /// .cs input: the folder blob/path is relative to (the cryoSPARC project folder). Empty: the
  /// first of the .cs file's parent folder, its own folder and the working directory that holds
  /// the first particle's stack.
  std::filesystem::path cs_root;
  /// Missing stacks are listed in missing_stacks() with a warning instead of failing (for
  /// summaries and conversions; such a set cannot read those images).
  bool allow_missing_stacks = false;
  /// No warning in the log for missing stacks (the caller reports them).
  bool quiet = false;
};

class ParticleSet {
 public:
  /// Reads a STAR file (RELION 2.x to 5) or a cryoSPARC .cs file (by the extension) and checks
  /// that every stack exists and every image index lies inside its stack. Errors name the file,
  /// the line (or record) and the column (or field).
  static ParticleSet read(const std::filesystem::path& path, const ParticleReadOptions& options = {});
  /// The same from a STAR already in memory; image paths resolve from star.path's folder.
  static ParticleSet from_star(StarFile star, const ParticleReadOptions& options = {});

  std::size_t size() const { return stack_of_.size(); }
  int box() const { return box_; }
  /// Pixel size of the first optics group (jobs require one pixel size).
  double pixel_size() const { return optics_.front().pixel_size; }
  const std::vector<OpticsGroup>& optics_groups() const { return optics_; }
  /// 0-based optics group index of particle i.
  int optics_index(std::size_t i) const { return optics_of_[i]; }

  bool has_ctf() const { return has_ctf_; }
  image::CtfParams ctf(std::size_t i) const;
  bool has_poses() const { return has_angles_; }
  bool has_origins() const { return has_origins_; }
  Pose pose(std::size_t i) const;
  /// rlnRandomSubset (1 or 2), 0 when absent.
  int random_subset(std::size_t i) const;
  /// Gold-standard half (1 or 2) for each of `particles`: rlnRandomSubset when every one of them
  /// has 1 or 2, else a balanced random split seeded by `seed`.
  std::vector<int> half_sets(const std::vector<std::size_t>& particles, std::uint64_t seed) const;
  /// rlnClassNumber, 0 when absent.
  int class_number(std::size_t i) const;

  /// Image i as float32 (box*box values).
  void read_image(std::size_t i, float* out) const;
  std::vector<float> read_image(std::size_t i) const;
  /// The image name as written in the STAR ("000012@Particles/stack.mrcs").
  std::string image_name(std::size_t i) const;
  /// The image name with its stack path as this program found it, relative to the working
  /// directory (RELION resolves from the project folder) or absolute when outside it. Jobs write
  /// this form so RELION finds the images from the same folder the job was run from.
  std::string portable_image_name(std::size_t i) const;

  /// A copy of the input STAR for a job's output: only `rows` (in that order), image names in the
  /// portable form, "# version 30001". Jobs then set their own columns on particles_table(copy).
  StarFile output_star(const std::vector<std::size_t>& rows) const;
  /// The particles loop of a STAR from output_star().
  static StarTable& particles_table(StarFile& star);

  /// Fails when a stack header's pixel size disagrees (> 1%) with the STAR's optics table.
  void check_pixel_size_against_stacks() const;

  const StarFile& star() const { return star_; }
  /// The particles table (a copy of which a job updates with new poses and writes out).
  const StarTable& table() const { return *particles_; }
  const std::filesystem::path& path() const { return path_; }
  /// Column labels present (for `emcryo info`).
  std::vector<std::string> metadata_present() const;
  std::size_t stack_count() const { return stacks_.size(); }
  /// Stacks that do not exist (only with ParticleReadOptions::allow_missing_stacks).
  const std::vector<std::filesystem::path>& missing_stacks() const { return missing_; }
  /// False when particle i's stack was not found (see missing_stacks()).
  bool image_available(std::size_t i) const { return !stack_missing_[stack_of_[i]]; }
  /// 0-based image index of particle i in its stack.
  std::int64_t index_in_stack(std::size_t i) const { return index_in_stack_[i]; }

 private:
  const MrcReader& reader(std::size_t stack) const;
  void read_optics(const StarBlock* optics, std::unordered_map<int, int>& index_of_number);
  void resolve_images(const ParticleReadOptions& options);
  void check_stacks(const std::vector<std::int64_t>& max_index, const std::vector<std::size_t>& row_of_max);
  void find_columns();
  void note_headers_without_pixel_size(const ParticleReadOptions& options) const;

  std::filesystem::path path_;
  StarFile star_;
  const StarTable* particles_ = nullptr;
  std::vector<OpticsGroup> optics_;
  std::vector<int> optics_of_;
  std::vector<std::filesystem::path> stacks_;
  std::vector<std::filesystem::path> missing_;
  std::vector<bool> stack_missing_;
  std::vector<std::uint32_t> stack_of_;
  std::vector<std::int64_t> index_in_stack_;  // 0-based
  int box_ = 0;
  bool has_ctf_ = false, has_angles_ = false, has_origins_ = false;
  bool origins_in_pixels_ = false;
  // Column indices (-1 when absent).
  int c_du_ = -1, c_dv_ = -1, c_dang_ = -1, c_bfac_ = -1, c_scale_ = -1, c_phase_ = -1, c_volt_ = -1,
      c_cs_ = -1, c_q0_ = -1, c_rot_ = -1, c_tilt_ = -1, c_psi_ = -1, c_ox_ = -1, c_oy_ = -1,
      c_subset_ = -1, c_class_ = -1, c_image_ = -1;
  mutable std::vector<std::unique_ptr<MrcReader>> readers_;
  mutable std::unique_ptr<std::mutex> readers_mutex_ = std::make_unique<std::mutex>();
};

}  // namespace emcryo::io
