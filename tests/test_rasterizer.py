"""Every rasterizer backend against the dense reference, against each other, and under jit / vmap /
shard_map; argument checking through the public API."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import has_gpu

import rasterizer_ffi
from rasterizer_ffi import rasterize, rasterize_dense
from rasterizer_ffi.testing import batch_scenes, random_scene


def _backend_params():
    params = [pytest.param("cpu", id="cpu"), pytest.param("xla", id="xla")]
    params.append(pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not has_gpu(), reason="no GPU")))
    return params


BACKENDS = _backend_params()


def _close(got, want, atol):
    for g, w in zip(got, want, strict=True):
        g, w = np.asarray(g), np.asarray(w)
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, w, atol=atol, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels, width, height, n", [(3, 48, 40, 200), (32, 33, 17, 120)])
def test_forward_matches_dense(backend, rng, channels, width, height, n):
    scene = random_scene(rng, n, width, height, channels, degenerate=True)
    got = rasterize(*scene, width, height, backend=backend)
    want = rasterize_dense(*scene, width, height)
    _close(got, want, atol=2e-5)
    assert float(np.asarray(got[1]).max()) > 0.5  # the scene is not trivially empty


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_forward_matches_dense(backend, rng):
    scenes = [random_scene(rng, 150, 40, 36, 3, degenerate=(i == 0)) for i in range(3)]
    batched = batch_scenes(scenes)
    got = rasterize(*batched, 40, 36, backend=backend)
    want = rasterize_dense(*batched, 40, 36)
    _close(got, want, atol=2e-5)
    # each image of the batch equals its own unbatched render
    single = rasterize(*scenes[1], 40, 36, backend=backend)
    _close([g[1] for g in got], single, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_scene_is_background(backend, rng):
    bg = np.array([0.2, 0.5, 0.9], np.float32)
    empty = (np.zeros((0, 2), np.float32), np.zeros((0, 3), np.float32), np.zeros(0, np.float32),
             np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros((0, 3), np.float32), bg)
    img, alpha, depth = rasterize(*empty, 20, 12, backend=backend)
    np.testing.assert_array_equal(img, np.broadcast_to(bg, (12, 20, 3)))
    np.testing.assert_array_equal(alpha, 0.0)
    np.testing.assert_array_equal(depth, 0.0)
    # all Gaussians dropped (radii 0) is the same as an empty scene
    scene = list(random_scene(rng, 30, 20, 12, 3))
    scene[3] = np.zeros_like(scene[3])
    scene[6] = bg
    img, alpha, _ = rasterize(*scene, 20, 12, backend=backend)
    np.testing.assert_array_equal(img, np.broadcast_to(bg, (12, 20, 3)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opaque_stack_stops_early(backend):
    """Many opaque Gaussians on one pixel: the transmittance rule must cut them identically."""
    n = 40
    means = np.tile(np.array([[8.0, 8.0]], np.float32), (n, 1))
    conics = np.tile(np.array([[0.05, 0.0, 0.05]], np.float32), (n, 1))
    depths = np.linspace(1.0, 2.0, n).astype(np.float32)
    radii = np.full(n, 8, np.int32)
    opac = np.full(n, 0.6, np.float32)
    feats = np.linspace(0, 1, n * 3).reshape(n, 3).astype(np.float32)
    bg = np.ones(3, np.float32)
    args = (means, conics, depths, radii, opac, feats, bg)
    got = rasterize(*args, 16, 16, backend=backend)
    want = rasterize_dense(*args, 16, 16)
    _close(got, want, atol=1e-5)
    # The stack reached the cut: the final transmittance is at or above 1e-4 (a Gaussian that would
    # bring it below is not composited) but below what one more Gaussian (alpha ~0.59 here) would leave.
    t_final = 1.0 - float(got[1][8, 8])
    assert 1e-4 * (1 - 1e-3) <= t_final < 1e-4 / (1 - 0.59)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_dense_vjp(backend, rng):
    scene = random_scene(rng, 80, 32, 28, 4, degenerate=True)
    diff = (0, 1, 2, 4, 5, 6)

    def split(fn):
        def f(m, c, d, o, feat, bg):
            return fn(m, c, d, scene[3], o, feat, bg)
        return f

    args = [jnp.asarray(scene[i]) for i in diff]
    out, vjp = jax.vjp(split(lambda *a: rasterize(*a, 32, 28, backend=backend)), *args)
    out_ref, vjp_ref = jax.vjp(split(lambda *a: rasterize_dense(*a, 32, 28)), *args)
    _close(out, out_ref, atol=2e-5)
    for trial in range(2):
        cot = tuple(jnp.asarray(rng.normal(size=o.shape).astype(np.float32)) for o in out)
        if trial == 1:  # one output at a time
            cot = (cot[0], jnp.zeros_like(cot[1]), jnp.zeros_like(cot[2]))
        got = vjp(cot)
        want = vjp_ref(cot)
        names = ["means2d", "conics", "depths", "opacities", "features", "background"]
        for name, g, w in zip(names, got, want, strict=True):
            g, w = np.asarray(g), np.asarray(w)
            assert np.isfinite(g).all(), name
            scale = max(1.0, float(np.abs(w).max()))
            np.testing.assert_allclose(g, w, atol=2e-4 * scale, rtol=2e-3, err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_finite_differences(backend, rng):
    """Gradients of a scalar of all three outputs against central finite differences (float32)."""
    scene = random_scene(rng, 12, 16, 16, 3, opacity_range=(0.2, 0.8), log_scale=(-2.6, 0.2))
    m, c, d, r, o, f, bg = (jnp.asarray(x) for x in scene)
    w_img = jnp.asarray(rng.normal(size=(16, 16, 3)).astype(np.float32))
    w_a = jnp.asarray(rng.normal(size=(16, 16)).astype(np.float32))
    w_d = jnp.asarray(rng.normal(size=(16, 16)).astype(np.float32))

    def loss(m, c, d, o, f):
        img, a, dep = rasterize(m, c, d, r, o, f, bg, 16, 16, backend=backend)
        return jnp.sum(img * w_img) + jnp.sum(a * w_a) + 0.1 * jnp.sum(dep * w_d)

    grads = jax.grad(loss, argnums=(0, 1, 2, 3, 4))(m, c, d, o, f)
    base = [m, c, d, o, f]
    eps = {0: 1e-2, 1: 1e-4, 2: 1e-2, 3: 1e-3, 4: 1e-2}
    loss_j = jax.jit(loss)
    checked = skipped = 0
    for k, g in enumerate(grads):
        flat = np.asarray(g).ravel()
        for idx in np.argsort(-np.abs(flat))[:6]:  # the entries that matter most
            def at(delta, k=k, idx=idx):
                args = list(base)
                v = np.asarray(args[k]).copy().ravel()
                v[idx] += delta
                args[k] = jnp.asarray(v.reshape(np.shape(base[k])))
                return float(loss_j(*args))
            fd = (at(eps[k]) - at(-eps[k])) / (2 * eps[k])
            fd_half = (at(eps[k] / 2) - at(-eps[k] / 2)) / eps[k]
            # The image is piecewise smooth: a pixel crossing the alpha >= 1/255 cut (or the transmittance
            # stop) jumps by up to 1/255, which a step of 1e-2 px turns into an O(0.2) slope. Where the two
            # step sizes disagree, the interval holds such a jump and the difference quotient measures it,
            # not the derivative: that entry is not compared.
            if abs(fd - fd_half) > 0.02 * abs(fd) + 0.02 * np.abs(flat).max() + 1e-3:
                skipped += 1
                continue
            assert abs(fd - flat[idx]) <= 0.05 * abs(fd) + 0.05 * np.abs(flat).max() + 1e-3, (k, idx, fd, flat[idx])
            checked += 1
    assert checked >= 20 and skipped <= 10, (checked, skipped)


def test_cpu_and_xla_agree(rng):
    scenes = [random_scene(rng, 2000, 96, 80, 32) for _ in range(2)]
    batched = batch_scenes(scenes)
    a = rasterize(*batched, 96, 80, backend="cpu")
    b = rasterize(*batched, 96, 80, backend="xla", tile_capacity=2048)
    _close(a, b, atol=5e-5)


def test_jit_vmap_shard_map_equal_plain(rng):
    """The FFI backend on the 4 host devices (the xla backend's own: tests/test_rasterizer_xla.py, same name)."""
    backend = "cpu"
    scenes = [random_scene(rng, 120, 24, 20, 3) for _ in range(4)]
    batched = batch_scenes(scenes)
    plain = rasterize(*batched, 24, 20, backend=backend)
    jitted = jax.jit(lambda *a: rasterize(*a, 24, 20, backend=backend))(*batched)
    vmapped = jax.vmap(lambda *a: rasterize(*a, 24, 20, backend=backend))(*batched)
    assert len(jax.devices()) == 4
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    spec = jax.sharding.PartitionSpec("data")
    sharded_fn = jax.jit(jax.shard_map(lambda *a: rasterize(*a, 24, 20, backend=backend), mesh=mesh,
                                       in_specs=(spec,) * 7, out_specs=spec))
    sharded = sharded_fn(*(jax.device_put(x, jax.sharding.NamedSharding(mesh, spec)) for x in batched))
    assert len(sharded[0].sharding.device_set) == 4
    for other in (jitted, vmapped, sharded):
        _close(other, plain, atol=1e-6)

    # gradients under vmap and shard_map equal the plain gradient
    def loss(m, o, f):
        img, a, d = rasterize(m, batched[1], batched[2], batched[3], o, f, batched[6], 24, 20, backend=backend)
        return jnp.sum(img ** 2) + jnp.sum(a) + jnp.sum(d)

    g_plain = jax.grad(loss, argnums=(0, 1, 2))(batched[0], batched[4], batched[5])

    def per_example(m, c, d, r, o, f, bg):
        def l1(m, o, f):
            img, a, dd = rasterize(m, c, d, r, o, f, bg, 24, 20, backend=backend)
            return jnp.sum(img ** 2) + jnp.sum(a) + jnp.sum(dd)
        return jax.grad(l1, argnums=(0, 1, 2))(m, o, f)

    g_vmap = jax.vmap(per_example)(*batched)
    for a, b in zip(g_plain, g_vmap, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_auto_backend_is_cpu_here():
    if has_gpu():
        pytest.skip("GPU machine")
    assert rasterizer_ffi.resolve_backend("auto") == "cpu"
    assert {"cpu", "xla"} <= set(rasterizer_ffi.available_backends())


def _valid_args():
    n, c = 5, 3
    return dict(means2d=np.zeros((n, 2), np.float32), conics=np.ones((n, 3), np.float32),
                depths=np.ones(n, np.float32), radii=np.ones(n, np.int32), opacities=np.ones(n, np.float32),
                features=np.ones((n, c), np.float32), background=np.zeros(c, np.float32), width=8, height=8)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(means2d=np.zeros((5, 3), np.float32)), ValueError, "means2d"),
        (dict(conics=np.zeros((5, 2), np.float32)), ValueError, "conics"),
        (dict(depths=np.zeros(4, np.float32)), ValueError, "depths"),
        (dict(radii=np.ones(5, np.float32)), TypeError, "radii"),
        (dict(opacities=np.ones((5, 1), np.float32)), ValueError, "opacities"),
        (dict(features=np.ones((4, 3), np.float32)), ValueError, "features"),
        (dict(features=np.ones((5, 3), np.int32)), TypeError, "features"),
        (dict(background=np.zeros(4, np.float32)), ValueError, "background"),
        (dict(width=0), ValueError, "width"),
        (dict(height=-1), ValueError, "height"),
        (dict(width=8.5), TypeError, "width"),
        (dict(backend="metal"), ValueError, "backend"),
    ],
)
def test_bad_input_names_the_argument(change, error, match):
    args = _valid_args()
    args.update(change)
    with pytest.raises(error, match=match):
        rasterize(**args)
