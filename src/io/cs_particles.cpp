#include "emcryo/io/cs_particles.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>
#include <numbers>

#include "emcryo/core/error.hpp"
#include "emcryo/core/random.hpp"
#include "emcryo/io/particles.hpp"

namespace emcryo::io {

namespace fs = std::filesystem;

namespace {

constexpr double kDegPerRad = 180.0 / std::numbers::pi;

// One set of alignment fields: alignments3D/, alignments2D/ or alignments_class_K/.
struct CsAlignment {
  int pose = -1, shift = -1, psize = -1, cls = -1, split = -1, posterior = -1;
  bool is_3d = true;
  int class_index = -1;  // K of alignments_class_K (a 3D classification's per-class results)

  CsAlignment(const CsTable& t, const std::string& prefix, bool three_d, int k)
      : pose(t.find(prefix + "pose")), shift(t.find(prefix + "shift")), psize(t.find(prefix + "psize_A")),
        cls(t.find(prefix + "class")), split(t.find(prefix + "split")), posterior(t.find(prefix + "class_posterior")),
        is_3d(three_d), class_index(k) {}
};

// What a cryoSPARC particle record holds that a RELION table needs, located once.
struct CsParticleFields {
  int path = -1, idx = -1, shape = -1, psize = -1, uid = -1;
  int group = -1, kv = -1, cs = -1, ac = -1, df1 = -1, df2 = -1, dang = -1, phase = -1, bfac = -1, scale = -1;
  std::vector<CsAlignment> alignments;  // empty: no poses; several: one per class, the most probable wins

  explicit CsParticleFields(const CsTable& t) {
    path = t.find("blob/path");
    idx = t.find("blob/idx");
    if (path < 0 || idx < 0)
      fail("{}: no blob/path and blob/idx fields: not a particle .cs file (a passthrough file holds "
           "only some fields; give the main particles .cs)",
           t.source_file);
    shape = t.find("blob/shape");
    psize = t.find("blob/psize_A");
    uid = t.find("uid");
    group = t.find("ctf/exp_group_id");
    kv = t.find("ctf/accel_kv");
    cs = t.find("ctf/cs_mm");
    ac = t.find("ctf/amp_contrast");
    df1 = t.find("ctf/df1_A");
    df2 = t.find("ctf/df2_A");
    dang = t.find("ctf/df_angle_rad");
    phase = t.find("ctf/phase_shift_rad");
    bfac = t.find("ctf/bfactor");
    scale = t.find("ctf/scale");
    // A 3D result takes precedence over per-class results and over a 2D classification carried
    // along in the same file.
    if (t.has("alignments3D/pose")) {
      alignments.emplace_back(t, "alignments3D/", true, -1);
      return;
    }
    for (int k = 0; t.has(fmt::format("alignments_class_{}/pose", k)); ++k)
      alignments.emplace_back(t, fmt::format("alignments_class_{}/", k), true, k);
    if (alignments.empty() && t.has("alignments2D/pose")) alignments.emplace_back(t, "alignments2D/", false, -1);
  }

