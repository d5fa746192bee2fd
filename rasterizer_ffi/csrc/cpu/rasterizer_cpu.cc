// CPU backend of the Gaussian rasterizer: XLA FFI forward and backward handlers.
//
// Per image of the (flattened) batch:
//   1. set up the binning of every Gaussian (gaussian.h: conservative ellipse box + exact per-tile
//      test), drop radii == 0 and Gaussians that can reach no pixel;
//   2. sort the rest by (depth, index) with a stable LSD radix sort on the 32-bit depth key;
//   3. bin: walk the sorted Gaussians in parallel chunks, count per (chunk, tile), prefix-sum, fill.
//      Every tile's list comes out in (depth, index) order. Counts and offsets are int64; there is
//      no capacity limit (memory permitting);
//   4. rasterize tiles in parallel (std::thread, dynamic tile queue) with the SIMD kernels of
//      tile_kernels.inc (SSE2 / AVX2+FMA / AVX-512, picked at run time); each tile's output is
//      written by exactly one thread, so the forward is deterministic.
// The backward bins identically (or takes over the forward's binning, see BinningCache), then walks
// each pixel back to front from its last contributor (residual `last`: number of tile-list entries
// up to and including the last contributor) starting from the stored final transmittance (residual
// `t_final`, float32: recovering it as 1 - alpha would lose up to 3e-4 relative precision when
// T_final ~ 1e-4), recovering T by division by 1 - alpha (>= 1 - ALPHA_MAX = 0.01). Gradients are
// accumulated per tile-list entry (one row per intersection, written by the single thread owning the
// tile, pixels in a fixed order), then reduced per Gaussian over its entries in increasing tile
// order: no float atomics, no dependence on thread count or scheduling, bitwise reproducible. To
// bound memory the tiles are processed in waves of at most kWaveFloats floats of rows; waves are
// reduced in order. Host memory is reused across calls (WorkspacePool) to avoid page faults.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"
#include "../gaussian.h"

namespace ffi = xla::ffi;

namespace instant4d {
namespace {

// Development-only phase timing (build with -DI4D_PROFILE); compiled out otherwise.
#if defined(I4D_PROFILE)
struct PhaseTimer {
  const char* name;
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  std::clock_t c0 = std::clock();
  explicit PhaseTimer(const char* n) : name(n) {}
  ~PhaseTimer() {
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    const double cpu = 1e3 * static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
    std::fprintf(stderr, "[i4d] %-18s wall %8.2f ms cpu %8.2f ms\n", name, ms, cpu);
  }
};
#else
struct PhaseTimer {
  explicit PhaseTimer(const char*) {}
};
#endif
#define I4D_PHASE(name) PhaseTimer i4d_phase_timer_(name)

// ------------------------------------------------------------------------------------------------
// A fixed set of threads for the duration of one handler call.
class Pool {
 public:
  explicit Pool(int n) {
    n_ = 1;
    try {
      for (int i = 1; i < n; ++i) {
        workers_.emplace_back([this, i] { Loop(i); });
        ++n_;
      }
    } catch (const std::exception&) {
      // fewer threads than asked: run with those we have
    }
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
      ++gen_;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  int size() const { return n_; }

  // Runs fn(thread_index) once on every thread (the caller is thread 0) and waits for all.
  // Rethrows the first exception raised by any of them.
  void Run(const std::function<void(int)>& fn) {
    error_ = nullptr;
    if (n_ == 1) {
      fn(0);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = &fn;
      pending_ = n_ - 1;
      ++gen_;
    }
    cv_.notify_all();
    Guarded(fn, 0);
    {
      std::unique_lock<std::mutex> lk(mu_);
      done_cv_.wait(lk, [this] { return pending_ == 0; });
      job_ = nullptr;
    }
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void Loop(int index) {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int)>* job;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return gen_ != seen; });
        seen = gen_;
        if (stop_) return;
        job = job_;
      }
      Guarded(*job, index);
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (--pending_ == 0) done_cv_.notify_one();
      }
    }
  }
  void Guarded(const std::function<void(int)>& fn, int index) {
    try {
      fn(index);
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu_);
      if (!error_) error_ = std::current_exception();
    }
  }

  int n_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int)>* job_ = nullptr;
  uint64_t gen_ = 0;
  int pending_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

// Calls fn(thread, begin, end) over [0, n) in chunks of `grain`, handed out dynamically. Callers
// only write disjoint outputs per index, so the result never depends on which thread ran what.
template <typename F>
void ParallelFor(Pool& pool, int64_t n, int64_t grain, F&& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (pool.size() == 1 || n <= grain) {
    fn(0, int64_t{0}, n);
    return;
  }
  std::atomic<int64_t> next{0};
  pool.Run([&](int thread) {
    for (;;) {
      const int64_t begin = next.fetch_add(grain, std::memory_order_relaxed);
      if (begin >= n) break;
      fn(thread, begin, std::min(n, begin + grain));
    }
  });
}

int NumThreads(int64_t work_items) {
  unsigned hw = std::thread::hardware_concurrency();
  int64_t n = hw == 0 ? 1 : static_cast<int64_t>(hw);
  n = std::min<int64_t>(n, 64);
  n = std::min<int64_t>(n, std::max<int64_t>(1, work_items));
  return static_cast<int>(n);
}

// ------------------------------------------------------------------------------------------------
// Problem description: one image of the batch is a view into the flat buffers.
struct Dims {
  int64_t batch = 0, n = 0, channels = 0, width = 0, height = 0;
  int tiles_x = 0, tiles_y = 0, n_tiles = 0;
};

struct SceneView {
  const float* means;     // [N, 2]
  const float* conics;    // [N, 3]
  const float* depths;    // [N]
  const int32_t* radii;   // [N]
  const float* opacities; // [N]
  const float* features;  // [N, C]
  const float* background;// [C]
};

// Parameters of one binned Gaussian, stored by depth rank (one cache line).
struct alignas(64) Packed {
  float mx, my, a, b, c, opacity, z;
  float cut;                // sigma above which alpha < ALPHA_MIN for sure (an early skip)
  int32_t px0, px1, py0, py1;  // inclusive pixel box outside which it never contributes
  int32_t index;               // Gaussian index (features row)
};

