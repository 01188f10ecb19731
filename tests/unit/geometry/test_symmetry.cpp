// Point groups: sizes, group axioms, RELION 3.1's axis settings, and agreement with RELION itself
// (tests/interop/test_symmetry_relion.cpp compares with RELION itself).
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
#include "support/test_support.hpp"

namespace {

namespace fs = std::filesystem;
using emcryo::geometry::axis_angle;
using emcryo::geometry::make_symmetry_group;
using emcryo::geometry::Mat3;
using emcryo::geometry::SymmetryGroup;
using emcryo::geometry::transpose;
using emcryo::geometry::Vec3;

double max_diff(const Mat3& a, const Mat3& b) {
  double d = 0;
  for (size_t i = 0; i < 9; ++i) d = std::max(d, std::abs(a.m[i] - b.m[i]));
  return d;
}

double det(const Mat3& a) {
  return a(0, 0) * (a(1, 1) * a(2, 2) - a(1, 2) * a(2, 1)) - a(0, 1) * (a(1, 0) * a(2, 2) - a(1, 2) * a(2, 0)) +
         a(0, 2) * (a(1, 0) * a(2, 1) - a(1, 1) * a(2, 0));
}

bool in_group(const std::vector<Mat3>& ops, const Mat3& r, double tol = 1e-9) {
  for (const Mat3& q : ops)
    if (max_diff(q, r) < tol) return true;
  return false;
}

struct Named {
  const char* name;
  size_t size;
};
const Named kGroups[] = {{"C1", 1},  {"C2", 2},  {"C3", 3},   {"C4", 4},  {"C5", 5},  {"C6", 6},  {"C7", 7},
                         {"C11", 11}, {"C12", 12}, {"C17", 17}, {"C99", 99}, {"D1", 2},  {"D2", 4},  {"D3", 6},
                         {"D4", 8},  {"D5", 10}, {"D6", 12},  {"D7", 14}, {"D13", 26}, {"D40", 80}, {"T", 12},
                         {"O", 24},  {"I", 60},  {"I1", 60},  {"I2", 60}, {"I3", 60}, {"I4", 60}};

TEST(SymmetryGroups, Sizes) {
  for (const Named& g : kGroups) EXPECT_EQ(make_symmetry_group(g.name).operators.size(), g.size) << g.name;
  EXPECT_EQ(make_symmetry_group("C360").operators.size(), 360u);
  EXPECT_EQ(make_symmetry_group("D999").operators.size(), 1998u);
}

TEST(SymmetryGroups, NamesAreCaseInsensitive) {
  EXPECT_EQ(make_symmetry_group("c5").name, "C5");
  EXPECT_EQ(make_symmetry_group("d7").name, "D7");
  EXPECT_EQ(make_symmetry_group("C05").name, "C5");
  EXPECT_EQ(make_symmetry_group("t").name, "T");
  EXPECT_EQ(make_symmetry_group("o").name, "O");
  EXPECT_EQ(make_symmetry_group("i").name, "I");
  EXPECT_EQ(make_symmetry_group("i3").name, "I3");
  for (const char* lower : {"c5", "d7", "t", "o", "i", "i1", "i4"}) {
    std::string upper(lower);
    for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    const auto a = make_symmetry_group(lower), b = make_symmetry_group(upper);
    ASSERT_EQ(a.operators.size(), b.operators.size());
    for (size_t i = 0; i < a.operators.size(); ++i) EXPECT_EQ(a.operators[i].m, b.operators[i].m);
  }
  // I is I2.
  const auto i = make_symmetry_group("I"), i2 = make_symmetry_group("I2");
  for (size_t k = 0; k < 60; ++k) EXPECT_EQ(i.operators[k].m, i2.operators[k].m);
}

TEST(SymmetryGroups, GroupAxioms) {
  for (const Named& g : kGroups) {
    const auto ops = make_symmetry_group(g.name).operators;
    ASSERT_FALSE(ops.empty());
    EXPECT_EQ(ops[0].m, Mat3::identity().m) << g.name << ": identity must come first";
    for (size_t i = 0; i < ops.size(); ++i) {
      EXPECT_TRUE(in_group(ops, transpose(ops[i]))) << g.name << ": inverse of " << i;
      for (size_t j = 0; j < ops.size(); ++j) {
        if (j > i) {
          EXPECT_GT(max_diff(ops[i], ops[j]), 1e-3) << g.name << ": duplicate " << i << " " << j;
        }
        if (!in_group(ops, ops[i] * ops[j])) {
          ADD_FAILURE() << g.name << ": product " << i << "*" << j << " not in group";
          return;
        }
      }
    }
  }
}

TEST(SymmetryGroups, ProperRotations) {
  for (const Named& g : kGroups) {
    for (const Mat3& r : make_symmetry_group(g.name).operators) {
      EXPECT_NEAR(det(r), 1, 1e-12) << g.name;
      EXPECT_LT(max_diff(r * transpose(r), Mat3::identity()), 1e-12) << g.name;
    }
  }
}

// Does the group hold the n-fold rotation about this axis (given to RELION's decimals)?
bool has_axis(const SymmetryGroup& g, Vec3 axis, int fold, double tol = 1e-5) {
  for (int k = 1; k < fold; ++k)
    if (!in_group(g.operators, axis_angle(axis, 360.0 * k / fold), tol)) return false;
  return true;
}

// The generators of RELION 3.1's SymList::fill_symmetry_class (src/symmetries.cpp), decimals as
// written there.
TEST(SymmetryGroups, RelionAxisSettings) {
  for (int n : {2, 3, 5, 8}) {
    const auto c = make_symmetry_group(fmt::format("C{}", n)), d = make_symmetry_group(fmt::format("D{}", n));
    EXPECT_TRUE(has_axis(c, {0, 0, 1}, n));
    EXPECT_TRUE(has_axis(d, {0, 0, 1}, n));
    EXPECT_TRUE(has_axis(d, {1, 0, 0}, 2));
  }
  EXPECT_FALSE(has_axis(make_symmetry_group("D3"), {0, 1, 0}, 2));  // 2-fold on x, not y
  const auto t = make_symmetry_group("T");
  EXPECT_TRUE(has_axis(t, {0, 0, 1}, 3));
  EXPECT_TRUE(has_axis(t, {0, 0.816496, 0.577350}, 2));
  const auto o = make_symmetry_group("O");
  EXPECT_TRUE(has_axis(o, {.5773502, .5773502, .5773502}, 3));
  EXPECT_TRUE(has_axis(o, {0, 0, 1}, 4));
  for (const char* name : {"I", "I2"}) {
    const auto g = make_symmetry_group(name);
    EXPECT_TRUE(has_axis(g, {0, 0, 1}, 2));
    EXPECT_TRUE(has_axis(g, {0.525731114, 0, 0.850650807}, 5));
    EXPECT_TRUE(has_axis(g, {0, 0.356822076, 0.934172364}, 3));
  }
  const auto i1 = make_symmetry_group("I1");
  EXPECT_TRUE(has_axis(i1, {1, 0, 0}, 2));
  EXPECT_TRUE(has_axis(i1, {0.85065080702670, 0, -0.5257311142635}, 5));
  EXPECT_TRUE(has_axis(i1, {0.9341723640, 0.3568220765, 0}, 3));
  const auto i3 = make_symmetry_group("I3");
  EXPECT_TRUE(has_axis(i3, {-0.5257311143, 0, 0.8506508070}, 2));
  EXPECT_TRUE(has_axis(i3, {0, 0, 1}, 5));
  EXPECT_TRUE(has_axis(i3, {-0.4911234778630044, 0.3568220764705179, 0.7946544753759428}, 3));
  const auto i4 = make_symmetry_group("I4");
  EXPECT_TRUE(has_axis(i4, {0.5257311143, 0, 0.8506508070}, 2));
  EXPECT_TRUE(has_axis(i4, {0.8944271932547096, 0, 0.4472135909903704}, 5));
  EXPECT_TRUE(has_axis(i4, {0.4911234778630044, 0.3568220764705179, 0.7946544753759428}, 3));
  // How the settings differ: I1 and I2 have 2-folds on x, y and z and differ by 90 degrees about
  // z; I3 and I4 have a 5-fold on z and differ by 180 degrees about z.
  const auto i2 = make_symmetry_group("I2");
  const double phi = (1 + std::sqrt(5.0)) / 2;
  for (const auto* g : {&i1, &i2}) {
    EXPECT_TRUE(has_axis(*g, {1, 0, 0}, 2));
    EXPECT_TRUE(has_axis(*g, {0, 1, 0}, 2));
    EXPECT_TRUE(has_axis(*g, {0, 0, 1}, 2));
    EXPECT_FALSE(has_axis(*g, {0, 0, 1}, 5));
  }
  EXPECT_FALSE(has_axis(i1, {1, 0, phi}, 5));
  EXPECT_FALSE(has_axis(i2, {phi, 0, -1}, 5));
  EXPECT_TRUE(has_axis(i4, {0, 0, 1}, 5));
  EXPECT_FALSE(has_axis(i3, {1, 0, phi}, 2));
  EXPECT_FALSE(has_axis(i4, {-1, 0, phi}, 2));
  for (const auto* g : {&i1, &i2, &i3, &i4}) {
    const Mat3 q = axis_angle({0, 0, 1}, g == &i1 || g == &i2 ? 90 : 180);
    const auto& other = g == &i1 ? i2 : g == &i2 ? i1 : g == &i3 ? i4 : i3;
    for (const Mat3& r : g->operators) EXPECT_TRUE(in_group(other.operators, q * r * transpose(q)));
  }
}

TEST(SymmetryGroups, UnknownNamesFail) {
  for (const char* bad : {"", "C", "D", "C0", "D0", "c00", "C-1", "C+2", "C 5", " C5", "C5 ", "C1000", "D99999999999",
                          "X", "Q2", "T1", "O2", "I5", "I0", "IH", "CI", "CS", "C2V", "D2H", "TD", "OH", "5",
                          "C5.0", "C1e2", "c4x"}) {
    try {
      make_symmetry_group(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const emcryo::Error& e) {
      EXPECT_EQ(std::string(e.what()), std::string("unknown symmetry '") + bad + "': use C<n>, D<n>, T, O or I");
    }
  }
}

}  // namespace
