#include "emcryo/jobs/align_map.hpp"

#include "emcryo/core/error.hpp"
#include "emcryo/core/log.hpp"
#include "emcryo/image/fourier.hpp"
#include "emcryo/image/map_tools.hpp"
#include "emcryo/io/mrc.hpp"
#include "emcryo/io/report.hpp"

namespace emcryo::jobs {

AlignMapResult align_and_compare(const std::vector<float>& map, const std::vector<float>& reference, int n, double pixel,
                                 double search_resolution, std::vector<float>* aligned_out) {
  AlignMapResult r;
  r.box = n, r.pixel_size = pixel;
  r.alignment = image::align_map(map, reference, n, pixel, search_resolution);
  auto aligned = image::apply_alignment(map, n, r.alignment);
  // The FSC inside a soft sphere: the maps' solvent (noise in a reconstruction) is left out.
  const auto sphere = image::soft_round_mask(n, 3, 0.45 * n, 3);
  r.fsc = image::fsc_3d(image::masked(aligned, sphere), image::masked(reference, sphere), n);
  r.resolution_05 = image::resolution_at(r.fsc, 0.5, n, pixel);
  r.resolution_0143 = image::resolution_at(r.fsc, 0.143, n, pixel);
  if (aligned_out) *aligned_out = std::move(aligned);
  return r;
}

AlignMapResult run_align_map(const AlignMapOptions& o) {
  io::MrcReader a(o.map), b(o.reference);
  if (a.nx() != a.ny() || a.ny() != a.nz()) fail("{}: the map must be cubic (it is {}x{}x{})", o.map, a.nx(), a.ny(), a.nz());
  if (b.nx() != b.ny() || b.ny() != b.nz())
    fail("{}: the reference must be cubic (it is {}x{}x{})", o.reference, b.nx(), b.ny(), b.nz());
  const int n = b.nx();
  const double pixel = b.pixel_size() > 0 ? b.pixel_size() : (a.pixel_size() > 0 ? a.pixel_size() : 1.0);
  auto map = a.read_all();
  const double map_pixel = a.pixel_size() > 0 ? a.pixel_size() : pixel;
  if (a.nx() != n || std::abs(map_pixel - pixel) > 1e-3 * pixel) {
    log::info("align-map: {} ({} px, {:.3f} Å/px) resampled to the reference's {} px at {:.3f} Å/px", o.map, a.nx(), map_pixel, n, pixel);
    map = image::rescale_volume(map, a.nx(), map_pixel, n, pixel);
  }
  if (!io::all_finite(map.data(), map.size())) fail("{}: NaN or Inf voxels", o.map);
  const auto reference = b.read_all();
  if (!io::all_finite(reference.data(), reference.size())) fail("{}: NaN or Inf voxels", o.reference);
  std::vector<float> aligned;
  auto r = align_and_compare(map, reference, n, pixel, o.search_resolution, &aligned);
  if (!o.out_map.empty()) {
    io::MrcWriteOptions w;
    w.pixel_size = pixel;
    io::write_mrc(o.out_map, aligned, n, n, n, w);
  }
  if (!o.out_fsc.empty()) io::write_fsc_star(o.out_fsc, r.fsc, n, pixel);
  return r;
}

}  // namespace emcryo::jobs