// Result of binning one image.
struct Binning {
  std::vector<int64_t> tile_start;   // [n_tiles + 1]: entries of tile t are [tile_start[t], tile_start[t+1])
  std::vector<int32_t> entries;      // depth rank per entry, increasing within a tile
  std::vector<int32_t> sorted;       // rank -> Gaussian index ((depth, index) order)
  std::vector<Packed> packed;        // rank -> parameters
  std::vector<int64_t> gauss_start;  // backward: [n_sorted + 1] offsets into gauss_entries
  std::vector<int64_t> gauss_entries;// backward: entry positions of each sorted Gaussian, tile order
};

// ------------------------------------------------------------------------------------------------
// Per-thread scratch reused across tiles and images.
struct Scratch {
  std::vector<float> acc;  // forward: [16, 16, C] colour accumulators; backward: [C, 16, 16] cotangents
};

// Per-block tile lists of the binning setup (blocks of consecutive Gaussian indices).
struct SetupBlock {
  std::vector<int32_t> tiles;        // tile ids of the block's Gaussians, Gaussian after Gaussian
};

// Per-chunk counts of the fill (chunks of consecutive depth ranks).
struct FillChunk {
  std::vector<int64_t> cursor;       // [n_tiles] entries of this chunk per tile, then fill position
};

// Stable LSD radix sort of `idx` by `key` (8-bit digits). Input order is index order, so equal
// keys stay ordered by index.
void RadixSortByKey(std::vector<uint32_t>& key, std::vector<int32_t>& idx, std::vector<uint32_t>& key2,
                    std::vector<int32_t>& idx2) {
  const size_t n = key.size();
  key2.resize(n);
  idx2.resize(n);
  for (int shift = 0; shift < 32; shift += 8) {
    size_t count[257] = {0};
    for (size_t i = 0; i < n; ++i) ++count[((key[i] >> shift) & 0xffu) + 1];
    bool trivial = false;
    for (int d = 1; d <= 256; ++d) {
      if (count[d] == n) trivial = true;
    }
    if (trivial) continue;  // every key has the same digit: the pass is the identity
    for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
    for (size_t i = 0; i < n; ++i) {
      const size_t pos = count[(key[i] >> shift) & 0xffu]++;
      key2[pos] = key[i];
      idx2[pos] = idx[i];
    }
    key.swap(key2);
    idx.swap(idx2);
  }
}

// Temporaries of BinImage, kept in a Workspace so that their memory is reused from call to call.
struct BinTemps {
  std::vector<SetupBlock> blocks;
  std::vector<int32_t> tile_count;   // [N] tiles per Gaussian (0: not binned)
  std::vector<int64_t> tile_offset;  // [N] offset of its tiles in its block's list
  std::vector<Packed> packed_by_index;
  std::vector<uint32_t> keys, keys2;
  std::vector<int32_t> sorted2;
  std::vector<FillChunk> chunks;
};

void BinImage(Pool& pool, const Dims& d, const SceneView& s, bool want_gauss_map, Binning& out, BinTemps& tmp) {
  const int64_t n = d.n;
  const int width = static_cast<int>(d.width), height = static_cast<int>(d.height);
  std::optional<PhaseTimer> pt;
  pt.emplace("bin setup");
  // 1. per Gaussian (index order): binning set-up, tile list, packed parameters
  constexpr int64_t kBlock = 2048;
  const int64_t n_blocks = (n + kBlock - 1) / kBlock;
  if (static_cast<int64_t>(tmp.blocks.size()) < n_blocks) tmp.blocks.resize(static_cast<size_t>(n_blocks));
  tmp.tile_count.resize(static_cast<size_t>(n));
  tmp.tile_offset.resize(static_cast<size_t>(n));
  tmp.packed_by_index.resize(static_cast<size_t>(n));
  std::vector<SetupBlock>& blocks = tmp.blocks;
  std::vector<int32_t>& tile_count = tmp.tile_count;
  std::vector<int64_t>& tile_offset = tmp.tile_offset;
  std::vector<Packed>& packed_by_index = tmp.packed_by_index;
  ParallelFor(pool, n_blocks, 1, [&](int, int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      std::vector<int32_t>& tiles = blocks[blk].tiles;
      tiles.clear();
      for (int64_t i = blk * kBlock; i < std::min(n, (blk + 1) * kBlock); ++i) {
        GaussianBin<double> g;
        tile_count[i] = 0;
        tile_offset[i] = static_cast<int64_t>(tiles.size());
        if (s.radii[i] <= 0 ||
            !gaussian_bin_setup<double>(s.means[2 * i], s.means[2 * i + 1], s.conics[3 * i], s.conics[3 * i + 1],
                                        s.conics[3 * i + 2], s.opacities[i], width, height, g)) {
          continue;
        }
        for (int ty = g.ty0; ty <= g.ty1; ++ty) {
          for (int tx = g.tx0; tx <= g.tx1; ++tx) {
            if (gaussian_bin_tile<double>(g, tx, ty, width, height)) tiles.push_back(ty * d.tiles_x + tx);
          }
        }
        tile_count[i] = static_cast<int32_t>(static_cast<int64_t>(tiles.size()) - tile_offset[i]);
        Packed& p = packed_by_index[i];
        p.mx = s.means[2 * i];
        p.my = s.means[2 * i + 1];
        p.a = s.conics[3 * i];
        p.b = s.conics[3 * i + 1];
        p.c = s.conics[3 * i + 2];
        p.opacity = s.opacities[i];
        p.z = s.depths[i];
        // sigma > cut implies opacity * exp(-sigma) < ALPHA_MIN with margin: an early skip that
        // never changes a decision of gaussian_alpha (g.thr = ln(opacity / ALPHA_MIN) plus the binning
        // slack; inf for an infinite opacity)
        p.cut = static_cast<float>(g.thr);
        p.px0 = g.px0;
        p.px1 = g.px1;
        p.py0 = g.py0;
        p.py1 = g.py1;
        p.index = static_cast<int32_t>(i);
      }
    }
  });

  // 2. sort the binned Gaussians by (depth, index)
  pt.emplace("bin sort");
  std::vector<uint32_t>& keys = tmp.keys;
  keys.clear();
  out.sorted.clear();
  for (int64_t i = 0; i < n; ++i) {
    if (tile_count[i] > 0) {
      out.sorted.push_back(static_cast<int32_t>(i));
      keys.push_back(depth_key(s.depths[i]));
    }
  }
  RadixSortByKey(keys, out.sorted, tmp.keys2, tmp.sorted2);
  const int64_t n_sorted = static_cast<int64_t>(out.sorted.size());
  out.packed.resize(static_cast<size_t>(n_sorted));
  ParallelFor(pool, n_sorted, 4096, [&](int, int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) out.packed[r] = packed_by_index[out.sorted[r]];
  });

  // 3. count per (chunk of consecutive ranks, tile), prefix-sum, fill: every tile's entries come out
  //    in rank order (the result does not depend on the chunking)
  pt.emplace("bin fill");
  const int64_t chunk_size = std::max<int64_t>(1024, (n_sorted + 63) / 64);
  const int64_t n_chunks = (n_sorted + chunk_size - 1) / chunk_size;
  if (static_cast<int64_t>(tmp.chunks.size()) < n_chunks) tmp.chunks.resize(static_cast<size_t>(n_chunks));
  std::vector<FillChunk>& chunks = tmp.chunks;
  auto tiles_of = [&](int64_t i) { return blocks[i / kBlock].tiles.data() + tile_offset[i]; };
  ParallelFor(pool, n_chunks, 1, [&](int, int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      std::vector<int64_t>& count = chunks[ch].cursor;
      count.assign(static_cast<size_t>(d.n_tiles), 0);
      for (int64_t r = ch * chunk_size; r < std::min(n_sorted, (ch + 1) * chunk_size); ++r) {
        const int64_t i = out.sorted[r];
        const int32_t* t = tiles_of(i);
        for (int32_t j = 0; j < tile_count[i]; ++j) ++count[t[j]];
      }
    }
  });
  out.tile_start.assign(static_cast<size_t>(d.n_tiles) + 1, 0);
  int64_t total = 0;
  for (int t = 0; t < d.n_tiles; ++t) {
    out.tile_start[t] = total;
    for (int64_t ch = 0; ch < n_chunks; ++ch) {
      const int64_t c = chunks[ch].cursor[t];
      chunks[ch].cursor[t] = total;
      total += c;
    }
  }
  out.tile_start[d.n_tiles] = total;
  out.entries.resize(static_cast<size_t>(total));
  if (want_gauss_map) {
    out.gauss_start.resize(static_cast<size_t>(n_sorted) + 1);
    int64_t acc = 0;
    for (int64_t r = 0; r < n_sorted; ++r) {
      out.gauss_start[r] = acc;
      acc += tile_count[out.sorted[r]];
    }
    out.gauss_start[n_sorted] = acc;
    out.gauss_entries.resize(static_cast<size_t>(acc));
  }
  ParallelFor(pool, n_chunks, 1, [&](int, int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      std::vector<int64_t>& cursor = chunks[ch].cursor;
      for (int64_t r = ch * chunk_size; r < std::min(n_sorted, (ch + 1) * chunk_size); ++r) {
        const int64_t i = out.sorted[r];
        const int32_t* t = tiles_of(i);
        for (int32_t j = 0; j < tile_count[i]; ++j) {
          const int64_t pos = cursor[t[j]]++;
          out.entries[pos] = static_cast<int32_t>(r);
          if (want_gauss_map) out.gauss_entries[out.gauss_start[r] + j] = pos;
        }
      }
    }
  });
}

