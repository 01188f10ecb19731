// What the CUDA backend needs to sample templates on the device (internal to src/gpu): the
// references' grids and the templates' poses as plain data. The .cu file is compiled as C++17 and
// never sees the engine's C++20 headers; sampling.cpp converts the engine's types.
#pragma once
#include <cstddef>
#include <memory>
#include <vector>

#include "emcryo/em/scoring_backend.hpp"

namespace emcryo::gpu {

/// Where template j samples the references: class k and the slice's two axes in padded-grid units
/// (A^T (kx, ky[, 0]) = kx (ax, ay, az) + ky (bx, by, bz)), as Projector(2D)::sample computes them.
struct TemplatePose {
  double ax, ay, az, bx, by, bz;
  int k, unused;
};

class DeviceGrid;  // volume_transforms.hpp

struct HostReferences {
  int dimensions = 0, padding = 2, m = 0, hm = 0;
  std::vector<const void*> classes;  // per class: cells() complex floats (nullptr where on_device holds them)
  std::vector<std::shared_ptr<const DeviceGrid>> on_device;  // per class: the grid kept on a device, or nullptr
  std::size_t cells() const {
    return (dimensions == 3 ? static_cast<std::size_t>(m) * static_cast<std::size_t>(m) : static_cast<std::size_t>(m)) *
           static_cast<std::size_t>(hm);
  }
};

/// The source's grids (dimensions 0 when it has none to sample from).
HostReferences host_references(const em::TemplateSource& source);
/// The poses of request templates as the device kernel reads them; checks the class indices.
void template_poses(const em::SampledTemplates& sampled, int count, const HostReferences& references, TemplatePose* out);
/// (kx, ky) of every frequency of the list, interleaved.
std::vector<int> frequency_pairs(const em::FrequencyList& list);
std::size_t frequency_count(const em::FrequencyList& list);
/// The box whose grid the list's frequencies index (the shift ramps' period).
int frequency_box(const em::FrequencyList& list);

}  // namespace emcryo::gpu
