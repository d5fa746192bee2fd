// CUDA backend of the Gaussian rasterizer: XLA FFI forward and backward handlers on XLA's stream.
//
// Binning (forward and backward alike, deterministic):
//   1. CountTilesKernel: per Gaussian (all images of the flattened batch at once) the number of
//      16x16 tiles it may touch (gaussian.h: conservative ellipse box + exact per-tile range test,
//      evaluated in float with slack; radii == 0 and unreachable Gaussians get 0);
//   2. CUB inclusive scan of the int64 counts; the total is copied to the host (one stream
//      synchronisation) to size the temporaries, which come from XLA's ScratchAllocator (so the
//      handlers are not CUDA-graph compatible and do not declare it). Totals that do not fit the
//      32-bit sort / index types raise an FFI error; nothing is launched with zero blocks;
//   3. EmitKeysKernel: 64-bit keys [image * n_tiles + tile | depth key] (depth key from gaussian.h:
//      order-preserving for every float), values = global Gaussian index, emitted in index order;
//   4. CUB radix sort of the pairs (stable, only the needed key bits), so ties in depth keep index
//      order, exactly like the reference's stable argsort;
//   5. TileRangesKernel: [start, end) of every tile in the sorted list.
// Forward: one 256-thread block per tile and image, one pixel per thread, Gaussians staged through
// shared memory in batches of 256, per-pixel math from gaussian.h (same as the CPU backend).
// Residuals: t_final (float) and last (int32: tile-list entries up to the last contributor).
// Backward: same binning; each pixel walks its tile list back to front from `last`, recovering T by
// division by 1 - alpha (>= 0.01). Per-Gaussian gradients are summed over a warp with shuffles
// and added with float atomicAdd: CUDA gradients are therefore NOT bitwise deterministic (the
// order of the atomic additions varies run to run, differences at float rounding). The background
// gradient uses a fixed-order two-pass reduction and is deterministic.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include "xla/ffi/api/ffi.h"
#include "gaussian.h"

namespace ffi = xla::ffi;

namespace instant4d {
namespace {

constexpr int kThreads = TILE_SIZE * TILE_SIZE;  // one thread per pixel of a tile
constexpr int kMaxGridY = 65535;

#define I4D_CUDA_RETURN_IF_ERROR(expr)                                                          \
  do {                                                                                          \
    cudaError_t i4d_err_ = (expr);                                                              \
    if (i4d_err_ != cudaSuccess) {                                                              \
      return ffi::Error::Internal(std::string("rasterizer (cuda): ") + #expr + ": " +         \
                                  cudaGetErrorString(i4d_err_));                                \
    }                                                                                           \
  } while (0)

#define I4D_RETURN_IF_FAILED(expr)          \
  do {                                      \
    ffi::Error i4d_ffi_err_ = (expr);       \
    if (i4d_ffi_err_.failure()) return i4d_ffi_err_; \
  } while (0)

struct Dims {
  int64_t batch = 0, n = 0, channels = 0, width = 0, height = 0;
  int tiles_x = 0, tiles_y = 0;
  int64_t n_tiles = 0;
};

int64_t Blocks(int64_t n, int64_t threads) { return (n + threads - 1) / threads; }

// ------------------------------------------------------------------------------------------------
// Binning kernels

__global__ void CountTilesKernel(int64_t total, const float* __restrict__ means, const float* __restrict__ conics,
                                 const int32_t* __restrict__ radii, const float* __restrict__ opacities, int width,
                                 int height, int64_t* __restrict__ counts) {
  const int64_t gid = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (gid >= total) return;
  int64_t count = 0;
  GaussianBin<float> g;
  if (radii[gid] > 0 && gaussian_bin_setup<float>(means[2 * gid], means[2 * gid + 1], conics[3 * gid],
                                                  conics[3 * gid + 1], conics[3 * gid + 2], opacities[gid], width,
                                                  height, g)) {
    for (int ty = g.ty0; ty <= g.ty1; ++ty) {
      for (int tx = g.tx0; tx <= g.tx1; ++tx) {
        if (gaussian_bin_tile<float>(g, tx, ty, width, height)) ++count;
      }
    }
  }
  counts[gid] = count;
}

// Emits the keys of Gaussian gid into its slots [inclusive - count, inclusive). The tests are those of
// CountTilesKernel evaluated without FMA contraction (gaussian.h rn_* helpers), so both kernels make
// the same decisions; should they ever disagree, unfilled slots get a sentinel key past every real tile
// (sorted last, ignored by TileRangesKernel) and extra tiles are dropped: memory stays consistent.
__global__ void EmitKeysKernel(int64_t total, int64_t n, int64_t n_tiles, int tiles_x, uint64_t sentinel_tile,
                               const float* __restrict__ means, const float* __restrict__ conics,
                               const float* __restrict__ depths, const int32_t* __restrict__ radii,
                               const float* __restrict__ opacities, int width, int height,
                               const int64_t* __restrict__ counts, const int64_t* __restrict__ inclusive,
                               uint64_t* __restrict__ keys, int32_t* __restrict__ values) {
  const int64_t gid = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (gid >= total) return;
  const int64_t count = counts[gid];
  if (count == 0) return;
  int64_t pos = inclusive[gid] - count;
  const int64_t stop = pos + count;
  GaussianBin<float> g;
  if (gaussian_bin_setup<float>(means[2 * gid], means[2 * gid + 1], conics[3 * gid], conics[3 * gid + 1],
                                conics[3 * gid + 2], opacities[gid], width, height, g)) {
    const uint64_t image_base = static_cast<uint64_t>(gid / n) * static_cast<uint64_t>(n_tiles);
    const uint64_t dkey = depth_key(depths[gid]);
    for (int ty = g.ty0; ty <= g.ty1 && pos < stop; ++ty) {
      for (int tx = g.tx0; tx <= g.tx1 && pos < stop; ++tx) {
        if (gaussian_bin_tile<float>(g, tx, ty, width, height)) {
          const uint64_t tile = image_base + static_cast<uint64_t>(ty) * tiles_x + tx;
          keys[pos] = (tile << 32) | dkey;
          values[pos] = static_cast<int32_t>(gid);
          ++pos;
        }
      }
    }
  }
  for (; pos < stop; ++pos) {
    keys[pos] = (sentinel_tile << 32) | 0xffffffffull;
    values[pos] = static_cast<int32_t>(gid);
  }
}

__global__ void TileRangesKernel(int64_t n_isect, uint64_t tiles_total, const uint64_t* __restrict__ keys,
                                 int32_t* __restrict__ tile_start, int32_t* __restrict__ tile_end) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n_isect) return;
  const uint64_t tile = keys[i] >> 32;
  if (tile >= tiles_total) return;  // sentinel
  if (i == 0 || (keys[i - 1] >> 32) != tile) tile_start[tile] = static_cast<int32_t>(i);
  if (i == n_isect - 1 || (keys[i + 1] >> 32) != tile) tile_end[tile] = static_cast<int32_t>(i + 1);
}

