"""rasterizer_ffi.project against an independent float64 NumPy implementation and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from rasterizer_ffi import project, quat_to_rotmat


def _numpy_project(means3d, scales, quats, w2c, intr, width, height, near, antialiased):
    """Plain per-Gaussian loop in float64, written from the spec."""
    n = means3d.shape[0]
    fx, fy, cx, cy = (float(v) for v in intr)
    out_m = np.zeros((n, 2))
    out_c = np.zeros((n, 3))
    out_z = np.zeros(n)
    out_r = np.zeros(n, np.int64)
    out_comp = np.zeros(n)
    for i in range(n):
        p = w2c[:3, :3] @ means3d[i] + w2c[:3, 3]
        if p[2] < near:
            continue
        w, x, y, z = quats[i] / np.linalg.norm(quats[i])
        rot = np.array([
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ])
        sigma = rot @ np.diag(scales[i] ** 2) @ rot.T
        limx, limy = 1.3 * 0.5 * width / fx, 1.3 * 0.5 * height / fy
        tx = np.clip(p[0] / p[2], -limx, limx) * p[2]
        ty = np.clip(p[1] / p[2], -limy, limy) * p[2]
        jac = np.array([[fx / p[2], 0, -fx * tx / p[2] ** 2], [0, fy / p[2], -fy * ty / p[2] ** 2]])
        cov = jac @ w2c[:3, :3] @ sigma @ w2c[:3, :3].T @ jac.T
        det0 = np.linalg.det(cov)
        cov = cov + 0.3 * np.eye(2)
        inv = np.linalg.inv(cov)
        lam = np.linalg.eigvalsh(cov).max()
        out_m[i] = (fx * p[0] / p[2] + cx, fy * p[1] / p[2] + cy)
        out_c[i] = (inv[0, 0], inv[0, 1], inv[1, 1])
        out_z[i] = p[2]
        out_r[i] = int(np.ceil(3 * np.sqrt(lam)))
        out_comp[i] = np.sqrt(max(0.0, det0 / np.linalg.det(cov))) if antialiased else 1.0
    return out_m, out_c, out_z, out_r, out_comp


def _scene(rng, n):
    means = rng.normal(size=(n, 3)) * 0.6
    means[0] = (0.0, 0.0, 3.5)  # behind the camera (camera at z=3 looking down -z)
    means[1] = (8.0, 0.2, 0.0)  # far off to the side: exercises the frustum clamp
    scales = np.exp(rng.normal(size=(n, 3)) * 0.5 - 2.5)
    quats = rng.normal(size=(n, 4))
    return means.astype(np.float32), scales.astype(np.float32), quats.astype(np.float32)


def _camera():
    w2c = np.diag([1.0, -1.0, -1.0, 1.0]).astype(np.float32)
    w2c[2, 3] = 3.0
    intr = np.array([90.0, 95.0, 40.0, 30.0], np.float32)
    return w2c, intr


@pytest.mark.parametrize("antialiased", [False, True])
def test_project_matches_numpy(rng, antialiased):
    means, scales, quats = _scene(rng, 64)
    w2c, intr = _camera()
    got = project(means, scales, quats, w2c, intr, 80, 60, antialiased=antialiased)
    want = _numpy_project(means.astype(np.float64), scales.astype(np.float64), quats.astype(np.float64),
                          w2c.astype(np.float64), intr, 80, 60, 0.01, antialiased)
    assert got.radii[0] == 0, "a Gaussian behind the camera must be dropped"
    np.testing.assert_array_equal(np.asarray(got.radii) > 0, want[3] > 0)
    np.testing.assert_allclose(got.means2d, want[0], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(got.conics, want[1], rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(got.depths, want[2], rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(got.radii) - want[3]).max() <= 1  # ceil at float32 vs float64
    np.testing.assert_allclose(got.compensation, want[4], rtol=2e-3, atol=1e-4)


def test_batched_equals_unbatched(rng):
    means, scales, quats = _scene(rng, 32)
    w2c, intr = _camera()
    w2c2 = w2c.copy()
    w2c2[0, 3] = 0.3
    b = project(np.stack([means, means]), np.stack([scales, scales]), np.stack([quats, quats]),
                np.stack([w2c, w2c2]), np.stack([intr, intr]), 80, 60)
    for i, cam in enumerate([w2c, w2c2]):
        u = project(means, scales, quats, cam, intr, 80, 60)
        for x, y in zip(b, u, strict=True):
            np.testing.assert_allclose(np.asarray(x)[i], y, rtol=1e-6, atol=1e-6)


def test_quaternion_norm_is_irrelevant(rng):
    q = rng.normal(size=(10, 4)).astype(np.float32)
    r1 = quat_to_rotmat(jnp.asarray(q))
    r2 = quat_to_rotmat(jnp.asarray(q * 3.7))
    np.testing.assert_allclose(r1, r2, atol=1e-6)
    np.testing.assert_allclose(r1 @ jnp.swapaxes(r1, -1, -2), np.broadcast_to(np.eye(3), (10, 3, 3)), atol=1e-5)


def test_gradients_finite_differences(rng):
    jax.config.update("jax_enable_x64", True)
    try:
        means, scales, quats = _scene(rng, 8)
        means, scales, quats = means[2:], scales[2:], quats[2:]  # in front, inside the frustum
        w2c, intr = _camera()
        args = [jnp.asarray(a, jnp.float64) for a in (means, scales, quats)]
        w = jnp.asarray(w2c, jnp.float64)
        k = jnp.asarray(intr, jnp.float64)

        def f(m, s, q):
            p = project(m, s, q, w, k, 80, 60, antialiased=True)
            return jnp.sum(p.means2d * 0.3) + jnp.sum(p.conics * 5.0) + jnp.sum(p.depths) + jnp.sum(p.compensation)

        check_grads(f, args, order=1, modes=("rev",), eps=1e-5, rtol=1e-4)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_dropped_gaussians_have_finite_gradients():
    means = jnp.array([[0.0, 0.0, 3.5], [0.0, 0.0, 0.0]], jnp.float32)  # first one is behind the camera
    scales = jnp.full((2, 3), 0.05, jnp.float32)
    quats = jnp.array([[1.0, 0, 0, 0], [0, 0, 0, 0]], jnp.float32)  # a zero quaternion too
    w2c, intr = _camera()

    def f(m, s):
        p = project(m, s, quats, w2c, intr, 80, 60, antialiased=True)
        return jnp.sum(p.means2d) + jnp.sum(p.conics) + jnp.sum(p.compensation)

    g = jax.grad(f, argnums=(0, 1))(means, scales)
    assert all(np.isfinite(np.asarray(x)).all() for x in g)
    np.testing.assert_array_equal(np.asarray(g[0][0]), 0.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(means3d=np.zeros((5, 2), np.float32)), "means3d"),
        (dict(scales=np.zeros((4, 3), np.float32)), "scales"),
        (dict(quats=np.zeros((5, 3), np.float32)), "quats"),
        (dict(world_to_cam=np.eye(3, dtype=np.float32)), "world_to_cam"),
        (dict(intrinsics=np.zeros(3, np.float32)), "intrinsics"),
        (dict(means3d=np.zeros((5, 3), np.int32)), "means3d"),
        (dict(width=0), "width"),
        (dict(height=-3), "height"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    args = dict(means3d=np.zeros((5, 3), np.float32), scales=np.ones((5, 3), np.float32),
                quats=np.ones((5, 4), np.float32), world_to_cam=np.eye(4, dtype=np.float32),
                intrinsics=np.ones(4, np.float32), width=8, height=8)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        project(**args)