size_t BinningBytes(const Binning& b) {
  return b.tile_start.capacity() * sizeof(int64_t) + b.entries.capacity() * sizeof(int32_t) +
         b.sorted.capacity() * sizeof(int32_t) + b.packed.capacity() * sizeof(Packed) +
         b.gauss_start.capacity() * sizeof(int64_t) + b.gauss_entries.capacity() * sizeof(int64_t);
}

// A buffer whose contents are left uninitialised (every user writes before reading).
template <typename T>
class RawBuffer {
 public:
  T* Get(size_t n) {
    if (n > capacity_) {
      data_.reset();
      data_.reset(new T[n]);
      capacity_ = n;
    }
    return data_.get();
  }
  size_t bytes() const { return capacity_ * sizeof(T); }

 private:
  std::unique_ptr<T[]> data_;
  size_t capacity_ = 0;
};

// All the host memory one handler call needs besides its inputs and outputs. Workspaces are pooled
// across calls: reusing their (grown) buffers avoids page-faulting tens of MiB on every call, which
// costs as much as a good part of the backward itself.
struct Workspace {
  Binning bin;
  BinTemps tmp;
  RawBuffer<float> rows;             // backward: gradient rows of a wave
  std::vector<float> bg_partial;     // backward: per-tile background gradients
  std::vector<int64_t> cursor;       // backward: per-Gaussian progress through its entries
  std::vector<Scratch> scratch;      // per thread

  size_t Bytes() const {
    size_t total = rows.bytes() + BinningBytes(bin);
    auto add = [&total](const auto& v) { total += v.capacity() * sizeof(v[0]); };
    add(tmp.tile_count);
    add(tmp.tile_offset);
    add(tmp.packed_by_index);
    add(tmp.keys);
    add(tmp.keys2);
    add(tmp.sorted2);
    for (const SetupBlock& b : tmp.blocks) add(b.tiles);
    for (const FillChunk& c : tmp.chunks) add(c.cursor);
    add(bg_partial);
    add(cursor);
    return total;
  }
};

// Process-wide pool of idle workspaces (concurrent calls each take their own).
class WorkspacePool {
 public:
  static WorkspacePool& Get() {
    static WorkspacePool* pool = new WorkspacePool();  // never destroyed: safe at process exit
    return *pool;
  }
  std::unique_ptr<Workspace> Acquire() {
    std::lock_guard<std::mutex> lk(mu_);
    if (idle_.empty()) return std::make_unique<Workspace>();
    std::unique_ptr<Workspace> ws = std::move(idle_.back());
    idle_.pop_back();
    return ws;
  }
  void Release(std::unique_ptr<Workspace> ws) {
    if (!ws || ws->Bytes() > kMaxCachedBytes) return;  // a very large workspace is given back to the OS
    std::lock_guard<std::mutex> lk(mu_);
    if (idle_.size() < kMaxIdle) idle_.push_back(std::move(ws));
  }

