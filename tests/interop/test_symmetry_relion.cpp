// Point groups against RELION 3.1 itself (relion_refine --print_symmetry_ops, relion_image_handler
// --sym) where it is installed.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "emcryo/core/error.hpp"
#include "emcryo/geometry/rotation.hpp"
#include "emcryo/geometry/symmetry.hpp"
#include "emcryo/io/mrc.hpp"
#include "support/test_mrc.hpp"
#include "support/test_support.hpp"

namespace {

namespace fs = std::filesystem;
using emcryo::geometry::axis_angle;
using emcryo::geometry::make_symmetry_group;
using emcryo::geometry::Mat3;
using emcryo::geometry::SymmetryGroup;
using emcryo::geometry::transpose;
using emcryo::geometry::Vec3;

// ---------------------------------------------------------------------------------------------
// Comparisons with RELION 3.1 itself.

namespace test = emcryo::test;

bool in_group(const std::vector<Mat3>& ops, const Mat3& r, double tol) {
  for (const Mat3& o : ops) {
    double d = 0;
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) d = std::max(d, std::abs(o(i, j) - r(i, j)));
    if (d < tol) return true;
  }
  return false;
}
using test::have_program;

// The matrices printed by `relion_refine --sym X --print_symmetry_ops` ("R(k)=" then 3 rows), run
// in `dir`, an empty scratch folder (RELION first tries to open a file named like the group).
std::vector<Mat3> relion_operators(const std::string& sym, const fs::path& dir) {
  std::vector<Mat3> ops;
  std::istringstream output(test::run_capture("relion_refine --sym " + sym + " --print_symmetry_ops", dir).output);
  std::vector<std::string> lines;
  for (std::string line; std::getline(output, line);) lines.push_back(line);
  for (size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].find("R(") == std::string::npos || lines[i].find(")=") == std::string::npos) continue;
    Mat3 r;
    bool ok = i + 3 < lines.size();
    for (int row = 0; ok && row < 3; ++row)
      ok = std::sscanf(lines[i + 1 + static_cast<size_t>(row)].c_str(), "%lf %lf %lf", &r(row, 0), &r(row, 1),
                       &r(row, 2)) == 3;
    if (ok) ops.push_back(r);
  }
  return ops;
}

TEST(SymmetryRelion, OperatorsMatchRelionRefine) {
  if (!have_program("relion_refine")) GTEST_SKIP() << "relion_refine not installed";
  const test::TempDir scratch("test_symmetry_ops");
  const fs::path& dir = scratch.path();
  for (const char* name : {"C1", "C2", "C4", "C7", "C12", "D1", "D2", "D3", "D7", "D12", "T", "O", "I", "I1", "I2",
                           "I3", "I4", "c5", "d6"}) {
    const auto ours = make_symmetry_group(name).operators;
    const auto theirs = relion_operators(name, dir);
    ASSERT_EQ(theirs.size(), ours.size()) << name;
    // RELION prints about 5 significant digits; our operators are > 0.1 apart.
    for (const Mat3& r : theirs) EXPECT_TRUE(in_group(ours, r, 1e-4)) << name;
  }
}

// An n^3 map written by RELION; empty when it is missing, unreadable or of another size.
std::vector<float> read_cube(const fs::path& path, int n) {
  try {
    const emcryo::io::MrcReader reader(path);
    if (reader.nx() != n || reader.ny() != n || reader.nz() != n) return {};
    return reader.read_all();
  } catch (const emcryo::Error&) {
    return {};
  }
}

// A few Gaussian blobs, no symmetry; x fastest, centre at n/2 like RELION.
std::vector<float> blobs(int n) {
  struct Blob {
    double x, y, z, amp;
  };
  const Blob b[] = {{9, 3, -4, 1.0}, {-5, 8, 3, 0.7}, {2, -6, 8, 0.5}, {-8, -3, -5, 0.8}, {4, 1, 3, 0.4}};
  const double sigma = 1.0, c = n / 2;
  std::vector<float> v(static_cast<size_t>(n) * n * n);
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        double s = 0;
        for (const Blob& q : b) {
          const double dx = x - c - q.x, dy = y - c - q.y, dz = z - c - q.z;
          s += q.amp * std::exp(-(dx * dx + dy * dy + dz * dz) / (2 * sigma * sigma));
        }
        v[(static_cast<size_t>(z) * n + y) * n + x] = static_cast<float>(s);
      }
  return v;
}

