// em::VolumeTransforms on one device (volume_transforms.hpp): the engine's types in, plain arrays
// to the device side.
#include "emcryo/core/error.hpp"
#include "emcryo/em/volume_transforms.hpp"
#include "volume_transforms.hpp"

namespace emcryo::gpu {

namespace {

class GpuVolumeTransforms final : public em::VolumeTransforms {
 public:
  explicit GpuVolumeTransforms(int device) : device_(device) {}

  std::vector<float> reconstruct(const em::BackProjector& sums, const std::vector<double>& regularisation_per_shell) override {
    const int n = sums.box();
    if (!regularisation_per_shell.empty() && regularisation_per_shell.size() < static_cast<std::size_t>(n / 2 + 1))
      fail("GPU reconstruction: {} regularisation values for {} shells (internal error)", regularisation_per_shell.size(), n / 2 + 1);
    std::vector<float> map(static_cast<std::size_t>(n) * n * n);
    device_.reconstruct(n, sums.padding(), reinterpret_cast<const float*>(sums.data_grid().data()), sums.weight_grid().data(),
                        regularisation_per_shell.empty() ? nullptr : regularisation_per_shell.data(),
                        static_cast<int>(regularisation_per_shell.size()), map.data());
    return map;
  }

  std::vector<em::Complex> padded_transform(const std::vector<float>& volume, int n, int padding) override {
    if (volume.size() != static_cast<std::size_t>(n) * n * n) fail("projector: volume is not {}^3", n);
    const int m = n * padding;
    std::vector<em::Complex> grid(image::half_size(m, m, m));
    device_.padded_transform(volume.data(), n, padding, reinterpret_cast<float*>(grid.data()));
    return grid;
  }

 private:
  DeviceVolumeTransforms device_;
};

}  // namespace

std::shared_ptr<em::VolumeTransforms> make_device_volume_transforms(int device) { return std::make_shared<GpuVolumeTransforms>(device); }

}  // namespace emcryo::gpu
