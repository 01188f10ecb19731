// cryoSPARC .cs files: the NumPy container, the pose/shift/CTF conventions against RELION's, STAR
// <-> .cs round trips, the '>' path prefix, and numpy.load reading what we write.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <numbers>

#include "emcryo/core/error.hpp"
#include "emcryo/geometry/rotation.hpp"
#include "emcryo/io/cs.hpp"
#include "emcryo/io/cs_particles.hpp"
#include "emcryo/io/particles.hpp"
#include "support/test_mrc.hpp"
#include "support/test_support.hpp"

namespace fs = std::filesystem;
using namespace emcryo;

namespace {

constexpr double kPi = std::numbers::pi;

TEST(CsFile, RoundTripKeepsFieldsShapesAndValues) {
  io::CsTable t;
  const int uid = t.add_field("uid", "<u8");
  const int path = t.add_field("blob/path", "|S20");
  const int shape = t.add_field("blob/shape", "<u4", {2});
  const int pose = t.add_field("alignments3D/pose", "<f4", {3});
  const int err = t.add_field("alignments3D/error", "<f8");
  const int flag = t.add_field("ctf/flag", "|b1");
  t.resize(2);
  t.set_integer(0, uid, 18446744073709551557ULL);  // above 2^63: kept exactly
  t.set_integer(1, uid, 7);
  t.set_text(0, path, "J1/a.mrc");
  t.set_text(1, path, ">J2/extract/b.mrc");
  t.set_number(1, shape, 64, 0);
  t.set_number(1, shape, 64, 1);
  t.set_number(0, pose, -0.25, 2);
  t.set_number(1, err, 1e-300);
  t.set_number(1, flag, 1);
  const std::string bytes = io::format_cs(t);
  // NumPy 1.0 header: magic, version, length; the data start at a multiple of 64 bytes.
  ASSERT_EQ(bytes.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  const std::size_t header = static_cast<unsigned char>(bytes[8]) + 256u * static_cast<unsigned char>(bytes[9]);
  EXPECT_EQ((10 + header) % 64, 0u);
  EXPECT_EQ(bytes[10 + header - 1], '\n');

  const io::CsTable r = io::parse_cs(bytes, "mem.cs");
  ASSERT_EQ(r.rows(), 2u);
  ASSERT_EQ(r.fields().size(), 6u);
  EXPECT_EQ(r.record_bytes(), 8u + 20 + 8 + 12 + 8 + 1);
  EXPECT_EQ(r.integer(0, r.find("uid")), 18446744073709551557ULL);
  EXPECT_EQ(r.text(1, r.find("blob/path")), ">J2/extract/b.mrc");
  EXPECT_EQ(r.fields()[static_cast<std::size_t>(r.find("blob/shape"))].shape, std::vector<int>{2});
  EXPECT_EQ(r.number(1, r.find("blob/shape"), 1), 64);
  EXPECT_FLOAT_EQ(static_cast<float>(r.number(0, r.find("alignments3D/pose"), 2)), -0.25f);
  EXPECT_EQ(r.number(1, r.find("alignments3D/error")), 1e-300);
  EXPECT_EQ(r.number(1, r.find("ctf/flag")), 1);
  EXPECT_EQ(io::format_cs(r), bytes);
}

TEST(CsFile, ErrorsNameTheFileAndTheProblem) {
  EXPECT_NE(test::error_message([] { (void)io::parse_cs("hello", "x.cs"); }).find("x.cs: not a NumPy"),
            std::string::npos);
  const std::string object_header = "{'descr': [('uid', '<u8'), ('blob/path', 'O')], 'fortran_order': False, 'shape': (1,), }";
  std::string npy = std::string("\x93NUMPY\x01\x00", 8);
  npy += static_cast<char>(object_header.size() + 1);
  npy += '\0';
  npy += object_header + "\n";
  const auto message = test::error_message([&] { (void)io::parse_cs(npy, "o.cs"); });
  EXPECT_NE(message.find("o.cs: field 'blob/path' holds Python objects"), std::string::npos) << message;
  // A sub-array shape with a negative entry (fuzz/fuzz_cs: it wrapped the record size, and reads ran past the data).
  const std::string negative_header = "{'descr': [('uid', '<u8'), ('alignments3D/pose', '<f4', (-3,))], 'fortran_order': False, 'shape': (1,), }";
  std::string negative = std::string("\x93NUMPY\x01\x00", 8);
  negative += static_cast<char>(negative_header.size() + 1);
  negative += '\0';
  negative += negative_header + "\n" + std::string(64, '\0');
  const auto shape_message = test::error_message([&] { (void)io::parse_cs(negative, "n.cs"); });
  EXPECT_NE(shape_message.find("n.cs: field 'alignments3D/pose': sub-array shape entry '-3'"), std::string::npos) << shape_message;
  io::CsTable t;
  (void)t.add_field("uid", "<u8");
  t.resize(3);
  const std::string bytes = io::format_cs(t);
  const auto truncated = test::error_message([&] { (void)io::parse_cs(bytes.substr(0, bytes.size() - 1), "t.cs"); });
  EXPECT_NE(truncated.find("t.cs: truncated"), std::string::npos) << truncated;
}

TEST(CsFile, TextLongerThanTheFieldFails) {
  io::CsTable t;
  t.source_file = "w.cs";
  const int path = t.add_field("blob/path", "|S4");
  t.resize(1);
  const auto message = test::error_message([&] { t.set_text(0, path, "toolong"); });
  EXPECT_NE(message.find("w.cs: record 0: field 'blob/path'"), std::string::npos) << message;
}

// ------------------------------------------------------------------------------ conventions

double max_difference(const geometry::Mat3& a, const geometry::Mat3& b) {
  double d = 0;
  for (std::size_t i = 0; i < 9; ++i) d = std::max(d, std::abs(a.m[i] - b.m[i]));
  return d;
}

TEST(CsConventions, PoseIsTheTransposeOfRelionsMatrixAsARotationVector) {
  for (const geometry::Euler e : {geometry::Euler{10, 20, 30}, geometry::Euler{-170, 95, 45},
                                  geometry::Euler{0, 0, 75}, geometry::Euler{33, 180, 0},
                                  geometry::Euler{120, 179.9, -60}}) {
    const geometry::Vec3 v = io::cs_pose_from_euler(e);
    // The rotation vector's exponential is RELION's matrix transposed.
    // (Matrices compared element by element: an angle from acos of the trace is only good to ~1e-6 degrees.)
    const geometry::Mat3 r = geometry::rotation_from_vector(v);
    EXPECT_LT(max_difference(r, geometry::transpose(geometry::euler_to_matrix(e))), 1e-9);
    const geometry::Euler back = io::euler_from_cs_pose(v);
    EXPECT_LT(max_difference(geometry::euler_to_matrix(back), geometry::euler_to_matrix(e)), 1e-9)
        << e.rot << " " << e.tilt << " " << e.psi;
  }
}

TEST(CsConventions, KnownPoseMatchesPyemsConversion) {
  // pyem's csparc2star (rot2euler(expmap(pose))) turns this pose into these Euler angles
  // (checked with pyem's own functions on a file we wrote).
  const geometry::Euler e = io::euler_from_cs_pose({1.5346708, 1.4505179, 0.4547415});
  EXPECT_NEAR(e.rot, -25.1117, 1e-3);
  EXPECT_NEAR(e.tilt, 119.1323, 1e-3);
  EXPECT_NEAR(e.psi, 68.1178, 1e-3);
  // An in-plane rotation about z by theta is psi = theta (rot = tilt = 0).
  const geometry::Euler z = io::euler_from_cs_pose({0, 0, 0.5});
  EXPECT_NEAR(z.rot + z.psi, 0.5 * 180 / kPi, 1e-9);
  EXPECT_NEAR(z.tilt, 0, 1e-9);
}

TEST(CsConventions, BlobPathDropsTheProjectPrefix) {
  EXPECT_EQ(io::cs_blob_path(">J12/extract/a.mrc"), "J12/extract/a.mrc");
  EXPECT_EQ(io::cs_blob_path("J12/extract/a.mrc"), "J12/extract/a.mrc");
}

// ------------------------------------------------------------------------------ particles

class CsParticlesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(dir_ / "J7/extract");
    std::vector<float> stack(4 * 8 * 8);
    for (std::size_t i = 0; i < stack.size(); ++i) stack[i] = static_cast<float>(i);
    test::write_mrc_stack(dir_ / "J7/extract/s.mrc", stack, 8, 8, 4, 2.0);
  }