double trilinear(const std::vector<float>& v, int n, double x, double y, double z) {
  const int x0 = static_cast<int>(std::floor(x)), y0 = static_cast<int>(std::floor(y)),
            z0 = static_cast<int>(std::floor(z));
  const double fx = x - x0, fy = y - y0, fz = z - z0;
  double s = 0;
  for (int dz = 0; dz < 2; ++dz)
    for (int dy = 0; dy < 2; ++dy)
      for (int dx = 0; dx < 2; ++dx) {
        const int xi = x0 + dx, yi = y0 + dy, zi = z0 + dz;
        if (xi < 0 || yi < 0 || zi < 0 || xi >= n || yi >= n || zi >= n) continue;
        const double w = (dx ? fx : 1 - fx) * (dy ? fy : 1 - fy) * (dz ? fz : 1 - fz);
        s += w * v[(static_cast<size_t>(zi) * n + yi) * n + xi];
      }
  return s;
}

// Average of the volume rotated by every operator (the set is closed under inversion, so
// sampling at R p or R^T p gives the same average).
std::vector<float> symmetrise(const std::vector<float>& v, int n, const std::vector<Mat3>& ops) {
  std::vector<float> out(v.size());
  const double c = n / 2;
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        double s = 0;
        for (const Mat3& r : ops) {
          const Vec3 p = r * Vec3{x - c, y - c, z - c};
          s += trilinear(v, n, p.x + c, p.y + c, p.z + c);
        }
        out[(static_cast<size_t>(z) * n + y) * n + x] = static_cast<float>(s / static_cast<double>(ops.size()));
      }
  return out;
}

double correlation(const std::vector<float>& a, const std::vector<float>& b) {
  double ma = 0, mb = 0;
  for (size_t i = 0; i < a.size(); ++i) ma += a[i], mb += b[i];
  ma /= static_cast<double>(a.size());
  mb /= static_cast<double>(b.size());
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
  }
  return sab / std::sqrt(saa * sbb);
}

TEST(SymmetryRelion, MapsOverlayRelionImageHandler) {
  if (!have_program("relion_image_handler")) GTEST_SKIP() << "relion_image_handler not installed";
  constexpr int n = 32;
  const test::TempDir scratch("test_symmetry_maps");
  const fs::path& dir = scratch.path();
  const std::vector<float> vol = blobs(n);
  test::write_mrc_volume(dir / "vol.mrc", vol, n, n, n, 1.0);  // 1 Å/pixel
  auto relion_sym = [&](const std::string& sym) {
    const fs::path out = dir / ("sym_" + sym + ".mrc");
    const std::string cmd = "cd '" + dir.string() + "' && relion_image_handler --i vol.mrc --o " + out.string() +
                            " --sym " + sym + " > relion_" + sym + ".log 2>&1";
    EXPECT_EQ(test::run(cmd), 0) << cmd;
    return read_cube(out, n);
  };
  for (const char* sym : {"C4", "D2", "D3", "T", "O", "I", "I1", "I3", "I4"}) {
    const auto theirs = relion_sym(sym);
    ASSERT_EQ(theirs.size(), vol.size()) << sym << ": could not read RELION's output";
    const double cc = correlation(symmetrise(vol, n, make_symmetry_group(sym).operators), theirs);
    EXPECT_GT(cc, 0.99) << sym;  // same linear interpolation as RELION: 1.0000000 in practice
    EXPECT_LT(correlation(vol, theirs), 0.9) << sym << ": RELION did not symmetrise";
    std::printf("  %-3s correlation with RELION %.7f\n", sym, cc);
  }
  // The test can tell settings apart: a D3 with its 2-fold on y, or another icosahedral
  // setting, does not overlay RELION's map.
  {
    const Mat3 q = axis_angle({0, 0, 1}, 90);
    std::vector<Mat3> d3y;
    for (const Mat3& r : make_symmetry_group("D3").operators) d3y.push_back(q * r * transpose(q));
    const double cc = correlation(symmetrise(vol, n, d3y), relion_sym("D3"));
    EXPECT_LT(cc, 0.9);
    std::printf("  D3 with 2-fold on y vs RELION D3: %.5f\n", cc);
    const double cci = correlation(symmetrise(vol, n, make_symmetry_group("I1").operators), relion_sym("I2"));
    EXPECT_LT(cci, 0.9);
    std::printf("  our I1 vs RELION I2: %.5f\n", cci);
  }
}

}  // namespace
