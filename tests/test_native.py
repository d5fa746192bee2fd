"""The native (C++ / CUDA through the XLA FFI) rasterizer backends.

Checks: the constants header against constants.py; the CPU forward against the dense reference on
random and degenerate scenes (RGB, 32 channels, batches, odd and tiny sizes, empty scenes, a binning
stress scene); the CPU backward against ``jax.vjp`` of the dense reference and against finite
differences; bitwise determinism of the CPU backward (also when it reuses the forward's binning);
every CPU instruction-set path; jit / vmap / grad-under-vmap / nested batch dims / shard_map (forward
and gradients) equal to plain calls; shape errors raised by the handlers; that the CUDA library
compiles (nvcc, one architecture); and, on a GPU machine only, CUDA against CPU and the reference.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import has_gpu
from jax.test_util import check_grads

import rasterizer_ffi
from rasterizer_ffi import constants, ffi, rasterize, rasterize_dense

PKG = Path(rasterizer_ffi.__file__).resolve().parent
HEADER = PKG / "csrc" / "gaussian.h"

pytestmark = pytest.mark.skipif(not ffi.available("cpu"), reason=f"CPU library missing: {ffi.load_error('cpu')}")


# ------------------------------------------------------------------------------------------------
# Scenes built directly in screen space (full control over the degenerate cases)


def _conic(sx, sy, theta):
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    cov = rot @ np.diag([sx * sx, sy * sy]) @ rot.T
    inv = np.linalg.inv(cov)
    lam_max = max(sx, sy) ** 2
    return (inv[0, 0], inv[0, 1], inv[1, 1]), int(np.ceil(3.0 * np.sqrt(lam_max)))


def scene_2d(rng, n, width, height, channels, degenerate=False, opacity=(0.05, 0.95), sigma=(0.6, 7.0),
             margin=0.2, max_aspect=4.0):
    """Unbatched rasterizer inputs: random anisotropic Gaussians, optionally with edge cases."""
    means = np.stack([rng.uniform(-margin * width, (1 + margin) * width, n),
                      rng.uniform(-margin * height, (1 + margin) * height, n)], axis=1)
    conics = np.zeros((n, 3))
    radii = np.zeros(n, np.int64)
    for i in range(n):
        s = np.exp(rng.uniform(np.log(sigma[0]), np.log(sigma[1])))
        aspect = np.exp(rng.uniform(0.0, np.log(max_aspect)))
        conics[i], radii[i] = _conic(s, s / aspect, rng.uniform(0, np.pi))
    depths = rng.uniform(0.5, 5.0, n)
    opac = rng.uniform(*opacity, n)
    feats = rng.uniform(-0.2, 1.2, (n, channels))
    bg = rng.uniform(0.0, 1.0, channels)
    if degenerate:
        assert n >= 14
        cx, cy = width / 2, height / 2
        means[0], opac[0], radii[0] = (cx, cy), 0.9, 0  # dropped (radius 0) although opaque
        conics[1], radii[1] = _conic(3.0 * max(width, height), 2.0 * max(width, height), 0.3)  # huge
        means[1], opac[1], depths[1] = (cx + 5, cy - 3), 0.5, 4.9
        conics[2], radii[2] = _conic(60.0, 0.05, 0.5)  # needle-thin, long
        means[2], opac[2] = (cx, cy), 0.9
        opac[3] = 0.0  # zero opacity
        opac[4] = np.nextafter(np.float32(constants.ALPHA_MIN), np.float32(0))  # just below the alpha cut
        means[5], conics[5], radii[5], depths[5] = means[6], conics[6], radii[6], depths[6]  # tie: by index
        opac[7] = 1.0  # clamped to ALPHA_MAX
        means[8], opac[8] = (np.floor(cx) + 0.5, np.floor(cy) + 0.5), np.float32(constants.ALPHA_MIN)  # exactly at cut
        conics[9], radii[9], means[9], opac[9] = (0.08, 0.0, -0.02), 5, (cx - 4, cy + 2), 0.8  # indefinite conic
        conics[10], radii[10], means[10], opac[10] = (0.02, 0.0, 0.0), 5, (cx + 3, cy), 0.6  # degenerate strip
        means[11], conics[11], radii[11], opac[11] = (-40.0, cy), _conic(25.0, 25.0, 0.0)[0], 75, 0.9  # far outside
        means[12] = (16.0, 16.0)  # on a tile corner
        conics[13], radii[13], means[13], opac[13] = _conic(0.1, 0.1, 0.0)[0], 1, (cx + 0.5, cy + 0.5), 0.7  # tiny
    f32 = np.float32
    return (means.astype(f32), conics.astype(f32), depths.astype(f32), radii.astype(np.int32), opac.astype(f32),
            feats.astype(f32), bg.astype(f32))


def stack(scenes):
    return tuple(np.stack(parts) for parts in zip(*scenes, strict=True))


def assert_outputs_close(got, want, atol, rtol=1e-4):
    for name, g, w in zip(("image", "alpha", "depth"), got, want, strict=True):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape, name
        assert np.isfinite(g).all(), name
        np.testing.assert_allclose(g, w, atol=atol, rtol=rtol, err_msg=name)


# ------------------------------------------------------------------------------------------------
# Constants


def _eval_header_expr(expr: str, kind: str):
    """Evaluates a C++ constant expression of literals and + - * / in the header's own precision."""
    text = re.sub(r"(?<=[0-9.])[fF]\b", "", expr.strip())
    cast = {"float": np.float32, "double": np.float64, "int": int}[kind]

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return cast(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left), ev(node.right)
            ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
                   ast.Div: lambda: a // b if kind == "int" else a / b}
            return cast(ops[type(node.op)]())
        raise ValueError(f"unsupported constant expression {expr!r}")

    return ev(ast.parse(text, mode="eval"))


