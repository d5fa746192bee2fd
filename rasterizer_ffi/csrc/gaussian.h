// Per-pixel math of the Gaussian rasterizer, shared by the CPU (csrc/cpu) and CUDA (csrc/cuda)
// backends. Everything here is header-only and `__host__ __device__` under nvcc.
//
// The semantics are those of rasterizer_ffi/reference.py (the dense JAX reference):
//   * Gaussians with radii == 0 are dropped; the rest are composited in order of increasing depth,
//     ties broken by index;
//   * pixel (row i, column j) is sampled at (j + 0.5, i + 0.5); d = mean - pixel;
//     sigma = 0.5 * (a dx^2 + c dy^2) + b dx dy with (a, b, c) the conic (inverse 2D covariance);
//   * skip if sigma < 0; alpha = min(ALPHA_MAX, opacity * exp(-sigma)); skip if alpha < ALPHA_MIN;
//   * stop before a Gaussian that would bring the transmittance below T_MIN;
//   * colour = sum f_i alpha_i T_i + T_final * background, alpha = 1 - T_final,
//     depth = sum z_i alpha_i T_i.
//
// Floating-point arithmetic in the per-pixel math is written operation by operation in the same
// order as the reference and never fused into FMAs (the CPU library is compiled with
// -ffp-contract=off; under nvcc the *_rn intrinsics below forbid contraction), so forward and
// backward make identical skip/stop decisions and agree with the reference up to exp() rounding.
#ifndef INSTANT4D_RASTERIZER_GAUSSIAN_H_
#define INSTANT4D_RASTERIZER_GAUSSIAN_H_

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define I4D_HD __host__ __device__ __forceinline__
#else
#define I4D_HD inline
#endif

namespace instant4d {

// ---------------------------------------------------------------------------------------------
// Constants. They mirror rasterizer_ffi/constants.py, name for name and value for value (as float32);
// tests/test_native.py parses the lines between the BEGIN/END markers and compares.
// BEGIN CONSTANTS
constexpr int TILE_SIZE = 16;                  // pixels per tile side
constexpr float ALPHA_MIN = 1.0f / 255.0f;     // a Gaussian contributes only if alpha >= ALPHA_MIN
constexpr float ALPHA_MAX = 0.99f;             // alpha is clamped to at most this (forward and backward)
constexpr float T_MIN = 1e-4f;                 // stop before a Gaussian that would bring T below this
constexpr float COV_BLUR = 0.3f;               // projection only (JAX): added to the 2D covariance diagonal
constexpr float FRUSTUM_CLAMP = 1.3f;          // projection only (JAX): Jacobian clamp of x/z, y/z
constexpr float MIN_DET = 1e-12f;              // projection only (JAX): singular 2D covariances dropped
constexpr float DEFAULT_NEAR = 0.01f;          // projection only (JAX): default near plane
// END CONSTANTS

// Binning safety margins (they only add tiles, never remove contributions; not part of the
// semantics). A tile is kept when a relaxed quadratic form, (a, c) shrunk by BIN_REL_SLACK of the
// absolute magnitudes of the terms, can reach the relaxed alpha threshold somewhere in the tile's
// pixel-centre rectangle. BIN_REL_SLACK (1e-5) is ~100x the float32 rounding of sigma at a pixel,
// so a pixel whose float sigma passes the test always lies in a kept tile, even for needle-thin
// Gaussians whose terms cancel; BIN_SIGMA_SLACK covers the rounding of opacity * exp(-sigma).
constexpr double BIN_REL_SLACK = 1e-5;
constexpr double BIN_SIGMA_SLACK = 1e-3;

// ---------------------------------------------------------------------------------------------
// Exactly rounded float operations (no FMA contraction under nvcc).
I4D_HD float fmul(float x, float y) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(x, y);
#else
  return x * y;
#endif
}
I4D_HD float fadd(float x, float y) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(x, y);
#else
  return x + y;
#endif
}
I4D_HD float fsub(float x, float y) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(x, y);
#else
  return x - y;
#endif
}

