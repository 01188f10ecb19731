// The M-step's 3D transforms on the device (internal to src/gpu; em::VolumeTransforms): a map
// reconstructed from its padded sums (BackProjector::reconstruct) and a map's padded transform
// (Projector's constructor), each a cuFFT of the padded m^3 grid between kernels that do what the
// CPU's loops do, in the same order of operations per voxel. volume_transforms.cu holds the device
// side (C++17, plain arrays); volume_transforms_host.cpp is the em::VolumeTransforms over it.
#pragma once
#include <cstddef>
#include <memory>

namespace emcryo::em {
class VolumeTransforms;  // emcryo/em/volume_transforms.hpp
class HeldGrid;          // emcryo/em/projector.hpp
}

namespace emcryo::gpu {

/// A padded transform left on its device (DeviceVolumeTransforms::padded_transform_kept): what the
/// scoring backend samples templates from in place, without the 0.5 GB (box 256) copy to the host
/// and back each half E-step.
class DeviceGrid {
 public:
  /// Room for `complex_values` on `device` (checked against its free memory).
  DeviceGrid(int device, std::size_t complex_values);
  ~DeviceGrid();
  DeviceGrid(const DeviceGrid&) = delete;
  DeviceGrid& operator=(const DeviceGrid&) = delete;
  /// The values (interleaved complex) into host memory.
  void copy_to(float* out) const;
  int device() const { return device_; }
  float* data() const { return data_; }
  std::size_t complex_values() const { return values_; }

 private:
  struct Storage;  // the transforms' checked device array (volume_transforms.cu)
  int device_;
  std::size_t values_;
  std::unique_ptr<Storage> storage_;
  float* data_ = nullptr;
};

/// The device grid behind a projector's held transform where it is one of ours (nullptr otherwise).
std::shared_ptr<const DeviceGrid> device_grid_of(const std::shared_ptr<const em::HeldGrid>& held);

/// The CUDA backend's em::VolumeTransforms on `device` (volume_transforms_host.cpp; shared, so that
/// its owner needs no complete type).
std::shared_ptr<em::VolumeTransforms> make_device_volume_transforms(int device);

class DeviceVolumeTransforms {
 public:
  explicit DeviceVolumeTransforms(int device);
  ~DeviceVolumeTransforms();
  DeviceVolumeTransforms(const DeviceVolumeTransforms&) = delete;
  DeviceVolumeTransforms& operator=(const DeviceVolumeTransforms&) = delete;

  /// The n^3 map of padded sums (m = n x padding; data: m x m x (m/2+1) complex, interleaved;
  /// weight: the same count of floats), `regularisation` (doubles, `shells_given` >= n/2+1 of them,
  /// or none) added to the weights per shell, as BackProjector::reconstruct.
  void reconstruct(int n, int padding, const float* data, const float* weight, const double* regularisation, int shells_given, float* out);
  /// The transform of the n^3 `volume` zero-padded to m^3 and divided by the gridding correction
  /// (m x m x (m/2+1) complex, interleaved), as Projector's constructor, left on the device.
  std::shared_ptr<DeviceGrid> padded_transform_kept(const float* volume, int n, int padding);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace emcryo::gpu
