// The forward and backward stages over a whole batch, as the FFI handlers (ffi_handlers.cc) call them.
#ifndef INSTANT4D_RASTERIZER_CPU_STAGES_H_
#define INSTANT4D_RASTERIZER_CPU_STAGES_H_

#include <cstdint>

#include "common.h"
#include "workspace.h"

namespace instant4d {
namespace cpu {

// Renders every image of the batch (forward.cc). Outputs [B, H, W, C] image and [B, H, W] alpha, depth,
// t_final, last. A non-zero `token` keeps each image's binning for the backward (BinningCache).
void ForwardBatch(Pool& pool, const Dims& d, Workspace& ws, const SceneBatch& scene, float* image, float* alpha,
                  float* depth, float* t_final, int32_t* last, Isa isa, uint32_t token);

// Gradients of every image of the batch (backward.cc), accumulated into outputs the caller zeroed.
// `tokens` [B]: the forward's kept binnings (0: bin again).
void BackwardBatch(Pool& pool, const Dims& d, Workspace& ws, const SceneBatch& scene, const float* t_final,
                   const int32_t* last, const float* g_image, const float* g_alpha, const float* g_depth,
                   float* d_means, float* d_conics, float* d_depths, float* d_opac, float* d_feats, float* d_bg,
                   Isa isa, const int32_t* tokens);

}  // namespace cpu
}  // namespace instant4d

#endif  // INSTANT4D_RASTERIZER_CPU_STAGES_H_
