// Particle batches prepared on the GPU (internal to src/gpu; the CUDA backend's prepare_batch()):
// raw images uploaded once per batch, masked, transformed by batched cuFFT R2C plans (cached per
// box), CTF computed and weighted by 1/sigma^2 at the frequency list, results back on the host
// exactly where em::PrepareBatch says. Like sampling.hpp, no CUDA type crosses this header.
#pragma once
#include <cstddef>
#include <memory>

#include "emcryo/em/scoring_backend.hpp"

namespace emcryo::gpu {

/// A prepared batch's full grids kept on the device (PrepareBatch::full_grids_on_device): per
/// particle `half` complex values (interleaved) and `half` CTF values, particle after particle.
struct KeptGrids {
  const float* unmasked = nullptr;
  const float* ctf_grid = nullptr;
  std::size_t half = 0;
};

class BatchPreparer {
 public:
  explicit BatchPreparer(int device);
  ~BatchPreparer();
  BatchPreparer(const BatchPreparer&) = delete;
  BatchPreparer& operator=(const BatchPreparer&) = delete;
  void prepare(const em::PrepareBatch& batch);
  /// Page-locked host memory the caller reads batches into (uploads need no staging copy).
  float* pinned_host(std::size_t floats);
  /// The last batch's full grids where it kept them on the device and `keys` (count of them) are
  /// its PrepareBatch::unmasked pointers in order; nullptr where it kept none. Fails where it kept
  /// them but the keys name other particles (their host grids were never written).
  const KeptGrids* kept_grids(const float* const* keys, int count) const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace emcryo::gpu
