// The 3D back-projection on the device (internal to src/gpu; ScoringBackend::begin/add/end_volume_sums):
// per class a padded half volume held only within the reach of the inserts (the part that
// BackProjector::put moves), filled by atomic trilinear scatter, added into the host's
// BackProjector at the chunk's end. backprojection.cu holds the device side and is compiled as
// C++17; backprojection_host.cpp converts the engine's types (BackProjector, the batch's grids).
#pragma once
#include <cstddef>
#include <memory>
#include <vector>

#include "emcryo/em/scoring_backend.hpp"
#include "prepare.hpp"  // KeptGrids

namespace emcryo::gpu {

/// Where a chunk's device volumes live and which frequencies of a particle enter them.
struct VolumeLayout {
  int classes = 0, n = 0, m = 0;  // box, padded box
  int reach = -1;                 // BackProjector::reach_for the radius
  int side = 0, count = 0;        // the (kz, ky) rows per axis, the kx values per row
  bool full = false;              // the rows span the grid: indexed by storage index, not k + reach
  /// The frequencies insert() reads, in its order: (kx, ky, index in the n-box half grid) each.
  std::vector<int> frequencies;
  int frequency_count() const { return static_cast<int>(frequencies.size() / 3); }
  std::size_t cells() const { return static_cast<std::size_t>(side) * static_cast<std::size_t>(side) * static_cast<std::size_t>(count); }
  /// Device memory of the volumes: cells x classes x (complex data + float weight + a pad float).
  std::size_t bytes() const { return cells() * static_cast<std::size_t>(classes) * 16; }
};

VolumeLayout volume_layout(int classes, int n, int padding, double max_radius);

/// One batch's particle values at the layout's frequencies, as the kernel reads them:
/// x [particle][F] complex (interleaved), ctf [particle][F], inv_sigma2 [group][F]; x and ctf
/// null where the grids are on the device (gathered there).
void pack_volume_batch(const em::VolumeSumsBatch& batch, const VolumeLayout& layout, float* x, float* ctf, float* inv_sigma2);

/// Adds one class's device sums (laid out as BackProjector::put writes the reach; per cell Re, Im,
/// weight and a pad float) into `into`.
void add_device_volume(em::BackProjector& into, const VolumeLayout& layout, const float* cells);

/// Where an E-step's device back-projection spent its time (DeviceVolumeSums::take_timing): the
/// GPU's gather and insertion kernels (including their waits in the stream), and the host's waits
/// for the stream (staging buffer free, the kept grids read).
struct VolumeSumsTiming {
  long long insertions = 0, batches = 0;
  double kernels = 0, host_wait = 0;  // seconds
};

/// The device side: volumes, the frequency list, pinned staging and a stream of its own, so that a
/// batch's insertion overlaps the E-step's scoring of the next one.
class DeviceVolumeSums {
 public:
  explicit DeviceVolumeSums(int device);
  ~DeviceVolumeSums();
  DeviceVolumeSums(const DeviceVolumeSums&) = delete;
  DeviceVolumeSums& operator=(const DeviceVolumeSums&) = delete;
  void begin(int classes, int n, int padding, double max_radius);
  /// `grids`: the batch's full grids already on the device (gathered there instead of packed on the
  /// host and sent), or nullptr.
  void add(const em::VolumeSumsBatch& batch, const KeptGrids* grids);
  void end(const std::vector<em::BackProjector*>& into);
  /// The chunk's volumes added into totals on the device (ScoringBackend::fold_volume_sums).
  void fold();
  /// The totals added into into[k] (ScoringBackend::take_volume_totals).
  void take_totals(const std::vector<em::BackProjector*>& into);
  /// The time since the last call (waits for the stream).
  VolumeSumsTiming take_timing();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace emcryo::gpu
