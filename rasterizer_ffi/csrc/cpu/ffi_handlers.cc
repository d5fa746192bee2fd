// XLA FFI handlers of the CPU rasterizer: argument checks, the batch's buffers, the thread pool and
// workspace of one call, errors as ffi::Error. The stages themselves are binning.cc, forward.cc and
// backward.cc; the per-pixel math is gaussian.h (shared with CUDA) and tile_kernels.inc.
#include <algorithm>
#include <cstdint>
#include <exception>
#include <new>
#include <string>

#include "xla/ffi/api/ffi.h"
#include "binning.h"
#include "common.h"
#include "stages.h"
#include "workspace.h"

namespace ffi = xla::ffi;

namespace instant4d {
namespace cpu {

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

namespace {

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

// The batch's flat input buffers.
SceneBatch Scene(const F32& means, const F32& conics, const F32& depths, const S32& radii, const F32& opac,
                 const F32& feats, const F32& bg) {
  return SceneBatch{means.typed_data(), conics.typed_data(), depths.typed_data(), radii.typed_data(),
                    opac.typed_data(),  feats.typed_data(),  bg.typed_data()};
}

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
    ForwardBatch(pool, d, *lease.ws, Scene(means, conics, depths, radii, opac, feats, bg), image->typed_data(),
                 alpha->typed_data(), depth->typed_data(), t_final->typed_data(), last->typed_data(),
                 ResolveIsa(static_cast<Isa>(isa)), tok);
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
    BackwardBatch(pool, d, *lease.ws, Scene(means, conics, depths, radii, opac, feats, bg),
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
}  // namespace cpu
}  // namespace instant4d

// Exported handler symbols (default visibility; everything else in this library is hidden).
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* Instant4dRasterForwardCpu(XLA_FFI_CallFrame*);
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* Instant4dRasterBackwardCpu(XLA_FFI_CallFrame*);

XLA_FFI_DEFINE_HANDLER_SYMBOL(Instant4dRasterForwardCpu, instant4d::cpu::ForwardImpl,
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(Instant4dRasterBackwardCpu, instant4d::cpu::BackwardImpl,
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
