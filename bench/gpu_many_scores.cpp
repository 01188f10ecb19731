// score_many's scores kernel alone at a local search's shapes, for each tile shape and inner-
// dimension split: the kernel's time (CUDA events), useful TFLOP/s (padding not counted), and the
// largest difference from a double-precision sum on the host for a sample of scores.
//   gpu_many_scores [requests shifts templates frequencies repeats]
// Defaults: one group of a box-256 refine's last local pass (~120 requests of 9 shifts x 53
// templates at ~6,000 frequencies: what a 512 MB group holds).
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

#include "gpu/many.hpp"

using namespace emcryo;
using namespace emcryo::gpu;

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    fmt::print("CUDA: {} failed: {}\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

template <class T>
T* upload(const std::vector<T>& host) {
  T* device = nullptr;
  check(cudaMalloc(&device, std::max<std::size_t>(1, host.size()) * sizeof(T)), "cudaMalloc");
  check(cudaMemcpy(device, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
  return device;
}

}  // namespace

int main(int argc, char** argv) {
  const auto arg = [&](int i, int fallback) { return argc > i ? std::atoi(argv[i]) : fallback; };
  const int N = arg(1, 120), T = arg(2, 9), J = arg(3, 53), F = arg(4, 6000), repeats = arg(5, 20), width = 2 * F;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    fmt::print("no CUDA device: nothing to measure\n");
    return 0;
  }
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> rows(static_cast<std::size_t>(N) * T * width), templates(static_cast<std::size_t>(N) * J * width), norms(static_cast<std::size_t>(N) * J);
  for (auto& v : rows) v = normal(rng);
  for (auto& v : templates) v = normal(rng);
  for (auto& v : norms) v = 100 + std::abs(normal(rng));
  std::vector<ManyRequest> table;
  std::vector<em::ScoreRequest> requests(static_cast<std::size_t>(N));
  for (int i = 0; i < N; ++i) {
    table.push_back(ManyRequest{i * T, T, i * J, J, static_cast<long long>(i) * T * J});
    requests[static_cast<std::size_t>(i)].row_count = T, requests[static_cast<std::size_t>(i)].template_count = J;
  }
  const long long NS = static_cast<long long>(N) * T * J;
  float *d_rows = upload(rows), *d_templates = upload(templates), *d_norms = upload(norms);
  ManyRequest* d_table = upload(table);
  float *d_scores = nullptr, *d_partial = nullptr;
  check(cudaMalloc(&d_scores, static_cast<std::size_t>(NS) * sizeof(float)), "cudaMalloc");
  const double useful = 4.0 * F * static_cast<double>(NS);
  fmt::print("{}: {} requests x {} shifts x {} templates at {} frequencies: {:.1f} GFLOP of useful products a call\n", prop.name, N, T, J, F,
             useful / 1e9);
  fmt::print("{:>5} {:>6} {:>7} {:>10} {:>12} {:>18}\n", "rows", "split", "blocks", "ms/call", "TFLOP/s", "max |err| / |score|");
  // Sampled scores against the host's double sums.
  std::vector<long long> sample;
  for (int s = 0; s < 64; ++s) sample.push_back(static_cast<long long>(rng() % static_cast<unsigned>(NS)));
  const int blocks_wanted = 16 * prop.multiProcessorCount;
  for (const int tile_rows : {32, 16, 8})
    for (const int forced_split : {1, 0}) {
      const ManyTiling tiling = choose_many_tiling(requests, 0, requests.size(), width, blocks_wanted, tile_rows, forced_split);
      std::vector<ManyTile> tiles(static_cast<std::size_t>(N) * static_cast<std::size_t>(many_tiles_of(T, J, tiling)));
      int listed = 0;
      for (int i = 0; i < N; ++i) listed += list_many_tiles(i, T, J, tiling, tiles.data() + listed);
      ManyTile* d_tiles = upload(tiles);
      check(cudaFree(d_partial), "cudaFree");
      check(cudaMalloc(&d_partial, static_cast<std::size_t>(NS) * static_cast<std::size_t>(tiling.split) * sizeof(float)), "cudaMalloc");
      const auto launch = [&] {
        launch_many_scores(d_scores, d_partial, NS, tiling, d_tiles, listed, d_table, d_rows, d_templates, d_norms, F, false, nullptr);
      };
      launch();
      cudaEvent_t start, stop;
      check(cudaEventCreate(&start), "cudaEventCreate"), check(cudaEventCreate(&stop), "cudaEventCreate");
      check(cudaEventRecord(start), "cudaEventRecord");
      for (int r = 0; r < repeats; ++r) launch();
      check(cudaEventRecord(stop), "cudaEventRecord");
      check(cudaEventSynchronize(stop), "cudaEventSynchronize");
      float ms = 0;
      check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
      std::vector<float> scores(static_cast<std::size_t>(NS));
      check(cudaMemcpy(scores.data(), d_scores, scores.size() * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
      double worst = 0;
      for (const long long at : sample) {
        const long long i = at / (static_cast<long long>(T) * J), t = at / J % T, j = at % J;
        double sum = 0;
        for (int k = 0; k < width; ++k)
          sum += static_cast<double>(rows[static_cast<std::size_t>((i * T + t) * width + k)]) * templates[static_cast<std::size_t>((i * J + j) * width + k)];
        const double want = sum - 0.5 * norms[static_cast<std::size_t>(i * J + j)];
        worst = std::max(worst, std::abs(scores[static_cast<std::size_t>(at)] - want) / std::max(1.0, std::abs(want)));
      }
      const double seconds = ms / 1e3 / repeats;
      fmt::print("{:>5} {:>6} {:>7} {:>10.3f} {:>12.2f} {:>18.3g}\n", tiling.rows, tiling.split, listed * tiling.split, 1e3 * seconds,
                 useful / seconds / 1e12, worst);
      cudaEventDestroy(start), cudaEventDestroy(stop), cudaFree(d_tiles);
    }
  return 0;
}
