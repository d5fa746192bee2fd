// Backward of the CPU rasterizer (stage 3). Bins identically to the forward (or takes over the forward's
// binning, see BinningCache), then walks each pixel back to front from its last contributor (residual
// `last`: number of tile-list entries up to and including the last contributor) starting from the
// stored final transmittance (residual `t_final`, float32: recovering it as 1 - alpha would lose up to
// 3e-4 relative precision when T_final ~ 1e-4), recovering T by division by 1 - alpha
// (>= 1 - ALPHA_MAX = 0.01). Gradients are accumulated per tile-list entry (one row per intersection,
// written by the single thread owning the tile, pixels in a fixed order), then reduced per Gaussian
// over its entries in increasing tile order: no float atomics, no dependence on thread count or
// scheduling, bitwise reproducible. To bound memory the tiles are processed in waves of at most
// kWaveFloats floats of rows; waves are reduced in order.
#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "binning.h"
#include "common.h"
#include "kernels.h"
#include "stages.h"
#include "workspace.h"

namespace instant4d {
namespace cpu {
namespace {

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

template <int kC>
struct BackwardAll {
  static void Run(Pool& pool, const Dims& d, Workspace& ws, const SceneBatch& scene, const float* t_final, const int32_t* last, const float* g_image, const float* g_alpha,
                  const float* g_depth, float* d_means, float* d_conics, float* d_depths, float* d_opac,
                  float* d_feats, float* d_bg, Isa isa, const int32_t* tokens) {
    const int64_t hw = d.width * d.height;
    for (int64_t b = 0; b < d.batch; ++b) {
      const SceneView s = scene.View(d, b);
      const BackwardIn in{t_final + b * hw, last + b * hw, g_image + b * hw * d.channels, g_alpha + b * hw,
                          g_depth + b * hw};
      const int64_t off = b * d.n;
      const BackwardOut o{d_means + 2 * off, d_conics + 3 * off, d_depths + off, d_opac + off,
                          d_feats + off * d.channels, d_bg + b * d.channels};
      BackwardImage<kC>(pool, d, s, in, o, ws, isa, static_cast<uint32_t>(tokens[b]), b);
    }
  }
};

}  // namespace

void BackwardBatch(Pool& pool, const Dims& d, Workspace& ws, const SceneBatch& scene, const float* t_final,
                   const int32_t* last, const float* g_image, const float* g_alpha, const float* g_depth,
                   float* d_means, float* d_conics, float* d_depths, float* d_opac, float* d_feats, float* d_bg,
                   Isa isa, const int32_t* tokens) {
  DispatchChannels<BackwardAll>(d.channels, pool, d, ws, scene, t_final, last, g_image, g_alpha, g_depth, d_means,
                                d_conics, d_depths, d_opac, d_feats, d_bg, isa, tokens);
}

}  // namespace cpu
}  // namespace instant4d