def test_constants_header_matches_python():
    text = HEADER.read_text()
    block = text.split("// BEGIN CONSTANTS", 1)[1].split("// END CONSTANTS", 1)[0]
    found = {}
    for kind, name, expr in re.findall(r"constexpr\s+(int|float|double)\s+(\w+)\s*=\s*([^;]+);", block):
        found[name] = _eval_header_expr(expr, kind)
    python = {k: v for k, v in vars(constants).items() if k.isupper() and not k.startswith("_")}
    assert set(found) == set(python), (sorted(found), sorted(python))
    for name, value in python.items():
        got = found[name]
        if isinstance(value, int):
            assert got == value, name
        else:  # the kernels and the reference both compare in float32
            assert np.float32(got) == np.float32(value), (name, got, value)
    assert found["TILE_SIZE"] == 16 and np.float32(found["ALPHA_MAX"]) == np.float32(0.99)


# ------------------------------------------------------------------------------------------------
# Forward against the dense reference


@pytest.mark.parametrize("channels, width, height, n", [(3, 45, 38, 160), (32, 33, 17, 90), (4, 5, 3, 30)])
def test_forward_matches_dense(rng, channels, width, height, n):
    scene = scene_2d(rng, n, width, height, channels, degenerate=True)
    got = rasterize(*scene, width, height, backend="cpu")
    want = rasterize_dense(*scene, width, height)
    assert_outputs_close(got, want, atol=1e-5)
    assert float(np.max(got[1])) > 0.3


def test_batched_forward_and_leading_dims(rng):
    w, h, c = 40, 24, 4
    scenes = [scene_2d(rng, 60, w, h, c, degenerate=(i == 0)) for i in range(4)]
    batched = stack(scenes)
    got = rasterize(*batched, w, h, backend="cpu")
    assert_outputs_close(got, rasterize_dense(*batched, w, h), atol=1e-5)
    # extra leading dims go straight to the handler (flattened into the batch)
    nested = tuple(x.reshape((2, 2) + x.shape[1:]) for x in batched)
    out = ffi.rasterize_native(*nested, w, h, "cpu")
    for a, b in zip(out, got, strict=True):
        np.testing.assert_array_equal(np.asarray(a).reshape(np.shape(b)), b)


