// Forward of the CPU rasterizer (stage 2): bin each image (binning.h), then rasterize its tiles in
// parallel (std::thread, dynamic tile queue) with the SIMD kernels of tile_kernels.inc, picked at run
// time. Each tile's output is written by exactly one thread, so the forward is deterministic.
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
struct ForwardAll {
  static void Run(Pool& pool, const Dims& d, Workspace& ws, const SceneBatch& scene, float* image, float* alpha,
                  float* depth, float* t_final, int32_t* last, Isa isa, uint32_t token) {
    const int64_t hw = d.width * d.height;
    for (int64_t b = 0; b < d.batch; ++b) {
      const SceneView s = scene.View(d, b);
      const ForwardOut o{image + b * hw * d.channels, alpha + b * hw, depth + b * hw, t_final + b * hw,
                         last + b * hw};
      ForwardImage<kC>(pool, d, s, o, ws, isa, token, b);
    }
  }
};


}  // namespace

void ForwardBatch(Pool& pool, const Dims& d, Workspace& ws, const SceneBatch& scene, float* image, float* alpha,
                  float* depth, float* t_final, int32_t* last, Isa isa, uint32_t token) {
  DispatchChannels<ForwardAll>(d.channels, pool, d, ws, scene, image, alpha, depth, t_final, last, isa, token);
}

}  // namespace cpu
}  // namespace instant4d
