// em::VolumeTransforms on one device (volume_transforms.hpp): the engine's types in, plain arrays
// to the device side.
#include "emcryo/core/error.hpp"
#include "emcryo/em/volume_transforms.hpp"
#include "volume_transforms.hpp"

namespace emcryo::gpu {

namespace {

/// A projector's transform kept on the device it was made on.
class HeldOnDevice final : public em::HeldGrid {
 public:
  explicit HeldOnDevice(std::shared_ptr<const DeviceGrid> grid) : grid_(std::move(grid)) {}
  void copy_to(em::Complex* out) const override { grid_->copy_to(reinterpret_cast<float*>(out)); }
  const std::shared_ptr<const DeviceGrid>& grid() const { return grid_; }

 private:
  std::shared_ptr<const DeviceGrid> grid_;
};

class GpuVolumeTransforms final : public em::VolumeTransforms {
 public:
  explicit GpuVolumeTransforms(int device) : device_(device) {}

  std::vector<float> reconstruct(const em::BackProjector& sums, const std::vector<double>& regularisation_per_shell) override {
    const int n = sums.box();
    if (!regularisation_per_shell.empty() && regularisation_per_shell.size() < static_cast<std::size_t>(n / 2 + 1))
      fail("GPU reconstruction: {} regularisation values for {} shells (internal error)", regularisation_per_shell.size(), n / 2 + 1);
    std::vector<float> map(static_cast<std::size_t>(n) * n * n);
    std::vector<em::Complex> data;
    std::vector<float> weight;
    sums.split_grids(data, weight);
    device_.reconstruct(n, sums.padding(), reinterpret_cast<const float*>(data.data()), weight.data(),
                        regularisation_per_shell.empty() ? nullptr : regularisation_per_shell.data(),
                        static_cast<int>(regularisation_per_shell.size()), map.data());
    return map;
  }

  std::vector<em::Complex> padded_transform(const std::vector<float>& volume, int n, int padding) override {
    return projector(volume, n, padding).take_grid();
  }

  em::Projector projector(const std::vector<float>& volume, int n, int padding) override {
    if (volume.size() != static_cast<std::size_t>(n) * n * n) fail("projector: volume is not {}^3", n);
    return em::Projector(std::make_shared<HeldOnDevice>(device_.padded_transform_kept(volume.data(), n, padding)), n, padding);
  }

 private:
  DeviceVolumeTransforms device_;
};

}  // namespace

std::shared_ptr<const DeviceGrid> device_grid_of(const std::shared_ptr<const em::HeldGrid>& held) {
  const auto* ours = dynamic_cast<const HeldOnDevice*>(held.get());
  return ours ? ours->grid() : nullptr;
}

std::shared_ptr<em::VolumeTransforms> make_device_volume_transforms(int device) { return std::make_shared<GpuVolumeTransforms>(device); }

}  // namespace emcryo::gpu