  // The alignment of record r: the only one, or the class with the highest class_posterior.
  const CsAlignment* alignment_of(const CsTable& t, std::size_t r) const {
    if (alignments.empty()) return nullptr;
    const CsAlignment* best = &alignments.front();
    for (const CsAlignment& a : alignments)
      if (a.posterior >= 0 && best->posterior >= 0 && t.number(r, a.posterior) > t.number(r, best->posterior)) best = &a;
    return best;
  }
};

void set_cell(StarTable& t, std::size_t row, std::string_view label, double value) {
  t.set_number(row, t.add_column(label), value);
}

StarTable optics_from_cs(const CsTable& cs, const CsParticleFields& f, std::map<std::uint64_t, std::size_t>& first_row) {
  StarTable o;
  o.block_name = "optics";
  for (std::size_t r = 0; r < cs.rows(); ++r)
    first_row.try_emplace(f.group >= 0 ? cs.integer(r, f.group) : 0, r);
  for (const auto& [group, r] : first_row) {
    const std::size_t row = o.add_row();
    o.set_integer(row, o.add_column("rlnOpticsGroup"), static_cast<std::int64_t>(group) + 1);
    o.set_text(row, o.add_column("rlnOpticsGroupName"), fmt::format("opticsGroup{}", group + 1));
    if (f.psize >= 0) set_cell(o, row, "rlnImagePixelSize", cs.number(r, f.psize));
    if (f.shape >= 0) o.set_integer(row, o.add_column("rlnImageSize"), static_cast<std::int64_t>(cs.integer(r, f.shape)));
    o.set_integer(row, o.add_column("rlnImageDimensionality"), 2);
    if (f.kv >= 0) set_cell(o, row, "rlnVoltage", cs.number(r, f.kv));
    if (f.cs >= 0) set_cell(o, row, "rlnSphericalAberration", cs.number(r, f.cs));
    if (f.ac >= 0) set_cell(o, row, "rlnAmplitudeContrast", cs.number(r, f.ac));
  }
  return o;
}

void ctf_to_star(const CsTable& cs, const CsParticleFields& f, std::size_t r, StarTable& t, std::size_t row) {
  if (f.df1 >= 0) set_cell(t, row, "rlnDefocusU", cs.number(r, f.df1));
  if (f.df2 >= 0) set_cell(t, row, "rlnDefocusV", cs.number(r, f.df2));
  if (f.dang >= 0) set_cell(t, row, "rlnDefocusAngle", cs.number(r, f.dang) * kDegPerRad);
  if (f.phase >= 0) set_cell(t, row, "rlnPhaseShift", cs.number(r, f.phase) * kDegPerRad);
  if (f.bfac >= 0) set_cell(t, row, "rlnCtfBfactor", cs.number(r, f.bfac));
  if (f.scale >= 0) set_cell(t, row, "rlnCtfScalefactor", cs.number(r, f.scale));
}

void pose_to_star(const CsTable& cs, const CsParticleFields& f, std::size_t r, StarTable& t, std::size_t row) {
  const CsAlignment* a = f.alignment_of(cs, r);
  if (!a || a->pose < 0) return;
  if (a->is_3d) {
    const geometry::Euler e =
        euler_from_cs_pose({cs.number(r, a->pose, 0), cs.number(r, a->pose, 1), cs.number(r, a->pose, 2)});
    set_cell(t, row, "rlnAngleRot", e.rot);
    set_cell(t, row, "rlnAngleTilt", e.tilt);
    set_cell(t, row, "rlnAnglePsi", e.psi);
  } else {
    set_cell(t, row, "rlnAnglePsi", cs.number(r, a->pose) * kDegPerRad);
  }
  if (a->shift >= 0) {
    const int p = a->psize >= 0 ? a->psize : f.psize;
    if (p < 0) fail("{}: record {}: shifts without a pixel size (blob/psize_A)", cs.source_file, r);
    set_cell(t, row, "rlnOriginXAngst", cs.number(r, a->shift, 0) * cs.number(r, p));
    set_cell(t, row, "rlnOriginYAngst", cs.number(r, a->shift, 1) * cs.number(r, p));
  }
  const std::int64_t cls = a->class_index >= 0 ? a->class_index : a->cls >= 0 ? static_cast<std::int64_t>(cs.integer(r, a->cls)) : -1;
  if (cls >= 0) t.set_integer(row, t.add_column("rlnClassNumber"), cls + 1);
  if (a->split >= 0) t.set_integer(row, t.add_column("rlnRandomSubset"), static_cast<std::int64_t>(cs.integer(r, a->split)) + 1);
}

}  // namespace

geometry::Euler euler_from_cs_pose(const geometry::Vec3& pose) {
  // cryoSPARC's rotation maps the particle frame to the map frame: RELION's matrix transposed.
  return geometry::matrix_to_euler(geometry::transpose(geometry::rotation_from_vector(pose)));
}

geometry::Vec3 cs_pose_from_euler(const geometry::Euler& euler) {
  return geometry::rotation_vector(geometry::transpose(geometry::euler_to_matrix(euler)));
}

std::string cs_blob_path(std::string_view stored) {
  if (!stored.empty() && stored.front() == '>') stored.remove_prefix(1);
  return std::string(stored);
}

StarFile star_from_cs(const CsTable& cs, const fs::path& image_root) {
  const CsParticleFields f(cs);
  StarFile star;
  star.path = cs.source_file;
  star.version = 30001;
  std::map<std::uint64_t, std::size_t> first_row;
  StarBlock optics{"optics", true, optics_from_cs(cs, f, first_row)};
  StarBlock particles{"particles", true, {}};
  StarTable& t = particles.table;
  t.block_name = "particles";
  t.source_file = optics.table.source_file = cs.source_file;
  for (std::size_t r = 0; r < cs.rows(); ++r) {
    const std::size_t row = t.add_row();
    const fs::path stack = image_root.empty() ? fs::path(cs_blob_path(cs.text(r, f.path)))
                                              : image_root / cs_blob_path(cs.text(r, f.path));
    t.set_text(row, t.add_column("rlnImageName"), fmt::format("{:06}@{}", cs.integer(r, f.idx) + 1, stack.string()));
    t.set_integer(row, t.add_column("rlnOpticsGroup"),
                  f.group >= 0 ? static_cast<std::int64_t>(cs.integer(r, f.group)) + 1 : 1);
    ctf_to_star(cs, f, r, t, row);
    pose_to_star(cs, f, r, t, row);
    // Kept so that a .cs -> STAR -> .cs round trip gives cryoSPARC its own particle ids back.
    if (f.uid >= 0) t.set_text(row, t.add_column("ucsfUid"), std::to_string(cs.integer(r, f.uid)));
  }
  star.blocks.push_back(std::move(optics));
  star.blocks.push_back(std::move(particles));
  return star;
}

namespace {

struct CsOutFields {
  int uid, path, idx, shape, psize, group;
  int kv = -1, cs = -1, ac = -1, df1 = -1, df2 = -1, dang = -1, phase = -1, bfac = -1, scale = -1;
  int pose = -1, shift = -1, align_psize = -1, cls = -1, split = -1;
};

CsOutFields layout_cs(CsTable& cs, const ParticleSet& set, std::size_t path_bytes) {
  CsOutFields f{};
  f.uid = cs.add_field("uid", "<u8");
  f.path = cs.add_field("blob/path", fmt::format("|S{}", std::max<std::size_t>(path_bytes, 1)));
  f.idx = cs.add_field("blob/idx", "<u4");
  f.shape = cs.add_field("blob/shape", "<u4", {2});
  f.psize = cs.add_field("blob/psize_A", "<f4");
  f.group = cs.add_field("ctf/exp_group_id", "<u4");
  f.kv = cs.add_field("ctf/accel_kv", "<f4");
  f.cs = cs.add_field("ctf/cs_mm", "<f4");
  f.ac = cs.add_field("ctf/amp_contrast", "<f4");
  if (set.has_ctf()) {
    f.df1 = cs.add_field("ctf/df1_A", "<f4");
    f.df2 = cs.add_field("ctf/df2_A", "<f4");
    f.dang = cs.add_field("ctf/df_angle_rad", "<f4");
    f.phase = cs.add_field("ctf/phase_shift_rad", "<f4");
    f.bfac = cs.add_field("ctf/bfactor", "<f4");
    f.scale = cs.add_field("ctf/scale", "<f4");
  }
  const bool psi_only = !set.has_poses() && set.table().has("rlnAnglePsi");
  if (set.has_poses() || psi_only) {
    const std::string prefix = set.has_poses() ? "alignments3D/" : "alignments2D/";
    f.split = set.has_poses() && set.table().has("rlnRandomSubset") ? cs.add_field(prefix + "split", "<u4") : -1;
    f.shift = cs.add_field(prefix + "shift", "<f4", {2});
    f.pose = set.has_poses() ? cs.add_field(prefix + "pose", "<f4", {3}) : cs.add_field(prefix + "pose", "<f4");
    f.align_psize = cs.add_field(prefix + "psize_A", "<f4");
    f.cls = cs.add_field(prefix + "class", "<u4");
  }
  return f;
}

std::uint64_t parse_uid(const StarTable& t, std::size_t row, int column) {
  const std::string_view text = t.text(row, column);
  std::uint64_t uid = 0;
  const auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), uid);
  if (ec != std::errc() || p != text.data() + text.size())
    fail("{}:{}: column ucsfUid: '{}' is not a cryoSPARC uid (an unsigned 64-bit integer)", t.source_file,
         t.line_of(row), text);
  return uid;
}