def test_empty_and_dropped_scenes_give_background(rng):
    bg = np.array([0.2, 0.5, 0.9], np.float32)
    empty = (np.zeros((0, 2), np.float32), np.zeros((0, 3), np.float32), np.zeros(0, np.float32),
             np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros((0, 3), np.float32), bg)
    img, alpha, depth = rasterize(*empty, 21, 13, backend="cpu")
    np.testing.assert_array_equal(img, np.broadcast_to(bg, (13, 21, 3)))
    np.testing.assert_array_equal(alpha, 0.0)
    np.testing.assert_array_equal(depth, 0.0)
    # gradients of an empty scene: only the background gets one
    g_bg = jax.grad(lambda b: jnp.sum(rasterize(*empty[:6], b, 21, 13, backend="cpu")[0]))(jnp.asarray(bg))
    np.testing.assert_allclose(g_bg, 21 * 13, rtol=1e-6)
    scene = list(scene_2d(rng, 20, 21, 13, 3))
    scene[3] = np.zeros_like(scene[3])
    scene[6] = bg
    img, alpha, _ = rasterize(*scene, 21, 13, backend="cpu")
    np.testing.assert_array_equal(img, np.broadcast_to(bg, (13, 21, 3)))


def test_binning_stress_anisotropic(rng):
    """Needle-thin, huge, off-screen, rotated and indefinite Gaussians: tiling must not change the image."""
    w, h = 61, 47
    scene = list(scene_2d(rng, 240, w, h, 1, sigma=(0.3, 30.0), margin=0.6, max_aspect=300.0))
    conics = scene[1]
    conics[::17, 2] *= -0.3  # some indefinite conics
    conics[5::23, 1] = np.sqrt(np.abs(conics[5::23, 0] * conics[5::23, 2]))  # singular (det = 0)
    scene[1] = conics
    got = rasterize(*scene, w, h, backend="cpu")
    assert_outputs_close(got, rasterize_dense(*scene, w, h), atol=1e-5)


def test_opaque_stack_transmittance_cut():
    n = 40
    means = np.tile(np.array([[8.0, 8.0]], np.float32), (n, 1))
    conics = np.tile(np.array([[0.05, 0.0, 0.05]], np.float32), (n, 1))
    depths = np.linspace(1.0, 2.0, n).astype(np.float32)
    radii = np.full(n, 8, np.int32)
    opac = np.full(n, 0.6, np.float32)
    feats = np.linspace(0, 1, n * 3).reshape(n, 3).astype(np.float32)
    args = (means, conics, depths, radii, opac, feats, np.ones(3, np.float32))
    got = rasterize(*args, 16, 16, backend="cpu")
    assert_outputs_close(got, rasterize_dense(*args, 16, 16), atol=1e-6)
    # stopped before T would drop below T_MIN: 1 - alpha = T_final in [T_MIN, T_MIN / (1 - alpha_i))
    assert 0.999 < float(got[1][8, 8]) <= 1.0 - constants.T_MIN + 1e-7


# ------------------------------------------------------------------------------------------------
# Backward


@pytest.mark.parametrize("channels, batch", [(3, 0), (32, 2)])
def test_backward_matches_dense_vjp(rng, channels, batch):
    w, h = 30, 26
    if batch:
        scene = stack([scene_2d(rng, 50, w, h, channels, degenerate=(i == 0)) for i in range(batch)])
    else:
        scene = scene_2d(rng, 70, w, h, channels, degenerate=True)
    radii = jnp.asarray(scene[3])
    args = tuple(jnp.asarray(scene[i]) for i in (0, 1, 2, 4, 5, 6))

    @jax.jit
    def ours(args, cot):
        _, vjp = jax.vjp(lambda m, c, d, o, f, bg: rasterize(m, c, d, radii, o, f, bg, w, h, backend="cpu"), *args)
        return vjp(cot)

    # the reference runs eagerly: under jit XLA fuses (and FMA-contracts) its sigma arithmetic, which
    # moves a few pixels across the alpha = 1/255 cut
    out_ref, vjp_ref = jax.vjp(lambda m, c, d, o, f, bg: rasterize_dense(m, c, d, radii, o, f, bg, w, h), *args)
    assert_outputs_close(rasterize(*scene, w, h, backend="cpu"), out_ref, atol=1e-5)
    names = ["means2d", "conics", "depths", "opacities", "features", "background"]
    for trial in range(3):
        cot = [jnp.asarray(rng.normal(size=o.shape).astype(np.float32)) for o in out_ref]
        if trial:  # one output at a time: image, then alpha + depth
            keep = {1: (0,), 2: (1, 2)}[trial]
            cot = [c if k in keep else jnp.zeros_like(c) for k, c in enumerate(cot)]
        for name, g, r in zip(names, ours(args, tuple(cot)), vjp_ref(tuple(cot)), strict=True):
            g, r = np.asarray(g), np.asarray(r)
            assert np.isfinite(g).all(), name
            scale = max(1.0, float(np.abs(r).max()))
            np.testing.assert_allclose(g, r, atol=2e-4 * scale, rtol=2e-3, err_msg=f"{name} (trial {trial})")