  // A cryoSPARC-like file: 3D alignments, two exposure groups, a '>' path.
  io::CsTable cryosparc_records() const {
    io::CsTable t;
    t.source_file = (dir_ / "J9/particles.cs").string();
    const int uid = t.add_field("uid", "<u8"), path = t.add_field("blob/path", "|S20"),
              idx = t.add_field("blob/idx", "<u4"), shape = t.add_field("blob/shape", "<u4", {2}),
              psize = t.add_field("blob/psize_A", "<f4"), group = t.add_field("ctf/exp_group_id", "<u4"),
              kv = t.add_field("ctf/accel_kv", "<f4"), cs = t.add_field("ctf/cs_mm", "<f4"),
              ac = t.add_field("ctf/amp_contrast", "<f4"), df1 = t.add_field("ctf/df1_A", "<f4"),
              df2 = t.add_field("ctf/df2_A", "<f4"), dang = t.add_field("ctf/df_angle_rad", "<f4"),
              phase = t.add_field("ctf/phase_shift_rad", "<f4"), pose = t.add_field("alignments3D/pose", "<f4", {3}),
              shift = t.add_field("alignments3D/shift", "<f4", {2}), cls = t.add_field("alignments3D/class", "<u4"),
              split = t.add_field("alignments3D/split", "<u4"), post = t.add_field("alignments3D/class_posterior", "<f4");
    t.resize(2);
    for (std::size_t r = 0; r < 2; ++r) {
      t.set_integer(r, uid, 1000 + r);
      t.set_text(r, path, r == 0 ? ">J7/extract/s.mrc" : "J7/extract/s.mrc");
      t.set_integer(r, idx, 2 * r + 1);  // 0-based: images 2 and 4
      t.set_number(r, shape, 8, 0);
      t.set_number(r, shape, 8, 1);
      t.set_number(r, psize, 2.0);
      t.set_integer(r, group, r);
      t.set_number(r, kv, r ? 200 : 300);
      t.set_number(r, cs, 2.7);
      t.set_number(r, ac, 0.1);
      t.set_number(r, df1, 15000 + r);
      t.set_number(r, df2, 14000);
      t.set_number(r, dang, kPi / 6);
      t.set_number(r, phase, kPi / 2);
      t.set_number(r, pose, 0.3, 0);
      t.set_number(r, pose, -1.2, 1);
      t.set_number(r, pose, 2.0, 2);
      t.set_number(r, shift, 1.5, 0);
      t.set_number(r, shift, -2.25, 1);
      t.set_integer(r, cls, 0);
      t.set_integer(r, split, r);
      t.set_number(r, post, 1);
    }
    return t;
  }