// sigma = 0.5 * (a dx dx + c dy dy) + b dx dy, evaluated like the reference (left to right).
I4D_HD float gaussian_sigma(float a, float b, float c, float dx, float dy) {
  return fadd(fmul(0.5f, fadd(fmul(fmul(a, dx), dx), fmul(fmul(c, dy), dy))), fmul(fmul(b, dx), dy));
}

// Opacity of one Gaussian at one pixel. Returns false when the Gaussian is skipped there
// (sigma < 0 or NaN, alpha < ALPHA_MIN or NaN). On success `alpha` is the clamped alpha, `g` is
// exp(-sigma) and `clamped` says whether opacity * g exceeded ALPHA_MAX (zero gradient then).
I4D_HD bool gaussian_alpha(float opacity, float sigma, float& alpha, float& g, bool& clamped) {
  if (!(sigma >= 0.0f)) return false;
  g = expf(-sigma);
  const float raw = fmul(opacity, g);
  clamped = raw > ALPHA_MAX;
  alpha = clamped ? ALPHA_MAX : raw;  // NaN stays NaN (unlike fminf) and is skipped below
  return alpha >= ALPHA_MIN;
}

// Maps a depth to a 32-bit key whose unsigned order is the order of jnp.argsort on float32:
// negative < -0 == +0 < positive < +inf < NaN (all NaNs equal, after everything else).
I4D_HD uint32_t depth_key(float z) {
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(z);
#else
  std::memcpy(&u, &z, sizeof(u));
#endif
  if ((u & 0x7fffffffu) > 0x7f800000u) u = 0x7fc00000u;  // NaN -> one positive NaN
  if (u == 0x80000000u) u = 0u;                           // -0 -> +0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// ---------------------------------------------------------------------------------------------
// Binning: which 16x16 tiles may hold a pixel where a Gaussian contributes.
//
// A pixel contributes only if alpha >= ALPHA_MIN, i.e. sigma <= ln(opacity / ALPHA_MIN) =: thr
// (and sigma >= 0). For a positive definite conic the set sigma <= thr is an ellipse whose
// bounding box gives candidate tiles (for the disc bound r = sqrt(2 lambda_max thr) of the brief,
// the ellipse is the tighter exact set inside that disc); each candidate tile is then kept only if
// the range of sigma over the tile's pixel-centre rectangle meets [0, thr] (exact minimum and
// maximum of a quadratic over a rectangle: corners, the stationary point of each edge, the mean).
// A conic that is not positive definite (after relaxation) is bounded conservatively: every tile
// of the image is a candidate and the same exact per-tile range test prunes them (its sigma is
// unbounded below somewhere or degenerate, so no ellipse exists). Non-finite means or conics never
// produce a finite sigma and NaN / too small opacities never reach ALPHA_MIN: such Gaussians get
// no tiles.
template <typename T>
struct GaussianBin {
  T mx, my;        // mean
  T a_lo, c_lo;    // relaxed (smaller) diagonal of the conic: lower bound of the float sigma
  T a_hi, c_hi;    // enlarged diagonal: upper bound of the float sigma
  T b;             // off-diagonal
  T b_over_a_lo, b_over_c_lo, b_over_a_hi, b_over_c_hi;  // edge stationary points (0 where undefined)
  T thr;           // relaxed threshold on sigma
  bool pd;         // relaxed lower form positive definite (then sigma_lo >= 0 everywhere)
  int px0, px1, py0, py1;  // inclusive pixel range (clamped to the image) outside which it never contributes
  int tx0, tx1, ty0, ty1;  // inclusive candidate tile range
};

// Correctly rounded multiply / add for the binning math: under nvcc they forbid FMA contraction, so
// the CUDA count and emit kernels, which evaluate the same tests separately, always agree.
template <typename T>
I4D_HD T rn_mul(T x, T y) {
  return x * y;
}
template <typename T>
I4D_HD T rn_add(T x, T y) {
  return x + y;
}
#if defined(__CUDA_ARCH__)
template <>
I4D_HD float rn_mul<float>(float x, float y) {
  return __fmul_rn(x, y);
}
template <>
I4D_HD float rn_add<float>(float x, float y) {
  return __fadd_rn(x, y);
}
template <>
I4D_HD double rn_mul<double>(double x, double y) {
  return __dmul_rn(x, y);
}
template <>
I4D_HD double rn_add<double>(double x, double y) {
  return __dadd_rn(x, y);
}
#endif

template <typename T>
I4D_HD T bin_sigma(T a, T b, T c, T dx, T dy) {
  const T quad = rn_add<T>(rn_mul<T>(rn_mul<T>(a, dx), dx), rn_mul<T>(rn_mul<T>(c, dy), dy));
  return rn_add<T>(rn_mul<T>(T(0.5), quad), rn_mul<T>(rn_mul<T>(b, dx), dy));
}

template <typename T>
I4D_HD T bin_clamp(T v, T lo, T hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

template <typename T>
I4D_HD T bin_sqrt(T v) {
  return sqrt(v);
}
template <>
I4D_HD float bin_sqrt<float>(float v) {
  return sqrtf(v);
}
template <typename T>
I4D_HD T bin_log(T v) {
  return log(v);
}
template <>
I4D_HD float bin_log<float>(float v) {
  return logf(v);
}
template <typename T>
I4D_HD bool bin_isfinite(T v) {
  return v - v == T(0);  // false for inf and NaN, without relying on std::isfinite under nvcc
}

// Converts a pixel-centre coordinate interval [lo, hi] to the inclusive pixel range [p0, p1] and tile
// range [t0, t1] it touches, clamped to [0, n_pixels). Returns false when no pixel centre lies in it.
template <typename T>
I4D_HD bool bin_tile_span(T lo, T hi, int n_pixels, int& p0, int& p1, int& t0, int& t1) {
  // pixel k has centre k + 0.5: it lies in [lo, hi] iff ceil(lo - 0.5) <= k <= floor(hi - 0.5)
  const T kmax = T(n_pixels - 1);
  T k0 = lo - T(0.5);
  T k1 = hi - T(0.5);
  if (!(k1 >= T(0)) || !(k0 <= kmax)) return false;
  k0 = k0 < T(0) ? T(0) : k0;
  k1 = k1 > kmax ? kmax : k1;
  p0 = static_cast<int>(ceil(k0));
  p1 = static_cast<int>(floor(k1));
  if (p0 > p1) return false;
  t0 = p0 / TILE_SIZE;
  t1 = p1 / TILE_SIZE;
  return true;
}

// Sets up the binning of one Gaussian. Returns false if it can contribute to no pixel.
template <typename T>
I4D_HD bool gaussian_bin_setup(float mx, float my, float a, float b, float c, float opacity, int width,
                               int height, GaussianBin<T>& g) {
  if (!(opacity >= ALPHA_MIN)) return false;  // alpha <= opacity for sigma >= 0
  if (!bin_isfinite<T>(mx) || !bin_isfinite<T>(my) || !bin_isfinite<T>(a) || !bin_isfinite<T>(b) ||
      !bin_isfinite<T>(c)) {
    return false;
  }
  const T thr0 = bin_log<T>(T(opacity) / T(ALPHA_MIN));  // +inf for an infinite opacity
  const T thr = rn_add<T>(thr0, rn_mul<T>(T(BIN_SIGMA_SLACK), T(1) + thr0));
  const T ab = T(a < 0 ? -a : a), cb = T(c < 0 ? -c : c), bb = T(b < 0 ? -b : b);
  g.mx = T(mx);
  g.my = T(my);
  g.b = T(b);
  g.a_lo = rn_add<T>(T(a), -rn_mul<T>(T(BIN_REL_SLACK), ab + bb));
  g.c_lo = rn_add<T>(T(c), -rn_mul<T>(T(BIN_REL_SLACK), cb + bb));
  g.a_hi = rn_add<T>(T(a), rn_mul<T>(T(BIN_REL_SLACK), ab + bb));
  g.c_hi = rn_add<T>(T(c), rn_mul<T>(T(BIN_REL_SLACK), cb + bb));
  g.thr = thr;
  g.b_over_a_lo = g.a_lo != T(0) ? g.b / g.a_lo : T(0);
  g.b_over_c_lo = g.c_lo != T(0) ? g.b / g.c_lo : T(0);
  // determinant in double even when T is float: it cancels badly for needle-thin Gaussians, and an
  // overestimate would shrink the box below the true support (products of floats are exact in double)
  const double det = rn_add<double>(rn_mul<double>(static_cast<double>(g.a_lo), static_cast<double>(g.c_lo)),
                                    -rn_mul<double>(static_cast<double>(g.b), static_cast<double>(g.b)));
  g.pd = g.a_lo > T(0) && det > 0.0 && bin_isfinite<double>(det);
  // the upper form is only consulted for conics that are not positive definite
  g.b_over_a_hi = !g.pd && g.a_hi != T(0) ? g.b / g.a_hi : T(0);
  g.b_over_c_hi = !g.pd && g.c_hi != T(0) ? g.b / g.c_hi : T(0);
  T x_lo = T(0), x_hi = T(width), y_lo = T(0), y_hi = T(height);
  if (g.pd && bin_isfinite<T>(thr)) {
    // bounding box of 0.5 d^T Q d <= thr: half extents sqrt(2 thr (Q^-1)_xx), sqrt(2 thr (Q^-1)_yy)
    const T hx = static_cast<T>(sqrt(2.0 * static_cast<double>(thr) * static_cast<double>(g.c_lo) / det));
    const T hy = static_cast<T>(sqrt(2.0 * static_cast<double>(thr) * static_cast<double>(g.a_lo) / det));
    if (bin_isfinite<T>(hx) && bin_isfinite<T>(hy)) {
      x_lo = g.mx - hx;
      x_hi = g.mx + hx;
      y_lo = g.my - hy;
      y_hi = g.my + hy;
    }
  }
  if (!bin_tile_span<T>(x_lo, x_hi, width, g.px0, g.px1, g.tx0, g.tx1)) return false;
  if (!bin_tile_span<T>(y_lo, y_hi, height, g.py0, g.py1, g.ty0, g.ty1)) return false;
  return true;
}

// Range of a quadratic sigma(d) = 0.5 (a dx^2 + c dy^2) + b dx dy over d in [dx0, dx1] x [dy0, dy1]:
// updates lo/hi with the values at the corners, at the stationary point of each edge (clamped to
// the edge) and at d = 0 when inside. These candidates contain the exact minimum and maximum.
// b_a = b / a and b_c = b / c (ignored when a or c is 0: the edge is linear, ends suffice).
template <typename T>
I4D_HD void bin_quad_range(T a, T b, T c, T b_a, T b_c, T dx0, T dx1, T dy0, T dy1, T& lo, T& hi) {
  lo = T(1e30);
  hi = T(-1e30);
  const T xs[2] = {dx0, dx1};
  const T ys[2] = {dy0, dy1};
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      const T v = bin_sigma<T>(a, b, c, xs[i], ys[j]);
      lo = v < lo ? v : lo;
      hi = v > hi ? v : hi;
    }
    // edge dx = xs[i]: d sigma / d dy = b dx + c dy = 0
    if (c != T(0)) {
      const T y = bin_clamp<T>(-b_c * xs[i], dy0, dy1);
      const T v = bin_sigma<T>(a, b, c, xs[i], y);
      lo = v < lo ? v : lo;
      hi = v > hi ? v : hi;
    }
    // edge dy = ys[i]: d sigma / d dx = a dx + b dy = 0
    if (a != T(0)) {
      const T x = bin_clamp<T>(-b_a * ys[i], dx0, dx1);
      const T v = bin_sigma<T>(a, b, c, x, ys[i]);
      lo = v < lo ? v : lo;
      hi = v > hi ? v : hi;
    }
  }
  if (dx0 <= T(0) && T(0) <= dx1 && dy0 <= T(0) && T(0) <= dy1) {
    lo = lo < T(0) ? lo : T(0);
    hi = hi > T(0) ? hi : T(0);
  }
}

