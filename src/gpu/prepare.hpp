// Particle batches prepared on the GPU (internal to src/gpu; the CUDA backend's prepare_batch()):
// raw images uploaded once per batch, masked, transformed by batched cuFFT R2C plans (cached per
// box), CTF computed and weighted by 1/sigma^2 at the frequency list, results back on the host
// exactly where em::PrepareBatch says. Like sampling.hpp, no CUDA type crosses this header.
#pragma once
#include <cstddef>
#include <memory>
#include <vector>

#include "emcryo/em/scoring_backend.hpp"

namespace emcryo::gpu {

/// A prepared batch's full grids kept on the device (PrepareBatch::full_grids_on_device): per
/// particle `half` complex values (interleaved) and `half` CTF values, particle after particle.
struct KeptGrids {
  const float* unmasked = nullptr;
  const float* ctf_grid = nullptr;
  std::size_t half = 0;
};

/// The last prepared batch's particles as they stay on the device after their copy to the host:
/// x (complex, interleaved), C and C^2/sigma^2, `frequencies` per particle, particle after
/// particle; groups and 1/sigma^2 ([group][frequencies]) as uploaded. The host arrays they were
/// copied to (host_x, ...) name them, so that a request pointing there can be served from here.
struct KeptParticles {
  const float *x = nullptr, *ctf = nullptr, *ctf2 = nullptr;
  const int* group = nullptr;
  const float* inv_sigma2 = nullptr;
  int count = 0, frequencies = 0;
  const float *host_x = nullptr, *host_ctf = nullptr, *host_ctf2 = nullptr;
  std::vector<int> host_group;          // per particle (a copy)
  std::vector<float> host_inv_sigma2;   // [group][frequencies] (a copy)
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
  /// The last batch's prepared particles on the device (nullptr before the first batch).
  const KeptParticles* kept_particles() const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace emcryo::gpu