def test_backward_finite_differences(rng):
    """check_grads (reverse mode against numerical directional derivatives) on a well-conditioned
    scene: 5 Gaussians with opacities in [0.2, 0.8] (no clamp, no transmittance cut) centred in the
    image and wide enough that their alpha >= 1/255 support covers it, so a finite-difference step
    never switches a pixel on or off (the dense reference fails this check too when it does)."""
    w = h = 16
    m, c, d, r, o, f, bg = scene_2d(rng, 5, w, h, 3, opacity=(0.2, 0.8), sigma=(7.0, 10.0), margin=-0.4375,
                                    max_aspect=1.3)

    def fn(m, c, d, o, f, bg):
        return rasterize(m, c, d, r, o, f, bg, w, h, backend="cpu")

    args = tuple(jnp.asarray(x) for x in (m, c, d, o, f, bg))
    check_grads(fn, args, order=1, modes=("rev",), eps=1e-3, rtol=1e-2)


def test_backward_is_deterministic(rng):
    w, h = 48, 40
    scene = stack([scene_2d(rng, 400, w, h, 32, sigma=(1.0, 12.0)) for _ in range(2)])
    args = tuple(jnp.asarray(x) for x in scene)
    cot = tuple(jnp.asarray(rng.normal(size=s).astype(np.float32))
                for s in ((2, h, w, 32), (2, h, w), (2, h, w)))

    @jax.jit
    def grads(m, c, d, o, f, bg):
        _, vjp = jax.vjp(lambda m, c, d, o, f, bg: rasterize(m, c, d, args[3], o, f, bg, w, h, backend="cpu"),
                         m, c, d, o, f, bg)
        return vjp(cot)

    diff = (args[0], args[1], args[2], args[4], args[5], args[6])
    first = [np.asarray(g) for g in grads(*diff)]
    second = [np.asarray(g) for g in grads(*diff)]
    for a, b in zip(first, second, strict=True):
        assert np.isfinite(a).all()
        np.testing.assert_array_equal(a, b)
    assert any(np.abs(a).max() > 0 for a in first)


@pytest.mark.parametrize("channels", [3, 17])
def test_every_instruction_set(rng, channels):
    """The CPU kernels exist for SSE2 (baseline), AVX2 + FMA and AVX-512 (the best supported one is used;
    an unsupported request falls back to it): each matches the reference and the others."""
    w, h = 37, 29
    scene = stack([scene_2d(rng, 80, w, h, channels, degenerate=(i == 0)) for i in range(2)])
    want = rasterize_dense(*scene, w, h)
    cot = tuple(jnp.asarray(rng.normal(size=np.shape(o)).astype(np.float32)) for o in want)
    grads = []
    for isa in (1, 2, 3):
        out = ffi._forward_call("cpu", w, h, *scene, isa=isa)
        assert_outputs_close(out[:3], want, atol=1e-5)
        res = tuple(jnp.asarray(x) for x in scene) + (out[3], out[4])
        grads.append([np.asarray(g) for g in ffi._backward_call("cpu", w, h, res, cot, isa=isa)])
    for other in grads[1:]:
        for a, b in zip(other, grads[0], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4 * max(1.0, float(np.abs(b).max())), rtol=1e-4)