 private:
  static constexpr size_t kMaxIdle = 4;
  static constexpr size_t kMaxCachedBytes = size_t{512} << 20;
  std::mutex mu_;
  std::vector<std::unique_ptr<Workspace>> idle_;
};

struct WorkspaceLease {
  std::unique_ptr<Workspace> ws = WorkspacePool::Get().Acquire();
  ~WorkspaceLease() { WorkspacePool::Get().Release(std::move(ws)); }
};

// Binnings handed from a forward call to the backward call of the same evaluation, so the backward
// need not bin again. The forward (only when JAX differentiates it) stores each image's binning under
// a fresh process-unique token that travels as an int32 residual; the backward takes it back. A miss
// (evicted, a second backward of the same forward, another process) just re-bins: the binning is a
// deterministic function of the inputs, so results are bitwise the same either way. Bounded in
// entries and bytes; the oldest entries are evicted first.
class BinningCache {
 public:
  static BinningCache& Get() {
    static BinningCache* cache = new BinningCache();  // never destroyed: safe at process exit
    return *cache;
  }
  uint32_t NewToken() {
    uint32_t t;
    do {
      t = next_.fetch_add(1, std::memory_order_relaxed);
    } while (t == 0);  // 0 means "no binning kept"
    return t;
  }
  std::unique_ptr<Binning> Acquire() {
    std::lock_guard<std::mutex> lk(mu_);
    if (spare_.empty()) return std::make_unique<Binning>();
    std::unique_ptr<Binning> b = std::move(spare_.back());
    spare_.pop_back();
    return b;
  }
  void Put(uint32_t token, int64_t image, std::unique_ptr<Binning> bin) {
    const size_t bytes = BinningBytes(*bin);
    if (bytes > kMaxBytes) return;
    std::lock_guard<std::mutex> lk(mu_);
    entries_.push_back(Entry{token, image, bytes, std::move(bin)});
    bytes_ += bytes;
    while (entries_.size() > kMaxEntries || bytes_ > kMaxBytes) {
      bytes_ -= entries_.front().bytes;
      RecycleLocked(std::move(entries_.front().bin));
      entries_.erase(entries_.begin());
    }
  }
  std::unique_ptr<Binning> Take(uint32_t token, int64_t image) {
    if (token == 0) return nullptr;
    std::lock_guard<std::mutex> lk(mu_);
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->token == token && it->image == image) {
        std::unique_ptr<Binning> b = std::move(it->bin);
        bytes_ -= it->bytes;
        entries_.erase(it);
        return b;
      }
    }
    return nullptr;
  }
  void Recycle(std::unique_ptr<Binning> bin) {
    std::lock_guard<std::mutex> lk(mu_);
    RecycleLocked(std::move(bin));
  }

 private:
  struct Entry {
    uint32_t token;
    int64_t image;
    size_t bytes;
    std::unique_ptr<Binning> bin;
  };
  void RecycleLocked(std::unique_ptr<Binning> bin) {
    if (bin && spare_.size() < kMaxSpare && BinningBytes(*bin) <= kMaxBytes / 4) spare_.push_back(std::move(bin));
  }
  static constexpr size_t kMaxEntries = 1024;
  static constexpr size_t kMaxSpare = 4;
  static constexpr size_t kMaxBytes = size_t{512} << 20;
  std::atomic<uint32_t> next_{1};
  std::mutex mu_;
  std::vector<Entry> entries_;
  std::vector<std::unique_ptr<Binning>> spare_;
  size_t bytes_ = 0;
};

// Geometry of one tile.
struct TileRect {
  int64_t x0, y0;   // first pixel
  int cols, rows;   // pixels inside the image (<= TILE_SIZE each)
};

TileRect TileAt(const Dims& d, int tile) {
  TileRect t;
  t.x0 = int64_t{tile % d.tiles_x} * TILE_SIZE;
  t.y0 = int64_t{tile / d.tiles_x} * TILE_SIZE;
  t.cols = static_cast<int>(std::min<int64_t>(TILE_SIZE, d.width - t.x0));
  t.rows = static_cast<int>(std::min<int64_t>(TILE_SIZE, d.height - t.y0));
  return t;
}

// ------------------------------------------------------------------------------------------------
// Forward

struct ForwardOut {
  float* image;   // [H, W, C]
  float* alpha;   // [H, W]
  float* depth;   // [H, W]
  float* t_final; // [H, W]
  int32_t* last;  // [H, W]
};

// ------------------------------------------------------------------------------------------------
// Backward

struct BackwardIn {
  const float* t_final;  // [H, W]
  const int32_t* last;   // [H, W]
  const float* g_image;  // [H, W, C]
  const float* g_alpha;  // [H, W]
  const float* g_depth;  // [H, W]
};

struct BackwardOut {
  float* d_means;      // [N, 2]
  float* d_conics;     // [N, 3]
  float* d_depths;     // [N]
  float* d_opacities;  // [N]
  float* d_features;   // [N, C]
  float* d_background; // [C]
};

constexpr int kRowHead = 7;  // d_mean_x, d_mean_y, d_a, d_b, d_c, d_opacity, d_depth, then C features
constexpr int64_t kWaveFloats = int64_t{1} << 24;  // 64 MiB of gradient rows per wave at most


// ------------------------------------------------------------------------------------------------
// Tile kernels, one copy per instruction set (tile_kernels.inc), chosen at run time.

enum class Isa : int64_t { kAuto = 0, kBaseline = 1, kAvx2 = 2, kAvx512 = 3 };