  const test::TempDir dir_{"cs_particles"};
};

TEST_F(CsParticlesTest, ReadsCryosparcRecordsWithRelionsConventions) {
  fs::create_directories(dir_ / "J9");
  io::write_cs(dir_ / "J9/particles.cs", cryosparc_records());
  // The .cs lives in a job folder; blob paths are relative to the project folder above it.
  const auto set = io::ParticleSet::read(dir_ / "J9/particles.cs");
  ASSERT_EQ(set.size(), 2u);
  EXPECT_EQ(set.box(), 8);
  EXPECT_DOUBLE_EQ(set.pixel_size(), 2.0);
  ASSERT_EQ(set.optics_groups().size(), 2u);
  EXPECT_EQ(set.optics_groups()[1].number, 2);  // exp_group_id 1 -> optics group 2
  EXPECT_DOUBLE_EQ(set.ctf(1).voltage, 200);
  EXPECT_NEAR(set.ctf(0).defocus_angle, 30, 1e-4);  // radians -> degrees
  EXPECT_NEAR(set.ctf(0).phase_shift, 90, 1e-4);
  EXPECT_EQ(set.index_in_stack(1), 3);  // blob/idx is 0-based, as our index
  EXPECT_EQ(set.read_image(0)[0], 64.0f);  // image 2 of the stack (0-based 1)
  const io::Pose p = set.pose(0);
  EXPECT_NEAR(p.origin_x, 3.0, 1e-6);  // pixels -> Å, same sign
  EXPECT_NEAR(p.origin_y, -4.5, 1e-6);
  const geometry::Mat3 expected = geometry::transpose(geometry::rotation_from_vector({0.3, -1.2, 2.0}));
  EXPECT_LT(geometry::rotation_angle_between(geometry::euler_to_matrix({p.rot, p.tilt, p.psi}), expected), 1e-4);
  EXPECT_EQ(set.class_number(0), 1);  // 0-based -> 1-based
  EXPECT_EQ(set.random_subset(1), 2);
}

