// Kept in its own translation unit: gemmi's headers are heavy to compile.
#include <gemmi/gz.hpp>
#include <gemmi/mmread.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "emcryo/core/error.hpp"
#include "emcryo/io/mrc.hpp"
#include "emcryo/image/fourier.hpp"
#include "emcryo/jobs/simulate.hpp"

namespace emcryo::jobs {

std::vector<float> model_to_map(const std::string& model_path, int n, double pixel_size, const ModelMapOptions& options) {
  const auto& chains = options.chains;
  const bool exclude = options.exclude;
  const std::array<double, 3>* centre = options.centre;
  std::array<double, 3>* centre_used = options.centre_used;
  const std::string lower = [&] {
    std::string s = model_path;
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  }();
  if (lower.ends_with(".mrc") || lower.ends_with(".map")) {
    if (!chains.empty()) fail("{}: chains can be chosen only in an atomic model (PDB/mmCIF), not in a map", model_path);
    io::MrcReader reader(model_path);
    if (reader.nx() != reader.ny() || reader.ny() != reader.nz())
      fail("{}: the map must be a cube (it is {}x{}x{})", model_path, reader.nx(), reader.ny(), reader.nz());
    auto map = reader.read_all();
    // Resample to the requested pixel size and box through Fourier cropping/padding.
    const double src_pixel = reader.pixel_size() > 0 ? reader.pixel_size() : pixel_size;
    if (reader.nx() != n || std::abs(src_pixel - pixel_size) > 1e-3 * pixel_size)
      map = image::rescale_volume(map, reader.nx(), src_pixel, n, pixel_size);
    return map;
  }

  if (!std::filesystem::exists(model_path)) fail("{}: model file not found", model_path);
  gemmi::Structure structure;
  try {
    structure = gemmi::read_structure(gemmi::MaybeGzipped(model_path));
  } catch (const std::exception& e) {
    fail("{}: cannot read the model: {}", model_path, e.what());
  }
  if (structure.models.empty()) fail("{}: the file holds no model", model_path);
  struct Atom { double x, y, z, weight; };
  std::vector<Atom> atoms;
  double cx = 0, cy = 0, cz = 0, total = 0;
  for (const auto& name : chains)
    if (std::none_of(structure.models.front().chains.begin(), structure.models.front().chains.end(),
                     [&](const auto& c) { return c.name == name; }))
      fail("{}: no chain '{}' in the model", model_path, excerpt(name));
  for (const auto& chain : structure.models.front().chains) {
    const bool listed = std::find(chains.begin(), chains.end(), chain.name) != chains.end();
    const bool wanted = chains.empty() || (exclude ? !listed : listed);
    for (const auto& residue : chain.residues)
      for (const auto& atom : residue.atoms) {
        const double w = atom.element.atomic_number() * atom.occ;
        if (wanted) atoms.push_back({atom.pos.x, atom.pos.y, atom.pos.z, w});
        cx += w * atom.pos.x, cy += w * atom.pos.y, cz += w * atom.pos.z, total += w;
      }
  }
  if (atoms.empty() || total <= 0) fail("{}: the model has no atoms{}", model_path, chains.empty() ? "" : " in the chosen chains");
  cx /= total, cy /= total, cz /= total;
  if (centre) cx = (*centre)[0], cy = (*centre)[1], cz = (*centre)[2];
  if (centre_used) *centre_used = {cx, cy, cz};

  // Each atom as a Gaussian of 1 pixel (at least 1 Å) standard deviation: band-limited enough for
  // the pixel size, sharp enough for every resolution the box can hold.
  const double sigma = std::max(1.0, pixel_size) / pixel_size;
  const int reach = static_cast<int>(std::ceil(3 * sigma));
  std::vector<float> map(static_cast<std::size_t>(n) * n * n, 0.0f);
  const double c = n / 2;
  for (const auto& a : atoms) {
    const double px = (a.x - cx) / pixel_size + c, py = (a.y - cy) / pixel_size + c, pz = (a.z - cz) / pixel_size + c;
    const int ix = static_cast<int>(std::lround(px)), iy = static_cast<int>(std::lround(py)),
              iz = static_cast<int>(std::lround(pz));
    for (int z = std::max(0, iz - reach); z <= std::min(n - 1, iz + reach); ++z)
      for (int y = std::max(0, iy - reach); y <= std::min(n - 1, iy + reach); ++y)
        for (int x = std::max(0, ix - reach); x <= std::min(n - 1, ix + reach); ++x) {
          const double d2 = (x - px) * (x - px) + (y - py) * (y - py) + (z - pz) * (z - pz);
          map[(static_cast<std::size_t>(z) * n + y) * n + x] +=
              static_cast<float>(a.weight * std::exp(-d2 / (2 * sigma * sigma)));
        }
  }
  return map;
}

}  // namespace emcryo::jobs