// Device temporaries of one binning, all from the ScratchAllocator.
struct DeviceBinning {
  int64_t n_isect = 0;
  const int32_t* values = nullptr;  // sorted Gaussian indices (global over the batch)
  int32_t* tile_start = nullptr;    // [B * n_tiles]
  int32_t* tile_end = nullptr;      // [B * n_tiles]
};

ffi::Error Allocate(ffi::ScratchAllocator& scratch, size_t bytes, void** out, const char* what) {
  std::optional<void*> p = scratch.Allocate(bytes < 256 ? 256 : bytes, 256);
  if (!p.has_value() || *p == nullptr) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted, std::string("rasterizer (cuda): could not allocate ") +
                                                              std::to_string(bytes) + " bytes of device memory for " +
                                                              what);
  }
  *out = *p;
  return ffi::Error::Success();
}

template <typename T>
ffi::Error AllocateArray(ffi::ScratchAllocator& scratch, int64_t count, T** out, const char* what) {
  void* p = nullptr;
  I4D_RETURN_IF_FAILED(Allocate(scratch, static_cast<size_t>(count) * sizeof(T), &p, what));
  *out = static_cast<T*>(p);
  return ffi::Error::Success();
}

int BitsFor(uint64_t n) {  // bits needed to represent values in [0, n)
  int bits = 0;
  while (bits < 64 && (uint64_t{1} << bits) < n) ++bits;
  return bits;
}