namespace isa_baseline {  // SSE2 on x86-64 (always present), plain 4-wide vectors elsewhere
constexpr int W = 4;
typedef float V __attribute__((vector_size(4 * W)));
typedef int32_t VI __attribute__((vector_size(4 * W)));
inline V Set1(float x) { return V{x, x, x, x}; }
inline VI Set1i(int32_t x) { return VI{x, x, x, x}; }
inline V LoadU(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void StoreU(float* p, V v) { std::memcpy(p, &v, sizeof(v)); }
inline V Madd(V a, V b, V c) { return a * b + c; }
#if defined(__SSE2__)
inline unsigned Bits(VI m) { return static_cast<unsigned>(_mm_movemask_ps(reinterpret_cast<__m128>(m))); }
#else
inline unsigned Bits(VI m) {
  unsigned bits = 0;
  for (int l = 0; l < W; ++l) bits |= m[l] ? (1u << l) : 0u;
  return bits;
}
#endif
inline float HSum(V v) { return (v[0] + v[1]) + (v[2] + v[3]); }
#include "tile_kernels.inc"
}  // namespace isa_baseline

#if defined(__x86_64__) && defined(__GNUC__)
#define I4D_HAVE_X86_ISAS 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace isa_avx2 {
constexpr int W = 8;
typedef float V __attribute__((vector_size(4 * W)));
typedef int32_t VI __attribute__((vector_size(4 * W)));
inline V Set1(float x) { return reinterpret_cast<V>(_mm256_set1_ps(x)); }
inline VI Set1i(int32_t x) { return reinterpret_cast<VI>(_mm256_set1_epi32(x)); }
inline V LoadU(const float* p) { return reinterpret_cast<V>(_mm256_loadu_ps(p)); }
inline void StoreU(float* p, V v) { _mm256_storeu_ps(p, reinterpret_cast<__m256>(v)); }
inline V Madd(V a, V b, V c) {
  return reinterpret_cast<V>(
      _mm256_fmadd_ps(reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(b), reinterpret_cast<__m256>(c)));
}
inline unsigned Bits(VI m) { return static_cast<unsigned>(_mm256_movemask_ps(reinterpret_cast<__m256>(m))); }
inline float HSum(V v) {
  const __m256 x = reinterpret_cast<__m256>(v);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
#include "tile_kernels.inc"
}  // namespace isa_avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
namespace isa_avx512 {
constexpr int W = 16;
typedef float V __attribute__((vector_size(4 * W)));
typedef int32_t VI __attribute__((vector_size(4 * W)));
inline V Set1(float x) { return reinterpret_cast<V>(_mm512_set1_ps(x)); }
inline VI Set1i(int32_t x) { return reinterpret_cast<VI>(_mm512_set1_epi32(x)); }
inline V LoadU(const float* p) { return reinterpret_cast<V>(_mm512_loadu_ps(p)); }
inline void StoreU(float* p, V v) { _mm512_storeu_ps(p, reinterpret_cast<__m512>(v)); }
inline V Madd(V a, V b, V c) {
  return reinterpret_cast<V>(
      _mm512_fmadd_ps(reinterpret_cast<__m512>(a), reinterpret_cast<__m512>(b), reinterpret_cast<__m512>(c)));
}
inline unsigned Bits(VI m) { return static_cast<unsigned>(_mm512_movepi32_mask(reinterpret_cast<__m512i>(m))); }
inline float HSum(V v) {
  const __m512 x = reinterpret_cast<__m512>(v);
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(x), _mm512_extractf32x8_ps(x, 1));
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
#include "tile_kernels.inc"
}  // namespace isa_avx512
#pragma GCC pop_options
#endif

// The instruction set to run: `requested` if given and supported, else the widest supported.
Isa ResolveIsa(Isa requested) {
#if defined(I4D_HAVE_X86_ISAS)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  if (requested == Isa::kBaseline) return Isa::kBaseline;
  if (requested == Isa::kAvx2 && avx2) return Isa::kAvx2;
  if (requested == Isa::kAvx512 && avx512) return Isa::kAvx512;
  return avx512 ? Isa::kAvx512 : (avx2 ? Isa::kAvx2 : Isa::kBaseline);
#else
  (void)requested;
  return Isa::kBaseline;
#endif
}

template <int kC>
using ForwardTileFn = void (*)(const Dims&, const SceneView&, const Binning&, int, const ForwardOut&, Scratch&);
template <int kC>
using BackwardTileFn = void (*)(const Dims&, const SceneView&, const Binning&, int, const BackwardIn&, float*,
                                int64_t, float*, Scratch&);

template <int kC>
ForwardTileFn<kC> PickForward(Isa isa) {
#if defined(I4D_HAVE_X86_ISAS)
  if (isa == Isa::kAvx512) return &isa_avx512::ForwardTileSimd<kC>;
  if (isa == Isa::kAvx2) return &isa_avx2::ForwardTileSimd<kC>;
#endif
  (void)isa;
  return &isa_baseline::ForwardTileSimd<kC>;
}

template <int kC>
BackwardTileFn<kC> PickBackward(Isa isa) {
#if defined(I4D_HAVE_X86_ISAS)
  if (isa == Isa::kAvx512) return &isa_avx512::BackwardTileSimd<kC>;
  if (isa == Isa::kAvx2) return &isa_avx2::BackwardTileSimd<kC>;
#endif
  (void)isa;
  return &isa_baseline::BackwardTileSimd<kC>;
}

// ------------------------------------------------------------------------------------------------
// Forward and backward of one image

template <int kC>
void ForwardImage(Pool& pool, const Dims& d, const SceneView& s, const ForwardOut& o, Workspace& ws, Isa isa,
                  uint32_t token, int64_t image) {
  const ForwardTileFn<kC> tile_fn = PickForward<kC>(isa);
  std::unique_ptr<Binning> kept = token ? BinningCache::Get().Acquire() : nullptr;
  Binning& bin = kept ? *kept : ws.bin;
  std::vector<Scratch>& scratch = ws.scratch;
  BinImage(pool, d, s, /*want_gauss_map=*/kept != nullptr, bin, ws.tmp);
  {
    I4D_PHASE("fwd raster");
    ParallelFor(pool, d.n_tiles, 1, [&](int thread, int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) tile_fn(d, s, bin, static_cast<int>(t), o, scratch[thread]);
    });
  }
  if (kept) BinningCache::Get().Put(token, image, std::move(kept));
}

