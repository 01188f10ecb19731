#include "sampling.hpp"

#include <cmath>
#include <numbers>

#include "emcryo/core/error.hpp"
#include "emcryo/em/expectation.hpp"
#include "volume_transforms.hpp"

namespace emcryo::gpu {

HostReferences host_references(const em::TemplateSource& source) {
  const em::ReferenceGrids g = source.grids();
  HostReferences r;
  if ((g.dimensions != 2 && g.dimensions != 3) || g.classes.empty()) return r;
  r.dimensions = g.dimensions, r.padding = g.padding, r.m = g.m, r.hm = g.hm;
  r.classes.assign(g.classes.begin(), g.classes.end());
  r.on_device.resize(r.classes.size());
  for (std::size_t k = 0; k < g.held.size() && k < r.on_device.size(); ++k) {
    if (g.held[k]) r.on_device[k] = device_grid_of(g.held[k]);
    if (!r.classes[k] && !r.on_device[k]) return HostReferences{};  // held somewhere this backend cannot read: sampled on the host
  }
  return r;
}

void template_poses(const em::SampledTemplates& sampled, int count, const HostReferences& references, TemplatePose* out) {
  const double pad = references.padding;
  const int classes = static_cast<int>(references.classes.size());
  for (int j = 0; j < count; ++j) {
    const auto& [k, o] = sampled.poses[j];
    if (k < 0 || k >= classes) fail("GPU template sampling: class {} of {} (internal error)", k, classes);
    TemplatePose& p = out[j];
    p = TemplatePose{};
    p.k = k;
    if (references.dimensions == 2) {  // Projector2D: A^T k with A = [[c, s], [-s, c]]
      const double a = o.psi * std::numbers::pi / 180, c = std::cos(a), s = std::sin(a);
      p.ax = c * pad, p.ay = s * pad, p.bx = -s * pad, p.by = c * pad;
    } else {  // Projector: the first two rows of A
      const geometry::Mat3 a = geometry::euler_to_matrix(o);
      p.ax = a(0, 0) * pad, p.ay = a(0, 1) * pad, p.az = a(0, 2) * pad;
      p.bx = a(1, 0) * pad, p.by = a(1, 1) * pad, p.bz = a(1, 2) * pad;
    }
  }
}

std::vector<int> frequency_pairs(const em::FrequencyList& list) {
  std::vector<int> pairs(2 * list.size());
  for (std::size_t f = 0; f < list.size(); ++f) pairs[2 * f] = list.kx[f], pairs[2 * f + 1] = list.ky[f];
  return pairs;
}

std::size_t frequency_count(const em::FrequencyList& list) { return list.size(); }

int frequency_box(const em::FrequencyList& list) { return list.n; }

}  // namespace emcryo::gpu