ffi::Error BinOnDevice(cudaStream_t stream, ffi::ScratchAllocator& scratch, const Dims& d, const float* means,
                       const float* conics, const float* depths, const int32_t* radii, const float* opacities,
                       DeviceBinning& bin) {
  const int64_t total = d.batch * d.n;
  const int64_t tiles_total = d.batch * d.n_tiles;
  I4D_RETURN_IF_FAILED(AllocateArray(scratch, tiles_total, &bin.tile_start, "tile ranges"));
  I4D_RETURN_IF_FAILED(AllocateArray(scratch, tiles_total, &bin.tile_end, "tile ranges"));
  I4D_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(bin.tile_start, 0, sizeof(int32_t) * tiles_total, stream));
  I4D_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(bin.tile_end, 0, sizeof(int32_t) * tiles_total, stream));
  bin.n_isect = 0;
  if (total == 0) return ffi::Error::Success();

  const int width = static_cast<int>(d.width), height = static_cast<int>(d.height);
  int64_t* counts = nullptr;
  int64_t* inclusive = nullptr;
  I4D_RETURN_IF_FAILED(AllocateArray(scratch, total, &counts, "tile counts"));
  I4D_RETURN_IF_FAILED(AllocateArray(scratch, total, &inclusive, "tile offsets"));
  CountTilesKernel<<<static_cast<unsigned>(Blocks(total, 256)), 256, 0, stream>>>(total, means, conics, radii,
                                                                                    opacities, width, height, counts);
  I4D_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  size_t scan_bytes = 0;
  I4D_CUDA_RETURN_IF_ERROR(cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, counts, inclusive, total, stream));
  void* scan_tmp = nullptr;
  I4D_RETURN_IF_FAILED(Allocate(scratch, scan_bytes, &scan_tmp, "prefix sum"));
  I4D_CUDA_RETURN_IF_ERROR(cub::DeviceScan::InclusiveSum(scan_tmp, scan_bytes, counts, inclusive, total, stream));
  int64_t n_isect = 0;
  I4D_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(&n_isect, inclusive + (total - 1), sizeof(int64_t), cudaMemcpyDeviceToHost, stream));
  I4D_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  if (n_isect < 0 || n_isect >= (int64_t{1} << 31) - 1) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      "rasterizer (cuda): " + std::to_string(n_isect) +
                          " Gaussian-tile intersections exceed the supported 2^31 - 1 (split the batch)");
  }
  bin.n_isect = n_isect;
  if (n_isect == 0) return ffi::Error::Success();

  uint64_t* keys_in = nullptr;
  uint64_t* keys_out = nullptr;
  int32_t* values_in = nullptr;
  int32_t* values_out = nullptr;
  I4D_RETURN_IF_FAILED(AllocateArray(scratch, n_isect, &keys_in, "sort keys"));
  I4D_RETURN_IF_FAILED(AllocateArray(scratch, n_isect, &keys_out, "sort keys"));
  I4D_RETURN_IF_FAILED(AllocateArray(scratch, n_isect, &values_in, "sort values"));
  I4D_RETURN_IF_FAILED(AllocateArray(scratch, n_isect, &values_out, "sort values"));
  EmitKeysKernel<<<static_cast<unsigned>(Blocks(total, 256)), 256, 0, stream>>>(
      total, d.n, d.n_tiles, d.tiles_x, static_cast<uint64_t>(tiles_total), means, conics, depths, radii, opacities,
      width, height, counts, inclusive, keys_in, values_in);
  I4D_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  const int end_bit = 32 + BitsFor(static_cast<uint64_t>(tiles_total) + 1);  // + the sentinel tile
  const int num_items = static_cast<int>(n_isect);
  size_t sort_bytes = 0;
  I4D_CUDA_RETURN_IF_ERROR(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, keys_in, keys_out, values_in,
                                                           values_out, num_items, 0, end_bit, stream));
  void* sort_tmp = nullptr;
  I4D_RETURN_IF_FAILED(Allocate(scratch, sort_bytes, &sort_tmp, "radix sort"));
  I4D_CUDA_RETURN_IF_ERROR(cub::DeviceRadixSort::SortPairs(sort_tmp, sort_bytes, keys_in, keys_out, values_in,
                                                           values_out, num_items, 0, end_bit, stream));
  TileRangesKernel<<<static_cast<unsigned>(Blocks(n_isect, 256)), 256, 0, stream>>>(
      n_isect, static_cast<uint64_t>(tiles_total), keys_out, bin.tile_start, bin.tile_end);
  I4D_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  bin.values = values_out;
  return ffi::Error::Success();
}

// ------------------------------------------------------------------------------------------------
// Rasterization kernels. Grid: (n_tiles, images of this launch); block: 256 threads = 16 x 16 pixels.

struct RasterArgs {
  const float* means;
  const float* conics;
  const float* depths;
  const float* opacities;
  const float* features;
  const float* background;
  const int32_t* values;
  const int32_t* tile_start;
  const int32_t* tile_end;
  int64_t n_tiles, channels, width, height;
  int tiles_x;
  int64_t image_offset;  // first image of this launch
};

struct SharedGaussian {
  float mx, my, a, b, c, opacity, z, cut;
};

// Loads the Gaussian of sorted entry `idx` into shared memory slot `slot`.
__device__ __forceinline__ void LoadGaussian(const RasterArgs& args, int32_t idx, int slot, int32_t* s_id,
                                             SharedGaussian* s_g) {
  const int32_t gid = args.values[idx];
  s_id[slot] = gid;
  SharedGaussian g;
  g.mx = args.means[2 * static_cast<int64_t>(gid)];
  g.my = args.means[2 * static_cast<int64_t>(gid) + 1];
  g.a = args.conics[3 * static_cast<int64_t>(gid)];
  g.b = args.conics[3 * static_cast<int64_t>(gid) + 1];
  g.c = args.conics[3 * static_cast<int64_t>(gid) + 2];
  g.opacity = args.opacities[gid];
  g.z = args.depths[gid];
  // sigma > cut implies alpha < ALPHA_MIN with margin: skips exp() without changing any decision
  const float thr = logf(g.opacity / ALPHA_MIN);
  g.cut = thr + static_cast<float>(BIN_SIGMA_SLACK) * (1.0f + thr);
  s_g[slot] = g;
}

