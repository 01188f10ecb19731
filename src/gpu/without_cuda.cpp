// A build without CUDA (EMCRYO_CUDA off): no devices, and no CUDA backend to make.
#include "emcryo/core/error.hpp"
#include "emcryo/gpu/backend.hpp"

namespace emcryo::gpu {

bool built_with_cuda() { return false; }
std::vector<DeviceInfo> devices() { return {}; }
std::string runtime_library_problem() { return no_device_reason(); }
std::string no_device_reason() { return "emcryo was built without CUDA (configure with -DEMCRYO_CUDA=ON)"; }

std::unique_ptr<em::ScoringBackend> make_cuda_backend(const CudaOptions&) {
  fail("the CUDA backend is not in this build: emcryo was built without CUDA (configure with -DEMCRYO_CUDA=ON)");
}

}  // namespace emcryo::gpu