// Whether tile (tx, ty) may hold a pixel where the Gaussian contributes.
template <typename T>
I4D_HD bool gaussian_bin_tile(const GaussianBin<T>& g, int tx, int ty, int width, int height) {
  // A single row or column of candidate tiles needs no test: the box bounds the (relaxed) support
  // and such tiles can only be spurious in a sliver at the box's edge (extra tiles are harmless).
  if (g.pd && (g.tx0 == g.tx1 || g.ty0 == g.ty1)) return true;
  const int px0 = tx * TILE_SIZE, py0 = ty * TILE_SIZE;
  const int px1 = (px0 + TILE_SIZE < width ? px0 + TILE_SIZE : width) - 1;
  const int py1 = (py0 + TILE_SIZE < height ? py0 + TILE_SIZE : height) - 1;
  // d = mean - pixel over the pixel-centre rectangle
  const T dx0 = g.mx - (T(px1) + T(0.5)), dx1 = g.mx - (T(px0) + T(0.5));
  const T dy0 = g.my - (T(py1) + T(0.5)), dy1 = g.my - (T(py0) + T(0.5));
  T lo, hi;
  bin_quad_range<T>(g.a_lo, g.b, g.c_lo, g.b_over_a_lo, g.b_over_c_lo, dx0, dx1, dy0, dy1, lo, hi);
  if (!(lo <= g.thr)) return false;
  if (g.pd) return true;
  // indefinite or degenerate: also need sigma >= 0 somewhere (upper bound form)
  bin_quad_range<T>(g.a_hi, g.b, g.c_hi, g.b_over_a_hi, g.b_over_c_hi, dx0, dx1, dy0, dy1, lo, hi);
  return hi >= T(0);
}