template <int kC>
__global__ void __launch_bounds__(kThreads) ForwardKernel(RasterArgs args, float* __restrict__ image,
                                                          float* __restrict__ alpha_out, float* __restrict__ depth_out,
                                                          float* __restrict__ t_final_out,
                                                          int32_t* __restrict__ last_out) {
  __shared__ int32_t s_id[kThreads];
  __shared__ SharedGaussian s_g[kThreads];
  const int64_t C = kC > 0 ? kC : args.channels;
  const int64_t b = args.image_offset + blockIdx.y;
  const int tile = blockIdx.x;
  const int64_t gtile = b * args.n_tiles + tile;
  const int x = (tile % args.tiles_x) * TILE_SIZE + static_cast<int>(threadIdx.x) % TILE_SIZE;
  const int y = (tile / args.tiles_x) * TILE_SIZE + static_cast<int>(threadIdx.x) / TILE_SIZE;
  const bool inside = x < args.width && y < args.height;
  const float px = static_cast<float>(x) + 0.5f, py = static_cast<float>(y) + 0.5f;
  const int64_t p = (b * args.height + y) * args.width + x;  // only used when inside
  const int32_t start = args.tile_start[gtile], end = args.tile_end[gtile];
  const int count = end - start;

  float acc[kC > 0 ? kC : 1];
  float* acc_global = (kC > 0 || !inside) ? nullptr : image + p * C;
  if (kC > 0) {
#pragma unroll
    for (int c = 0; c < (kC > 0 ? kC : 1); ++c) acc[c] = 0.0f;
  } else if (inside) {
    for (int64_t c = 0; c < C; ++c) acc_global[c] = 0.0f;
  }
  float acc_depth = 0.0f, T = 1.0f;
  int32_t last = 0;
  bool done = !inside;
  const int rounds = (count + kThreads - 1) / kThreads;
  for (int r = 0; r < rounds; ++r) {
    // barrier: every thread finished reading the previous batch; stop when all pixels are done
    if (__syncthreads_count(done) == kThreads) break;
    const int base = r * kThreads;
    const int batch = min(kThreads, count - base);
    if (static_cast<int>(threadIdx.x) < batch) LoadGaussian(args, start + base + threadIdx.x, threadIdx.x, s_id, s_g);
    __syncthreads();
    for (int j = 0; j < batch && !done; ++j) {
      const SharedGaussian g = s_g[j];
      const float dx = fsub(g.mx, px), dy = fsub(g.my, py);
      const float sigma = gaussian_sigma(g.a, g.b, g.c, dx, dy);
      if (!(sigma <= g.cut)) continue;
      float alpha, gexp;
      bool clamped;
      if (!gaussian_alpha(g.opacity, sigma, alpha, gexp, clamped)) continue;
      const float t_next = T * (1.0f - alpha);
      if (t_next < T_MIN) {
        done = true;
        break;
      }
      const float w = alpha * T;
      const float* f = args.features + static_cast<int64_t>(s_id[j]) * C;
      if (kC > 0) {
#pragma unroll
        for (int c = 0; c < (kC > 0 ? kC : 1); ++c) acc[c] += w * __ldg(f + c);
      } else {
        for (int64_t c = 0; c < C; ++c) acc_global[c] += w * __ldg(f + c);
      }
      acc_depth += w * g.z;
      T = t_next;
      last = base + j + 1;
    }
  }
  if (!inside) return;
  const float* bg = args.background + b * C;
  float* img = image + p * C;
  if (kC > 0) {
#pragma unroll
    for (int c = 0; c < (kC > 0 ? kC : 1); ++c) img[c] = acc[c] + T * bg[c];
  } else {
    for (int64_t c = 0; c < C; ++c) img[c] = acc_global[c] + T * bg[c];
  }
  alpha_out[p] = 1.0f - T;
  depth_out[p] = acc_depth;
  t_final_out[p] = T;
  last_out[p] = last;
}

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

struct BackwardArgs {
  const float* t_final;
  const int32_t* last;
  const float* g_image;
  const float* g_alpha;
  const float* g_depth;
  float* d_means;
  float* d_conics;
  float* d_depths;
  float* d_opacities;
  float* d_features;
};

