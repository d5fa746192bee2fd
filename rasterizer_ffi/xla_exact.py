"""Exact pure-XLA tile rasterizer: every (tile, Gaussian) pair composited, static shapes only.

This is the default of ``backend="xla"`` (``tile_capacity=0``). It renders what the dense reference and
the native backends render, on any scene, with ``overflow == 0`` (the one exception: an image with more
than ~2^31 candidate pairs, which int32 cannot address; those are counted, never silently lost).

Why this design (and not a capacity sized from the counts)
    The fixed-capacity path gathers every tile's list into a [tiles, K, 6 + C + 1] array and keeps the
    transmittance at every block boundary for the backward, so its cost and memory grow with the
    longest list (K), not with the work: at 256x256, 50k Gaussians, the smallest exact K is 2048 and
    forward + backward took 4.7x the time of K = 256. A few compiled capacity buckets would still pay
    for the longest list in every tile and multiply compile time. Here nothing is sized by the longest
    list:

    * Lists are never gathered up front. The binning leaves one flat array of pair slots grouped by
      tile (depth order inside a tile) plus each tile's start and length; the compositing loop gathers
      the 32 Gaussians of its current block from the flat [B * N, .] tables at every step. A tile costs
      its own length, or less when its pixels saturate. Chunks of tiles (``_TILES_PER_CHUNK``, sorted
      by length so that a chunk's tiles end together) share one ``while_loop``, which stops when every
      pixel of the chunk has hit the transmittance cut or every list has ended.
    * Tiles are 8x8 here (16x16 in the native backends and the capacity path). The image does not
      depend on the tile size; the work does: SIMD code cannot stop pixel by pixel as the native loops
      do, so a tile runs until its last live pixel is done, and a smaller tile holds fewer Gaussians
      that miss most of its pixels and mixes fewer background pixels (which never saturate) with
      saturated ones. Measured at 256x256, 50k Gaussians, C = 32 (forward + backward, process CPU
      time, with the earlier, slower binning): 8x8 tiles 1.3x faster than 16x16 and 1.4x faster than
      4x4 (whose pair count and binning grow); 64 tiles per chunk beat 32 and 128.
    * The backward needs no per-block residual. It recovers the transmittance walking back to front by
      division, T_k = T_{k+1} / (1 - alpha_k) (alpha <= 0.99, so 1 - alpha >= 0.01), starting from the
      final transmittance; which entries were composited is decided by ``last``, the position at which
      each pixel hit the transmittance cut (the native backends keep the same two arrays). Residuals
      are 8 bytes per pixel plus the last segment's binning (4 bytes per pair slot), whatever the list
      lengths. Within a block the division is one exp of a suffix sum of log(1 - alpha) (the forward
      uses a prefix sum), so T agrees with the forward's to a few ulp per block.
    * The pair buffer has a static size P (``_pair_budget``: ``SLOTS_PER_GAUSSIAN`` = 8 slots per
      Gaussian; head-like scenes use 2.5 to 5.5 on 8x8 tiles). A scene with more candidate pairs is
      processed in depth segments: slots [sP, (s + 1)P) of the depth-ordered candidate list form
      segment s, binned and composited in turn, the per-pixel transmittance, cut position and
      accumulators carried over. Because slots are in depth order, each tile still sees its Gaussians
      front to back, so segments never change the image; they bound memory (at 512x512 with 262,144
      Gaussians forward + backward compiles to ~0.3 GiB of temporaries). Usually there is one segment,
      and the backward reuses its binning; with more, the backward bins the earlier segments again
      (integer work, identical results).
    * Binning is linear apart from one sort of P packed keys: each slot finds its Gaussian by a
      scatter of the Gaussians' first slots and a running maximum (``jnp.searchsorted`` with its sort
      method cost 4x the whole binning).

    A Pallas kernel could keep a tile's pixels in registers and skip the per-step gathers; it would
    need one kernel per accelerator family and could only be tested here in interpret mode, and the
    XLA version already meets the goal it would serve (exact within 2x of K = 256), so it was left for
    when a TPU is at hand to measure it.

Gradient accumulation: each backward step scatter-adds its per-pair gradients into [B * N + 1, .]
tables (a sequential, deterministic scatter on CPU; the order of additions is fixed by the loop).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rasterizer_ffi import constants
from rasterizer_ffi.xla import (
    _HIGHEST,
    _INT32_MAX,
    _alpha_block,
    _gaussian_extents,
    _group_by_tile,
    _pair_tile,
    _pixel_coords,
    _prefix_matrix,
    _walk_block,
    geometry_grads,
)

TILE_EXACT = 8  # pixels per tile side (the image does not depend on it; see the module docstring)
_PIX = TILE_EXACT * TILE_EXACT
_BLOCK = 32  # Gaussians per compositing step
_TILES_PER_CHUNK = max(1, 4096 // _PIX)  # tiles composited together (one while loop per chunk)
SLOTS_PER_GAUSSIAN = 8  # default pair slots per Gaussian in one segment
_NEVER = _INT32_MAX  # ``last`` of a pixel that never reached the transmittance cut


def _pair_budget(n: int, num_tiles: int, slots: int) -> int:
    """Static number of pair slots per image and segment: ``slots`` per Gaussian, at least one
    Gaussian's worth of tiles, at most every possible pair."""
    return int(max(1, min(max(slots * n, num_tiles), n * num_tiles, _INT32_MAX // 4)))


# ----------------------------------------------------------------------------------------------
# Binning in depth segments
# ----------------------------------------------------------------------------------------------


def _prepare(means2d, conics, depths, opacities, *, width, height, budget):
    """Per-image segment set-up: depth order, per-Gaussian extents, the inclusive prefix sum of
    candidate counts ``cs``, the number of segments and the candidate pairs that cannot be addressed
    in int32 (0 unless an image has more than ~2^31 of them)."""
    n = depths.shape[0]
    num_tiles = (-(-width // TILE_EXACT)) * (-(-height // TILE_EXACT))
    radii = jnp.ones(depths.shape, jnp.int32)  # dropped Gaussians come with opacity 0
    order, cnt, ints, floats = _gaussian_extents(means2d, conics, depths, radii, opacities, width=width,
                                                 height=height, tile=TILE_EXACT)
    limit = _INT32_MAX - budget
    if n * num_tiles > limit:  # the int32 prefix sum could wrap: stop counting past ``limit``
        over = lax.cummax((jnp.cumsum(cnt) > limit).astype(jnp.int32), axis=0) > 0
        dropped = jnp.minimum(jnp.sum(jnp.where(over, cnt, 0).astype(jnp.float32)), float(_INT32_MAX))
        dropped = dropped.astype(jnp.int32)
        cnt = jnp.where(over, 0, cnt)
    else:
        dropped = jnp.zeros((), jnp.int32)
    cs = jnp.cumsum(cnt)
    segments = jnp.maximum(1, (cs[-1] + budget - 1) // budget)
    return (order, cs, ints, floats), segments, dropped


def _bin_segment(prep, s, *, width, height, budget):
    """Pairs of segment ``s`` of one image, grouped by tile: Gaussian index (original order) per slot
    [P], and each tile's start and length [T]."""
    order, cs, ints, floats = prep
    n = order.shape[0]
    num_tiles = (-(-width // TILE_EXACT)) * (-(-height // TILE_EXACT))
    base = s * budget
    slot = base + jnp.arange(budget, dtype=jnp.int32)
    # Owner of each slot: the Gaussian g with start_g <= slot < cs_g. Linear time (jnp.searchsorted's
    # sort method costs 7x more here): mark each Gaussian's first slot inside the window, seed the first
    # slot with the Gaussian that straddles the window's start, and carry the largest index forward.
    start = cs - jnp.diff(cs, prepend=0)
    inside = jnp.where((start > base) & (start < base + budget), start - base, budget)
    owner = jnp.zeros((budget,), jnp.int32).at[inside].max(jnp.arange(n, dtype=jnp.int32), mode="drop")
    owner = owner.at[0].max(jnp.sum(cs <= base, dtype=jnp.int32))
    g = jnp.minimum(lax.cummax(owner, axis=0), n - 1)
    local = slot - start[g]  # rank of the slot among g's tiles
    tile, meets = _pair_tile(ints[g], floats[g], local, width=width, height=height, tile=TILE_EXACT)
    key = jnp.where((slot < cs[-1]) & meets, tile, num_tiles)
    slot_sorted, per_tile, tile_start = _group_by_tile(key, num_tiles)
    return order[g[slot_sorted]], tile_start, per_tile


def _bin_all(prep, s, *, width, height, budget):
    """Segment ``s`` of every image, flattened for the compositing loops: table rows [B * P] (row
    b * N + i for Gaussian i of image b), tile starts into that array and tile lengths [B * T]."""
    bsz, n = prep[0].shape
    gauss, start, count = jax.vmap(partial(_bin_segment, s=s, width=width, height=height, budget=budget))(prep)
    rows = gauss + (jnp.arange(bsz, dtype=jnp.int32) * n)[:, None]
    start = start + (jnp.arange(bsz, dtype=jnp.int32) * budget)[:, None]
    return rows.reshape(-1), start.reshape(-1), count.reshape(-1)


# ----------------------------------------------------------------------------------------------
# Compositing one segment
# ----------------------------------------------------------------------------------------------


def _gather_block(tables, rows, start, count, j):
    """Table rows of block ``j`` of each tile's list ([Tc, KB], the zero row where past the end)."""
    k = j * _BLOCK + jnp.arange(_BLOCK, dtype=jnp.int32)
    inside = k < count[:, None]
    pos = jnp.minimum(start[:, None] + k, rows.shape[0] - 1)
    idx = jnp.where(inside, rows[pos], tables[0].shape[0] - 1)
    return idx, tuple(t[idx] for t in tables)


def _forward_chunk(tables, rows, s_offset, xs):
    """Composites one chunk of tiles through its lists of one segment, continuing from the carried
    per-pixel state (transmittance, cut position, accumulators)."""
    start, count, origin, t, last, acc = xs
    px, py = _pixel_coords(origin, TILE_EXACT)
    todo = (jnp.max(count) + _BLOCK - 1) // _BLOCK

    def cond(carry):
        j, _, last, _ = carry
        return (j < todo) & jnp.any(last == _NEVER)

    def body(carry):
        j, t, last, acc = carry
        live = last == _NEVER
        _, (geo, feat) = _gather_block(tables, rows, start, count, j)
        alpha = _alpha_block(geo, px, py)[-1]
        w, _, on, t, still = _walk_block(alpha, t, live)
        stop = s_offset + j * _BLOCK + jnp.sum(on, axis=-1, dtype=jnp.int32)
        last = jnp.where(live & ~still, stop, last)
        acc = acc + jnp.einsum("tpk,tkc->tpc", w, feat, precision=_HIGHEST)
        return j + 1, t, last, acc

    _, t, last, acc = lax.while_loop(cond, body, (jnp.int32(0), t, last, acc))
    return t, last, acc


def _backward_chunk(tables, rows, s_offset, grads, xs):
    """Walks one chunk's lists of one segment back to front. Enters with the transmittance at the end
    of the segment and S = sum of g_i w_i over everything behind plus h T_final; scatter-adds the
    per-pair gradients into ``grads``; returns the transmittance at the segment's start and S."""
    start, count, origin, t_end, s_behind, last, d_acc = xs
    px, py = _pixel_coords(origin, TILE_EXACT)
    limit = jnp.clip(last - s_offset, 0, count[:, None])  # entries [0, limit) were composited
    incl = _prefix_matrix(_BLOCK).T  # x @ incl: sum over i >= k
    strict = _prefix_matrix(_BLOCK, strict=True).T  # x @ strict: sum over i > k

    def cond(carry):
        return carry[0] >= 0

    def body(carry):
        j, t, s, (g_geo, g_feat) = carry
        idx, (geo, feat) = _gather_block(tables, rows, start, count, j)
        dx, dy, e, raw, alpha = _alpha_block(geo, px, py)
        k = j * _BLOCK + jnp.arange(_BLOCK, dtype=jnp.int32)
        alpha = jnp.where(k < limit[..., None], alpha, 0.0)
        # T before each entry, by division from the block's end: T_k = T_end / prod_{i >= k} (1 - a_i).
        suffix = jnp.einsum("tpk,kj->tpj", jnp.log(1.0 - alpha), incl, precision=_HIGHEST)
        before = t[..., None] * jnp.exp(-suffix)
        w = alpha * before
        grad_w = jnp.einsum("tpc,tkc->tpk", d_acc, feat, precision=_HIGHEST)
        gw = grad_w * w
        behind = s[..., None] + jnp.einsum("tpk,kj->tpj", gw, strict, precision=_HIGHEST)
        d_alpha = jnp.where(alpha > 0, grad_w * before - behind / (1.0 - alpha), 0.0)
        d_raw = jnp.where(raw < constants.ALPHA_MAX, d_alpha, 0.0)
        d_geo = geometry_grads(d_raw, raw, e, dx, dy, geo)
        d_feat = jnp.einsum("tpk,tpc->tkc", w, d_acc, precision=_HIGHEST)
        flat = idx.reshape(-1)
        g_geo = g_geo.at[flat].add(d_geo.reshape(flat.shape[0], -1))
        g_feat = g_feat.at[flat].add(d_feat.reshape(flat.shape[0], -1))
        return j - 1, before[..., 0], s + jnp.sum(gw, axis=-1), (g_geo, g_feat)

    first = (jnp.max(limit) + _BLOCK - 1) // _BLOCK - 1
    _, t, s, grads = lax.while_loop(cond, body, (first, t_end, s_behind, grads))
    return grads, (t, s)


def _zero(like, dtype):
    """A zero of ``dtype`` computed from ``like``, so that inside ``shard_map`` it varies over the same
    mesh axes as the inputs (as while-loop carries must); finite even where ``like`` holds NaNs."""
    return (jnp.min(jnp.isfinite(like).astype(jnp.int32)) * 0).astype(dtype)


def _chunked(x, chunk):
    return x.reshape((x.shape[0] // chunk, chunk) + x.shape[1:])


def _unchunked(x):
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _by_length(count):
    """Tile order for one segment (longest lists first, so the tiles of a chunk stop together) and
    its inverse permutation."""
    perm = jnp.argsort(-count, stable=True)
    inverse = jnp.zeros_like(perm).at[perm].set(jnp.arange(perm.shape[0], dtype=perm.dtype))
    return perm, inverse


def _pad_tiles(x, padded, value=0):
    pad = [(0, padded - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
    return jnp.pad(x, pad, constant_values=value)


# ----------------------------------------------------------------------------------------------
# The custom VJP over all segments
# ----------------------------------------------------------------------------------------------


def _layout(bsz, width, height):
    tiles_x = -(-width // TILE_EXACT)
    num_tiles = tiles_x * (-(-height // TILE_EXACT))
    total = bsz * num_tiles
    chunk = min(_TILES_PER_CHUNK, total)
    padded = -(-total // chunk) * chunk
    tile = np.arange(padded) % num_tiles
    origin = jnp.asarray(np.stack([(tile % tiles_x) * TILE_EXACT, (tile // tiles_x) * TILE_EXACT], -1), jnp.float32)
    return total, chunk, padded, origin


def _tables(geo, feat):
    """[B, N, .] -> [B * N + 1, .] with a zero last row (opacity 0: the empty slot)."""
    bsz, n = geo.shape[:2]
    return tuple(jnp.concatenate([x.reshape(bsz * n, -1), jnp.zeros((1, x.shape[-1]), x.dtype)])
                 for x in (geo, feat))


def _forward(geo, feat, width, height, slots):
    bsz, n = geo.shape[:2]
    c1 = feat.shape[-1]
    budget = _pair_budget(n, (-(-width // TILE_EXACT)) * (-(-height // TILE_EXACT)), slots)
    total, chunk, padded, origin = _layout(bsz, width, height)
    sg = lax.stop_gradient
    prep, segments, dropped = jax.vmap(partial(_prepare, width=width, height=height, budget=budget))(
        sg(geo[..., :2]), sg(geo[..., 2:5]), sg(feat[..., -1]), sg(geo[..., 5]))
    tables = _tables(geo, feat)
    num_segments = jnp.max(segments)

    def segment(carry):
        s, t, last, acc, _ = carry
        binned = _bin_all(prep, s, width=width, height=height, budget=budget)
        rows, start, count = binned
        start, count = _pad_tiles(start, padded), _pad_tiles(count, padded)
        perm, inverse = _by_length(count)
        xs = tuple(_chunked(x[perm], chunk) for x in (start, count, origin, t, last, acc))
        t, last, acc = lax.map(partial(_forward_chunk, tables, rows, s * budget), xs)
        t, last, acc = (_unchunked(x)[inverse] for x in (t, last, acc))
        return s + 1, t, last, acc, binned

    zf, zi = _zero(geo, jnp.float32), _zero(geo, jnp.int32)
    empty = (jnp.zeros((bsz * budget,), jnp.int32) + zi, jnp.zeros((total,), jnp.int32) + zi,
             jnp.zeros((total,), jnp.int32) + zi)
    init = (jnp.int32(0), jnp.ones((padded, _PIX), jnp.float32) + zf, jnp.full((padded, _PIX), _NEVER, jnp.int32) + zi,
            jnp.zeros((padded, _PIX, c1), jnp.float32) + zf, empty)
    _, t, last, acc, binned = lax.while_loop(lambda c: c[0] < num_segments, segment, init)
    return (acc[:total], t[:total], dropped), (geo, feat, t, last, binned, num_segments)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def composite_exact(geo, feat, width, height, slots=SLOTS_PER_GAUSSIAN):
    """Front-to-back compositing of every (tile, Gaussian) pair.

    geo [B, N, 6] (mean x, mean y, conic a, b, c, opacity; opacity 0 for a dropped Gaussian), feat
    [B, N, C1] (features, then depth: the sort key). Returns sum_k w_k feat_k per tile [B * T, 256, C1]
    (tiles in row-major order), the final transmittance [B * T, 256] and the per-image count of
    candidate pairs that could not be addressed [B] (0 below ~2^31 pairs). ``slots`` sets the segment
    size, ``slots * N`` pair slots (it changes memory and speed, never the result).
    """
    return _forward(geo, feat, width, height, slots)[0]


def _composite_fwd(geo, feat, width, height, slots):
    return _forward(geo, feat, width, height, slots)


def _composite_bwd(width, height, slots, res, cotangents):
    geo, feat, t_final, last, binned, num_segments = res
    d_acc, d_t, _ = cotangents
    bsz, n = geo.shape[:2]
    budget = _pair_budget(n, (-(-width // TILE_EXACT)) * (-(-height // TILE_EXACT)), slots)
    total, chunk, padded, origin = _layout(bsz, width, height)
    tables = _tables(geo, feat)
    d_acc = _pad_tiles(d_acc, padded)
    s_final = _pad_tiles(d_t, padded) * t_final

    def rebin(s):  # segments before the last: bin again (the forward kept only the last one)
        sg = lax.stop_gradient
        prep = jax.vmap(partial(_prepare, width=width, height=height, budget=budget))(
            sg(geo[..., :2]), sg(geo[..., 2:5]), sg(feat[..., -1]), sg(geo[..., 5]))[0]
        return _bin_all(prep, s, width=width, height=height, budget=budget)

    def segment(carry):
        s, t, s_behind, grads = carry
        rows, start, count = lax.cond(s == num_segments - 1, lambda: binned, lambda: rebin(s))
        start, count = _pad_tiles(start, padded), _pad_tiles(count, padded)
        perm, inverse = _by_length(count)
        xs = tuple(_chunked(x[perm], chunk) for x in (start, count, origin, t, s_behind, last, d_acc))
        grads, (t, s_behind) = lax.scan(
            lambda g, x: _backward_chunk(tables, rows, s * budget, g, x), grads, xs)
        t, s_behind = (_unchunked(x)[inverse] for x in (t, s_behind))
        return s - 1, t, s_behind, grads

    zf = _zero(d_acc, jnp.float32) + _zero(geo, jnp.float32)
    grads = (jnp.zeros(tables[0].shape, jnp.float32) + zf, jnp.zeros(tables[1].shape, jnp.float32) + zf)
    init = (num_segments - 1, t_final, s_final, grads)
    _, _, _, (g_geo, g_feat) = lax.while_loop(lambda c: c[0] >= 0, segment, init)
    return g_geo[:-1].reshape(geo.shape), g_feat[:-1].reshape(feat.shape)


composite_exact.defvjp(_composite_fwd, _composite_bwd)