TEST_F(CsParticlesTest, CsRootResolvesBlobPaths) {
  fs::create_directories(dir_ / "elsewhere");
  io::write_cs(dir_ / "elsewhere/p.cs", cryosparc_records());
  io::ParticleReadOptions options;
  options.cs_root = dir_.path();
  const auto set = io::ParticleSet::read(dir_ / "elsewhere/p.cs", options);
  EXPECT_EQ(set.missing_stacks().size(), 0u);
  options.cs_root = dir_ / "nowhere";
  const auto message = test::error_message([&] { (void)io::ParticleSet::read(dir_ / "elsewhere/p.cs", options); });
  EXPECT_NE(message.find("nowhere/J7/extract/s.mrc' not found"), std::string::npos) << message;
  options.allow_missing_stacks = true;
  const auto partial = io::ParticleSet::read(dir_ / "elsewhere/p.cs", options);
  EXPECT_EQ(partial.missing_stacks().size(), 1u);
  EXPECT_EQ(partial.box(), 8);  // from blob/shape
}

TEST_F(CsParticlesTest, CsToStarToCsKeepsWhatBothCarry) {
  fs::create_directories(dir_ / "J9");
  const io::CsTable original = cryosparc_records();
  io::write_cs(dir_ / "J9/particles.cs", original);
  io::convert_particles(dir_ / "J9/particles.cs", dir_ / "p.star");
  io::convert_particles(dir_ / "p.star", dir_ / "back.cs");
  const io::CsTable back = io::read_cs(dir_ / "back.cs");
  ASSERT_EQ(back.rows(), 2u);
  for (std::size_t r = 0; r < 2; ++r) {
    EXPECT_EQ(back.integer(r, back.find("uid")), original.integer(r, original.find("uid")));
    EXPECT_EQ(back.integer(r, back.find("blob/idx")), original.integer(r, original.find("blob/idx")));
    for (const char* f : {"ctf/exp_group_id", "ctf/accel_kv", "ctf/df1_A", "ctf/df2_A", "blob/psize_A",
                          "alignments3D/class", "alignments3D/split"})
      EXPECT_EQ(back.number(r, back.find(f)), original.number(r, original.find(f))) << f;
    for (const char* f : {"ctf/df_angle_rad", "ctf/phase_shift_rad"})
      EXPECT_NEAR(back.number(r, back.find(f)), original.number(r, original.find(f)), 1e-6) << f;
    for (std::size_t k = 0; k < 2; ++k)
      EXPECT_NEAR(back.number(r, back.find("alignments3D/shift"), k),
                  original.number(r, original.find("alignments3D/shift"), k), 1e-6);
    for (std::size_t k = 0; k < 3; ++k)
      EXPECT_NEAR(back.number(r, back.find("alignments3D/pose"), k),
                  original.number(r, original.find("alignments3D/pose"), k), 1e-5);
  }
  // The STAR names the images as cryoSPARC does, without the '>' and 1-based.
  const std::string star = test::read_text(dir_ / "p.star");
  EXPECT_NE(star.find("000002@J7/extract/s.mrc"), std::string::npos) << star;
  EXPECT_NE(star.find("000004@J7/extract/s.mrc"), std::string::npos);
}