void pose_to_cs(const ParticleSet& set, std::size_t i, const CsOutFields& f, double pixel, CsTable& cs) {
  if (f.pose < 0) return;
  const Pose p = set.pose(i);
  if (set.has_poses()) {
    const geometry::Vec3 v = cs_pose_from_euler({p.rot, p.tilt, p.psi});
    cs.set_number(i, f.pose, v.x, 0);
    cs.set_number(i, f.pose, v.y, 1);
    cs.set_number(i, f.pose, v.z, 2);
  } else {
    cs.set_number(i, f.pose, p.psi / kDegPerRad);
  }
  cs.set_number(i, f.shift, p.origin_x / pixel, 0);
  cs.set_number(i, f.shift, p.origin_y / pixel, 1);
  cs.set_number(i, f.align_psize, pixel);
  cs.set_number(i, f.cls, std::max(set.class_number(i) - 1, 0));
  if (f.split >= 0) cs.set_number(i, f.split, std::max(set.random_subset(i) - 1, 0));
}

}  // namespace

CsTable cs_from_particles(const ParticleSet& set) {
  CsTable cs;
  cs.source_file = set.path().string();
  std::vector<std::string> paths(set.size());
  std::size_t longest = 0;
  for (std::size_t i = 0; i < set.size(); ++i) {
    // Stacks found are written relative to the working directory (the project folder, as in
    // jobs' outputs); the others as the STAR names them.
    const std::string name = set.image_available(i) ? set.portable_image_name(i) : set.image_name(i);
    paths[i] = name.substr(name.find('@') + 1);
    longest = std::max(longest, paths[i].size());
  }
  const CsOutFields f = layout_cs(cs, set, longest);
  cs.resize(set.size());
  const int c_uid = set.table().find("ucsfUid");
  for (std::size_t i = 0; i < set.size(); ++i) {
    const OpticsGroup& g = set.optics_groups()[static_cast<std::size_t>(set.optics_index(i))];
    const std::uint64_t uid = c_uid >= 0 ? parse_uid(set.table(), i, c_uid) : splitmix64(0xc5u ^ (i * 0x9e3779b97f4a7c15ULL));
    cs.set_integer(i, f.uid, uid);
    cs.set_text(i, f.path, paths[i]);
    cs.set_integer(i, f.idx, static_cast<std::uint64_t>(set.index_in_stack(i)));
    cs.set_number(i, f.shape, g.image_size, 0);
    cs.set_number(i, f.shape, g.image_size, 1);
    cs.set_number(i, f.psize, g.pixel_size);
    cs.set_number(i, f.group, std::max(g.number - 1, 0));
    const image::CtfParams c = set.ctf(i);
    cs.set_number(i, f.kv, c.voltage);
    cs.set_number(i, f.cs, c.cs);
    cs.set_number(i, f.ac, c.amplitude_contrast);
    if (set.has_ctf()) {
      cs.set_number(i, f.df1, c.defocus_u);
      cs.set_number(i, f.df2, c.defocus_v);
      cs.set_number(i, f.dang, c.defocus_angle / kDegPerRad);
      cs.set_number(i, f.phase, c.phase_shift / kDegPerRad);
      cs.set_number(i, f.bfac, c.bfactor);
      cs.set_number(i, f.scale, c.scale);
    }
    pose_to_cs(set, i, f, g.pixel_size, cs);
  }
  return cs;
}

void write_particles_cs(const fs::path& path, const StarFile& star) {
  ParticleReadOptions options;
  options.allow_missing_stacks = true;
  options.quiet = true;
  write_cs(path, cs_from_particles(ParticleSet::from_star(star, options)));
}

std::size_t convert_particles(const fs::path& in, const fs::path& out, const fs::path& cs_root) {
  const std::string from = in.extension().string(), to = out.extension().string();
  if (from == ".cs" && to == ".star") {
    const StarFile star = star_from_cs(read_cs(in), cs_root);
    write_star(out, star);
    return star.blocks.back().table.rows();
  }
  if (from == ".star" && to == ".cs") {
    ParticleReadOptions options;
    options.allow_missing_stacks = true;  // converting needs no images
    const CsTable cs = cs_from_particles(ParticleSet::read(in, options));
    write_cs(out, cs);
    return cs.rows();
  }
  fail("convert {} -> {}: supported are .star -> .cs and .cs -> .star", in.string(), out.string());
}

}  // namespace emcryo::io