template <int kC>
void BackwardImage(Pool& pool, const Dims& d, const SceneView& s, const BackwardIn& in, const BackwardOut& o,
                   Workspace& ws, Isa isa, uint32_t token, int64_t image) {
  const BackwardTileFn<kC> tile_fn = PickBackward<kC>(isa);
  std::vector<Scratch>& scratch = ws.scratch;
  const int64_t C = kC > 0 ? kC : d.channels;
  const int64_t R = kRowHead + C;
  struct Recycler {  // hands a cached binning back for reuse when this image is done
    std::unique_ptr<Binning> bin;
    ~Recycler() {
      if (bin) BinningCache::Get().Recycle(std::move(bin));
    }
  } cached{BinningCache::Get().Take(token, image)};
  Binning& bin = cached.bin ? *cached.bin : ws.bin;
  if (!cached.bin) BinImage(pool, d, s, /*want_gauss_map=*/true, bin, ws.tmp);
  const int64_t n_sorted = static_cast<int64_t>(bin.sorted.size());
  const int64_t n_entries = static_cast<int64_t>(bin.gauss_entries.size());
  std::vector<float>& bg_partial = ws.bg_partial;
  bg_partial.resize(static_cast<size_t>(d.n_tiles * C));
  std::vector<int64_t>& cursor = ws.cursor;
  cursor.assign(bin.gauss_start.begin(), bin.gauss_start.end() - 1);
  const int64_t max_rows = std::max<int64_t>(1, kWaveFloats / R);
  I4D_PHASE("bwd all waves");
  int t_begin = 0;
  while (t_begin < d.n_tiles) {
    // a wave: consecutive tiles holding at most max_rows entries (at least one tile)
    int t_end = t_begin + 1;
    while (t_end < d.n_tiles && bin.tile_start[t_end + 1] - bin.tile_start[t_begin] <= max_rows) ++t_end;
    const int64_t row_base = bin.tile_start[t_begin];
    const int64_t wave_rows = bin.tile_start[t_end] - row_base;
    float* rows = ws.rows.Get(static_cast<size_t>(std::max<int64_t>(1, wave_rows * R)));
    ParallelFor(pool, t_end - t_begin, 1, [&](int thread, int64_t begin, int64_t end) {
      for (int64_t t = t_begin + begin; t < t_begin + end; ++t) {
        tile_fn(d, s, bin, static_cast<int>(t), in, rows, row_base, bg_partial.data() + t * C,
                scratch[thread]);
      }
    });
    // reduce this wave's rows into the per-Gaussian gradients, entries in increasing tile order
    const int64_t wave_end = bin.tile_start[t_end];
    I4D_PHASE("bwd reduce");
    ParallelFor(pool, n_sorted, 512, [&](int, int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t i = bin.sorted[r];
        const int64_t stop = bin.gauss_start[r + 1];
        int64_t& k = cursor[r];
        for (; k < stop; ++k) {
          const int64_t pos = bin.gauss_entries[k];
          if (pos >= wave_end) break;
          // rows are scattered (tile-major): fetch the ones a few entries ahead
          const int64_t ahead = k + 4 < n_entries ? bin.gauss_entries[k + 4] : pos;
          if (ahead >= row_base && ahead < wave_end) {
            const char* pf = reinterpret_cast<const char*>(rows + (ahead - row_base) * R);
            for (int64_t off = 0; off < R * static_cast<int64_t>(sizeof(float)); off += 64) __builtin_prefetch(pf + off);
          }
          const float* row = rows + (pos - row_base) * R;
          o.d_means[2 * i] += row[0];
          o.d_means[2 * i + 1] += row[1];
          o.d_conics[3 * i] += row[2];
          o.d_conics[3 * i + 1] += row[3];
          o.d_conics[3 * i + 2] += row[4];
          o.d_opacities[i] += row[5];
          o.d_depths[i] += row[6];
          float* df = o.d_features + i * C;
          const float* rf = row + kRowHead;
          for (int64_t c = 0; c < C; ++c) df[c] += rf[c];
        }
      }
    });
    t_begin = t_end;
  }
  for (int64_t t = 0; t < d.n_tiles; ++t) {
    for (int64_t c = 0; c < C; ++c) o.d_background[c] += bg_partial[t * C + c];
  }
}

// ------------------------------------------------------------------------------------------------
// FFI plumbing

using F32 = ffi::Buffer<ffi::F32>;
using S32 = ffi::Buffer<ffi::S32>;

int64_t Product(ffi::Span<const int64_t> dims, size_t begin, size_t end) {
  int64_t p = 1;
  for (size_t i = begin; i < end; ++i) p *= dims[i];
  return p;
}

std::string DimsString(ffi::Span<const int64_t> dims) {
  std::string out = "[";
  for (size_t i = 0; i < dims.size(); ++i) out += (i ? "," : "") + std::to_string(dims[i]);
  return out + "]";
}

// Infers (B, N, C) from means2d [*B, N, 2] and features [*B, N, C] and checks every buffer's size.
ffi::Error InferDims(const F32& means, const F32& conics, const F32& depths, const S32& radii, const F32& opac,
                     const F32& feats, const F32& bg, int64_t width, int64_t height, Dims& d) {
  const auto md = means.dimensions();
  if (md.size() < 2 || md.back() != 2) {
    return ffi::Error::InvalidArgument("means2d must have shape [*B, N, 2], got " + DimsString(md));
  }
  if (width < 1 || height < 1 || width > (int64_t{1} << 24) || height > (int64_t{1} << 24)) {
    return ffi::Error::InvalidArgument("width and height must be in [1, 2^24], got " + std::to_string(width) +
                                       " x " + std::to_string(height));
  }
  d.n = md[md.size() - 2];
  d.batch = Product(md, 0, md.size() - 2);
  const auto fd = feats.dimensions();
  if (fd.size() == 0 || fd.back() < 1) return ffi::Error::InvalidArgument("features must have shape [*B, N, C], C >= 1");
  d.channels = fd.back();
  d.width = width;
  d.height = height;
  d.tiles_x = static_cast<int>((width + TILE_SIZE - 1) / TILE_SIZE);
  d.tiles_y = static_cast<int>((height + TILE_SIZE - 1) / TILE_SIZE);
  if (int64_t{d.tiles_x} * d.tiles_y > (int64_t{1} << 30)) return ffi::Error::InvalidArgument("image too large");
  d.n_tiles = d.tiles_x * d.tiles_y;
  if (d.n > INT32_MAX) return ffi::Error::InvalidArgument("more than 2^31 - 1 Gaussians per image");
  const int64_t bn = d.batch * d.n;
  struct Check {
    const char* name;
    size_t got;
    int64_t want;
  } checks[] = {
      {"conics", conics.element_count(), bn * 3},      {"depths", depths.element_count(), bn},
      {"radii", radii.element_count(), bn},            {"opacities", opac.element_count(), bn},
      {"features", feats.element_count(), bn * d.channels}, {"background", bg.element_count(), d.batch * d.channels},
  };
  for (const Check& c : checks) {
    if (static_cast<int64_t>(c.got) != c.want) {
      return ffi::Error::InvalidArgument(std::string(c.name) + " has " + std::to_string(c.got) +
                                         " elements, expected " + std::to_string(c.want) + " (means2d " +
                                         DimsString(md) + ", C = " + std::to_string(d.channels) + ")");
    }
  }
  return ffi::Error::Success();
}