TEST_F(CsParticlesTest, StarToCsToStarKeepsWhatBothCarry) {
  const fs::path star = test::write_text(
      dir_ / "in.star",
      "# version 30001\ndata_optics\nloop_\n_rlnOpticsGroup\n_rlnOpticsGroupName\n_rlnImagePixelSize\n_rlnImageSize\n"
      "_rlnVoltage\n_rlnSphericalAberration\n_rlnAmplitudeContrast\n1 g1 2.0 8 300 2.7 0.1\n\n"
      "# version 30001\ndata_particles\nloop_\n_rlnImageName\n_rlnOpticsGroup\n_rlnDefocusU\n_rlnDefocusV\n"
      "_rlnDefocusAngle\n_rlnAngleRot\n_rlnAngleTilt\n_rlnAnglePsi\n_rlnOriginXAngst\n_rlnOriginYAngst\n"
      "_rlnClassNumber\n_rlnRandomSubset\n"
      "000001@J7/extract/s.mrc 1 12345.6 12000.5 12.5 -100.25 33.5 170.75 1.25 -3.5 2 1\n"
      "000004@J7/extract/s.mrc 1 22345.6 21000.5 -80 45 90 0 0 0 1 2\n");
  io::convert_particles(star, dir_ / "mid.cs");
  io::convert_particles(dir_ / "mid.cs", dir_ / "out.star");
  io::ParticleReadOptions options;
  options.allow_missing_stacks = true;
  const auto a = io::ParticleSet::read(star, options);
  const auto b = io::ParticleSet::read(dir_ / "out.star", options);
  ASSERT_EQ(b.size(), 2u);
  for (std::size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(b.index_in_stack(i), a.index_in_stack(i));
    EXPECT_NEAR(b.ctf(i).defocus_u, a.ctf(i).defocus_u, 1e-2);  // stored as float32 in the .cs
    EXPECT_NEAR(b.ctf(i).defocus_v, a.ctf(i).defocus_v, 1e-2);
    EXPECT_NEAR(std::remainder(b.ctf(i).defocus_angle - a.ctf(i).defocus_angle, 360.0), 0, 1e-4);
    const io::Pose pa = a.pose(i), pb = b.pose(i);
    EXPECT_LT(geometry::rotation_angle_between(geometry::euler_to_matrix({pa.rot, pa.tilt, pa.psi}),
                                               geometry::euler_to_matrix({pb.rot, pb.tilt, pb.psi})),
              1e-4);
    EXPECT_NEAR(pb.origin_x, pa.origin_x, 1e-6);
    EXPECT_NEAR(pb.origin_y, pa.origin_y, 1e-6);
    EXPECT_EQ(b.class_number(i), a.class_number(i));
    EXPECT_EQ(b.random_subset(i), a.random_subset(i));
  }
}

// numpy.load reads the particles.cs we write, with the values and dtypes cryoSPARC uses.
TEST_F(CsParticlesTest, NumpyLoadsWhatWeWrite) {
  std::string python;
  for (const std::string candidate : {"python3", "/usr/bin/python3"})
    if (test::run(candidate + " -c 'import numpy' > /dev/null 2>&1") == 0) {
      python = candidate;
      break;
    }
  if (python.empty()) GTEST_SKIP() << "no python3 with numpy (install python3-numpy)";
  const fs::path star = test::write_text(
      dir_ / "in.star",
      "data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n_rlnImageSize\n_rlnVoltage\n1 2.0 8 300\n"
      "data_particles\nloop_\n_rlnImageName\n_rlnOpticsGroup\n_rlnDefocusU\n_rlnDefocusV\n_rlnDefocusAngle\n"
      "_rlnAngleRot\n_rlnAngleTilt\n_rlnAnglePsi\n_rlnOriginXAngst\n_rlnOriginYAngst\n_rlnClassNumber\n"
      "000003@J7/extract/s.mrc 1 15000 14000 90 10 20 30 4.0 -2.0 3\n");
  io::convert_particles(star, dir_ / "p.cs");
  // The check in numpy: dtypes, 0-based index and class, radians, pixels, and the pose as the
  // transpose of RELION's matrix (built here from RELION's formula, independently of our code).
  const std::string script = R"(
import sys, numpy as np
a = np.load(sys.argv[1])
assert a.shape == (1,), a.shape
assert a.dtype['uid'] == np.dtype('<u8') and a.dtype['blob/idx'] == np.dtype('<u4')
assert a.dtype['alignments3D/pose'].shape == (3,)
r = a[0]
assert r['blob/path'].endswith(b'/J7/extract/s.mrc'), r['blob/path']  # found: relative to the cwd or absolute
assert r['blob/idx'] == 2 and r['alignments3D/class'] == 2
assert list(r['blob/shape']) == [8, 8]
assert abs(r['ctf/df_angle_rad'] - np.pi / 2) < 1e-6
assert np.allclose(r['alignments3D/shift'], [2.0, -1.0])
def relion(rot, tilt, psi):
    a, b, g = np.deg2rad([rot, tilt, psi])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    return np.array([[cg*cb*ca - sg*sa, cg*cb*sa + sg*ca, -cg*sb],
                     [-sg*cb*ca - cg*sa, -sg*cb*sa + cg*ca, sg*sb],
                     [sb*ca, sb*sa, cb]])
v = r['alignments3D/pose'].astype(float)
t = np.linalg.norm(v); k = v / t
K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
R = np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * K @ K
assert np.allclose(R.T, relion(10, 20, 30), atol=1e-5), (R.T, relion(10, 20, 30))
print('ok')
)";
  const fs::path script_path = test::write_text(dir_ / "check.py", script);
  const auto result = test::run_capture(python + " " + test::quoted(script_path) + " " + test::quoted(dir_ / "p.cs"));
  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("ok"), std::string::npos) << result.output;
}

}  // namespace