def test_backward_reuses_forward_binning_bitwise(rng):
    """The forward may hand its binning to the backward (by token); re-binning gives the same bits."""
    w, h = 40, 33
    scene = [jnp.asarray(x) for x in stack([scene_2d(rng, 200, w, h, 32, degenerate=(i == 0)) for i in range(3)])]
    out = ffi._forward_call("cpu", w, h, *scene, keep=True)
    assert int(np.asarray(out[5]).min()) > 0  # a binning was kept for every image
    cot = tuple(jnp.asarray(rng.normal(size=o.shape).astype(np.float32)) for o in out[:3])
    cached = ffi._backward_call("cpu", w, h, tuple(scene) + tuple(out[3:6]), cot)
    rebinned = ffi._backward_call("cpu", w, h, tuple(scene) + tuple(out[3:5]), cot)
    missed = ffi._backward_call("cpu", w, h, tuple(scene) + tuple(out[3:6]), cot)  # token already taken
    for a, b, c in zip(cached, rebinned, missed, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(c), np.asarray(b))
    assert int(np.asarray(ffi._forward_call("cpu", w, h, *scene)[5]).max()) == 0  # nothing kept by default


# ------------------------------------------------------------------------------------------------
# Transformations


def test_jit_vmap_and_grad_under_vmap(rng):
    w, h, c = 24, 20, 3
    scenes = [scene_2d(rng, 40, w, h, c) for _ in range(3)]
    batched = stack(scenes)
    plain = rasterize(*batched, w, h, backend="cpu")
    jitted = jax.jit(lambda *a: rasterize(*a, w, h, backend="cpu"))(*batched)
    vmapped = jax.vmap(lambda *a: rasterize(*a, w, h, backend="cpu"))(*batched)
    # vmap over an already batched call: the handler sees two leading dims
    twice = jax.vmap(lambda *a: rasterize(*a, w, h, backend="cpu"))(*(x[:, None] for x in batched))
    for other in (jitted, vmapped, [t[:, 0] for t in twice]):
        for a, b in zip(other, plain, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    def loss(m, o, f, c_, d, r, bg):
        img, a, dep = rasterize(m, c_, d, r, o, f, bg, w, h, backend="cpu")
        return jnp.sum(img ** 2) + jnp.sum(a) + 0.1 * jnp.sum(dep)

    m, c_, d, r, o, f, bg = (jnp.asarray(x) for x in batched)
    g_plain = jax.grad(loss, argnums=(0, 1, 2))(m, o, f, c_, d, r, bg)
    per_example = jax.vmap(jax.grad(loss, argnums=(0, 1, 2)))(m, o, f, c_, d, r, bg)
    per_example_jit = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1, 2))))(m, o, f, c_, d, r, bg)
    for a, b, e in zip(g_plain, per_example, per_example_jit, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(b), np.asarray(e))


