// One home for MPI: with EMCRYO_HAVE_MPI the calls go to OpenMPI; without, the same interface
// describes one process (size 1, sums and broadcasts are no-ops).
#include "emcryo/core/mpi.hpp"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>

#ifdef EMCRYO_HAVE_MPI
#include <mpi.h>
#endif

#include "emcryo/core/error.hpp"
#include "emcryo/core/log.hpp"

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

std::vector<double> gather(double value) {
  std::vector<double> all(is_root() ? static_cast<std::size_t>(size()) : 0);
#ifdef EMCRYO_HAVE_MPI
  if (g_size > 1) {
    MPI_Gather(&value, 1, MPI_DOUBLE, all.data(), 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    return all;
  }
#endif
  all.assign(1, value);
  return all;
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
  // Each chunk costs a clear and a fold of its reconstruction lanes (~0.1 s an iteration at 30 chunks
  // of a 64 px, 2-class set on 2 cores) and runs its E-step in batches no larger than itself: chunks
  // of at least 256 items, except that a set of 64+ items still splits in two (>= 32 items each) so
  // that two ranks share it; never more than 32, so large sets spread over many ranks.
  constexpr std::size_t max_chunks = 32, few = 2, min_items = 32, full_items = 256;
  const std::size_t chunks = std::clamp<std::size_t>(std::max(count / full_items, std::min(few, count / min_items)), 1, max_chunks);
  for (std::size_t c = 0; c <= chunks; ++c) starts_.push_back(count * c / chunks);
}

std::size_t Chunks::owned_items() const {
  std::size_t n = 0;
  for (int c = 0; c < count(); ++c)
    if (owner(c) == rank()) n += end(c) - begin(c);
  return n;
}

namespace {
Traffic g_traffic;

#ifdef EMCRYO_HAVE_MPI
constexpr int chunk_tag = 13;
constexpr std::uint64_t piece_bytes = 1u << 30;  // MPI counts are ints: messages go in pieces of at most 1 GiB

/// A chunk's message to the folding rank: its size, then its bytes in pieces. Blocking on
/// purpose: a non-blocking send of a large message does not move while its sender computes (the
/// shared-memory transport without single-copy needs the sender inside MPI to push the bytes),
/// so the folding rank waited a whole chunk for each one (measured: 5.2 s of a 15 s class2d
/// iteration at 16 ranks, one chunk's time at any rank count). The folding rank takes chunks in
/// order as they come, so a sender waits only while it finishes its own.
void send_chunk(Message& message, int to) {
  const std::uint64_t size = message.bytes().size();
  MPI_Send(&size, 1, MPI_UINT64_T, to, chunk_tag, MPI_COMM_WORLD);
  for (std::uint64_t done = 0; done < size; done += piece_bytes)
    MPI_Send(message.bytes().data() + done, static_cast<int>(std::min(size - done, piece_bytes)), MPI_BYTE, to, chunk_tag, MPI_COMM_WORLD);
  g_traffic.sent += size;
}

/// The next chunk message from rank `from` (messages between two ranks arrive in the order sent).
void receive_chunk(Message& message, int from) {
  std::uint64_t size = 0;
  MPI_Recv(&size, 1, MPI_UINT64_T, from, chunk_tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  message.clear();
  message.bytes().resize(size);
  for (std::uint64_t done = 0; done < size; done += piece_bytes)
    MPI_Recv(message.bytes().data() + done, static_cast<int>(std::min(size - done, piece_bytes)), MPI_BYTE, from, chunk_tag,
             MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  g_traffic.received += size;
}

/// The folding rank: every chunk, in chunk order, its own computed here and the others' as they arrive.
void fold_on_root(const Chunks& chunks, const ChunkReduction& reduction) {
  Message message;
  for (int c = 0; c < chunks.count(); ++c) {
    message.clear();
    if (chunks.owner(c) == rank())
      reduction.compute(c, message);
    else
      receive_chunk(message, chunks.owner(c));
    reduction.fold(c, message);
  }
}

/// Other ranks: their chunks in order, each sent to the folding rank as soon as it is computed.
void compute_and_send(const Chunks& chunks, const ChunkReduction& reduction, int root) {
  Message message;
  for (int c = 0; c < chunks.count(); ++c) {
    if (chunks.owner(c) != rank()) continue;
    message.clear();
    reduction.compute(c, message);
    send_chunk(message, root);
  }
}
#endif
}  // namespace

void reduce_in_chunk_order(const Chunks& chunks, const ChunkReduction& given, int root) {
  root %= size();
  // The same reduction, timed: where a rank's time goes (its chunks, the folds, the rest is
  // waiting for other ranks and moving bytes).
  double compute_seconds = 0, fold_seconds = 0;
  const auto timed = [](double& into, const std::function<void(int, Message&)>& f) {
    return [&into, &f](int c, Message& m) {
      const auto t0 = std::chrono::steady_clock::now();
      f(c, m);
      into += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
  };
  const ChunkReduction reduction{timed(compute_seconds, given.compute), timed(fold_seconds, given.fold), given.share, given.take};
  [[maybe_unused]] const auto start = std::chrono::steady_clock::now();
  [[maybe_unused]] const Traffic before = g_traffic;
  if (folds_where_computed()) {
    Message message;
    for (int c = 0; c < chunks.count(); ++c) {
      message.clear();
      reduction.compute(c, message);
      reduction.fold(c, message);
    }
    return;
  }
#ifdef EMCRYO_HAVE_MPI
  Message shared;
  if (rank() == root) {
    fold_on_root(chunks, reduction);
    reduction.share(shared);
    g_traffic.sent += shared.bytes().size() * static_cast<std::uint64_t>(size() - 1);
  } else {
    compute_and_send(chunks, reduction, root);
  }
  broadcast(shared.bytes(), root);
  if (rank() != root) {
    g_traffic.received += shared.bytes().size();
    reduction.take(shared);
  }
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // Every rank's share of the time: the spread of computing shows how evenly the chunks fell,
  // the waiting what the slowest rank (or the folds) cost the others.
  const auto computing = gather(compute_seconds), waiting = gather(total - compute_seconds), folding = gather(fold_seconds);
  const auto received = gather(static_cast<double>(g_traffic.received - before.received));
  if (is_root()) {
    const auto r = static_cast<std::size_t>(root);
    const auto [least, most] = std::minmax_element(computing.begin(), computing.end());
    double mean = 0;
    for (double t : computing) mean += t / static_cast<double>(computing.size());
    log::info("chunk reduction of {} chunks on {} ranks, rank {} folds: {:.2f} s computing, {:.2f} s folding, {:.2f} s waiting and sharing; "
              "{:.1f} MB received, {:.1f} MB shared with each rank; ranks computing {:.2f}/{:.2f}/{:.2f} s (least/mean/most, rank {} most), "
              "waiting up to {:.2f} s",
              chunks.count(), size(), root, computing[r], folding[r], waiting[r] - folding[r], received[r] / 1e6,
              static_cast<double>(shared.bytes().size()) / 1e6, *least, mean, *most, most - computing.begin(),
              *std::max_element(waiting.begin(), waiting.end()));
  }
#endif
}

Traffic traffic() { return g_traffic; }

}  // namespace emcryo::mpi
