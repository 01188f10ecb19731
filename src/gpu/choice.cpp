// The backend a job runs on: the CLI's choice (--gpu / --cpu) against the devices present.
#include <cstdlib>
#include <mutex>

#include "emcryo/core/error.hpp"
#include "emcryo/core/log.hpp"
#include "emcryo/core/mpi.hpp"
#include "emcryo/gpu/backend.hpp"

namespace emcryo::gpu {

namespace {
std::mutex choice_mutex;
DeviceChoice current_choice;
}  // namespace

void set_device_choice(const DeviceChoice& choice) {
  std::lock_guard lock(choice_mutex);
  current_choice = choice;
}

DeviceChoice device_choice() {
  std::lock_guard lock(choice_mutex);
  return current_choice;
}

std::vector<int> parse_device_list(const std::string& text) {
  std::vector<int> ids;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t end = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, end - start);
    char* stop = nullptr;
    const long id = std::strtol(item.c_str(), &stop, 10);
    if (item.empty() || *stop != '\0' || id < 0 || id > 1023)
      fail("--gpu: '{}' is not a list of device numbers such as 0 or 0,1", excerpt(text));
    for (int seen : ids)
      if (seen == id) fail("--gpu: device {} is listed twice in '{}'", id, excerpt(text));
    ids.push_back(static_cast<int>(id));
    start = end + 1;
  }
  return ids;
}

Precision parse_precision(const std::string& text) {
  if (text == "fp32") return Precision::fp32;
  if (text == "tf32") return Precision::tf32;
  if (text == "split-tf32") return Precision::split_tf32;
  fail("GPU precision '{}': expected fp32, tf32 or split-tf32", excerpt(text));
}

std::string precision_name(Precision p) {
  switch (p) {
    case Precision::fp32: return "fp32";
    case Precision::tf32: return "tf32";
    case Precision::split_tf32: return "split-tf32";
  }
  return "?";
}

namespace {
/// Without --gpu: one process uses every GPU; the ranks of an MPI job on one node take one GPU
/// each, by local rank (round robin when there are more ranks than GPUs), so that no two ranks
/// contend for one card while another idles.
std::vector<int> default_devices(const std::vector<DeviceInfo>& present) {
  if (mpi::local_size() > 1) return {present[static_cast<std::size_t>(mpi::local_rank()) % present.size()].id};
  std::vector<int> ids;
  for (const auto& d : present) ids.push_back(d.id);
  return ids;
}
}  // namespace

std::unique_ptr<em::ScoringBackend> make_backend() {
  const DeviceChoice choice = device_choice();
  if (choice.force_cpu) return em::make_cpu_backend();
  const auto present = devices();
  if (present.empty()) {
    if (!choice.gpus.empty()) fail("--gpu {}: no CUDA device: {}", choice.gpus.front(), no_device_reason());
    return em::make_cpu_backend();
  }
  CudaOptions options;
  options.devices = choice.gpus;
  if (options.devices.empty()) options.devices = default_devices(present);
  for (int id : options.devices)
    if (id >= static_cast<int>(present.size()))
      fail("--gpu {}: no such CUDA device (this machine has {}: 0 to {})", id, present.size(), present.size() - 1);
  if (const char* p = std::getenv("EMCRYO_GPU_PRECISION"); p && *p) options.precision = parse_precision(p);
  if (const char* t = std::getenv("EMCRYO_GPU_CPU_BELOW_FLOPS"); t && *t) options.cpu_below_flops = std::atof(t);
  if (const char* g = std::getenv("EMCRYO_GPU_SAMPLE"); g && *g) options.sample_templates = std::string(g) != "0";
  if (const char* m = std::getenv("EMCRYO_GPU_SUMS"); m && *m) options.template_sums = std::string(m) != "0";
  if (const char* r = std::getenv("EMCRYO_GPU_PREP"); r && *r) options.prepare_batches = std::string(r) != "0";
  if (const char* v = std::getenv("EMCRYO_GPU_BACKPROJECT"); v && *v) options.volume_sums = std::string(v) != "0";
  if (const char* v = std::getenv("EMCRYO_GPU_REDUCE"); v && *v) options.reduce_scores = std::string(v) != "0";
  if (const char* v = std::getenv("EMCRYO_GPU_MANY"); v && *v) options.score_many = std::string(v) != "0";
  if (const char* v = std::getenv("EMCRYO_GPU_TRANSFORMS"); v && *v) options.volume_transforms = std::string(v) != "0";
  if (const char* v = std::getenv("EMCRYO_GPU_GATHER"); v && *v) options.gather_prepared = std::string(v) != "0";
  if (const char* v = std::getenv("EMCRYO_GPU_MANY_ROWS"); v && *v) {
    options.many_tile_rows = std::atoi(v);
    if (options.many_tile_rows != 0 && options.many_tile_rows != 8 && options.many_tile_rows != 16 && options.many_tile_rows != 32)
      fail("EMCRYO_GPU_MANY_ROWS={}: the tiles' rows are 8, 16 or 32 (0: chosen per group)", v);
  }
  if (const char* v = std::getenv("EMCRYO_GPU_MANY_SPLIT"); v && *v) options.many_split = std::atoi(v);
  return make_cuda_backend(options);
}

}  // namespace emcryo::gpu
