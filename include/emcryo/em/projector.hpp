// Central slices of a 3D map and their inverse, insertion into a padded Fourier volume.
#pragma once
#include <memory>
#include <mutex>
#include <vector>

#include "emcryo/core/mpi.hpp"
#include "emcryo/core/zero_pages.hpp"
#include "emcryo/em/projector2d.hpp"
#include "emcryo/geometry/rotation.hpp"
#include "emcryo/image/fft.hpp"

namespace emcryo::em {

using image::Complex;

/// A projector's padded transform held outside host memory (a GPU backend's stays on its card,
/// where the templates are sampled): copied to the host only if host code reads it.
class HeldGrid {
 public:
  virtual ~HeldGrid() = default;
  /// Copies the transform (m x m x hm values) into out.
  virtual void copy_to(Complex* out) const = 0;
};

/// A map held as the transform of its zero-padded volume (padding x2 by default), with the
/// real-space gridding pre-correction for trilinear interpolation, ready for central slices.
class Projector {
 public:
  Projector(const std::vector<float>& volume, int n, int padding = 2);
  /// A projector from the transform another one holds (grid()), e.g. made on another rank.
  Projector(std::vector<Complex> grid, int n, int padding = 2);
  /// A projector over a transform held elsewhere (VolumeTransforms::projector on a device): the
  /// host copy is made on the first call of grid(), sample() or project().
  Projector(std::shared_ptr<const HeldGrid> held, int n, int padding = 2);
  int box() const { return n_; }

  /// The 2D half grid (out_n/2+1 by out_n) of the projection at rotation `a` (RELION's matrix),
  /// frequencies up to `max_radius` (pixels of the n-box grid; out_n may be smaller than n for a
  /// Fourier-cropped image, in which case index k still means frequency k/(n*pixel)). Zero beyond.
  void project(const geometry::Mat3& a, Complex* out, int out_n, double max_radius) const;
  /// The central slice at rotation `a` sampled at the listed frequencies only.
  void sample(const geometry::Mat3& a, const FrequencyList& list, Complex* out) const;
  /// The padded transform sample() interpolates (m x m x hm, m = padding() x box()); a held one is
  /// copied here on the first call (from any thread, once).
  const std::vector<Complex>& grid() const;
  /// The same transform moved out of a projector about to go (no copy: 0.5 GB at box 256).
  std::vector<Complex> take_grid() && {
    grid();
    return std::move(grid_);
  }
  /// The transform where it is held outside host memory (nullptr: only on the host).
  const std::shared_ptr<const HeldGrid>& held() const { return held_; }
  int padding() const { return pad_; }

 private:
  int n_, pad_, m_, hm_;
  std::shared_ptr<const HeldGrid> held_;
  std::unique_ptr<std::once_flag> fetched_;  // held_: the host copy's one fetch
  mutable std::vector<Complex> grid_;
};

/// Accumulates weighted slices in a padded Fourier volume and reconstructs a map:
/// V = sum(w CTF X) / (sum(w CTF^2) + regularisation).
class BackProjector {
 public:
  explicit BackProjector(int n, int padding = 2);
  int box() const { return n_; }
  int padding() const { return pad_; }

