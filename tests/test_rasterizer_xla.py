"""The pure-XLA tile rasterizer (backend="xla") against the dense reference and the cpu backend: the
exact default (tile_capacity=0) on random, degenerate and dense scenes (where a fixed capacity
overflows), in one or several depth segments; the opt-in fixed capacity and its overflow count;
gradients (dense VJP, finite differences); jit / vmap / shard_map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import rasterizer_ffi
from rasterizer_ffi import rasterize
from rasterizer_ffi import rasterize_dense as _rasterize_dense
from rasterizer_ffi.testing import batch_scenes, random_scene
from rasterizer_ffi.xla import rasterize_xla

rasterize_dense = jax.jit(_rasterize_dense, static_argnums=(7, 8))


def _xla(*args, capacity=0, **kw):
    return rasterize(*args, backend="xla", tile_capacity=capacity, return_overflow=True, **kw)


def _close(got, want, atol=1e-5):
    for g, w in zip(got, want, strict=True):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, w, atol=atol, rtol=1e-4)


def _scene(means, conics, depths, opac, feats, bg, radii=None):
    n = len(depths)
    radii = np.full(n, 5, np.int32) if radii is None else np.asarray(radii, np.int32)
    return (np.asarray(means, np.float32).reshape(n, 2), np.asarray(conics, np.float32).reshape(n, 3),
            np.asarray(depths, np.float32), radii, np.asarray(opac, np.float32),
            np.asarray(feats, np.float32).reshape(n, -1), np.asarray(bg, np.float32))


@pytest.mark.parametrize("channels, width, height, n, batch", [(3, 48, 40, 200, 1), (32, 33, 17, 120, 2)])
def test_random_scenes_match_dense(rng, channels, width, height, n, batch):
    scenes = [random_scene(rng, n, width, height, channels, degenerate=(i == 0)) for i in range(batch)]
    args = batch_scenes(scenes) if batch > 1 else scenes[0]
    *got, overflow = _xla(*args, width, height)
    want = rasterize_dense(*args, width, height)
    _close(got, want)
    np.testing.assert_array_equal(overflow, np.zeros(args[2].shape[:-1], np.int32))
    assert float(np.asarray(got[1]).max()) > 0.5


def _degenerate_gaussians(rng):
    """Non-positive-definite and needle-thin conics, zero and clamped opacities, a dropped one, equal
    depths, a Gaussian centred off screen and one covering everything."""
    means = [[10, 9], [20.5, 7], [5, 5], [12, 12], [30, 3], [30, 3], [-40, 8], [16, 8], [8, 15], [25, 10]]
    conics = [[0.1, 0.5, 0.1],  # indefinite: sigma < 0 along one direction (skipped there)
              [0.02, 0.0, -0.01],  # indefinite, c < 0
              [50.0, 0.0, 1e-4],  # needle-thin, vertical
              [1.0, 0.99, 1.0],  # nearly singular, diagonal needle
              [0.3, 0.0, 0.3], [0.3, 0.0, 0.3],  # identical, same depth: ties by index
              [0.002, 0.0, 0.002],  # centre off screen, reaching in
              [1e-4, 0.0, 1e-4],  # covers the whole image
              [0.5, 0.1, 0.5], [0.5, 0.1, 0.5]]
    depths = [2.0, 1.5, 3.0, 1.0, 2.5, 2.5, 4.0, 5.0, 1.2, 0.9]
    opac = [0.8, 0.7, 1.0, 0.6, 0.5, 0.9, 0.9, 0.4, 0.0, 1.0]  # 1.0: alpha clamped to 0.99
    radii = [4, 4, 4, 4, 4, 4, 4, 4, 4, 0]  # the last one is dropped
    return _scene(means, conics, depths, opac, rng.uniform(0, 1, (10, 3)), [0.3, 0.6, 0.9], radii)


def _border_gaussians(rng, n):
    """Thin, rotated Gaussians centred near tile borders and corners, half of them with opacities just
    above the 1/255 cut."""
    corners = rng.integers(0, 5, size=(n, 2)) * 16.0
    means = corners + rng.normal(scale=2.0, size=(n, 2))
    theta = rng.uniform(0, np.pi, n)
    s_major = np.exp(rng.uniform(0.0, 2.5, n))
    s_minor = np.exp(rng.uniform(-1.0, 0.5, n))
    along = np.stack([np.cos(theta), np.sin(theta)], -1)
    across = np.stack([-along[:, 1], along[:, 0]], -1)
    cov = ((s_major**2)[:, None, None] * along[:, :, None] * along[:, None, :]
           + (s_minor**2)[:, None, None] * across[:, :, None] * across[:, None, :])
    inv = np.linalg.inv(cov)
    conics = np.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], -1)
    opac = np.where(rng.random(n) < 0.5, rng.uniform(1.0 / 255, 3.0 / 255, n), rng.uniform(0.01, 0.3, n))
    return _scene(means, conics, rng.uniform(1, 5, n), opac, rng.uniform(0, 1, (n, 3)), [0.3, 0.6, 0.9])


@pytest.mark.parametrize("capacity", [0, 256])
def test_hand_made_scene_matches_dense(rng, capacity):
    """Binning must not lose any pixel the dense reference composites: Gaussians on tile borders whose
    cut ellipse passes near neighbouring tiles' pixels, and every kind of degenerate Gaussian. Both
    paths (exact: 8x8 tiles; fixed capacity: 16x16 tiles, none full here)."""
    width, height = 61, 45
    parts = [_degenerate_gaussians(rng), _border_gaussians(rng, 300)]
    scene = tuple(np.concatenate([p[i] for p in parts]) for i in range(6)) + (parts[0][6],)
    *got, overflow = _xla(*scene, width, height, capacity=capacity)
    assert int(overflow) == 0
    _close(got, rasterize_dense(*scene, width, height))


def test_empty_scene_and_all_dropped(rng):
    bg = np.array([[0.2, 0.5, 0.9], [0.1, 0.0, 1.0]], np.float32)
    empty = (np.zeros((2, 0, 2), np.float32), np.zeros((2, 0, 3), np.float32), np.zeros((2, 0), np.float32),
             np.zeros((2, 0), np.int32), np.zeros((2, 0), np.float32), np.zeros((2, 0, 3), np.float32), bg)
    img, alpha, depth, overflow = _xla(*empty, 20, 12)
    np.testing.assert_array_equal(img, np.broadcast_to(bg[:, None, None], (2, 12, 20, 3)))
    np.testing.assert_array_equal(alpha, 0.0)
    np.testing.assert_array_equal(depth, 0.0)
    np.testing.assert_array_equal(overflow, 0)
    scene = list(random_scene(rng, 200, 48, 40, 3))  # the shapes of a test above: no new compilation
    scene[3] = np.zeros_like(scene[3])
    img, alpha, depth, overflow = _xla(*scene, 48, 40)
    np.testing.assert_array_equal(img, np.broadcast_to(scene[6], (40, 48, 3)))
    np.testing.assert_array_equal(alpha, 0.0)
    assert int(overflow) == 0


def _capacity_scene(rng, n_small, n_big):
    """32x32 image (2x2 tiles): ``n_small`` small Gaussians well inside tile (0, 0) and ``n_big`` big
    ones centred on the image covering all four tiles, depths interleaved at random."""
    means = np.concatenate([rng.uniform(5, 11, (n_small, 2)), rng.uniform(15, 17, (n_big, 2))])
    conics = np.concatenate([np.tile([[2.0, 0.0, 2.0]], (n_small, 1)), np.tile([[0.01, 0.0, 0.01]], (n_big, 1))])
    n = n_small + n_big
    depths = rng.permutation(np.linspace(1.0, 3.0, n))
    return _scene(means, conics, depths, rng.uniform(0.05, 0.2, n), rng.uniform(0, 1, (n, 3)), [0.2, 0.4, 0.6])


def _keep_nearest_per_tile(scene, members, capacity):
    """Expected outputs of a capacity-limited 32x32 render: per tile, the dense render of the
    ``capacity`` nearest of the (not dropped) Gaussians in ``members[tile]``, cropped to that tile;
    and the number of dropped (tile, Gaussian) pairs."""
    out = [np.zeros((32, 32, scene[5].shape[-1]), np.float32), np.zeros((32, 32), np.float32),
           np.zeros((32, 32), np.float32)]
    dropped = 0
    for (ty, tx), ids in members.items():
        ids = np.asarray([i for i in ids if scene[3][i] > 0])
        kept = ids[np.argsort(scene[2][ids], stable=True)[:capacity]]
        dropped += len(ids) - len(kept)
        radii = np.zeros_like(scene[3])
        radii[kept] = scene[3][kept]
        ref = rasterize_dense(*scene[:3], radii, *scene[4:], 32, 32)
        sl = (slice(16 * ty, 16 * ty + 16), slice(16 * tx, 16 * tx + 16))
        for o, r in zip(out, ref, strict=True):
            o[sl] = np.asarray(r)[sl]
    return out, dropped


def test_tile_capacity_keeps_nearest_and_counts_overflow(rng):
    """Tile (0, 0) holds more Gaussians than the capacity, the others fewer: each tile must equal the
    dense render of its nearest ``capacity`` Gaussians and overflow must count the rest, per image."""
    n_small, n_big, capacity = 30, 6, 10
    first = _capacity_scene(rng, n_small, n_big)
    second = list(first)
    second[3] = first[3].copy()
    second[3][:28] = 0  # the second image drops 28 of the small ones: no tile overflows
    scenes = [first, tuple(second)]
    small, big = list(range(n_small)), list(range(n_small, n_small + n_big))
    members = {(0, 0): small + big, (0, 1): big, (1, 0): big, (1, 1): big}
    *got, overflow = _xla(*batch_scenes(scenes), 32, 32, capacity=capacity)
    for b, scene in enumerate(scenes):
        want, dropped = _keep_nearest_per_tile(scene, members, capacity)
        assert int(overflow[b]) == dropped
        _close([g[b] for g in got], want)
        # a large enough capacity gives the dense render
        *full, none = _xla(*scene, 32, 32, capacity=64)
        assert int(none) == 0
        _close(full, rasterize_dense(*scene, 32, 32))
    assert int(overflow[0]) == n_small + n_big - capacity and int(overflow[1]) == 0

    def loss(m, c, d, o, f):
        img, a, dep, _ = _xla(m, c, d, jnp.asarray(first[3]), o, f, jnp.asarray(first[6]), 32, 32, capacity=capacity)
        return jnp.sum(img * img) + jnp.sum(a) + jnp.sum(dep)

    grads = jax.jit(jax.grad(loss, argnums=range(5)))(*(jnp.asarray(first[i]) for i in (0, 1, 2, 4, 5)))
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    # dropped Gaussians get no gradient: the 20 farthest small ones of tile (0, 0) are not rendered
    order = np.argsort(first[2], stable=True)
    dropped_small = [i for i in order[capacity:] if i < n_small]
    np.testing.assert_array_equal(np.asarray(grads[4])[dropped_small], 0.0)


def _opaque_stack(rng, n):
    """``n`` opaque Gaussians stacked on one spot: pixels there hit the transmittance cut."""
    means = np.tile([[12.0, 10.0]], (n, 1)) + rng.normal(scale=0.5, size=(n, 2))
    return _scene(means, np.tile([[0.05, 0.0, 0.05]], (n, 1)), np.linspace(1, 2, n), np.full(n, 0.9),
                  rng.uniform(0, 1, (n, 4)), np.ones(4))


def test_gradients_match_dense_vjp(rng):
    """Random cotangents on image, alpha and depth; scenes with degenerate Gaussians and with pixels
    that reach the transmittance cut."""
    stack = _opaque_stack(rng, 30)
    scenes = []
    for i in range(2):
        rand = random_scene(rng, 80, 35, 28, 4, degenerate=(i == 0))
        scenes.append(tuple(np.concatenate([rand[k], stack[k]]) for k in range(6)) + (rand[6],))
    args = batch_scenes(scenes)
    diff = (0, 1, 2, 4, 5, 6)
    names = ["means2d", "conics", "depths", "opacities", "features", "background"]

    def with_vjp(fn):
        @jax.jit
        def run(primals, cot):
            out, vjp = jax.vjp(lambda m, c, d, o, f, bg: fn(m, c, d, jnp.asarray(args[3]), o, f, bg), *primals)
            return out, vjp(cot)
        return run

    xla_vjp = with_vjp(lambda *a: _xla(*a, 35, 28)[:3])
    ref_vjp = with_vjp(lambda *a: _rasterize_dense(*a, 35, 28))
    primals = [jnp.asarray(args[i]) for i in diff]
    shapes = [(2, 28, 35, 4), (2, 28, 35), (2, 28, 35)]
    for trial in range(3):
        cot = [jnp.asarray(rng.normal(size=s).astype(np.float32)) for s in shapes]
        if trial > 0:  # one output at a time: image, then alpha and depth together
            keep = (0,) if trial == 1 else (1, 2)
            cot = [c if i in keep else jnp.zeros_like(c) for i, c in enumerate(cot)]
        (out, got), (out_ref, want) = xla_vjp(primals, tuple(cot)), ref_vjp(primals, tuple(cot))
        _close(out, out_ref)
        assert float(np.asarray(out[1]).max()) > 0.9998  # some pixel reached the cut (T < 2e-4)
        for name, g, w in zip(names, got, want, strict=True):
            g, w = np.asarray(g), np.asarray(w)
            assert np.isfinite(g).all(), name
            scale = max(1.0, float(np.abs(w).max()))
            np.testing.assert_allclose(g, w, atol=2e-4 * scale, rtol=2e-3, err_msg=name)


def test_check_grads(rng):
    scene = random_scene(rng, 12, 16, 16, 3, opacity_range=(0.2, 0.8), log_scale=(-2.6, 0.2))
    radii = scene[3]

    def f(m, c, d, o, feat, bg):
        return _xla(m, c, d, radii, o, feat, bg, 16, 16)[:3]

    args = tuple(jnp.asarray(scene[i]) for i in (0, 1, 2, 4, 5, 6))
    check_grads(f, args, order=1, modes=("rev",), eps=1e-3, rtol=1e-2)


@pytest.mark.parametrize("capacity", [0, 64])
def test_jit_vmap_shard_map_equal_plain(rng, capacity):
    """Exact path: dense scenes (``_dense_scene``: 400 Gaussians on every tile, more than a capacity of
    256 holds, and pixels that reach the cut); capacity path: random scenes."""
    if capacity == 0:
        scenes = [_dense_scene(rng, 40, 20) for _ in range(4)]
    else:
        scenes = [random_scene(rng, 100, 40, 20, 3) for _ in range(4)]
    batched = batch_scenes(scenes)
    fn = lambda *a: _xla(*a, 40, 20, capacity=capacity)  # noqa: E731
    plain = fn(*batched)
    jitted = jax.jit(fn)(*batched)
    # vmap over an extra leading axis of already batched inputs
    stacked = tuple(x.reshape((2, 2) + x.shape[1:]) for x in batched)
    vmapped = jax.vmap(fn)(*stacked)
    vmapped = tuple(np.asarray(x).reshape((4,) + x.shape[2:]) for x in vmapped)
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    spec = jax.sharding.PartitionSpec("data")
    on_mesh = [jax.device_put(x, jax.sharding.NamedSharding(mesh, spec)) for x in batched]
    sharded = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * 7, out_specs=spec))(*on_mesh)
    assert len(sharded[0].sharding.device_set) == 4
    for other in (jitted, vmapped, sharded):
        _close(other, plain, atol=1e-6)
        np.testing.assert_array_equal(other[3], plain[3])

    def loss(m, o, f, bg):
        img, a, d, _ = _xla(m, batched[1], batched[2], batched[3], o, f, bg, 40, 20, capacity=capacity)
        return jnp.sum(img**2) + jnp.sum(a) + jnp.sum(d)

    args = (batched[0], batched[4], batched[5], batched[6])
    g_jit = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*args)

    def per_image(m, c, d, r, o, f, bg):
        def one(m, o, f, bg):
            img, a, dd, _ = _xla(m, c, d, r, o, f, bg, 40, 20, capacity=capacity)
            return jnp.sum(img**2) + jnp.sum(a) + jnp.sum(dd)
        return jax.grad(one, argnums=(0, 1, 2, 3))(m, o, f, bg)

    g_vmap = jax.jit(jax.vmap(per_image))(*batched)
    for a, b in zip(g_jit, g_vmap, strict=True):
        assert np.isfinite(np.asarray(a)).all()
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# The exact path on scenes where a fixed capacity overflows
# ----------------------------------------------------------------------------------------------


def _veil(rng, n, width, height, channels=3):
    """``n`` broad, faint Gaussians covering the whole image: every tile holds all of them (a fixed
    capacity below n overflows everywhere), no pixel reaches the transmittance cut and every alpha is
    far above the 1/255 cut, so the outputs are smooth in every input (finite differences apply)."""
    means = np.stack([rng.uniform(0.3, 0.7, n) * width, rng.uniform(0.3, 0.7, n) * height], -1)
    conics = np.stack([rng.uniform(5e-4, 2e-3, n), rng.uniform(-2e-4, 2e-4, n), rng.uniform(5e-4, 2e-3, n)], -1)
    depths = rng.permutation(np.linspace(1.0, 4.0, n))  # spaced by 0.01: small steps never reorder them
    return _scene(means, conics, depths, rng.uniform(0.01, 0.03, n), rng.uniform(0, 1, (n, channels)),
                  rng.uniform(0, 1, channels))


def _dense_scene(rng, width, height):
    """The veil of 300 Gaussians plus an opaque stack (pixels there reach the cut) and random ones."""
    parts = [_veil(rng, 300, width, height), _opaque_stack(rng, 40), random_scene(rng, 60, width, height, 3)]
    parts[1] = parts[1][:5] + (parts[1][5][:, :3],)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(6)) + (parts[0][6],)


def test_exact_matches_dense_and_cpu_where_capacity_overflows(rng):
    """400 Gaussians on every tile: K = 256 drops pairs; the default drops none and equals the dense
    reference and the cpu backend, forward and VJP (random cotangents on image, alpha and depth), in
    one depth segment and in several (pair_slots=1), batched."""
    width, height = 40, 24
    args = batch_scenes([_dense_scene(rng, width, height) for _ in range(2)])
    *_, dropped = _xla(*args, width, height, capacity=256)
    assert (np.asarray(dropped) > 0).all()
    from rasterizer_ffi.xla_exact import _pair_budget, _prepare
    budget = _pair_budget(args[2].shape[1], 15, 1)  # 8x8 tiles: 5 x 3
    opac = np.where(args[3] > 0, args[4], 0.0)
    segments = jax.vmap(lambda m, c, d, o: _prepare(m, c, d, o, width=width, height=height, budget=budget)[1])(
        args[0], args[1], args[2], opac)
    assert int(np.max(segments)) >= 3  # pair_slots=1 below does split the lists

    diff = (0, 1, 2, 4, 5, 6)
    radii = jnp.asarray(args[3])

    def vjp_of(fn):
        @jax.jit
        def run(primals, cot):
            out, vjp = jax.vjp(lambda m, c, d, o, f, bg: fn(m, c, d, radii, o, f, bg)[:3], *primals)
            return out, vjp(cot)
        return run

    runs = {
        "exact": vjp_of(lambda *a: rasterize_xla(*a, width, height)),
        "segments": vjp_of(lambda *a: rasterize_xla(*a, width, height, pair_slots=1)),
        "dense": vjp_of(lambda *a: _rasterize_dense(*a, width, height)),
    }
    primals = tuple(jnp.asarray(args[i]) for i in diff)
    cot = tuple(jnp.asarray(rng.normal(size=s).astype(np.float32))
                for s in [(2, height, width, 3), (2, height, width), (2, height, width)])
    results = {k: fn(primals, cot) for k, fn in runs.items()}
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):  # the cpu backend on the host, also where the default device is a GPU
        radii = jax.device_put(radii, cpu)
        results["cpu"] = vjp_of(lambda *a: rasterize(*a, width, height, backend="cpu"))(
            jax.device_put(primals, cpu), jax.device_put(cot, cpu))
    overflow = rasterize_xla(*(jnp.asarray(a) for a in args), width, height)[3]
    np.testing.assert_array_equal(overflow, 0)
    assert float(np.asarray(results["dense"][0][1]).max()) > 0.9998  # the stack reached the cut
    names = ["means2d", "conics", "depths", "opacities", "features", "background"]
    for key in ("exact", "segments"):
        for want_key in ("dense", "cpu"):
            (out, got), (out_ref, want) = results[key], results[want_key]
            _close(out, out_ref, atol=2e-5)
            for name, g, w in zip(names, got, want, strict=True):
                g, w = np.asarray(g), np.asarray(w)
                assert np.isfinite(g).all(), (key, name)
                scale = max(1.0, float(np.abs(w).max()))
                np.testing.assert_allclose(g, w, atol=2e-4 * scale, rtol=2e-3, err_msg=f"{key} vs {want_key}: {name}")


def test_exact_finite_differences_on_overflowing_scene(rng):
    """Gradients of the exact path against central finite differences along a random direction of
    each input, on a smooth scene that a fixed capacity of 256 cannot hold (300 Gaussians on each of
    6 tiles). Steps are scaled to each input (conics are ~1e-3) and stay below the depth spacing."""
    width, height = 24, 16
    m, c, d, r, o, f, bg = (jnp.asarray(x) for x in _veil(rng, 300, width, height))
    assert int(_xla(m, c, d, r, o, f, bg, width, height, capacity=256)[3]) > 0
    w = [jnp.asarray(rng.normal(size=s).astype(np.float32)) for s in [(height, width, 3), (height, width)] * 2]

    @jax.jit
    def loss(m, c, d, o, f, bg):
        img, alpha, depth, _ = _xla(m, c, d, r, o, f, bg, width, height)
        return jnp.sum(img * w[0]) + jnp.sum(alpha * w[1]) + jnp.sum(depth * w[3])

    primals = [m, c, d, o, f, bg]
    grads = jax.grad(loss, argnums=range(6))(*primals)
    steps = [0.5 * np.ones_like(m), 0.05 * np.asarray(c), 4e-3 * np.ones_like(d), 0.05 * np.asarray(o),
             0.05 * np.ones_like(f), 0.05 * np.ones_like(bg)]
    for k, (g, step) in enumerate(zip(grads, steps, strict=True)):
        v = (step * rng.uniform(-1, 1, size=step.shape)).astype(np.float32)
        shifted = [lambda sign, k=k, v=v: [x + sign * v if i == k else x for i, x in enumerate(primals)]][0]
        fd = (float(loss(*shifted(1.0))) - float(loss(*shifted(-1.0)))) / 2.0
        analytic = float(jnp.sum(g * v))
        assert abs(fd) > 5e-4, k  # the direction does move the loss
        assert abs(analytic - fd) <= 1e-2 * abs(fd) + 3e-5, (k, analytic, fd)


def test_capacity_argument_errors():
    n = 4
    args = (np.zeros((n, 2), np.float32), np.ones((n, 3), np.float32), np.ones(n, np.float32),
            np.ones(n, np.int32), np.ones(n, np.float32), np.ones((n, 3), np.float32), np.zeros(3, np.float32))
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="tile_capacity"):
            rasterize(*args, 8, 8, backend="xla", tile_capacity=bad)
    with pytest.raises(ValueError, match="pair_slots"):
        rasterize_xla(*(jnp.asarray(a)[None] for a in args), 8, 8, pair_slots=0)
    assert rasterizer_ffi.DEFAULT_TILE_CAPACITY == 0
