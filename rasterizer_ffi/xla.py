"""Pure-XLA tile rasterizer: the TPU path, and a backend that runs wherever JAX runs.

Same semantics as :func:`rasterizer_ffi.reference.rasterize_dense` (see ``rasterizer_ffi.rasterize``),
computed on tiles with static shapes only, so it jits, vmaps and runs under ``shard_map``. Two paths
share the binning geometry and the per-block compositing math below:

* ``tile_capacity=0`` (the default): exact, every (tile, Gaussian) pair composited, on 8x8 tiles, in
  ``rasterizer_ffi.xla_exact`` (its docstring gives the design and why). ``overflow`` is 0.
* ``tile_capacity=K > 0``: the opt-in approximation described here, on 16x16 tiles: each tile keeps
  its K nearest Gaussians and ``overflow`` counts the rest. Its cost and memory follow K, not the
  work, which is why it is no longer the default (K >= N cannot drop anything and takes the exact
  path).

Binning (integer work, no gradient)
    Per image, Gaussians are sorted by depth (ties by index). A Gaussian can only reach a pixel where
    sigma <= s = ln(255 opacity) (otherwise alpha < 1/255), i.e. inside an ellipse contained in the
    disc |d| <= sqrt(2 lambda_max s). Its candidate tiles are those whose pixel-centre rectangle meets
    the bounding box of that ellipse (inflated by a safety margin that grows with the conic's
    condition number); a non-positive-definite conic is conservatively given every tile. Candidate
    (tile, Gaussian) pairs are laid out in depth order in a static buffer of ``_pair_budget`` slots
    (each slot finds its Gaussian from a prefix sum of candidate counts), each pair is kept only if
    the ellipse truly meets the tile's rectangle (exact minimum of the quadratic over the rectangle,
    with the same margin), and one single-operand ``lax.sort`` of packed ``tile * budget + slot`` keys
    groups them by tile while keeping depth order. Each tile then takes its first ``tile_capacity``
    entries. ``overflow`` counts the dropped (tile, Gaussian) pairs: those past the capacity of a tile
    (exact), plus candidate pairs that did not fit in the pair budget (counted by their bounding-box
    tiles, an upper bound). ``overflow == 0`` therefore guarantees the image equals the dense one.

Compositing (custom VJP)
    Tiles are sorted by list length and processed in chunks of ``_TILES_PER_CHUNK`` (``lax.map``);
    inside a chunk a ``while_loop`` walks the tiles' Gaussian lists front to back in blocks of
    ``_BLOCK``: alpha for [chunk, 256 pixels, block], the running transmittance as exp of a prefix
    sum of log(1 - alpha) (one small matmul; XLA's cumprod is a quadratic reduce_window on CPU and a
    sequential or doubling product fuses poorly), colour and depth accumulated with one batched
    matmul. The loop stops once every pixel of the chunk has hit the transmittance cut or the
    longest list of the chunk is exhausted, so empty and opaque regions cost little. Products agree
    with the reference's cumulative product to a few ulp (forward differences ~1e-6).

Gradients: a hand-written ``jax.custom_vjp`` on the compositing step (the gather of Gaussians into
    tiles, the background term, the tile reordering and the crop stay under JAX autodiff, which
    scatter-adds per-tile gradients back to the Gaussians; binning sees ``stop_gradient`` inputs).
    The backward pass walks the same blocks back to front, recomputing alpha per block, with the
    running sum S_k = sum_{i>k} g_i w_i + h T_final (g_k = dL/dw_k, h = dL/dT_final), giving
    dL/dalpha_k = g_k T_k - S_k / (1 - alpha_k) (alpha <= 0.99, so the division is safe); the
    transmittance cut and the skip rules are discrete and carry no gradient, as in the reference.
    Residuals: the gathered per-tile inputs ([B * tiles, K, 6 + C + 1] floats, the gather's output
    anyway), the final transmittance per pixel, the blocks processed per chunk, and the
    transmittance entering every block at every pixel (4 * B * tiles * 256 * K / 32 bytes: 8 MiB at
    512x512 with K = 256). Plain autodiff cannot differentiate the early-exit while loop; autodiff
    of a fixed-length loop would keep every [tiles, 256, K] intermediate (268 MB each at 512x512,
    K = 256), or, rematerialised per chunk, redo the forward inside an autodiff backward that is
    itself slower than this one. Measured (jax 0.10.2, CPU): forward + backward at 512x512, 250k
    Gaussians, C = 32, K = 256 compiles to 253 MiB of temporaries (process peak RSS 0.86 GB).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float, Int

from rasterizer_ffi import constants

TILE = constants.TILE_SIZE
_PIX = TILE * TILE
_BLOCK = 32  # Gaussians per step of the compositing loop
_TILES_PER_CHUNK = 32  # tiles composited together (one while loop per chunk)
_PAIRS_PER_GAUSSIAN = 4  # candidate (tile, Gaussian) slots per Gaussian in the pair budget
_INT32_MAX = 2**31 - 1
_HIGHEST = lax.Precision.HIGHEST



def geometry_grads(d_raw: Float[Array, "T P K"], raw: Float[Array, "T P K"], e: Float[Array, "T P K"],
                   dx: Float[Array, "T P K"], dy: Float[Array, "T P K"], geo: Float[Array, "T K G"]
                   ) -> Float[Array, "T K 6"]:
    """Per Gaussian of a block: the gradient with respect to (mean x, mean y, conic a, b, c, opacity) from
    the gradient with respect to each pixel's unclamped alpha ``raw = o e^-sigma`` (``e = e^-sigma``,
    ``d = pixel - mean``, sigma = a dx^2 / 2 + b dx dy + c dy^2 / 2), summed over the pixels P. Shared by
    the fixed-capacity and the exact backward."""
    d_sigma = -d_raw * raw
    sx = jnp.sum(d_sigma * dx, axis=1)
    sy = jnp.sum(d_sigma * dy, axis=1)
    a, b, c = geo[..., 2], geo[..., 3], geo[..., 4]
    return jnp.stack([
        a * sx + b * sy,
        b * sx + c * sy,
        jnp.sum(d_sigma * (0.5 * dx * dx), axis=1),
        jnp.sum(d_sigma * (dx * dy), axis=1),
        jnp.sum(d_sigma * (0.5 * dy * dy), axis=1),
        jnp.sum(d_raw * e, axis=1),
    ], axis=-1)

def _pair_budget(n: int, num_tiles: int, capacity: int) -> int:
    """Static number of candidate (tile, Gaussian) slots per image."""
    budget = max(_PAIRS_PER_GAUSSIAN * n, 2 * num_tiles * capacity, 1024)
    return max(1, min(budget, n * num_tiles, _INT32_MAX // 2))


# ----------------------------------------------------------------------------------------------
# Binning
# ----------------------------------------------------------------------------------------------


def _edge_min(d_fixed, k_fixed, k_free, b, lo, hi):
    """Minimum over t in [lo, hi] of 0.5 (k_fixed d^2 + k_free t^2) + b d t, and the magnitude of
    its terms there (for a rounding allowance). ``k_free > 0``."""
    t = jnp.clip(-b * d_fixed / k_free, lo, hi)
    val = 0.5 * (k_fixed * d_fixed * d_fixed + k_free * t * t) + b * d_fixed * t
    mag = 0.5 * (jnp.abs(k_fixed) * d_fixed * d_fixed + k_free * t * t) + jnp.abs(b * d_fixed * t)
    return val, mag


def _ellipse_meets_rect(mx, my, a, b, c, s, xl, xh, yl, yh):
    """Whether min over the rectangle [xl, xh] x [yl, yh] of sigma(mean - p) is <= s, for a
    positive-definite conic (a > 0, c > 0, ac > b^2), with a rounding allowance."""
    inside = (mx >= xl) & (mx <= xh) & (my >= yl) & (my <= yh)
    hit = inside
    for x_edge in (xl, xh):
        val, mag = _edge_min(mx - x_edge, a, c, b, my - yh, my - yl)
        hit = hit | (val - 1e-5 * mag <= s)
    for y_edge in (yl, yh):
        val, mag = _edge_min(my - y_edge, c, a, b, mx - xh, mx - xl)
        hit = hit | (val - 1e-5 * mag <= s)
    return hit


def _gaussian_extents(means2d, conics, depths, radii, opacities, *, width, height, tile=TILE):
    """Per-Gaussian binning data of one image, in depth order (ties by index).

    Returns ``order`` [N] (original index of each depth-ordered Gaussian), ``cnt`` [N] (number of
    candidate ``tile`` x ``tile`` tiles: those of the bounding box of its cut ellipse; 0 for a dropped Gaussian),
    ``ints`` [N, 3] (first tile column, first tile row, bounding-box width in tiles) and ``floats``
    [N, 7] (mean x, mean y, conic a, b, c, the enlarged cut s, positive-definite flag).
    """
    tiles_x = -(-width // tile)
    tiles_y = -(-height // tile)
    order = jnp.argsort(depths, stable=True).astype(jnp.int32)
    mx, my = means2d[order, 0], means2d[order, 1]
    a, b, c = conics[order, 0], conics[order, 1], conics[order, 2]
    o = opacities[order]
    finite = (jnp.isfinite(mx) & jnp.isfinite(my) & jnp.isfinite(a) & jnp.isfinite(b) & jnp.isfinite(c)
              & jnp.isfinite(o))
    valid = (radii[order] > 0) & (255.0 * o > 1.0) & finite
    mx, my = jnp.where(valid, mx, 0.0), jnp.where(valid, my, 0.0)
    s = jnp.log(jnp.where(valid, 255.0 * o, 2.0))

    det = a * c - b * b
    pd = valid & (a > 0) & (c > 0) & (det > 0)
    a, b, c = jnp.where(pd, a, 1.0), jnp.where(pd, b, 0.0), jnp.where(pd, c, 1.0)
    det = jnp.where(pd, det, 1.0)
    # The rendered sigma carries rounding of relative size ~eps * (a + c)^2 / det (cancellation
    # along the long axis of a thin ellipse): enlarge the cut accordingly, plus a fixed margin.
    cond = (a + c) * (a + c) / det
    s_test = s * (1.0 + 1e-3 + 1e-5 * cond) + 1e-3
    ex = jnp.where(pd, jnp.sqrt(2.0 * s_test * c / det), jnp.inf)
    ey = jnp.where(pd, jnp.sqrt(2.0 * s_test * a / det), jnp.inf)

    def tile_range(m, e, size, count):
        lo = jnp.maximum(m - e, 0.5)
        hi = jnp.minimum(m + e, size - 0.5)
        first = jnp.clip(jnp.ceil((lo - (tile - 0.5)) / tile), 0, count - 1).astype(jnp.int32)
        last = jnp.clip(jnp.floor((hi - 0.5) / tile), 0, count - 1).astype(jnp.int32)
        num = jnp.where(valid & (lo <= hi), jnp.maximum(last - first + 1, 0), 0)
        return first, num

    x0, nx = tile_range(mx, ex, width, tiles_x)
    y0, ny = tile_range(my, ey, height, tiles_y)
    ints = jnp.stack([x0, y0, jnp.maximum(nx, 1)], axis=-1)
    floats = jnp.stack([mx, my, a, b, c, s_test, pd.astype(jnp.float32)], axis=-1)
    return order, nx * ny, ints, floats


def _pair_tile(ints, floats, local, *, width, height, tile=TILE):
    """Tile of the ``local``-th candidate tile of Gaussians with binning data ``ints`` / ``floats``
    (rows gathered per pair slot), and whether the cut ellipse truly meets that tile: (tile, hit)."""
    tiles_x = -(-width // tile)
    ix = ints[:, 0] + local % ints[:, 2]
    iy = ints[:, 1] + local // ints[:, 2]
    xl = (ix * tile).astype(jnp.float32) + 0.5
    yl = (iy * tile).astype(jnp.float32) + 0.5
    xh = jnp.minimum(xl + (tile - 1), width - 0.5)
    yh = jnp.minimum(yl + (tile - 1), height - 0.5)
    meets = _ellipse_meets_rect(floats[:, 0], floats[:, 1], floats[:, 2], floats[:, 3], floats[:, 4],
                                floats[:, 5], xl, xh, yl, yh)
    return iy * tiles_x + ix, (floats[:, 6] == 0) | meets


def _group_by_tile(key, num_tiles):
    """Slots [P] sorted by ``key`` (tile, or ``num_tiles`` for an unused slot), keeping slot order
    inside a tile; the number of slots of each tile [num_tiles] and where each tile starts."""
    budget = key.shape[0]
    slot = jnp.arange(budget, dtype=jnp.int32)
    if (num_tiles + 1) * budget <= _INT32_MAX:  # one single-operand sort of packed keys
        slot_sorted = lax.sort(key * budget + slot) % budget
    else:
        _, slot_sorted = lax.sort((key, slot), num_keys=1, is_stable=True)
    per_tile = jnp.zeros((num_tiles + 1,), jnp.int32).at[key].add(1)[:num_tiles]
    return slot_sorted, per_tile, jnp.cumsum(per_tile) - per_tile


def _bin_one(means2d, conics, depths, radii, opacities, *, width, height, capacity, kpad, budget):
    """Tile lists of one image for the fixed-capacity path: ids [T, kpad] (index of a Gaussian, or N
    for an empty slot), the number of Gaussians kept per tile [T] and the overflow count."""
    n = depths.shape[0]
    num_tiles = (-(-width // TILE)) * (-(-height // TILE))
    order, cnt, ints, floats = _gaussian_extents(means2d, conics, depths, radii, opacities, width=width,
                                                 height=height)

    # Slots [start, start + cnt) of the pair buffer belong to Gaussian n (depth order). Where the int32
    # prefix sum could wrap, it can only do so after exceeding the budget, which a running flag catches.
    cs = jnp.cumsum(cnt)
    start = cs - cnt
    if n * num_tiles <= _INT32_MAX:  # no wrap possible: the prefix sum is monotone
        exceeded_before = start > budget
    else:
        exceeded = lax.cummax((cs > budget).astype(jnp.int32), axis=0)
        exceeded_before = jnp.concatenate([jnp.zeros((1,), jnp.int32), exceeded[:-1]]) > 0
    emitted = jnp.where(exceeded_before, 0, jnp.clip(budget - start, 0, cnt))
    truncated = jnp.sum(cnt - emitted)

    slot = jnp.arange(budget, dtype=jnp.int32)
    owner = jnp.full((budget,), -1, jnp.int32).at[jnp.where(emitted > 0, start, budget)].max(
        jnp.arange(n, dtype=jnp.int32), mode="drop")
    owner = lax.cummax(owner, axis=0)
    g = jnp.maximum(owner, 0)
    local = slot - start[g]
    in_use = (owner >= 0) & (local < emitted[g])
    tile, meets = _pair_tile(ints[g], floats[g], local, width=width, height=height)
    key = jnp.where(in_use & meets, tile, num_tiles)

    # Group by tile, keeping depth (= slot) order inside a tile.
    slot_sorted, per_tile, tile_start = _group_by_tile(key, num_tiles)
    kept = jnp.minimum(per_tile, capacity)
    k = jnp.arange(kpad, dtype=jnp.int32)
    pos = jnp.minimum(tile_start[:, None] + k, budget - 1)
    gauss = order[jnp.maximum(owner[slot_sorted[pos]], 0)]
    ids = jnp.where(k < kept[:, None], gauss, n)
    overflow = jnp.sum(per_tile - kept) + truncated
    return ids, kept, overflow


# ----------------------------------------------------------------------------------------------
# Compositing
# ----------------------------------------------------------------------------------------------


def _pixel_coords(origin, tile=TILE):
    """Pixel centres [Tc, tile^2, 1] of ``tile`` x ``tile`` tiles whose top-left corners are ``origin`` [Tc, 2]."""
    lin = np.arange(tile * tile)
    lx = jnp.asarray((lin % tile) + 0.5, jnp.float32)
    ly = jnp.asarray((lin // tile) + 0.5, jnp.float32)
    return (origin[:, 0:1] + lx)[..., None], (origin[:, 1:2] + ly)[..., None]


def _alpha_block(geo, px, py):
    """Alpha of a block of Gaussians ``geo`` [Tc, KB, 6] at pixels [Tc, 256, 1].

    Returns dx, dy, exp(-sigma), opacity exp(-sigma) and alpha (0 where skipped), all [Tc, 256, KB].
    """
    mx, my, a, b, c, o = (geo[:, None, :, i] for i in range(6))
    dx = mx - px
    dy = my - py
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    nonneg = sigma >= 0
    e = jnp.exp(-jnp.where(nonneg, sigma, 0.0))
    raw = o * e
    alpha = jnp.minimum(constants.ALPHA_MAX, raw)
    keep = nonneg & (alpha >= constants.ALPHA_MIN)
    return dx, dy, e, raw, jnp.where(keep, alpha, 0.0)


def _prefix_matrix(block, strict=False):
    """[KB, KB] matrix M with M[i, j] = 1 where i <= j (i < j if strict): x @ M is a prefix sum."""
    k = np.arange(block)
    return jnp.asarray((k[:, None] < k[None, :]) if strict else (k[:, None] <= k[None, :]), jnp.float32)


def _walk_block(alpha, t, live):
    """Front-to-back transmittance through one block of alphas [Tc, 256, KB], entering with
    transmittance ``t`` and flag ``live`` [Tc, 256] (False once a pixel has hit the cut).

    Returns the weights alpha_k T_k (0 from the cut on), T before each Gaussian, whether each
    Gaussian is composited (not cut), and the (t, live) leaving the block.
    """
    # The running product as exp of a prefix sum of log(1 - alpha) (one small matmul): XLA's cumprod
    # lowers to a quadratic reduce_window on CPU, and doubling scans fuse poorly. log(1 - alpha) of the
    # same float factor the reference multiplies, so the products agree to a few ulp.
    prefix = jnp.einsum("tpk,kj->tpj", jnp.log(1.0 - alpha), _prefix_matrix(alpha.shape[-1]), precision=_HIGHEST)
    after = t[..., None] * jnp.exp(prefix)
    before = jnp.concatenate([t[..., None], after[..., :-1]], axis=-1)
    on = live[..., None] & (after >= constants.T_MIN)
    weights = jnp.where(on, alpha * before, 0.0)
    t_out = jnp.minimum(t, jnp.min(jnp.where(on, after, 1.0), axis=-1))
    return weights, before, on, t_out, on[..., -1]


def _zeros_like_input(shape, x):
    """Zeros of ``shape`` computed from the integer array ``x``, so that inside ``shard_map`` they
    vary over the same mesh axes as the inputs (as while-loop carries must)."""
    return jnp.zeros(shape, jnp.float32) + (jnp.min(x) * 0).astype(jnp.float32)


def _forward_chunk(geo, feat, origin, count, block):
    """One chunk of tiles: geo [Tc, Kp, 6], feat [Tc, Kp, C1], origin [Tc, 2], count [Tc]."""
    tc, nblocks = geo.shape[0], geo.shape[1] // block
    px, py = _pixel_coords(origin)
    todo = jnp.minimum((jnp.max(count) + block - 1) // block, nblocks)

    def cond(carry):
        j, _, live, _, _ = carry
        return (j < todo) & jnp.any(live)

    def body(carry):
        j, t, live, acc, t_start = carry
        t_start = t_start.at[j].set(jnp.where(live, t, -1.0))
        g = lax.dynamic_slice_in_dim(geo, j * block, block, axis=1)
        f = lax.dynamic_slice_in_dim(feat, j * block, block, axis=1)
        alpha = _alpha_block(g, px, py)[-1]
        w, _, _, t, live = _walk_block(alpha, t, live)
        acc = acc + jnp.einsum("tpk,tkc->tpc", w, f, precision=_HIGHEST)
        return j + 1, t, live, acc, t_start

    zero = _zeros_like_input((tc, _PIX), count)
    init = (jnp.int32(0), zero + 1.0, zero == 0, _zeros_like_input((tc, _PIX, feat.shape[-1]), count),
            _zeros_like_input((nblocks, tc, _PIX), count))
    done, t_final, _, acc, t_start = lax.while_loop(cond, body, init)
    return acc, t_final, t_start, done


def _backward_chunk(geo, feat, origin, t_start, done, t_final, d_acc, d_t, block):
    """Gradients of one chunk with respect to geo and feat, walking its blocks back to front.

    With g_k = dL/dw_k per pixel and S_k = sum_{i>k} g_i w_i + (dL/dT_final) T_final,
    dL/dalpha_k = g_k T_k - S_k / (1 - alpha_k).
    """
    px, py = _pixel_coords(origin)
    suffix = _prefix_matrix(block, strict=True).T  # x @ suffix sums the entries after each k

    def cond(carry):
        return carry[0] >= 0

    def body(carry):
        j, s, g_geo, g_feat = carry
        g = lax.dynamic_slice_in_dim(geo, j * block, block, axis=1)
        f = lax.dynamic_slice_in_dim(feat, j * block, block, axis=1)
        t0 = t_start[j]
        dx, dy, e, raw, alpha = _alpha_block(g, px, py)
        w, before, on, _, _ = _walk_block(alpha, jnp.maximum(t0, 0.0), t0 >= 0)
        grad_w = jnp.einsum("tpc,tkc->tpk", d_acc, f, precision=_HIGHEST)
        gw = grad_w * w
        behind = s[..., None] + jnp.einsum("tpk,kj->tpj", gw, suffix, precision=_HIGHEST)
        d_alpha = jnp.where(on & (alpha > 0), grad_w * before - behind / (1.0 - alpha), 0.0)
        s = s + jnp.sum(gw, axis=-1)
        d_raw = jnp.where(raw < constants.ALPHA_MAX, d_alpha, 0.0)
        grads = geometry_grads(d_raw, raw, e, dx, dy, g)
        g_geo = lax.dynamic_update_slice_in_dim(g_geo, grads, j * block, axis=1)
        d_f = jnp.einsum("tpk,tpc->tkc", w, d_acc, precision=_HIGHEST)
        g_feat = lax.dynamic_update_slice_in_dim(g_feat, d_f, j * block, axis=1)
        return j - 1, s, g_geo, g_feat

    init = (done - 1, d_t * t_final, _zeros_like_input(geo.shape, done), _zeros_like_input(feat.shape, done))
    _, _, g_geo, g_feat = lax.while_loop(cond, body, init)
    return g_geo, g_feat


def _chunked(x, chunk):
    return x.reshape((x.shape[0] // chunk, chunk) + x.shape[1:])


def _unchunked(x):
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _composite_fwd_impl(geo, feat, origin, count, block, chunk):
    args = tuple(_chunked(x, chunk) for x in (geo, feat, origin, count))
    acc, t_final, t_start, done = lax.map(lambda xs: _forward_chunk(*xs, block), args)
    return (_unchunked(acc), _unchunked(t_final)), (t_start, done, t_final)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _composite(geo, feat, origin, count, block, chunk):
    """Front-to-back compositing of per-tile Gaussian lists.

    geo [T, Kp, 6] (mean x, mean y, conic a, b, c, opacity) and feat [T, Kp, C1] per tile, in depth
    order (empty slots have opacity 0); origin [T, 2] the tiles' top-left pixels; count [T] the
    list lengths. Returns sum_k w_k feat_k [T, 256, C1] and the final transmittance [T, 256].
    """
    return _composite_fwd_impl(geo, feat, origin, count, block, chunk)[0]


def _composite_fwd(geo, feat, origin, count, block, chunk):
    out, (t_start, done, t_final) = _composite_fwd_impl(geo, feat, origin, count, block, chunk)
    return out, (geo, feat, origin, count, t_start, done, t_final)


def _composite_bwd(block, chunk, res, cotangents):
    geo, feat, origin, count, t_start, done, t_final = res
    d_acc, d_t = cotangents
    args = tuple(_chunked(x, chunk) for x in (geo, feat, origin, d_acc, d_t))
    g_geo, g_feat = lax.map(
        lambda xs: _backward_chunk(xs[0], xs[1], xs[2], xs[3], xs[4], xs[5], xs[6], xs[7], block),
        (args[0], args[1], args[2], t_start, done, t_final, args[3], args[4]))
    return _unchunked(g_geo), _unchunked(g_feat), None, None


_composite.defvjp(_composite_fwd, _composite_bwd)


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------


def rasterize_xla(
    means2d: Float[Array, "B N 2"],
    conics: Float[Array, "B N 3"],
    depths: Float[Array, "B N"],
    radii: Int[Array, "B N"],
    opacities: Float[Array, "B N"],
    features: Float[Array, "B N C"],
    background: Float[Array, "B C"],
    width: int,
    height: int,
    tile_capacity: int = 0,
    *,
    pair_slots: int | None = None,
) -> tuple[Float[Array, "B H W C"], Float[Array, "B H W"], Float[Array, "B H W"], Int[Array, " B"]]:
    """Tile rasterizer in pure XLA: ``(image, alpha, depth, overflow)``.

    Batched, float32 inputs as validated by ``rasterizer_ffi.rasterize``. ``tile_capacity=0`` (the
    default) composites every (tile, Gaussian) pair (``rasterizer_ffi.xla_exact``): the image of the
    dense reference, ``overflow == 0``. ``tile_capacity=K > 0`` is the opt-in approximation: each 16x16
    tile composites at most K Gaussians (the nearest ones) and ``overflow[b]`` counts the dropped
    (tile, Gaussian) pairs of image b (K >= N cannot drop anything and takes the exact path).
    ``pair_slots`` (exact path): pair slots per Gaussian in one depth segment (default
    ``xla_exact.SLOTS_PER_GAUSSIAN``); it trades memory for speed and never changes the result (tests
    lower it to exercise several segments).
    Differentiable in means2d, conics, depths, opacities, features and background.
    """
    if isinstance(tile_capacity, bool) or not isinstance(tile_capacity, (int, np.integer)) or tile_capacity < 0:
        raise ValueError(f"tile_capacity must be an int >= 0 (0 = exact), got {tile_capacity!r}")
    if pair_slots is None:
        from rasterizer_ffi.xla_exact import SLOTS_PER_GAUSSIAN as pair_slots
    if isinstance(pair_slots, bool) or not isinstance(pair_slots, (int, np.integer)) or pair_slots < 1:
        raise ValueError(f"pair_slots must be an int >= 1, got {pair_slots!r}")
    return _rasterize(means2d, conics, depths, radii, opacities, features, background, int(width), int(height),
                      int(tile_capacity), int(pair_slots))


def _untile(x, bsz, width, height, tile=TILE):
    """[B * T, tile^2, ...] tiles (row-major) -> [B, H, W, ...]."""
    tiles_x = -(-width // tile)
    tiles_y = -(-height // tile)
    x = x[:bsz * tiles_x * tiles_y].reshape((bsz, tiles_y, tiles_x, tile, tile) + x.shape[2:])
    x = jnp.swapaxes(x, 2, 3).reshape((bsz, tiles_y * tile, tiles_x * tile) + x.shape[5:])
    return x[:, :height, :width]


@partial(jax.jit, static_argnums=(7, 8, 9, 10))
def _rasterize(means2d, conics, depths, radii, opacities, features, background, width, height, capacity, slots):
    bsz, n = depths.shape
    ch = features.shape[-1]
    if n == 0:
        image = jnp.broadcast_to(background[:, None, None, :], (bsz, height, width, ch))
        zeros = jnp.zeros((bsz, height, width), jnp.float32)
        return image, zeros, zeros, jnp.zeros((bsz,), jnp.int32)
    if capacity == 0 or capacity >= n:
        from rasterizer_ffi.xla_exact import TILE_EXACT, composite_exact

        # A dropped Gaussian (radii 0) enters with opacity 0: never binned, and no gradient reaches it.
        opac = jnp.where(radii > 0, opacities, 0.0)
        geo = jnp.concatenate([means2d, conics, opac[..., None]], axis=-1)
        feat = jnp.concatenate([features, depths[..., None]], axis=-1)
        acc, t_final, overflow = composite_exact(geo, feat, width, height, slots)
        tile = TILE_EXACT
    else:
        acc, t_final, overflow = _capacity_path(means2d, conics, depths, radii, opacities, features, width,
                                                height, capacity)
        tile = TILE
    acc = _untile(acc, bsz, width, height, tile)
    t_final = _untile(t_final, bsz, width, height, tile)
    image = acc[..., :ch] + t_final[..., None] * background[:, None, None, :]
    return image, 1.0 - t_final, acc[..., ch], overflow.astype(jnp.int32)


def _capacity_path(means2d, conics, depths, radii, opacities, features, width, height, capacity):
    """The fixed-capacity approximation: per-tile accumulators [B * T, 256, C + 1], final transmittance
    [B * T, 256] and the dropped pairs per image [B]."""
    bsz, n = depths.shape
    ch = features.shape[-1]
    tiles_x = -(-width // TILE)
    tiles_y = -(-height // TILE)
    num_tiles = tiles_x * tiles_y
    block = min(_BLOCK, capacity)
    kpad = -(-capacity // block) * block
    budget = _pair_budget(n, num_tiles, capacity)

    sg = lax.stop_gradient
    bin_fn = partial(_bin_one, width=width, height=height, capacity=capacity, kpad=kpad, budget=budget)
    ids, count, overflow = jax.vmap(bin_fn)(sg(means2d), sg(conics), sg(depths), radii, sg(opacities))

    # Gather every tile's Gaussians (row N of each image is an empty slot: opacity 0).
    geo = jnp.concatenate([means2d, conics, opacities[..., None]], axis=-1)
    feat = jnp.concatenate([features, depths[..., None]], axis=-1)
    geo = jnp.concatenate([geo, jnp.zeros((bsz, 1, 6), geo.dtype)], axis=1).reshape(bsz * (n + 1), 6)
    feat = jnp.concatenate([feat, jnp.zeros((bsz, 1, ch + 1), feat.dtype)], axis=1).reshape(bsz * (n + 1), ch + 1)
    flat_ids = (ids + (jnp.arange(bsz, dtype=jnp.int32) * (n + 1))[:, None, None]).reshape(bsz * num_tiles, kpad)

    total = bsz * num_tiles
    chunk = min(_TILES_PER_CHUNK, total)
    padded = -(-total // chunk) * chunk
    flat_ids = jnp.pad(flat_ids, ((0, padded - total), (0, 0)), constant_values=n)
    count = jnp.pad(count.reshape(total), (0, padded - total))
    tile = np.arange(padded) % num_tiles
    origin = jnp.asarray(np.stack([(tile % tiles_x) * TILE, (tile // tiles_x) * TILE], -1), jnp.float32)
    # Chunks of tiles with similar list lengths stop together: composite in decreasing length order.
    perm = jnp.argsort(-count, stable=True)
    inverse = jnp.zeros_like(perm).at[perm].set(jnp.arange(padded, dtype=perm.dtype))
    flat_ids = flat_ids[perm]
    acc, t_final = _composite(geo[flat_ids], feat[flat_ids], origin[perm], count[perm], block, chunk)
    return acc[inverse], t_final[inverse], overflow