  /// Adds a slice at rotation `a`: `data` (= CTF * X, weighted) and `weight` (= CTF^2, weighted)
  /// on a half grid of size in_n, frequencies up to max_radius (pixels of the n grid); the
  /// weights are multiplied by weight_scale (one CTF^2 grid serves every pose of a particle).
  void insert(const geometry::Mat3& a, const Complex* data, const float* weight, int in_n,
              double max_radius, float weight_scale = 1.0f);
  /// One slice of insert_all: its rotation, data and weight scale (the weight grid is shared).
  struct Slice {
    geometry::Mat3 a;
    const Complex* data;
    float weight_scale;
  };
  /// insert() of each slice, with one `weight` grid (a particle's CTF^2), frequency by frequency
  /// across the slices rather than slice by slice: a particle's orientations lie a few degrees apart,
  /// so at each frequency they touch neighbouring voxels, where whole slices one after another
  /// each walked the volume again. The same terms as insert() per slice, added in another order.
  void insert_all(const std::vector<Slice>& slices, const float* weight, int in_n, double max_radius);
  void add(const BackProjector& other);
  /// Adds lanes[0] + lanes[1] + ... (summed in that order) and clears the lanes, in one pass: the
  /// same sums as folding the lanes into lanes[0] and adding that.
  void add_and_clear(std::vector<BackProjector>& lanes);
  void clear();
  /// The sums through a message (a chunk's share of a reconstruction, to every rank): only the
  /// part that inserts so far can have touched (the ball of frequencies within their reach), so
  /// a chunk inserted to a low working limit moves and folds a small part of the volume. The rest
  /// holds exact zeros, so the fold is bitwise the same as over the whole volume.
  void put(mpi::Message& message) const;
  /// Adds the sums put() wrote, in the same order as add().
  void add_from(mpi::Message& message);
  /// Replaces the sums with those put() wrote (a total shared by rank 0).
  void take_from(mpi::Message& message);
  /// The padded-grid reach of inserts up to max_radius: every voxel they touch has |kx|, |ky|,
  /// |kz| <= it (and |k| <= reach + 1). A device's sums within a reach are laid out as a cube: rows
  /// (kz, ky) from -reach to reach (every row, in storage order, where 2 reach + 1 spans the grid),
  /// kx from 0 to min(reach, m/2); reached_size() values in all.
  static int reach_for(int n, int padding, double max_radius);
  std::size_t reached_size(int reach) const;
  /// Adds sums laid out so (a device's: ScoringBackend::end_volume_sums), in the order of add():
  /// per voxel Re and Im of the data and the weight, the next voxel `stride` floats on.
  void add_reached(int reach, const float* cells, int stride);

  /// The map. `regularisation_per_shell` (size >= n/2+1, indexed by shell of the n grid, may be
  /// empty) is added to the weights; weights are also floored at 1/1000 of their shell mean.
  std::vector<float> reconstruct(const std::vector<double>& regularisation_per_shell = {}) const;
  /// Mean weight per shell (of the n grid), for Wiener regularisation from an FSC.
  std::vector<double> mean_weight_per_shell() const;
  /// The padded half grids summed so far (m x m x hm, m = padding() x box()), data and weight
  /// apart: what a reconstruction (here, or a device's VolumeTransforms) reads.
  void split_grids(std::vector<Complex>& data, std::vector<float>& weight) const;
  /// Floats per voxel of the sums: Re and Im of the data, the weight, and one unused, so that a
  /// trilinear corner and its x + 1 neighbour are one 32-byte run (one register, mostly one cache
  /// line) where data and weight apart were two runs in two arrays.
  static constexpr std::size_t kCellFloats = 4;

 private:
  void enforce_hermitian(std::vector<Complex>& data, std::vector<float>& weight) const;
  /// The reached part put() wrote, added to the sums or copied over them.
  void read_reached(mpi::Message& message, bool add);
  void merge_reached(int reach, const Complex* data, const float* weight, std::size_t size, bool add);
  /// Calls row(first, count) for each run of voxels with |k| <= reach + 1 (all of them where that
  /// ball spans the grid; none where reach is negative).
  /// parallel: the planes shared among the threads (row must then touch only its own run).
  template <class F>
  void for_each_reached_row(int reach, F row, bool parallel = false) const;
  /// Calls row(first, count) for each run of voxels with |kx|, |ky|, |kz| <= reach: the cube a
  /// device's sums are laid out in (all of the grid where 2 reach + 1 spans it).
  template <class F>
  void for_each_cube_row(int reach, F row) const;
  int n_, pad_, m_, hm_;
  int reach_ = -1;  // padded-grid frequency beyond which every voxel is zero; -1: all are
  float* cell(std::size_t voxel) { return cells_.data() + kCellFloats * voxel; }
  const float* cell(std::size_t voxel) const { return cells_.data() + kCellFloats * voxel; }
  ZeroPagesVector<float> cells_;  // kCellFloats per voxel; pages beyond the inserts' reach are never touched
};

/// Real-space correction for trilinear interpolation on a grid of m points: sinc^2 per axis.
float gridding_correction(int x, int y, int z, int center, int m);

}  // namespace emcryo::em