@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
def test_shard_map_forward_and_gradients(rng, axis_type):
    """Each device rasterizes its share of the batch; a replicated background gets the summed gradient."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    assert len(jax.devices()) == 4
    w, h = 24, 20
    batched = stack([scene_2d(rng, 50, w, h, 3) for _ in range(4)])
    bg = jnp.asarray(batched[6][0])
    mesh = jax.make_mesh((4,), ("data",), axis_types=(getattr(jax.sharding.AxisType, axis_type),))
    args = [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in batched[:6]]
    spec_in = (P("data"),) * 6 + (P(),)
    sharded = jax.shard_map(lambda m, c, d, r, o, f, b: rasterize(m, c, d, r, o, f, b, w, h, backend="cpu"),
                            mesh=mesh, in_specs=spec_in, out_specs=P("data"))

    def loss(render, parts, m, o, b):
        img, a, d = render(m, parts[1], parts[2], parts[3], o, parts[5], b)
        return jnp.sum(img ** 2) + jnp.sum(a) + 0.1 * jnp.sum(d)

    plain = lambda m, c, d, r, o, f, b: rasterize(m, c, d, r, o, f, b, w, h, backend="cpu")  # noqa: E731
    out = jax.jit(sharded)(*args, bg)
    assert len(out[0].sharding.device_set) == 4
    for a, b in zip(out, plain(*batched[:6], bg), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    got = jax.jit(jax.grad(lambda *x: loss(sharded, args, *x), argnums=(0, 1, 2)))(args[0], args[4], bg)
    local = [jnp.asarray(x) for x in batched]
    want = jax.grad(lambda *x: loss(plain, local, *x), argnums=(0, 1, 2))(local[0], local[4], bg)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Loading and errors


def test_library_api():
    assert ffi.available("cpu") and ffi.load_error("cpu") == ""
    assert isinstance(ffi.available("cuda"), bool)
    if not ffi.available("cuda"):
        assert ffi.load_error("cuda")
    with pytest.raises(ValueError, match="platform"):
        ffi.available("metal")


def test_handler_rejects_inconsistent_shapes(rng):
    m, c, d, r, o, f, bg = scene_2d(rng, 10, 16, 16, 3)
    with pytest.raises(Exception, match="conics"):
        jax.block_until_ready(ffi._forward_call("cpu", 16, 16, m[None], c[None, :9], d[None], r[None], o[None],
                                                f[None], bg[None]))
    with pytest.raises(ValueError, match="background"):
        ffi.rasterize_native(m[None], c[None], d[None], r[None], o[None], f[None], bg, 16, 16, "cpu")


# ------------------------------------------------------------------------------------------------
# CUDA


def _nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    cand = Path("/usr/local/cuda/bin/nvcc")
    return str(cand) if cand.exists() else None


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")
def test_cuda_library_compiles(tmp_path):
    """The CUDA library compiles and links (one architecture, sm_80, to keep it quick) and exports
    both handlers; the CUDA runtime is linked statically."""
    out = tmp_path / "librasterizer_cuda.so"
    cmd = [_nvcc(), "-std=c++17", "-O1", "-arch=sm_80", "-shared", "-Xcompiler=-fPIC,-fvisibility=hidden",
           "-cudart=static", "-isystem", jax.ffi.include_dir(), "-I", str(PKG / "csrc"),
           str(PKG / "csrc" / "cuda" / "rasterizer_cuda.cu"), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    if shutil.which("nm"):
        symbols = subprocess.run(["nm", "-D", "--defined-only", str(out)], capture_output=True, text=True).stdout
        assert "Instant4dRasterForwardCuda" in symbols and "Instant4dRasterBackwardCuda" in symbols
    if shutil.which("ldd"):
        assert "libcudart" not in subprocess.run(["ldd", str(out)], capture_output=True, text=True).stdout


cuda_only = pytest.mark.skipif(not (has_gpu() and ffi.available("cuda")), reason="needs a GPU and the CUDA library")


@cuda_only
@pytest.mark.gpu
@pytest.mark.parametrize("channels", [3, 32, 5])
def test_cuda_matches_cpu_and_dense(rng, channels):
    w, h = 45, 38
    scene = stack([scene_2d(rng, 120, w, h, channels, degenerate=(i == 0)) for i in range(2)])
    gpu = jax.devices("gpu")[0]
    cpu = jax.devices("cpu")[0]
    with jax.default_device(gpu):
        got = rasterize(*(jax.device_put(x, gpu) for x in scene), w, h, backend="cuda")
    with jax.default_device(cpu):
        want_cpu = rasterize(*scene, w, h, backend="cpu")
        want_ref = rasterize_dense(*scene, w, h)
    assert_outputs_close(got, want_cpu, atol=1e-5)
    assert_outputs_close(got, want_ref, atol=1e-5)


@cuda_only
@pytest.mark.gpu
def test_cuda_backward_matches_cpu(rng):
    w, h, c = 30, 26, 32
    scene = stack([scene_2d(rng, 60, w, h, c, degenerate=(i == 0)) for i in range(2)])
    cot = [rng.normal(size=s).astype(np.float32) for s in ((2, h, w, c), (2, h, w), (2, h, w))]

    def grads(backend, device):
        with jax.default_device(device):
            args = [jax.device_put(x, device) for x in scene]

            def f(m, cc, d, o, feat, bg):
                return rasterize(m, cc, d, args[3], o, feat, bg, w, h, backend=backend)

            _, vjp = jax.vjp(f, *(args[i] for i in (0, 1, 2, 4, 5, 6)))
            return [np.asarray(g) for g in vjp(tuple(jax.device_put(x, device) for x in cot))]

    got = grads("cuda", jax.devices("gpu")[0])
    want = grads("cpu", jax.devices("cpu")[0])
    for g, r in zip(got, want, strict=True):  # float atomics on CUDA: equal up to rounding
        np.testing.assert_allclose(g, r, atol=1e-4 * max(1.0, float(np.abs(r).max())), rtol=1e-3)
