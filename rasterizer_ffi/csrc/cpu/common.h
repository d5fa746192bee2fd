// Shared by the stages of the CPU rasterizer (binning.cc, forward.cc, backward.cc, ffi_handlers.cc):
// threads, the problem description (one image of the batch is a view into the flat buffers), tile
// geometry, the forward's outputs and the backward's inputs and outputs, the instruction sets.
//
// The per-pixel math is not here: it is gaussian.h (shared with CUDA) and the tile kernels
// (tile_kernels.inc, compiled once per instruction set by kernels.h).
#ifndef INSTANT4D_RASTERIZER_CPU_COMMON_H_
#define INSTANT4D_RASTERIZER_CPU_COMMON_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "../gaussian.h"

// With GCC / Clang on x86-64 the tile kernels are also compiled for AVX2+FMA and AVX-512 (kernels.h).
#if defined(__x86_64__) && defined(__GNUC__)
#define I4D_HAVE_X86_ISAS 1
#endif

namespace instant4d {
namespace cpu {

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

inline int NumThreads(int64_t work_items) {
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

// The flat [B, N, ...] inputs of a whole batch; View(d, b) is image b's part.
struct SceneBatch {
  const float* means;      // [B, N, 2]
  const float* conics;     // [B, N, 3]
  const float* depths;     // [B, N]
  const int32_t* radii;    // [B, N]
  const float* opacities;  // [B, N]
  const float* features;   // [B, N, C]
  const float* background; // [B, C]

  SceneView View(const Dims& d, int64_t b) const {
    const int64_t off = b * d.n;
    return SceneView{means + 2 * off, conics + 3 * off, depths + off, radii + off, opacities + off,
                     features + off * d.channels, background + b * d.channels};
  }
};

// Per-thread scratch reused across tiles and images.
// Per-thread scratch reused across tiles and images.
struct Scratch {
  std::vector<float> acc;  // forward: [16, 16, C] colour accumulators; backward: [C, 16, 16] cotangents
};

// Geometry of one tile.
struct TileRect {
  int64_t x0, y0;   // first pixel
  int cols, rows;   // pixels inside the image (<= TILE_SIZE each)
};

inline TileRect TileAt(const Dims& d, int tile) {
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
// Instruction sets of the tile kernels (kernels.h), chosen at run time.

enum class Isa : int64_t { kAuto = 0, kBaseline = 1, kAvx2 = 2, kAvx512 = 3 };

// The instruction set to run: `requested` if given and supported, else the widest supported.
Isa ResolveIsa(Isa requested);

// Fn<kC>::Run(args...) with the channel count as a template parameter where it is a common one
// (kC = 0: any C, read at run time).
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


}  // namespace cpu
}  // namespace instant4d

#endif  // INSTANT4D_RASTERIZER_CPU_COMMON_H_