ffi::Error CheckCount(const char* name, size_t got, int64_t want) {
  if (static_cast<int64_t>(got) != want) {
    return ffi::Error::InvalidArgument(std::string(name) + " has " + std::to_string(got) + " elements, expected " +
                                       std::to_string(want));
  }
  return ffi::Error::Success();
}

SceneView View(const Dims& d, int64_t b, const F32& means, const F32& conics, const F32& depths, const S32& radii,
               const F32& opac, const F32& feats, const F32& bg) {
  const int64_t off = b * d.n;
  return SceneView{means.typed_data() + 2 * off, conics.typed_data() + 3 * off, depths.typed_data() + off,
                   radii.typed_data() + off,     opac.typed_data() + off,       feats.typed_data() + off * d.channels,
                   bg.typed_data() + b * d.channels};
}

template <template <int> class Fn, typename... Args>
void DispatchChannels(int64_t channels, Args&&... args) {
  switch (channels) {
    case 1: return Fn<1>::Run(std::forward<Args>(args)...);
    case 2: return Fn<2>::Run(std::forward<Args>(args)...);
    case 3: return Fn<3>::Run(std::forward<Args>(args)...);
    case 4: return Fn<4>::Run(std::forward<Args>(args)...);
    case 8: return Fn<8>::Run(std::forward<Args>(args)...);
    case 16: return Fn<16>::Run(std::forward<Args>(args)...);
    case 32: return Fn<32>::Run(std::forward<Args>(args)...);
    case 48: return Fn<48>::Run(std::forward<Args>(args)...);
    case 64: return Fn<64>::Run(std::forward<Args>(args)...);
    case 96: return Fn<96>::Run(std::forward<Args>(args)...);
    default: return Fn<0>::Run(std::forward<Args>(args)...);
  }
}

template <int kC>
struct ForwardAll {
  static void Run(Pool& pool, const Dims& d, Workspace& ws, const F32& means, const F32& conics,
                  const F32& depths, const S32& radii, const F32& opac, const F32& feats, const F32& bg, float* image,
                  float* alpha, float* depth, float* t_final, int32_t* last, Isa isa, uint32_t token) {
    const int64_t hw = d.width * d.height;
    for (int64_t b = 0; b < d.batch; ++b) {
      const SceneView s = View(d, b, means, conics, depths, radii, opac, feats, bg);
      const ForwardOut o{image + b * hw * d.channels, alpha + b * hw, depth + b * hw, t_final + b * hw,
                         last + b * hw};
      ForwardImage<kC>(pool, d, s, o, ws, isa, token, b);
    }
  }
};

template <int kC>
struct BackwardAll {
  static void Run(Pool& pool, const Dims& d, Workspace& ws, const F32& means, const F32& conics,
                  const F32& depths, const S32& radii, const F32& opac, const F32& feats, const F32& bg,
                  const float* t_final, const int32_t* last, const float* g_image, const float* g_alpha,
                  const float* g_depth, float* d_means, float* d_conics, float* d_depths, float* d_opac,
                  float* d_feats, float* d_bg, Isa isa, const int32_t* tokens) {
    const int64_t hw = d.width * d.height;
    for (int64_t b = 0; b < d.batch; ++b) {
      const SceneView s = View(d, b, means, conics, depths, radii, opac, feats, bg);
      const BackwardIn in{t_final + b * hw, last + b * hw, g_image + b * hw * d.channels, g_alpha + b * hw,
                          g_depth + b * hw};
      const int64_t off = b * d.n;
      const BackwardOut o{d_means + 2 * off, d_conics + 3 * off, d_depths + off, d_opac + off,
                          d_feats + off * d.channels, d_bg + b * d.channels};
      BackwardImage<kC>(pool, d, s, in, o, ws, isa, static_cast<uint32_t>(tokens[b]), b);
    }
  }
};

