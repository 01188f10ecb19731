// 2D analogues of Projector/BackProjector: in-plane rotated Fourier samples of a class average,
// and accumulation of rotated weighted data back into a padded 2D Fourier grid.
#pragma once
#include <vector>

#include "emcryo/image/fft.hpp"

namespace emcryo::em {

using image::Complex;

/// A list of half-plane frequencies (one per independent complex coefficient: kx > 0, or kx = 0
/// and ky > 0) up to a radius, in pixels of an n-pixel box, ordered by radius.
struct FrequencyList {
  int n = 0;
  double radius = 0;
  std::vector<int> kx, ky, shell;
  std::vector<int> index;  // into the n-box half grid
  std::size_t size() const { return kx.size(); }
};
FrequencyList make_frequency_list(int n, double radius);
/// How many of the list's first frequencies lie within `radius`: the list at that radius is this prefix.
std::size_t frequencies_within(const FrequencyList& list, double radius);

/// The in-plane rotation used everywhere in 2D, RELION's: A = [[c, s], [-s, c]] for angle psi.
/// A template at psi samples the class average's transform at A^T k.
class Projector2D {
 public:
  Projector2D(const std::vector<float>& image, int n, int padding = 2);
  /// Samples the rotated transform at the frequencies in `list` into out (list.size() values).
  void sample(double psi_degrees, const FrequencyList& list, Complex* out) const;
  /// The padded transform sample() interpolates (m x hm, m = padding() x n).
  const std::vector<Complex>& grid() const { return grid_; }
  int padding() const { return pad_; }
  int box() const { return n_; }

 private:
  int n_, pad_, m_, hm_;
  std::vector<Complex> grid_;
};

class BackProjector2D {
 public:
  explicit BackProjector2D(int n, int padding = 2);
  /// Adds values given at `list` frequencies of the template frame at angle psi.
  void insert(double psi_degrees, const FrequencyList& list, const Complex* data, const float* weight);
  /// data / (weight + regularisation[shell]) (floored), back to real space (n x n), gridding-corrected.
  std::vector<float> reconstruct(const std::vector<double>& regularisation) const;
  /// Mean weight per shell of the n grid (for the SSNR and the resolution estimate).
  std::vector<double> mean_weight_per_shell() const;

 private:
  int n_, pad_, m_, hm_;
  std::vector<Complex> data_;
  std::vector<float> weight_;
};

}  // namespace emcryo::em