namespace {

// Records with only the given alignment fields (and the blob fields every particle .cs has).
io::CsTable records_with(const std::vector<std::pair<std::string, std::vector<int>>>& fields, std::size_t rows) {
  io::CsTable t;
  t.source_file = "mem.cs";
  (void)t.add_field("blob/path", "|S8");
  (void)t.add_field("blob/idx", "<u4");
  (void)t.add_field("blob/psize_A", "<f4");
  for (const auto& [name, shape] : fields)
    (void)t.add_field(name, name.ends_with("class") ? "<u4" : "<f4", shape);
  t.resize(rows);
  for (std::size_t r = 0; r < rows; ++r) {
    t.set_text(r, t.find("blob/path"), "s.mrc");
    t.set_number(r, t.find("blob/psize_A"), 1.5);
  }
  return t;
}

TEST(CsConventions, TwoDimensionalAlignmentsGivePsiAndClass) {
  io::CsTable t = records_with({{"alignments2D/pose", {}}, {"alignments2D/shift", {2}}, {"alignments2D/class", {}}}, 1);
  t.set_number(0, t.find("alignments2D/pose"), -kPi / 4);
  t.set_number(0, t.find("alignments2D/shift"), 2.0, 1);
  t.set_integer(0, t.find("alignments2D/class"), 4);
  const io::StarFile star = io::star_from_cs(t, {});
  const io::StarTable& p = star.require_block("particles").table;
  EXPECT_FALSE(p.has("rlnAngleRot"));
  EXPECT_NEAR(p.number(0, p.require("rlnAnglePsi")), -45, 1e-4);
  EXPECT_NEAR(p.number(0, p.require("rlnOriginYAngst")), 3.0, 1e-6);
  EXPECT_EQ(p.integer(0, p.require("rlnClassNumber")), 5);
  // And back: a STAR with an in-plane angle only becomes alignments2D again.
  const test::TempDir dir("cs_2d");
  io::write_particles_cs(dir / "p.cs", star);
  const io::CsTable back = io::read_cs(dir / "p.cs");
  EXPECT_FALSE(back.has("alignments3D/pose"));
  EXPECT_NEAR(back.number(0, back.find("alignments2D/pose")), -kPi / 4, 1e-6);
  EXPECT_NEAR(back.number(0, back.find("alignments2D/shift"), 1), 2.0, 1e-6);
  EXPECT_EQ(back.integer(0, back.find("alignments2D/class")), 4u);
}

TEST(CsConventions, PerClassAlignmentsTakeTheMostProbableClass) {
  io::CsTable t = records_with({{"alignments_class_0/pose", {3}}, {"alignments_class_0/class_posterior", {}},
                                {"alignments_class_1/pose", {3}}, {"alignments_class_1/class_posterior", {}}},
                               2);
  t.set_number(0, t.find("alignments_class_0/class_posterior"), 0.9);
  t.set_number(0, t.find("alignments_class_1/class_posterior"), 0.1);
  t.set_number(1, t.find("alignments_class_0/class_posterior"), 0.2);
  t.set_number(1, t.find("alignments_class_1/class_posterior"), 0.8);
  t.set_number(1, t.find("alignments_class_1/pose"), kPi / 2, 2);  // a quarter turn about z
  const io::StarFile star = io::star_from_cs(t, {});
  const io::StarTable& p = star.require_block("particles").table;
  EXPECT_EQ(p.integer(0, p.require("rlnClassNumber")), 1);
  EXPECT_EQ(p.integer(1, p.require("rlnClassNumber")), 2);
  const double rot = p.number(1, p.require("rlnAngleRot")), psi = p.number(1, p.require("rlnAnglePsi"));
  EXPECT_NEAR(std::remainder(rot + psi - 90, 360.0), 0, 1e-4);
}

}  // namespace

// fuzz/fuzz_cs found a .cs whose float field was read as an image index: the cast was undefined
// behaviour (UBSan). It must fail with a clear error instead.
TEST(CsFuzzRegressions, AFloatFieldReadAsAnIndexFailsCleanly) {
  const auto path = fs::path(EMCRYO_SOURCE_DIR) / "tests/data/fuzz_regressions/cs_float_index.cs";
  EXPECT_THROW(
      {
        const auto cs = io::read_cs(path);
        (void)io::star_from_cs(cs, "");
      },
      Error);
}