template <int kC>
__global__ void __launch_bounds__(kThreads) BackwardKernel(RasterArgs args, BackwardArgs bw) {
  __shared__ int32_t s_id[kThreads];
  __shared__ SharedGaussian s_g[kThreads];
  __shared__ int s_max_last;
  const int64_t C = kC > 0 ? kC : args.channels;
  const int64_t b = args.image_offset + blockIdx.y;
  const int tile = blockIdx.x;
  const int64_t gtile = b * args.n_tiles + tile;
  const int x = (tile % args.tiles_x) * TILE_SIZE + static_cast<int>(threadIdx.x) % TILE_SIZE;
  const int y = (tile / args.tiles_x) * TILE_SIZE + static_cast<int>(threadIdx.x) / TILE_SIZE;
  const bool inside = x < args.width && y < args.height;
  const float px = static_cast<float>(x) + 0.5f, py = static_cast<float>(y) + 0.5f;
  const int64_t p = inside ? (b * args.height + y) * args.width + x : 0;
  const int32_t start = args.tile_start[gtile], end = args.tile_end[gtile];
  const int count = end - start;
  const int lane = static_cast<int>(threadIdx.x) & 31;

  const float t_final = inside ? bw.t_final[p] : 1.0f;
  int last = inside ? bw.last[p] : 0;
  last = last < 0 ? 0 : (last > count ? count : last);
  const float g_alpha = inside ? bw.g_alpha[p] : 0.0f;
  const float g_depth = inside ? bw.g_depth[p] : 0.0f;
  const float* g_img = bw.g_image + p * C;
  const float* bg = args.background + b * C;
  float gc[kC > 0 ? kC : 1];
  float bg_dot = 0.0f;
  if (kC > 0) {
#pragma unroll
    for (int c = 0; c < (kC > 0 ? kC : 1); ++c) {
      gc[c] = inside ? g_img[c] : 0.0f;
      bg_dot += bg[c] * gc[c];
    }
  } else if (inside) {
    for (int64_t c = 0; c < C; ++c) bg_dot += bg[c] * g_img[c];
  }
  float T = t_final;
  float s_color = t_final * bg_dot;
  float s_depth = 0.0f;

  if (threadIdx.x == 0) s_max_last = 0;
  __syncthreads();
  atomicMax(&s_max_last, last);
  __syncthreads();
  const int max_last = s_max_last;
  const int rounds = (max_last + kThreads - 1) / kThreads;
  for (int r = rounds - 1; r >= 0; --r) {
    __syncthreads();  // the previous batch has been consumed by every thread
    const int base = r * kThreads;
    const int batch = min(kThreads, max_last - base);
    if (static_cast<int>(threadIdx.x) < batch) LoadGaussian(args, start + base + threadIdx.x, threadIdx.x, s_id, s_g);
    __syncthreads();
    // every thread runs every j (block-uniform trip count), so warp shuffles see all 32 lanes
    for (int j = batch - 1; j >= 0; --j) {
      const SharedGaussian g = s_g[j];
      const int32_t gid = s_id[j];
      bool valid = base + j < last;
      PixelGrad pg{0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
      const float* f = args.features + static_cast<int64_t>(gid) * C;
      if (valid) {
        const float dx = fsub(g.mx, px), dy = fsub(g.my, py);
        const float sigma = gaussian_sigma(g.a, g.b, g.c, dx, dy);
        float alpha = 0.0f, gexp = 0.0f;
        bool clamped = false;
        valid = sigma <= g.cut && gaussian_alpha(g.opacity, sigma, alpha, gexp, clamped);
        if (valid) {
          float fg = 0.0f;
          if (kC > 0) {
#pragma unroll
            for (int c = 0; c < (kC > 0 ? kC : 1); ++c) fg += __ldg(f + c) * gc[c];
          } else {
            for (int64_t c = 0; c < C; ++c) fg += __ldg(f + c) * g_img[c];
          }
          pg = pixel_backward(alpha, gexp, clamped, g.a, g.b, g.c, dx, dy, g.z, fg, g_alpha, g_depth, t_final, T,
                              s_color, s_depth);
        }
      }
      if (!__any_sync(0xffffffffu, valid)) continue;
      const float v0 = WarpSum(pg.d_mean_x), v1 = WarpSum(pg.d_mean_y);
      const float v2 = WarpSum(pg.d_a), v3 = WarpSum(pg.d_b), v4 = WarpSum(pg.d_c);
      const float v5 = WarpSum(pg.d_opacity), v6 = WarpSum(pg.d_depth);
      const int64_t gi = gid;
      if (lane == 0) {
        atomicAdd(bw.d_means + 2 * gi, v0);
        atomicAdd(bw.d_means + 2 * gi + 1, v1);
        atomicAdd(bw.d_conics + 3 * gi, v2);
        atomicAdd(bw.d_conics + 3 * gi + 1, v3);
        atomicAdd(bw.d_conics + 3 * gi + 2, v4);
        atomicAdd(bw.d_opacities + gi, v5);
        atomicAdd(bw.d_depths + gi, v6);
      }
      float* df = bw.d_features + gi * C;
      if (kC > 0) {
#pragma unroll
        for (int c = 0; c < (kC > 0 ? kC : 1); ++c) {
          const float v = WarpSum(pg.w * gc[c]);
          if (lane == 0) atomicAdd(df + c, v);
        }
      } else {
        for (int64_t c = 0; c < C; ++c) {
          const float v = WarpSum(inside ? pg.w * g_img[c] : 0.0f);
          if (lane == 0) atomicAdd(df + c, v);
        }
      }
    }
  }
}

// Background gradient, deterministic: partial[b, part, c] = sum over a fixed pixel range of
// t_final * g_image (fixed order), then d_background[b, c] = sum over parts in order.
constexpr int kBgParts = 64;

__global__ void BackgroundPartialKernel(int64_t hw, int64_t channels, const float* __restrict__ t_final,
                                        const float* __restrict__ g_image, float* __restrict__ partial) {
  __shared__ float s_sum[8][32];
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  const int part = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int64_t chunk = (hw + kBgParts - 1) / kBgParts;
  const int64_t p0 = part * chunk, p1 = min(hw, p0 + chunk);
  float acc = 0.0f;
  if (c < channels) {
    for (int64_t q = p0 + threadIdx.y; q < p1; q += 8) {
      const int64_t p = b * hw + q;
      acc += t_final[p] * g_image[p * channels + c];
    }
  }
  s_sum[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < channels) {
    float s = 0.0f;
    for (int k = 0; k < 8; ++k) s += s_sum[k][threadIdx.x];
    partial[(b * kBgParts + part) * channels + c] = s;
  }
}

__global__ void BackgroundReduceKernel(int64_t batch, int64_t channels, const float* __restrict__ partial,
                                       float* __restrict__ d_background) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= batch * channels) return;
  const int64_t b = i / channels, c = i % channels;
  float s = 0.0f;
  for (int part = 0; part < kBgParts; ++part) s += partial[(b * kBgParts + part) * channels + c];
  d_background[i] = s;
}

// ------------------------------------------------------------------------------------------------
// Launch helpers: grid.y is limited to 65535 images per launch.

