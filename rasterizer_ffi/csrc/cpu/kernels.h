// The tile kernels (tile_kernels.inc), compiled once per instruction set (SSE2 / AVX2+FMA / AVX-512),
// and the choice among them at run time. Included by forward.cc and backward.cc, each of which
// instantiates only its own kernels; the anonymous namespace keeps every copy private to its file.
#ifndef INSTANT4D_RASTERIZER_CPU_KERNELS_H_
#define INSTANT4D_RASTERIZER_CPU_KERNELS_H_

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "binning.h"
#include "common.h"

namespace instant4d {
namespace cpu {
namespace {

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

#if defined(I4D_HAVE_X86_ISAS)
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

}  // namespace
}  // namespace cpu
}  // namespace instant4d

#endif  // INSTANT4D_RASTERIZER_CPU_KERNELS_H_