// ---------------------------------------------------------------------------------------------
// Backward of one (pixel, Gaussian) pair, walking back to front.
//
// State carried per pixel from the back: T (transmittance after this Gaussian; T_final at the
// start), s_color = (sum_{j>i} f_j w_j + T_final bg) . dL/dimage, s_depth = sum_{j>i} z_j w_j.
// With w_i = alpha_i T_i (T_i before Gaussian i), one_minus = 1 - alpha_i:
//   dL/dalpha_i = T_i (f_i . g_c) - s_color / one_minus
//               + g_d (T_i z_i - s_depth / one_minus) + g_a T_final / one_minus
// then through alpha = opacity exp(-sigma) when not clamped: dL/dopacity = dL/dalpha exp(-sigma),
// dL/dsigma = -alpha dL/dalpha; dsigma/dmean = (a dx + b dy, b dx + c dy),
// dsigma/d(a, b, c) = (dx^2 / 2, dx dy, dy^2 / 2).
struct PixelGrad {
  float d_mean_x, d_mean_y, d_a, d_b, d_c, d_opacity, d_depth, w;
};

// `fg` = f_i . g_c. Updates the carried state and returns the per-Gaussian gradient pieces
// (feature gradient is w * g_c, done by the caller). Division by one_minus >= 1 - ALPHA_MAX.
I4D_HD PixelGrad pixel_backward(float alpha, float g, bool clamped, float a, float b, float c,
                                float dx, float dy, float z, float fg, float g_alpha, float g_depth,
                                float t_final, float& T, float& s_color, float& s_depth) {
  PixelGrad out;
  const float one_minus = 1.0f - alpha;
  const float inv = 1.0f / one_minus;
  const float t_before = T * inv;
  const float w = alpha * t_before;
  float d_alpha = t_before * fg - s_color * inv;
  d_alpha += g_depth * (t_before * z - s_depth * inv);
  d_alpha += g_alpha * t_final * inv;
  s_color += w * fg;
  s_depth += w * z;
  T = t_before;
  out.w = w;
  out.d_depth = w * g_depth;
  if (clamped) {
    out.d_opacity = 0.0f;
    out.d_mean_x = out.d_mean_y = out.d_a = out.d_b = out.d_c = 0.0f;
  } else {
    out.d_opacity = d_alpha * g;
    const float d_sigma = -alpha * d_alpha;
    out.d_mean_x = d_sigma * (a * dx + b * dy);
    out.d_mean_y = d_sigma * (b * dx + c * dy);
    out.d_a = d_sigma * 0.5f * dx * dx;
    out.d_b = d_sigma * dx * dy;
    out.d_c = d_sigma * 0.5f * dy * dy;
  }
  return out;
}

}  // namespace instant4d

#endif  // INSTANT4D_RASTERIZER_GAUSSIAN_H_
