// The processes of one job under `mpirun` (OpenMPI), and the one reduction every iterative job
// uses across them. Built without MPI (EMCRYO_MPI off, or no MPI found), the same interface
// describes a single process, so callers never test for MPI themselves.
//
// Determinism: the work of an E-step is split into chunks whose number depends on the particle
// count only, never on the rank count. Each chunk's sums start from zero and are added into the
// total in chunk order by one rank (rank 0 unless the caller names another; a single process
// adds them in the same order as it computes them), and every other rank receives its totals as
// bytes: the result is bitwise the same with 1 or N ranks (and, since each chunk's own sums
// follow the particle order, with any threads).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace emcryo::mpi {

/// Starts MPI when the program was started by mpirun/srun (a PMI/PMIx environment); a plain
/// start stays a single process with no MPI start-up. Call first thing in main().
void init(int& argc, char**& argv);
/// Ends MPI (after every rank is done); a no-op where init() did not start it.
void finalize();

bool built_with_mpi();
int rank();
int size();
bool is_root();
/// Ranks on this node and this rank's place among them (threads per rank, a GPU per rank).
int local_rank();
int local_size();

/// Stops every rank of the job with `code` (MPI_Abort), or exits this process when alone.
/// Print the reason first: the other ranks die without a word.
[[noreturn]] void abort(int code);

/// Elementwise sums over all ranks, in place (MPI_Allreduce), the same on every rank.
void sum(std::span<double> values);
void sum(std::span<std::int64_t> values);
/// Rank `root`'s bytes to every rank (resized on the others).
void broadcast(std::vector<std::byte>& bytes, int root);
/// Rank `root`'s values to every rank (resized on the others).
template <typename T>
void broadcast(std::vector<T>& values, int root) {
  static_assert(std::is_trivially_copyable_v<T>);
  if (size() == 1) return;
  std::vector<std::byte> bytes(values.size() * sizeof(T));
  if (rank() == root) std::memcpy(bytes.data(), values.data(), bytes.size());
  broadcast(bytes, root);
  values.resize(bytes.size() / sizeof(T));
  if (rank() != root) std::memcpy(values.data(), bytes.data(), bytes.size());
}
/// Pieces of work every rank needs the results of, each done once rather than by every rank:
/// `make(i)` for piece i = 0 .. pieces-1 runs on rank i % size() (the ranks make theirs at the
/// same time), then each piece is broadcast from its maker.
template <typename T, typename Make>
std::vector<std::vector<T>> made_once(int pieces, Make make) {
  std::vector<std::vector<T>> made(static_cast<std::size_t>(pieces));
  for (int i = 0; i < pieces; ++i)
    if (i % size() == rank()) made[static_cast<std::size_t>(i)] = make(i);
  for (int i = 0; i < pieces; ++i) broadcast(made[static_cast<std::size_t>(i)], i % size());
  return made;
}
/// Every rank's `value` on rank 0, in rank order (empty on the other ranks).
std::vector<double> gather(double value);
void barrier();

/// A flat message: values appended in order, read back in the same order.
class Message {
 public:
  template <typename T>
  void put(const T* values, std::size_t count) {
    static_assert(std::is_trivially_copyable_v<T>);
    put_count(count);
    append(values, count * sizeof(T));
  }
  template <typename T>
  void put(const std::vector<T>& values) { put(values.data(), values.size()); }
  template <typename T>
  void put(const T& value) {
    static_assert(std::is_trivially_copyable_v<T>);
    append(&value, sizeof(T));
  }

  void clear() { bytes_.clear(), read_ = 0; }
  /// Rewinds to the first value (to read a message again).
  void rewind() { read_ = 0; }
  std::vector<std::byte>& bytes() { return bytes_; }

  /// Readers mirror the writers above; a read past the end is an internal error (thrown).
  template <typename T>
  T get() {
    T value;
    take(&value, sizeof(T));
    return value;
  }
  template <typename T>
  std::vector<T> get_vector() {
    std::vector<T> values(get_count());
    take(values.data(), values.size() * sizeof(T));
    return values;
  }
  /// Adds the next array (written by put(values, count)) into `into`, elementwise: the fold of a
  /// chunk's sums, without a copy.
  template <typename T>
  void add_into(T* into, std::size_t count) {
    if (get_count() != count) mismatch();
    const std::byte* from = span_of(count * sizeof(T));
    for (std::size_t i = 0; i < count; ++i) {
      T v;
      std::memcpy(&v, from + i * sizeof(T), sizeof(T));
      into[i] += v;
    }
  }
  template <typename T>
  void add_into(std::vector<T>& into) { add_into(into.data(), into.size()); }
  /// Copies the next array (written by put(values, count)) over `into`: a total as it was sent.
  template <typename T>
  void get_into(std::vector<T>& into) {
    if (get_count() != into.size()) mismatch();
    take(into.data(), into.size() * sizeof(T));
  }

 private:
  void put_count(std::size_t count) { append(&count, sizeof count); }
  std::size_t get_count() { return get<std::size_t>(); }
  void append(const void* data, std::size_t n);
  void take(void* out, std::size_t n);
  const std::byte* span_of(std::size_t n);
  [[noreturn]] void mismatch();
  std::vector<std::byte> bytes_;
  std::size_t read_ = 0;
};

/// `count` items (particles of one half set, say) in contiguous chunks: at most 32 chunks of at
/// least 256 items, or 2 of at least 32 where that gives fewer, so the number depends on `count`
/// only. Chunk c belongs to rank c % size().
class Chunks {
 public:
  explicit Chunks(std::size_t count);
  int count() const { return static_cast<int>(starts_.size()) - 1; }
  std::size_t begin(int c) const { return starts_[static_cast<std::size_t>(c)]; }
  std::size_t end(int c) const { return starts_[static_cast<std::size_t>(c) + 1]; }
  int owner(int c) const { return c % size(); }
  /// Items in this rank's chunks (its share of the work: the progress bar's total).
  std::size_t owned_items() const;

 private:
  std::vector<std::size_t> starts_;
};

/// The reduction of one E-step over `chunks`. `compute(c, message)` runs on chunk c's owner and
/// writes the chunk's results and sums (each from zero) into the message; the owners send their
/// messages to the folding rank (`root % size()`), which calls `fold(c, message)` for c = 0, 1, ...
/// in chunk order (its totals start where a single process's do, so they are bitwise a single
/// process's). Then it writes what every rank needs next (`share`: the folded totals, the per-item
/// results) into one message that is broadcast once and read by `take` on every other rank. One
/// process folds as it computes. Memory: a rank holds one chunk message at a time.
struct ChunkReduction {
  std::function<void(int, Message&)> compute, fold;
  std::function<void(Message&)> share, take;
};
void reduce_in_chunk_order(const Chunks& chunks, const ChunkReduction& reduction, int root = 0);
/// Whether reduce_in_chunk_order folds each chunk in the process that computed it, right after
/// computing it (one process): compute may then leave large sums where fold reads them (or add
/// them into the totals itself) instead of copying them into the message and out again.
inline bool folds_where_computed() { return size() == 1; }

/// Bytes this rank sent and received through reduce_in_chunk_order since the start (the
/// reduction's message volume, for logs and benchmarks).
struct Traffic {
  std::uint64_t sent = 0, received = 0;
};
Traffic traffic();

}  // namespace emcryo::mpi
