// The host side of the device back-projection (backprojection.hpp): the layout and frequencies
// from BackProjector's own rules, a batch's grids gathered at those frequencies, and the device
// sums added into the host's BackProjector.
#include <algorithm>
#include <cmath>

#include "backprojection.hpp"
#include "emcryo/core/error.hpp"
#include "emcryo/em/projector.hpp"
#include "emcryo/image/fft.hpp"

namespace emcryo::gpu {

namespace {
std::size_t sz(int v) { return static_cast<std::size_t>(v); }
}  // namespace

VolumeLayout volume_layout(int classes, int n, int padding, double max_radius) {
  VolumeLayout l;
  l.classes = classes, l.n = n, l.m = n * padding;
  l.reach = em::BackProjector::reach_for(n, padding, max_radius);
  l.full = 2 * l.reach + 1 >= l.m;
  l.side = l.full ? l.m : 2 * l.reach + 1;
  l.count = std::min(l.reach, l.m / 2) + 1;
  // The frequencies BackProjector::insert visits on an n-box half grid, in its order (the kx = 0
  // column only for ky >= 0: the 3D grid's Hermitian symmetry is restored at reconstruction).
  const int h = n / 2 + 1;
  const double r_max = std::min(max_radius, n / 2.0 - 1.0), r2_max = r_max * r_max;
  const int ky_limit = std::min(n / 2 - 1, static_cast<int>(std::ceil(r_max)));
  for (int ky = -ky_limit; ky <= ky_limit; ++ky)
    for (int kx = 0; kx < h; ++kx) {
      if (kx * kx + ky * ky > r2_max) break;
      if (kx == 0 && ky < 0) continue;
      l.frequencies.insert(l.frequencies.end(), {kx, ky, image::storage_index(ky, n) * h + kx});
    }
  return l;
}

void pack_volume_batch(const em::VolumeSumsBatch& batch, const VolumeLayout& layout, float* x, float* ctf, float* inv_sigma2) {
  const int F = layout.frequency_count();
  const int* freq = layout.frequencies.data();
  if (batch.unmasked.size() != sz(batch.particles) || batch.ctf.size() != sz(batch.particles) || batch.group.size() != sz(batch.particles))
    fail("GPU back-projection: a batch of {} particles with {} grids (internal error)", batch.particles, batch.unmasked.size());
  if (x && ctf) {
#pragma omp parallel for schedule(static)
    for (int b = 0; b < batch.particles; ++b) {
      const float* u = batch.unmasked[sz(b)];
      const float* c = batch.ctf[sz(b)];
      float* xb = x + 2 * sz(b) * sz(F);
      float* cb = ctf + sz(b) * sz(F);
      for (int f = 0; f < F; ++f) {
        const auto i = sz(freq[3 * f + 2]);
        xb[2 * f] = u[2 * i], xb[2 * f + 1] = u[2 * i + 1];
        cb[f] = c[i];
      }
    }
  }
  for (std::size_t g = 0; g < batch.inv_sigma2.size(); ++g)
    for (int f = 0; f < F; ++f) inv_sigma2[g * sz(F) + sz(f)] = batch.inv_sigma2[g][sz(freq[3 * f + 2])];
}

void add_device_volume(em::BackProjector& into, const VolumeLayout& layout, const float* cells) {
  if (into.box() * into.padding() != layout.m || into.reached_size(layout.reach) != layout.cells())
    fail("GPU back-projection: sums of {} values for a volume whose reach holds {} (internal error)", layout.cells(),
         into.reached_size(layout.reach));
  into.add_reached(layout.reach, cells, 4);
}

}  // namespace emcryo::gpu