template <int kC>
ffi::Error LaunchForward(cudaStream_t stream, RasterArgs args, const Dims& d, float* image, float* alpha, float* depth,
                         float* t_final, int32_t* last) {
  for (int64_t b0 = 0; b0 < d.batch; b0 += kMaxGridY) {
    args.image_offset = b0;
    const dim3 grid(static_cast<unsigned>(d.n_tiles), static_cast<unsigned>(std::min<int64_t>(kMaxGridY, d.batch - b0)));
    ForwardKernel<kC><<<grid, kThreads, 0, stream>>>(args, image, alpha, depth, t_final, last);
    I4D_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return ffi::Error::Success();
}

template <int kC>
ffi::Error LaunchBackward(cudaStream_t stream, RasterArgs args, const Dims& d, const BackwardArgs& bw) {
  for (int64_t b0 = 0; b0 < d.batch; b0 += kMaxGridY) {
    args.image_offset = b0;
    const dim3 grid(static_cast<unsigned>(d.n_tiles), static_cast<unsigned>(std::min<int64_t>(kMaxGridY, d.batch - b0)));
    BackwardKernel<kC><<<grid, kThreads, 0, stream>>>(args, bw);
    I4D_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return ffi::Error::Success();
}

#define I4D_DISPATCH_CHANNELS(channels, FN, ...) \
  switch (channels) {                            \
    case 1: return FN<1>(__VA_ARGS__);           \
    case 2: return FN<2>(__VA_ARGS__);           \
    case 3: return FN<3>(__VA_ARGS__);           \
    case 4: return FN<4>(__VA_ARGS__);           \
    case 8: return FN<8>(__VA_ARGS__);           \
    case 16: return FN<16>(__VA_ARGS__);         \
    case 32: return FN<32>(__VA_ARGS__);         \
    case 48: return FN<48>(__VA_ARGS__);         \
    case 64: return FN<64>(__VA_ARGS__);         \
    default: return FN<0>(__VA_ARGS__);          \
  }

ffi::Error DispatchForward(cudaStream_t stream, const RasterArgs& args, const Dims& d, float* image, float* alpha,
                           float* depth, float* t_final, int32_t* last) {
  I4D_DISPATCH_CHANNELS(d.channels, LaunchForward, stream, args, d, image, alpha, depth, t_final, last)
}

ffi::Error DispatchBackward(cudaStream_t stream, const RasterArgs& args, const Dims& d, const BackwardArgs& bw) {
  I4D_DISPATCH_CHANNELS(d.channels, LaunchBackward, stream, args, d, bw)
}

// ------------------------------------------------------------------------------------------------
// FFI plumbing (shapes as in the CPU backend: any leading batch dims, flattened)

using F32 = ffi::Buffer<ffi::F32>;
using S32 = ffi::Buffer<ffi::S32>;

std::string DimsString(ffi::Span<const int64_t> dims) {
  std::string out = "[";
  for (size_t i = 0; i < dims.size(); ++i) out += (i ? "," : "") + std::to_string(dims[i]);
  return out + "]";
}

ffi::Error CheckCount(const char* name, size_t got, int64_t want) {
  if (static_cast<int64_t>(got) != want) {
    return ffi::Error::InvalidArgument(std::string(name) + " has " + std::to_string(got) + " elements, expected " +
                                       std::to_string(want));
  }
  return ffi::Error::Success();
}

ffi::Error InferDims(const F32& means, const F32& conics, const F32& depths, const S32& radii, const F32& opac,
                     const F32& feats, const F32& bg, int64_t width, int64_t height, Dims& d) {
  const auto md = means.dimensions();
  if (md.size() < 2 || md.back() != 2) {
    return ffi::Error::InvalidArgument("means2d must have shape [*B, N, 2], got " + DimsString(md));
  }
  if (width < 1 || height < 1 || width > (int64_t{1} << 24) || height > (int64_t{1} << 24)) {
    return ffi::Error::InvalidArgument("width and height must be in [1, 2^24]");
  }
  d.n = md[md.size() - 2];
  d.batch = 1;
  for (size_t i = 0; i + 2 < md.size(); ++i) d.batch *= md[i];
  const auto fd = feats.dimensions();
  if (fd.size() == 0 || fd.back() < 1) return ffi::Error::InvalidArgument("features must have shape [*B, N, C], C >= 1");
  d.channels = fd.back();
  d.width = width;
  d.height = height;
  d.tiles_x = static_cast<int>((width + TILE_SIZE - 1) / TILE_SIZE);
  d.tiles_y = static_cast<int>((height + TILE_SIZE - 1) / TILE_SIZE);
  d.n_tiles = int64_t{d.tiles_x} * d.tiles_y;
  if (d.n_tiles > (int64_t{1} << 30)) return ffi::Error::InvalidArgument("image too large");
  if (d.batch * d.n >= (int64_t{1} << 31)) {
    return ffi::Error::InvalidArgument("the CUDA rasterizer supports fewer than 2^31 Gaussians per call (all images)");
  }
  if (d.batch * d.n_tiles + 1 >= (int64_t{1} << 32)) {
    return ffi::Error::InvalidArgument("too many tiles in the batch for 64-bit sort keys (split the batch)");
  }
  const int64_t bn = d.batch * d.n;
  I4D_RETURN_IF_FAILED(CheckCount("conics", conics.element_count(), bn * 3));
  I4D_RETURN_IF_FAILED(CheckCount("depths", depths.element_count(), bn));
  I4D_RETURN_IF_FAILED(CheckCount("radii", radii.element_count(), bn));
  I4D_RETURN_IF_FAILED(CheckCount("opacities", opac.element_count(), bn));
  I4D_RETURN_IF_FAILED(CheckCount("features", feats.element_count(), bn * d.channels));
  I4D_RETURN_IF_FAILED(CheckCount("background", bg.element_count(), d.batch * d.channels));
  return ffi::Error::Success();
}

RasterArgs MakeArgs(const Dims& d, const F32& means, const F32& conics, const F32& depths, const F32& opac,
                    const F32& feats, const F32& bg, const DeviceBinning& bin) {
  RasterArgs a;
  a.means = means.typed_data();
  a.conics = conics.typed_data();
  a.depths = depths.typed_data();
  a.opacities = opac.typed_data();
  a.features = feats.typed_data();
  a.background = bg.typed_data();
  a.values = bin.values;
  a.tile_start = bin.tile_start;
  a.tile_end = bin.tile_end;
  a.n_tiles = d.n_tiles;
  a.channels = d.channels;
  a.width = d.width;
  a.height = d.height;
  a.tiles_x = d.tiles_x;
  a.image_offset = 0;
  return a;
}

ffi::Error ForwardImpl(cudaStream_t stream, ffi::ScratchAllocator scratch, F32 means, F32 conics, F32 depths,
                       S32 radii, F32 opac, F32 feats, F32 bg, int64_t width, int64_t height,
                       ffi::ResultBuffer<ffi::F32> image, ffi::ResultBuffer<ffi::F32> alpha,
                       ffi::ResultBuffer<ffi::F32> depth, ffi::ResultBuffer<ffi::F32> t_final,
                       ffi::ResultBuffer<ffi::S32> last) {
  Dims d;
  I4D_RETURN_IF_FAILED(InferDims(means, conics, depths, radii, opac, feats, bg, width, height, d));
  const int64_t pixels = d.batch * d.width * d.height;
  I4D_RETURN_IF_FAILED(CheckCount("image", image->element_count(), pixels * d.channels));
  I4D_RETURN_IF_FAILED(CheckCount("alpha", alpha->element_count(), pixels));
  I4D_RETURN_IF_FAILED(CheckCount("depth", depth->element_count(), pixels));
  I4D_RETURN_IF_FAILED(CheckCount("t_final", t_final->element_count(), pixels));
  I4D_RETURN_IF_FAILED(CheckCount("last", last->element_count(), pixels));
  if (d.batch == 0) return ffi::Error::Success();
  DeviceBinning bin;
  I4D_RETURN_IF_FAILED(BinOnDevice(stream, scratch, d, means.typed_data(), conics.typed_data(), depths.typed_data(),
                                   radii.typed_data(), opac.typed_data(), bin));
  const RasterArgs args = MakeArgs(d, means, conics, depths, opac, feats, bg, bin);
  return DispatchForward(stream, args, d, image->typed_data(), alpha->typed_data(), depth->typed_data(),
                         t_final->typed_data(), last->typed_data());
}

ffi::Error BackwardImpl(cudaStream_t stream, ffi::ScratchAllocator scratch, F32 means, F32 conics, F32 depths,
                        S32 radii, F32 opac, F32 feats, F32 bg, F32 t_final, S32 last, F32 g_image, F32 g_alpha,
                        F32 g_depth, int64_t width, int64_t height, ffi::ResultBuffer<ffi::F32> d_means,
                        ffi::ResultBuffer<ffi::F32> d_conics, ffi::ResultBuffer<ffi::F32> d_depths,
                        ffi::ResultBuffer<ffi::F32> d_opac, ffi::ResultBuffer<ffi::F32> d_feats,
                        ffi::ResultBuffer<ffi::F32> d_bg) {
  Dims d;
  I4D_RETURN_IF_FAILED(InferDims(means, conics, depths, radii, opac, feats, bg, width, height, d));
  const int64_t pixels = d.batch * d.width * d.height;
  const int64_t bn = d.batch * d.n;
  I4D_RETURN_IF_FAILED(CheckCount("t_final", t_final.element_count(), pixels));
  I4D_RETURN_IF_FAILED(CheckCount("last", last.element_count(), pixels));
  I4D_RETURN_IF_FAILED(CheckCount("image cotangent", g_image.element_count(), pixels * d.channels));
  I4D_RETURN_IF_FAILED(CheckCount("alpha cotangent", g_alpha.element_count(), pixels));
  I4D_RETURN_IF_FAILED(CheckCount("depth cotangent", g_depth.element_count(), pixels));
  I4D_RETURN_IF_FAILED(CheckCount("d_means2d", d_means->element_count(), bn * 2));
  I4D_RETURN_IF_FAILED(CheckCount("d_conics", d_conics->element_count(), bn * 3));
  I4D_RETURN_IF_FAILED(CheckCount("d_depths", d_depths->element_count(), bn));
  I4D_RETURN_IF_FAILED(CheckCount("d_opacities", d_opac->element_count(), bn));
  I4D_RETURN_IF_FAILED(CheckCount("d_features", d_feats->element_count(), bn * d.channels));
  I4D_RETURN_IF_FAILED(CheckCount("d_background", d_bg->element_count(), d.batch * d.channels));
  if (d.batch == 0) return ffi::Error::Success();
  if (bn > 0) {
    I4D_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(d_means->typed_data(), 0, sizeof(float) * bn * 2, stream));
    I4D_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(d_conics->typed_data(), 0, sizeof(float) * bn * 3, stream));
    I4D_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(d_depths->typed_data(), 0, sizeof(float) * bn, stream));
    I4D_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(d_opac->typed_data(), 0, sizeof(float) * bn, stream));
    I4D_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(d_feats->typed_data(), 0, sizeof(float) * bn * d.channels, stream));
  }
  // background gradient (independent of the binning)
  float* partial = nullptr;
  I4D_RETURN_IF_FAILED(AllocateArray(scratch, d.batch * kBgParts * d.channels, &partial, "background gradient"));
  const int64_t hw = d.width * d.height;
  for (int64_t b0 = 0; b0 < d.batch; b0 += kMaxGridY) {
    const int64_t nb = std::min<int64_t>(kMaxGridY, d.batch - b0);
    const dim3 grid(static_cast<unsigned>(Blocks(d.channels, 32)), kBgParts, static_cast<unsigned>(nb));
    BackgroundPartialKernel<<<grid, dim3(32, 8), 0, stream>>>(hw, d.channels, t_final.typed_data() + b0 * hw,
                                                              g_image.typed_data() + b0 * hw * d.channels,
                                                              partial + b0 * kBgParts * d.channels);
    I4D_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  BackgroundReduceKernel<<<static_cast<unsigned>(Blocks(d.batch * d.channels, 256)), 256, 0, stream>>>(
      d.batch, d.channels, partial, d_bg->typed_data());
  I4D_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  if (bn == 0) return ffi::Error::Success();

  DeviceBinning bin;
  I4D_RETURN_IF_FAILED(BinOnDevice(stream, scratch, d, means.typed_data(), conics.typed_data(), depths.typed_data(),
                                   radii.typed_data(), opac.typed_data(), bin));
  if (bin.n_isect == 0) return ffi::Error::Success();
  const RasterArgs args = MakeArgs(d, means, conics, depths, opac, feats, bg, bin);
  BackwardArgs bw;
  bw.t_final = t_final.typed_data();
  bw.last = last.typed_data();
  bw.g_image = g_image.typed_data();
  bw.g_alpha = g_alpha.typed_data();
  bw.g_depth = g_depth.typed_data();
  bw.d_means = d_means->typed_data();
  bw.d_conics = d_conics->typed_data();
  bw.d_depths = d_depths->typed_data();
  bw.d_opacities = d_opac->typed_data();
  bw.d_features = d_feats->typed_data();
  return DispatchBackward(stream, args, d, bw);
}

}  // namespace
}  // namespace instant4d

extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* Instant4dRasterForwardCuda(XLA_FFI_CallFrame*);
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* Instant4dRasterBackwardCuda(XLA_FFI_CallFrame*);

// No kCmdBufferCompatible trait: the handlers synchronise the stream and allocate scratch memory
// sized by a device-computed count, which CUDA graphs cannot capture.
XLA_FFI_DEFINE_HANDLER_SYMBOL(Instant4dRasterForwardCuda, instant4d::ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::ScratchAllocator>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // means2d [*B, N, 2]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // conics [*B, N, 3]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // depths [*B, N]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // radii [*B, N]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // opacities [*B, N]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // features [*B, N, C]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // background [*B, C]
                                  .Attr<int64_t>("width")
                                  .Attr<int64_t>("height")
                                  .Ret<ffi::Buffer<ffi::F32>>()   // image [*B, H, W, C]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // alpha [*B, H, W]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // depth [*B, H, W]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // t_final [*B, H, W] (residual)
                                  .Ret<ffi::Buffer<ffi::S32>>());  // last [*B, H, W] (residual)

XLA_FFI_DEFINE_HANDLER_SYMBOL(Instant4dRasterBackwardCuda, instant4d::BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::ScratchAllocator>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // means2d
                                  .Arg<ffi::Buffer<ffi::F32>>()  // conics
                                  .Arg<ffi::Buffer<ffi::F32>>()  // depths
                                  .Arg<ffi::Buffer<ffi::S32>>()  // radii
                                  .Arg<ffi::Buffer<ffi::F32>>()  // opacities
                                  .Arg<ffi::Buffer<ffi::F32>>()  // features
                                  .Arg<ffi::Buffer<ffi::F32>>()  // background
                                  .Arg<ffi::Buffer<ffi::F32>>()  // t_final
                                  .Arg<ffi::Buffer<ffi::S32>>()  // last
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cotangent of image
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cotangent of alpha
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cotangent of depth
                                  .Attr<int64_t>("width")
                                  .Attr<int64_t>("height")
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d means2d
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d conics
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d depths
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d opacities
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d features
                                  .Ret<ffi::Buffer<ffi::F32>>());  // d background