ffi::Error ForwardImpl(F32 means, F32 conics, F32 depths, S32 radii, F32 opac, F32 feats, F32 bg, int64_t width,
                       int64_t height, int64_t isa, int64_t keep, ffi::ResultBuffer<ffi::F32> image,
                       ffi::ResultBuffer<ffi::F32> alpha, ffi::ResultBuffer<ffi::F32> depth,
                       ffi::ResultBuffer<ffi::F32> t_final, ffi::ResultBuffer<ffi::S32> last,
                       ffi::ResultBuffer<ffi::S32> token) {
  Dims d;
  ffi::Error err = InferDims(means, conics, depths, radii, opac, feats, bg, width, height, d);
  if (err.failure()) return err;
  if (isa < 0 || isa > 3) return ffi::Error::InvalidArgument("isa must be 0 (auto), 1, 2 or 3");
  const int64_t pixels = d.batch * d.width * d.height;
  for (ffi::Error e : {CheckCount("image", image->element_count(), pixels * d.channels),
                       CheckCount("alpha", alpha->element_count(), pixels),
                       CheckCount("depth", depth->element_count(), pixels),
                       CheckCount("t_final", t_final->element_count(), pixels),
                       CheckCount("last", last->element_count(), pixels),
                       CheckCount("token", token->element_count(), d.batch)}) {
    if (e.failure()) return e;
  }
  if (d.batch == 0) return ffi::Error::Success();
  const uint32_t tok = keep ? BinningCache::Get().NewToken() : 0u;
  std::fill_n(token->typed_data(), d.batch, static_cast<int32_t>(tok));
  try {
    Pool pool(NumThreads(d.n_tiles));
    WorkspaceLease lease;
    if (lease.ws->scratch.size() < static_cast<size_t>(pool.size())) lease.ws->scratch.resize(pool.size());
    DispatchChannels<ForwardAll>(d.channels, pool, d, *lease.ws, means, conics, depths, radii, opac, feats, bg,
                                 image->typed_data(), alpha->typed_data(), depth->typed_data(),
                                 t_final->typed_data(), last->typed_data(), ResolveIsa(static_cast<Isa>(isa)), tok);
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted, "rasterizer (cpu forward): out of host memory");
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("rasterizer (cpu forward): ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(F32 means, F32 conics, F32 depths, S32 radii, F32 opac, F32 feats, F32 bg, F32 t_final,
                        S32 last, S32 token, F32 g_image, F32 g_alpha, F32 g_depth, int64_t width, int64_t height, int64_t isa,
                        ffi::ResultBuffer<ffi::F32> d_means, ffi::ResultBuffer<ffi::F32> d_conics,
                        ffi::ResultBuffer<ffi::F32> d_depths, ffi::ResultBuffer<ffi::F32> d_opac,
                        ffi::ResultBuffer<ffi::F32> d_feats, ffi::ResultBuffer<ffi::F32> d_bg) {
  Dims d;
  ffi::Error err = InferDims(means, conics, depths, radii, opac, feats, bg, width, height, d);
  if (err.failure()) return err;
  if (isa < 0 || isa > 3) return ffi::Error::InvalidArgument("isa must be 0 (auto), 1, 2 or 3");
  const int64_t pixels = d.batch * d.width * d.height;
  const int64_t bn = d.batch * d.n;
  for (ffi::Error e : {CheckCount("t_final", t_final.element_count(), pixels),
                       CheckCount("last", last.element_count(), pixels),
                       CheckCount("token", token.element_count(), d.batch),
                       CheckCount("image cotangent", g_image.element_count(), pixels * d.channels),
                       CheckCount("alpha cotangent", g_alpha.element_count(), pixels),
                       CheckCount("depth cotangent", g_depth.element_count(), pixels),
                       CheckCount("d_means2d", d_means->element_count(), bn * 2),
                       CheckCount("d_conics", d_conics->element_count(), bn * 3),
                       CheckCount("d_depths", d_depths->element_count(), bn),
                       CheckCount("d_opacities", d_opac->element_count(), bn),
                       CheckCount("d_features", d_feats->element_count(), bn * d.channels),
                       CheckCount("d_background", d_bg->element_count(), d.batch * d.channels)}) {
    if (e.failure()) return e;
  }
  std::fill_n(d_means->typed_data(), bn * 2, 0.0f);
  std::fill_n(d_conics->typed_data(), bn * 3, 0.0f);
  std::fill_n(d_depths->typed_data(), bn, 0.0f);
  std::fill_n(d_opac->typed_data(), bn, 0.0f);
  std::fill_n(d_feats->typed_data(), bn * d.channels, 0.0f);
  std::fill_n(d_bg->typed_data(), d.batch * d.channels, 0.0f);
  if (d.batch == 0) return ffi::Error::Success();
  try {
    Pool pool(NumThreads(d.n_tiles));
    WorkspaceLease lease;
    if (lease.ws->scratch.size() < static_cast<size_t>(pool.size())) lease.ws->scratch.resize(pool.size());
    DispatchChannels<BackwardAll>(d.channels, pool, d, *lease.ws, means, conics, depths, radii, opac, feats, bg,
                                  t_final.typed_data(), last.typed_data(), g_image.typed_data(),
                                  g_alpha.typed_data(), g_depth.typed_data(), d_means->typed_data(),
                                  d_conics->typed_data(), d_depths->typed_data(), d_opac->typed_data(),
                                  d_feats->typed_data(), d_bg->typed_data(), ResolveIsa(static_cast<Isa>(isa)),
                                  token.typed_data());
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted, "rasterizer (cpu backward): out of host memory");
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("rasterizer (cpu backward): ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace instant4d

// Exported handler symbols (default visibility; everything else in this library is hidden).
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* Instant4dRasterForwardCpu(XLA_FFI_CallFrame*);
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* Instant4dRasterBackwardCpu(XLA_FFI_CallFrame*);

XLA_FFI_DEFINE_HANDLER_SYMBOL(Instant4dRasterForwardCpu, instant4d::ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // means2d [*B, N, 2]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // conics [*B, N, 3]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // depths [*B, N]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // radii [*B, N]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // opacities [*B, N]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // features [*B, N, C]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // background [*B, C]
                                  .Attr<int64_t>("width")
                                  .Attr<int64_t>("height")
                                  .Attr<int64_t>("isa")  // 0 auto; 1 baseline, 2 AVX2, 3 AVX-512 (tests)
                                  .Attr<int64_t>("keep")  // 1: keep the binning for the backward
                                  .Ret<ffi::Buffer<ffi::F32>>()   // image [*B, H, W, C]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // alpha [*B, H, W]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // depth [*B, H, W]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // t_final [*B, H, W] (residual)
                                  .Ret<ffi::Buffer<ffi::S32>>()   // last [*B, H, W] (residual)
                                  .Ret<ffi::Buffer<ffi::S32>>());  // token [*B] of the kept binning (residual)

XLA_FFI_DEFINE_HANDLER_SYMBOL(Instant4dRasterBackwardCpu, instant4d::BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // means2d
                                  .Arg<ffi::Buffer<ffi::F32>>()  // conics
                                  .Arg<ffi::Buffer<ffi::F32>>()  // depths
                                  .Arg<ffi::Buffer<ffi::S32>>()  // radii
                                  .Arg<ffi::Buffer<ffi::F32>>()  // opacities
                                  .Arg<ffi::Buffer<ffi::F32>>()  // features
                                  .Arg<ffi::Buffer<ffi::F32>>()  // background
                                  .Arg<ffi::Buffer<ffi::F32>>()  // t_final
                                  .Arg<ffi::Buffer<ffi::S32>>()  // last
                                  .Arg<ffi::Buffer<ffi::S32>>()  // token (0: bin again)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cotangent of image
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cotangent of alpha
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cotangent of depth
                                  .Attr<int64_t>("width")
                                  .Attr<int64_t>("height")
                                  .Attr<int64_t>("isa")  // 0 auto; 1 baseline, 2 AVX2, 3 AVX-512 (tests)
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d means2d
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d conics
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d depths
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d opacities
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d features
                                  .Ret<ffi::Buffer<ffi::F32>>());  // d background
