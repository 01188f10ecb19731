// One home for MPI: with EMCRYO_HAVE_MPI the calls go to OpenMPI; without, the same interface
// describes one process (size 1, sums and broadcasts are no-ops).
#include "emcryo/core/mpi.hpp"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>

#ifdef EMCRYO_HAVE_MPI
#include <mpi.h>
#endif

#include "emcryo/core/error.hpp"

namespace emcryo::mpi {

namespace {
[[maybe_unused]] bool g_started = false;  // init() started MPI (the program runs under mpirun/srun)
int g_rank = 0, g_size = 1, g_local_rank = 0, g_local_size = 1;

/// mpirun (OpenMPI, MPICH's hydra) and srun set one of these in every rank's environment.
bool launched_by_mpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (std::getenv(name)) return true;
  return false;
}
}  // namespace

bool built_with_mpi() {
#ifdef EMCRYO_HAVE_MPI
  return true;
#else
  return false;
#endif
}

void init(int& argc, char**& argv) {
#ifdef EMCRYO_HAVE_MPI
  if (g_started || !launched_by_mpi()) return;
  int provided = 0;
  // Only the main thread calls MPI; OpenMP threads work between the calls.
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  g_started = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g_rank, MPI_INFO_NULL, &local);
  MPI_Comm_rank(local, &g_local_rank);
  MPI_Comm_size(local, &g_local_size);
  MPI_Comm_free(&local);
#else
  (void)argc, (void)argv;
  if (launched_by_mpi() && (std::getenv("OMPI_COMM_WORLD_RANK") || std::getenv("PMI_RANK")))
    std::fprintf(stderr, "warning: started by mpirun, but this emcryo was built without MPI (EMCRYO_MPI): "
                         "every rank runs the whole job alone\n");
#endif
}

void finalize() {
#ifdef EMCRYO_HAVE_MPI
  if (g_started) MPI_Finalize();
  g_started = false;
#endif
}

int rank() { return g_rank; }
int size() { return g_size; }
bool is_root() { return g_rank == 0; }
int local_rank() { return g_local_rank; }
int local_size() { return g_local_size; }

void abort(int code) {
  std::fflush(stderr);
  std::fflush(stdout);
#ifdef EMCRYO_HAVE_MPI
  if (g_started) MPI_Abort(MPI_COMM_WORLD, code);
#endif
  std::exit(code);
}

void sum(std::span<double> values) {
#ifdef EMCRYO_HAVE_MPI
  if (g_size > 1 && !values.empty())
    MPI_Allreduce(MPI_IN_PLACE, values.data(), static_cast<int>(values.size()), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
#else
  (void)values;
#endif
}

void sum(std::span<std::int64_t> values) {
#ifdef EMCRYO_HAVE_MPI
  if (g_size > 1 && !values.empty())
    MPI_Allreduce(MPI_IN_PLACE, values.data(), static_cast<int>(values.size()), MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
#else
  (void)values;
#endif
}

void broadcast(std::vector<std::byte>& bytes, int root) {
#ifdef EMCRYO_HAVE_MPI
  if (g_size == 1) return;
  std::uint64_t n = bytes.size();
  MPI_Bcast(&n, 1, MPI_UINT64_T, root, MPI_COMM_WORLD);
  bytes.resize(n);
  // MPI counts are ints: send in pieces of at most 1 GiB.
  for (std::uint64_t done = 0; done < n;) {
    const auto piece = static_cast<int>(std::min<std::uint64_t>(n - done, 1u << 30));
    MPI_Bcast(bytes.data() + done, piece, MPI_BYTE, root, MPI_COMM_WORLD);
    done += static_cast<std::uint64_t>(piece);
  }
#else
  (void)bytes, (void)root;
#endif
}

void barrier() {
#ifdef EMCRYO_HAVE_MPI
  if (g_size > 1) MPI_Barrier(MPI_COMM_WORLD);
#endif
}

void Message::append(const void* data, std::size_t n) {
  const auto* p = static_cast<const std::byte*>(data);
  bytes_.insert(bytes_.end(), p, p + n);
}

const std::byte* Message::span_of(std::size_t n) {
  if (n > bytes_.size() - read_) mismatch();
  const std::byte* p = bytes_.data() + read_;
  read_ += n;
  return p;
}

void Message::take(void* out, std::size_t n) {
  if (n) std::memcpy(out, span_of(n), n);
}

void Message::mismatch() { fail("internal error: a rank's message does not match its reader"); }

Chunks::Chunks(std::size_t count) {
  constexpr std::size_t max_chunks = 32, min_items = 32;
  const std::size_t chunks = std::clamp<std::size_t>(count / min_items, 1, max_chunks);
  for (std::size_t c = 0; c <= chunks; ++c) starts_.push_back(count * c / chunks);
}

std::size_t Chunks::owned_items() const {
  std::size_t n = 0;
  for (int c = 0; c < count(); ++c)
    if (owner(c) == rank()) n += end(c) - begin(c);
  return n;
}

void reduce_in_chunk_order(const Chunks& chunks, const std::function<void(int, Message&)>& compute,
                           const std::function<void(int, Message&)>& fold) {
  const int ranks = size();
  Message mine, message;
  for (int first = 0; first < chunks.count(); first += ranks) {
    const int mine_index = first + rank();
    mine.clear();
    if (mine_index < chunks.count()) compute(mine_index, mine);
    for (int c = first; c < std::min(first + ranks, chunks.count()); ++c) {
      Message& from = chunks.owner(c) == rank() ? mine : message;
      if (&from == &message) message.clear();
      broadcast(from.bytes(), chunks.owner(c));
      fold(c, from);
    }
  }
}

}  // namespace emcryo::mpi
