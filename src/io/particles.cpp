#include "emcryo/io/particles.hpp"

#include <algorithm>
#include <charconv>
#include <numeric>
#include <cmath>
#include <unordered_map>

#include "emcryo/core/error.hpp"
#include "emcryo/core/log.hpp"
#include "emcryo/core/random.hpp"
#include "emcryo/io/cs_particles.hpp"

namespace emcryo::io {

namespace fs = std::filesystem;

namespace {

// A value a job computes with: NaN or Inf would poison maps or index grids, so it is refused
// where it is read, with its line.
void require_finite(const StarTable& t, std::size_t row, int column, double value, const fs::path& star) {
  if (!std::isfinite(value))
    fail("{}:{}: column {}: '{}' is not a finite number", star.string(), t.line_of(row),
         t.column_names()[static_cast<std::size_t>(column)], excerpt(t.text(row, column)));
}

double finite_number(const StarTable& t, std::size_t row, int column, const fs::path& star) {
  const double value = t.number(row, column);
  require_finite(t, row, column, value, star);
  return value;
}

// Where the stack of "N@path" is: the STAR file's folder first, then the working directory.
// Errors from the file system (a name too long, a loop of links) count as "not found".
fs::path resolve_stack(const std::string& file, const fs::path& folder) {
  std::error_code ec;
  const fs::path beside_star = fs::path(file).is_absolute() ? fs::path(file) : folder / file;
  if (fs::exists(beside_star, ec)) return beside_star;
  if (fs::exists(file, ec)) return file;
  return beside_star;
}

// The particles table: data_particles (3.1 and later), else the first loop with rlnImageName
// (2.x, 3.0 and other writers, also when a data_particles block lacks rlnImageName). One rule
// for reading and for output_star(), so both always mean the same table.
template <typename Star>
auto* particles_block(Star& star) {
  auto* found = star.find_block("particles");
  if (found != nullptr && found->table.has("rlnImageName")) return found;
  for (auto& block : star.blocks)
    if (block.is_loop && block.table.has("rlnImageName")) return &block;
  return found;
}

// The first of the candidate roots under which `blob` exists; the first candidate when none does
// (the missing stack is then reported by the normal check).
fs::path guess_cs_root(const fs::path& cs_path, const std::string& blob) {
  const fs::path folder = fs::absolute(cs_path).parent_path();
  const std::vector<fs::path> candidates{folder.parent_path(), folder, fs::current_path()};
  for (const fs::path& root : candidates)
    if (fs::exists(root / blob)) return root;
  return candidates.front();
}

StarFile star_from_cs_file(const fs::path& path, const ParticleReadOptions& options) {
  const CsTable cs = read_cs(path);
  if (cs.rows() == 0) fail("{}: no particles", path.string());
  const int c_path = cs.find("blob/path");
  fs::path root = options.cs_root;
  if (root.empty() && c_path >= 0) root = guess_cs_root(path, cs_blob_path(cs.text(0, c_path)));
  return star_from_cs(cs, fs::absolute(root));
}

}  // namespace

ParticleSet ParticleSet::read(const fs::path& path, const ParticleReadOptions& options) {
  if (path.extension() == ".cs" || path.extension() == ".npy") return from_star(star_from_cs_file(path, options), options);
  return from_star(read_star(path), options);
}

ParticleSet ParticleSet::from_star(StarFile star_file, const ParticleReadOptions& options) {
  ParticleSet set;
  set.path_ = star_file.path;
  set.star_ = std::move(star_file);
  const StarFile& star = set.star_;
  const fs::path& star_path = set.path_;
  const StarBlock* particles = particles_block(star);
  const StarBlock* optics = star.find_block("optics");
  if (!particles) fail("{}: no particles table (data_particles with rlnImageName)", star_path.string());
  set.particles_ = &particles->table;
  const StarTable& t = particles->table;
  if (t.rows() == 0) fail("{}: data_{}: no particles", star_path.string(), particles->name);
  set.c_image_ = t.require("rlnImageName");

  std::unordered_map<int, int> optics_index_of_number;
  set.read_optics(optics, optics_index_of_number);
  const int c_group = t.find("rlnOpticsGroup");
  set.optics_of_.resize(t.rows(), 0);
  if (c_group >= 0 && optics && optics->table.rows() > 0) {
    for (std::size_t r = 0; r < t.rows(); ++r) {
      const int g = static_cast<int>(t.integer(r, c_group));
      auto it = optics_index_of_number.find(g);
      if (it == optics_index_of_number.end())
        fail("{}:{}: column rlnOpticsGroup: group {} is not in data_optics", star_path.string(), t.line_of(r), g);
      set.optics_of_[r] = it->second;
    }
  }
  set.resolve_images(options);
  for (auto& g : set.optics_) {
    if (g.image_size == 0) g.image_size = set.box_;
    if (g.pixel_size <= 0) {
      const auto first = std::find(set.stack_missing_.begin(), set.stack_missing_.end(), false);
      if (first != set.stack_missing_.end())
        g.pixel_size = set.reader(static_cast<std::size_t>(first - set.stack_missing_.begin())).pixel_size();
      if (g.pixel_size <= 0)
        fail("{}: no pixel size (rlnImagePixelSize in data_optics, or the stack header)", star_path.string());
    }
  }
  if (set.box_ == 0) set.box_ = set.optics_.front().image_size;
  set.note_headers_without_pixel_size(options);
  set.find_columns();
  return set;
}

// Optics groups: from data_optics (3.1 and later) or one implicit group from per-particle
// columns (2.x and 3.0, where the pixel size may be detector pixel / magnification).
void ParticleSet::read_optics(const StarBlock* optics, std::unordered_map<int, int>& optics_index_of_number) {
  const std::string file = path_.string();
  if (optics && optics->table.rows() > 0) {
    const StarTable& o = optics->table;
    const int c_num = o.require("rlnOpticsGroup");
    const int c_pix = o.find("rlnImagePixelSize");
    const int c_size = o.find("rlnImageSize");
    const int c_volt = o.find("rlnVoltage"), c_cs = o.find("rlnSphericalAberration"),
              c_q0 = o.find("rlnAmplitudeContrast"), c_name = o.find("rlnOpticsGroupName"),
              c_pre = o.find("rlnCtfDataAreCtfPremultiplied");
    for (std::size_t r = 0; r < o.rows(); ++r) {
      OpticsGroup g;
      g.number = static_cast<int>(o.integer(r, c_num));
      g.name = c_name >= 0 ? std::string(o.text(r, c_name)) : "opticsGroup" + std::to_string(g.number);
      g.pixel_size = c_pix >= 0 ? finite_number(o, r, c_pix, path_) : 0;
      g.image_size = c_size >= 0 ? static_cast<int>(o.integer(r, c_size)) : 0;
      if (c_volt >= 0) g.voltage = finite_number(o, r, c_volt, path_);
      if (c_cs >= 0) g.cs = finite_number(o, r, c_cs, path_);
      if (c_q0 >= 0) g.amplitude_contrast = finite_number(o, r, c_q0, path_);
      if (c_pre >= 0) g.ctf_premultiplied = o.integer(r, c_pre) != 0;
      if (g.pixel_size <= 0 && c_pix >= 0)
        fail("{}:{}: data_optics: column rlnImagePixelSize: must be positive", file, o.line_of(r));
      optics_index_of_number[g.number] = static_cast<int>(optics_.size());
      optics_.push_back(g);
    }
    return;
  }
  const StarTable& t = *particles_;
  OpticsGroup g;
  g.name = "opticsGroup1";
  if (int c = t.find("rlnImagePixelSize"); c >= 0) g.pixel_size = t.number(0, c);
  else if (t.has("rlnDetectorPixelSize") && t.has("rlnMagnification"))
    g.pixel_size = t.number(0, t.find("rlnDetectorPixelSize")) * 1e4 / t.number(0, t.find("rlnMagnification"));
  if (!std::isfinite(g.pixel_size) || g.pixel_size < 0)
    fail("{}:{}: pixel size {} from rlnImagePixelSize or rlnDetectorPixelSize / rlnMagnification is not a "
         "positive number", file, t.line_of(0), g.pixel_size);
  if (int c = t.find("rlnVoltage"); c >= 0) g.voltage = finite_number(t, 0, c, path_);
  if (int c = t.find("rlnSphericalAberration"); c >= 0) g.cs = finite_number(t, 0, c, path_);
  if (int c = t.find("rlnAmplitudeContrast"); c >= 0) g.amplitude_contrast = finite_number(t, 0, c, path_);
  optics_index_of_number[1] = 0;
  optics_.push_back(g);
}

// Images: "N@path", path relative to the STAR file's folder (then to the working directory,
// as RELION resolves project-relative paths).
void ParticleSet::resolve_images(const ParticleReadOptions& options) {
  const StarTable& t = *particles_;
  const std::string file = path_.string();
  const fs::path folder = path_.parent_path();
  std::unordered_map<std::string, std::uint32_t> stack_id;
  stack_of_.resize(t.rows());
  index_in_stack_.resize(t.rows());
  std::vector<std::int64_t> max_index;
  std::vector<std::size_t> row_of_max;
  for (std::size_t r = 0; r < t.rows(); ++r) {
    const std::string_view name = t.text(r, c_image_);
    const auto at = name.find('@');
    if (at == std::string_view::npos || at == 0)
      fail("{}:{}: column rlnImageName: '{}' is not of the form N@stack.mrcs", file, t.line_of(r), excerpt(name));
    std::int64_t index = 0;
    auto [p, ec] = std::from_chars(name.data(), name.data() + at, index);
    if (ec != std::errc() || p != name.data() + at || index < 1)
      fail("{}:{}: column rlnImageName: '{}' has no valid image number", file, t.line_of(r), excerpt(name));
    std::string stack(name.substr(at + 1));
    if (stack.empty())
      fail("{}:{}: column rlnImageName: '{}' names no stack file after '@'", file, t.line_of(r), excerpt(name));
    auto [it, inserted] = stack_id.try_emplace(stack, static_cast<std::uint32_t>(stacks_.size()));
    if (inserted) {
      const fs::path resolved = resolve_stack(stack, folder);
      std::error_code not_found;
      const bool missing = !fs::exists(resolved, not_found);
      if (missing && !options.allow_missing_stacks)
        fail("{}:{}: column rlnImageName: stack file '{}' not found", file, t.line_of(r),
             excerpt(resolved.string(), 200));
      if (missing) missing_.push_back(resolved);
      stacks_.push_back(resolved);
      stack_missing_.push_back(missing);
      max_index.push_back(0);
      row_of_max.push_back(r);
    }
    stack_of_[r] = it->second;
    index_in_stack_[r] = index - 1;
    if (index > max_index[it->second]) {
      max_index[it->second] = index;
      row_of_max[it->second] = r;
    }
  }
  if (!missing_.empty() && !options.quiet) {
    std::string list;
    for (std::size_t s = 0; s < missing_.size() && s < 5; ++s)
      list += (s ? ", " : "") + excerpt(missing_[s].string(), 200);
    log::warn("{}: {} of {} stacks not found: {}{}", file, missing_.size(), stacks_.size(), list,
              missing_.size() > 5 ? ", ..." : "");
  }
  readers_.resize(stacks_.size());
  check_stacks(max_index, row_of_max);
}

void ParticleSet::check_stacks(const std::vector<std::int64_t>& max_index, const std::vector<std::size_t>& row_of_max) {
  int first = -1;
  for (std::size_t s = 0; s < stacks_.size(); ++s) {
    if (stack_missing_[s]) continue;
    const MrcReader& reader = [&]() -> const MrcReader& {
      try {
        return this->reader(s);
      } catch (const Error& e) {  // say which row named the stack
        fail("{}:{}: column rlnImageName: {}", path_.string(), particles_->line_of(row_of_max[s]), e.what());
      }
    }();
    if (max_index[s] > reader.nz())
      fail("{}:{}: column rlnImageName: image {} is beyond the end of {} ({} images)", path_.string(),
           particles_->line_of(row_of_max[s]), max_index[s], stacks_[s].string(), reader.nz());
    if (reader.nx() != reader.ny())
      fail("{}: images are {}x{}; square images are required", stacks_[s].string(), reader.nx(), reader.ny());
    // Every job works on the Fourier half grid of an even box centred at N/2, as RELION does.
    if (reader.nx() % 2 != 0 || reader.nx() < 8)
      fail("{}: images are {}x{} px; an even box of at least 8 px is required", stacks_[s].string(), reader.nx(),
           reader.ny());
    if (first < 0) {
      first = static_cast<int>(s);
      box_ = reader.nx();
    } else if (reader.nx() != box_) {
      fail("{}: box {} differs from {} in {}", stacks_[s].string(), reader.nx(), box_,
           stacks_[static_cast<std::size_t>(first)].string());
    }
  }
}

// Many writers leave the cell at 0; the STAR's pixel size is then the only one, which is fine
// but worth a line in the log, once.
void ParticleSet::note_headers_without_pixel_size(const ParticleReadOptions& options) const {
  if (options.quiet) return;
  for (std::size_t s = 0; s < stacks_.size(); ++s) {
    if (stack_missing_[s] || reader(s).pixel_size() > 0) continue;
    log::info("{}: no pixel size in the MRC header (cell 0); using {:.4f} Å from {}", stacks_[s].string(),
              optics_.front().pixel_size, path_.string());
    return;
  }
}

void ParticleSet::find_columns() {
  const StarTable& t = *particles_;
  c_du_ = t.find("rlnDefocusU");
  c_dv_ = t.find("rlnDefocusV");
  c_dang_ = t.find("rlnDefocusAngle");
  c_bfac_ = t.find("rlnCtfBfactor");
  c_scale_ = t.find("rlnCtfScalefactor");
  c_phase_ = t.find("rlnPhaseShift");
  c_volt_ = t.find("rlnVoltage");
  c_cs_ = t.find("rlnSphericalAberration");
  c_q0_ = t.find("rlnAmplitudeContrast");
  has_ctf_ = c_du_ >= 0;
  c_rot_ = t.find("rlnAngleRot");
  c_tilt_ = t.find("rlnAngleTilt");
  c_psi_ = t.find("rlnAnglePsi");
  has_angles_ = c_rot_ >= 0 && c_tilt_ >= 0 && c_psi_ >= 0;
  c_ox_ = t.find("rlnOriginXAngst");
  c_oy_ = t.find("rlnOriginYAngst");
  if (c_ox_ < 0 && t.has("rlnOriginX")) {
    c_ox_ = t.find("rlnOriginX");
    c_oy_ = t.find("rlnOriginY");
    origins_in_pixels_ = true;
  }
  has_origins_ = c_ox_ >= 0 && c_oy_ >= 0;
  c_subset_ = t.find("rlnRandomSubset");
  c_class_ = t.find("rlnClassNumber");
  // Parse every numeric column a job will use once now, so a bad value fails before any work.
  for (int c : {c_du_, c_dv_, c_dang_, c_bfac_, c_scale_, c_phase_, c_volt_, c_cs_, c_q0_, c_rot_, c_tilt_, c_psi_,
                c_ox_, c_oy_}) {
    if (c < 0) continue;
    const std::vector<double> values = t.numbers(c);
    for (std::size_t r = 0; r < values.size(); ++r) require_finite(t, r, c, values[r], path_);
  }
  for (int c : {c_subset_, c_class_})  // read as integers by random_subset(), class_number()
    if (c >= 0)
      for (std::size_t r = 0; r < t.rows(); ++r) (void)t.integer(r, c);
  if (has_ctf_ && c_dv_ < 0) fail("{}: data_particles: rlnDefocusU without rlnDefocusV", path_.string());
}

const MrcReader& ParticleSet::reader(std::size_t stack) const {
  if (stack_missing_[stack]) fail("{}: stack not found", stacks_[stack].string());
  std::lock_guard lock(*readers_mutex_);
  if (!readers_[stack]) readers_[stack] = std::make_unique<MrcReader>(stacks_[stack]);
  return *readers_[stack];
}

image::CtfParams ParticleSet::ctf(std::size_t i) const {
  const StarTable& t = *particles_;
  const OpticsGroup& g = optics_[static_cast<std::size_t>(optics_of_[i])];
  image::CtfParams p;
  p.voltage = c_volt_ >= 0 ? t.number(i, c_volt_) : g.voltage;
  p.cs = c_cs_ >= 0 ? t.number(i, c_cs_) : g.cs;
  p.amplitude_contrast = c_q0_ >= 0 ? t.number(i, c_q0_) : g.amplitude_contrast;
  if (c_du_ >= 0) {
    p.defocus_u = t.number(i, c_du_);
    p.defocus_v = t.number(i, c_dv_);
  }
  p.defocus_angle = c_dang_ >= 0 ? t.number(i, c_dang_) : 0;
  p.bfactor = c_bfac_ >= 0 ? t.number(i, c_bfac_) : 0;
  p.scale = c_scale_ >= 0 ? t.number(i, c_scale_) : 1;
  p.phase_shift = c_phase_ >= 0 ? t.number(i, c_phase_) : 0;
  return p;
}

Pose ParticleSet::pose(std::size_t i) const {
  const StarTable& t = *particles_;
  Pose p;
  if (has_angles_) {
    p.rot = t.number(i, c_rot_);
    p.tilt = t.number(i, c_tilt_);
    p.psi = t.number(i, c_psi_);
  } else if (c_psi_ >= 0) {
    p.psi = t.number(i, c_psi_);
  }
  if (has_origins_) {
    const double scale = origins_in_pixels_ ? optics_[static_cast<std::size_t>(optics_of_[i])].pixel_size : 1.0;
    p.origin_x = t.number(i, c_ox_) * scale;
    p.origin_y = t.number(i, c_oy_) * scale;
  }
  return p;
}

int ParticleSet::random_subset(std::size_t i) const {
  return c_subset_ >= 0 ? static_cast<int>(particles_->integer(i, c_subset_)) : 0;
}

std::vector<int> ParticleSet::half_sets(const std::vector<std::size_t>& particles, std::uint64_t seed) const {
  std::vector<int> half(particles.size());
  bool from_star = true;
  for (std::size_t a = 0; a < particles.size(); ++a) {
    half[a] = random_subset(particles[a]);
    if (half[a] != 1 && half[a] != 2) from_star = false;
  }
  if (!from_star) {
    std::vector<std::size_t> order(particles.size());
    std::iota(order.begin(), order.end(), 0);
    auto rng = item_rng(seed, 0xa11);
    std::shuffle(order.begin(), order.end(), rng);
    for (std::size_t k = 0; k < order.size(); ++k) half[order[k]] = k % 2 ? 2 : 1;
  }
  return half;
}

int ParticleSet::class_number(std::size_t i) const {
  return c_class_ >= 0 ? static_cast<int>(particles_->integer(i, c_class_)) : 0;
}

void ParticleSet::read_image(std::size_t i, float* out) const {
  reader(stack_of_[i]).read_sections(index_in_stack_[i], 1, out);
}

std::vector<float> ParticleSet::read_image(std::size_t i) const {
  std::vector<float> out(static_cast<std::size_t>(box_) * box_);
  read_image(i, out.data());
  return out;
}

std::string ParticleSet::image_name(std::size_t i) const { return std::string(particles_->text(i, c_image_)); }

std::string ParticleSet::portable_image_name(std::size_t i) const {
  const fs::path& stack = stacks_[stack_of_[i]];
  std::error_code ec;
  const fs::path absolute = fs::weakly_canonical(fs::absolute(stack), ec);
  const fs::path cwd = fs::current_path(ec);
  fs::path shown = absolute;
  const auto relative = absolute.lexically_relative(cwd);
  if (!relative.empty() && *relative.begin() != "..") shown = relative;
  return fmt::format("{:06}@{}", index_in_stack_[i] + 1, shown.string());
}

StarTable& ParticleSet::particles_table(StarFile& star) {
  if (StarBlock* block = particles_block(star)) return block->table;
  fail("{}: no particles table", star.path.string());
}

StarFile ParticleSet::output_star(const std::vector<std::size_t>& rows) const {
  StarFile out = star_;
  StarTable& t = particles_table(out);
  t.select_rows(rows);
  const int c_name = t.require("rlnImageName");
  for (std::size_t r = 0; r < rows.size(); ++r) t.set_text(r, c_name, portable_image_name(rows[r]));
  if (out.version == 0) out.version = 30001;
  return out;
}

void ParticleSet::check_pixel_size_against_stacks() const {
  for (std::size_t s = 0; s < stacks_.size(); ++s) {
    if (stack_missing_[s]) continue;
    const double header = reader(s).pixel_size();
    const double star = optics_.front().pixel_size;
    // Many writers leave the cell at 0 or at 1 Å per pixel; only a set, different value is a conflict.
    if (header > 0 && std::abs(header - 1.0) > 1e-6 && std::abs(header - star) > 0.01 * star)
      fail("{}: pixel size {:.4f} Å in the stack header disagrees with rlnImagePixelSize {:.4f} Å in {}",
           stacks_[s].string(), header, star, path_.string());
  }
}

std::vector<std::string> ParticleSet::metadata_present() const { return particles_->column_names(); }

}  // namespace emcryo::io
