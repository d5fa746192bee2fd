"""Training: losses, partition rules, the sharded step against one device, non-finite skipping, the
resolution ramp, frozen params, EMA, the adversarial switch, checkpoints onto another mesh.

Uses the stand-in model and batches of ``tests/fakes.py`` (4 host CPU devices from conftest).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fakes import FakeInstant4D, global_batch, make_fake_data_factory, tiny_config
from jax.sharding import PartitionSpec as P

from jax_instant4d.config import ConfigError
from jax_instant4d.train import losses as L
from jax_instant4d.train.loop import NonFiniteError, restore_state, train
from jax_instant4d.train.sharding import ShardingError, make_mesh, param_spec, to_global
from jax_instant4d.train.state import learning_rate_schedule, lr_multiplier_rules
from jax_instant4d.train.step import Trainer, resolution_at, share_over_views
from jax_instant4d.tree_paths import path_str

# --------------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------------


def test_pixel_losses_and_psnr(rng):
    a = jnp.asarray(rng.uniform(size=(2, 8, 8, 3)), jnp.float32)
    b = jnp.clip(a + 0.1, 0, 1)
    assert float(L.l1(a, a)) == 0.0
    np.testing.assert_allclose(L.psnr(a, a + 0.0), 100.0, atol=1e-3)  # capped by the epsilon
    c = jnp.full((1, 4, 4, 3), 0.5)
    np.testing.assert_allclose(L.psnr(c, c + 0.1), [20.0], rtol=1e-5)  # mse 0.01 -> 20 dB
    mask = jnp.zeros((2, 8, 8)).at[:, :2, :2].set(1.0)
    manual = jnp.mean(jnp.abs(a - b)[:, :2, :2])
    np.testing.assert_allclose(L.masked_l1(a, b, mask), manual, rtol=1e-6)
    assert float(L.masked_l1(a, b, jnp.zeros((2, 8, 8)))) == 0.0
    # region PSNR: only the masked pixels count; an empty mask is flagged (and gives 0)
    region = jnp.zeros((2, 8, 8)).at[0, 2:4, 2:6].set(1.0)
    noisy = a.at[0, 2:4, 2:6].add(0.1).at[0, 6:, 6:].add(0.3)  # the second change lies outside the mask
    val, has = L.masked_psnr(noisy, a, region)
    np.testing.assert_allclose(val[0], -10 * np.log10(np.mean((np.clip(noisy, 0, 1) - a)[0, 2:4, 2:6] ** 2)),
                               rtol=1e-4)
    assert bool(has[0]) and not bool(has[1]) and float(val[1]) == 0.0
    big = jnp.asarray(rng.uniform(size=(1, 8, 8, 3)), jnp.float32)
    np.testing.assert_allclose(L.resize_to(big, 4)[0, 0, 0], big[0, :2, :2].mean(axis=(0, 1)), rtol=1e-6)


def test_structural_loss_is_one_minus_ssim_and_its_gradient_matches_finite_differences(rng):
    """``train.loss.ssim``'s term: 1 - SSIM, mean over the images, by the independent NumPy SSIM of the
    evaluation tests; its gradient (through the window's local moments) against central differences."""
    from test_eval import _np_ssim

    a = rng.uniform(size=(2, 13, 14, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(scale=0.1, size=a.shape), 0, 1).astype(np.float32)
    assert float(L.structural(jnp.asarray(a), jnp.asarray(a))) == pytest.approx(0.0, abs=1e-6)
    want = 1.0 - np.mean([_np_ssim(a[i], b[i]) for i in range(2)])
    np.testing.assert_allclose(float(L.structural(jnp.asarray(a), jnp.asarray(b))), want, atol=2e-5)
    assert want > 0.05
    grad = np.asarray(jax.grad(L.structural)(jnp.asarray(b), jnp.asarray(a)))
    x = b.astype(np.float64)
    for idx in [(0, 0, 0, 0), (0, 6, 7, 1), (1, 12, 13, 2), (1, 3, 9, 0)]:  # corners see one window, the centre many
        eps = 1e-2
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        fd = (1.0 - np.mean([_np_ssim(up[i], a[i]) for i in range(2)])
              - 1.0 + np.mean([_np_ssim(down[i], a[i]) for i in range(2)])) / (2 * eps)
        np.testing.assert_allclose(grad[idx], fd, rtol=2e-2, atol=2e-5, err_msg=str(idx))
    assert np.abs(grad[0, 6, 7, 1]) > 10 * np.abs(grad[0, 0, 0, 0]) > 0


def test_lpips_random_network_is_a_distance():
    p = L.init_lpips(0)
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    y = jax.random.uniform(jax.random.key(2), (2, 16, 16, 3))
    lpips = jax.jit(L.lpips)
    d = lpips(p, jnp.concatenate([x, x]), jnp.concatenate([y, x]))  # d(x, y), d(x, x)
    d_rev = lpips(p, jnp.concatenate([y, x]), jnp.concatenate([x, x]))  # d(y, x), d(x, x)
    assert d.shape == (4,) and np.all(np.asarray(d[:2]) > 0)
    np.testing.assert_allclose(d[:2], d_rev[:2], rtol=1e-5)
    np.testing.assert_allclose(d[2:], 0.0, atol=1e-7)


def test_loss_weights_round_trip_through_files(tmp_path):
    ident = L.init_identity(3, depth=18)
    L.save_weights(ident, tmp_path / "arcface.npz")
    loaded = L.load_weights(tmp_path / "arcface.npz", "identity", depth=18)
    x = jax.random.uniform(jax.random.key(4), (2, 40, 40, 3))
    y = jax.random.uniform(jax.random.key(5), (2, 40, 40, 3))
    id_loss = jax.jit(L.identity_loss)
    np.testing.assert_allclose(id_loss(loaded, x, y), id_loss(ident, x, y), rtol=1e-5)
    assert float(id_loss(ident, x, x)) < 1e-5 < float(id_loss(ident, x, y))
    lp = L.init_lpips(6)
    L.save_weights(lp, tmp_path / "lpips.safetensors")
    torch_style = {k.replace("features.", "net.slice1."): v for k, v in L.read_tensor_file(
        tmp_path / "lpips.safetensors").items()}  # the lpips package's names load too
    np.savez(tmp_path / "lpips_pkg.npz", **torch_style)
    lp2 = L.load_weights(tmp_path / "lpips_pkg.npz", "lpips")
    for k in lp:
        np.testing.assert_array_equal(lp2[k], lp[k])
    np.savez(tmp_path / "broken.npz", **{k: v for k, v in torch_style.items() if "lin3" not in k})
    with pytest.raises(ValueError, match="lin3"):
        L.load_weights(tmp_path / "broken.npz", "lpips")


def test_views_of_one_time_step_share_the_driving_code():
    z = jnp.arange(12.0).reshape(1, 3, 4)
    out = share_over_views(z, jnp.array([[0, 1, 0]]))
    np.testing.assert_allclose(out[0, 0], out[0, 2])
    np.testing.assert_allclose(out[0, 0], (z[0, 0] + z[0, 2]) / 2)
    np.testing.assert_allclose(out[0, 1], z[0, 1])


def test_schedules():
    lr = learning_rate_schedule(1e-3, 10, 100, "constant")
    assert float(lr(0)) == 0.0 and abs(float(lr(5)) - 5e-4) < 1e-9 and abs(float(lr(50)) - 1e-3) < 1e-9
    cos = learning_rate_schedule(1e-3, 10, 100, "cosine", min_ratio=0.1)
    assert abs(float(cos(100)) - 1e-4) < 1e-9 and float(cos(50)) < 1e-3
    sched = ((0, 64), (100, 128), (200, 512))
    assert [resolution_at(s, sched, 512) for s in (0, 99, 100, 250)] == [64, 64, 128, 512]
    assert resolution_at(5, (), 256) == 256


# --------------------------------------------------------------------------------------------------
# partition rules
# --------------------------------------------------------------------------------------------------


def test_partition_rules():
    mesh = make_mesh((1, 2, 2))
    # large kernel: its largest dimension divisible by fsdp is split
    assert param_spec("enc/kernel", (3, 3, 64, 512), mesh, fsdp_min_size=1000) == P(None, None, None, "fsdp")
    assert param_spec("enc/bias", (512,), mesh, fsdp_min_size=1000) == P()  # small: replicated
    # a model annotation is kept and fsdp takes another dimension
    assert param_spec("mlp/kernel", (256, 512), mesh, annotation=(None, "model"), fsdp_min_size=1) == \
        P("fsdp", "model")
    # explicit rules win; axes the mesh lacks are dropped
    rules = ((r"^enc/", ("fsdp", None)), (r"head", ("expert",)))
    assert param_spec("enc/kernel", (64, 7), mesh, rules=rules) == P("fsdp")
    assert param_spec("head/kernel", (64, 7), mesh, rules=rules) == P()
    with pytest.raises(ShardingError, match="enc/kernel"):
        param_spec("enc/kernel", (63, 7), mesh, rules=rules)
    with pytest.raises(ShardingError, match="devices"):
        make_mesh((3, -1, 1))


# --------------------------------------------------------------------------------------------------
# the step: sharded vs one device, NaN skip, frozen, EMA, adversarial switch, resolution ramp
# --------------------------------------------------------------------------------------------------

STEP_OVERRIDES = dict(frozen=("motion_encoder",), ema_decay=0.5)


def _cfg(tmp, mesh):
    cfg = tiny_config(tmp, mesh=mesh, **STEP_OVERRIDES)
    cfg.train.loss.adversarial_start = 1
    return cfg


@pytest.fixture(scope="module")
def trainers(tmp_path_factory):
    """The same training on a 2x2 (data x fsdp) mesh of 4 devices and on one device, and an initial
    state (initialised sharded on the 2x2 mesh)."""
    tmp = tmp_path_factory.mktemp("step")
    four = Trainer(_cfg(tmp, (2, 2, 1)), make_mesh((2, 2, 1)), FakeInstant4D)
    one = Trainer(_cfg(tmp, (1, 1, 1)), make_mesh((1, 1, 1), jax.devices()[:1]), FakeInstant4D)
    return four, one, _host(four.init())


def _fresh(trainer, initial):
    """A copy of the initial state placed on ``trainer``'s mesh (steps donate their input state)."""
    return jax.device_put(initial, trainer.state_shardings)


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def test_sharded_step_matches_one_device(trainers):
    four, one, initial = trainers
    s4, s1 = _fresh(four, initial), _fresh(one, initial)
    # the 2x2 state really is sharded: FSDP over a kernel, the model-axis annotation kept
    assert s4.params["encoder"]["kernel"].sharding.spec == P(None, None, None, "fsdp")
    assert s4.params["mix"]["kernel"].sharding.spec == P("fsdp", "model")
    for step in range(2):  # step 0: adversarial off; step 1: on
        host = global_batch(step, 8)
        b4, b1 = to_global(host, four.mesh), to_global(host, one.mesh)
        assert b4["source"].sharding.spec == P(("data", "fsdp"))
        s4, m4 = four.step(s4, b4, 16)
        s1, m1 = one.step(s1, b1, 16)
        assert int(m4["adversarial_on"]) == int(m1["adversarial_on"]) == step
        assert (float(m4["d_loss"]) > 0) == bool(step)
        np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
        np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-4)
        for a, b in zip(jax.tree.leaves(_host(s4.params)), jax.tree.leaves(_host(s1.params)), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        for a, b in zip(jax.tree.leaves(_host(s4.disc)), jax.tree.leaves(_host(s1.disc)), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert int(s4.step) == 2
    for t in (four, one):  # adversarial off, then on: each variant traced once, whichever test ran it first
        assert t.trace_counts[(16, False)] == 1 and t.trace_counts[(16, True)] == 1


def test_frozen_params_ema_and_adversarial_switch(trainers):
    _, one, initial = trainers
    s0 = _fresh(one, initial)
    init = _host(s0)
    assert "motion_encoder" in init.frozen and "motion_encoder" not in init.params
    s1, m1 = one.step(s0, to_global(global_batch(0, 8), one.mesh), 16)
    after1 = _host(s1)
    assert float(m1["d_loss"]) == 0.0  # adversarial_start = 1
    for a, b in zip(jax.tree.leaves(after1.disc), jax.tree.leaves(init.disc), strict=True):
        np.testing.assert_array_equal(a, b)
    s2, m2 = one.step(s1, to_global(global_batch(1, 8), one.mesh), 16)
    after2 = _host(s2)
    assert float(m2["d_loss"]) > 0.0 and float(m2["loss_adversarial"]) > 0.0
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after2.disc),
                                                      jax.tree.leaves(init.disc), strict=True))
    for a, b in zip(jax.tree.leaves(after2.frozen), jax.tree.leaves(init.frozen), strict=True):
        np.testing.assert_array_equal(a, b)  # frozen: never updated
    k0, k1, k2 = (x.params["head"]["kernel"] for x in (init, after1, after2))
    assert not np.array_equal(k0, k1) and not np.array_equal(k1, k2)
    # EMA with decay 0.5: ema_2 = 0.25 p0 + 0.25 p1 + 0.5 p2
    np.testing.assert_allclose(after2.ema["head"]["kernel"], 0.25 * k0 + 0.25 * k1 + 0.5 * k2, rtol=1e-5,
                               atol=1e-7)


def test_lr_multipliers_scale_the_matched_parameters_updates_in_the_real_step(trainers, tmp_path):
    """One step from the same state with and without ``train.lr_multipliers`` ((^head/, 3)): the head's update
    is 3x the plain step's, every other parameter's update is the plain step's bit for bit."""
    _, one, _ = trainers
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    cfg = _cfg(tmp_path, (1, 1, 1))
    cfg.train.lr_multipliers = ((r"^head/", 3.0),)
    scaled = Trainer(cfg, mesh, FakeInstant4D)
    # both initialised on the one device: the same params (the scaled optimiser's state has one more, empty, part)
    start_plain, start = one.init(), scaled.init()
    p0 = _host(start_plain.params)
    for a, b in zip(jax.tree.leaves(_host(start.params)), jax.tree.leaves(p0), strict=True):
        np.testing.assert_array_equal(a, b)
    batch = global_batch(0, 8)
    plain, _ = one.step(start_plain, to_global(batch, one.mesh), 16)
    tripled, _ = scaled.step(start, to_global(batch, scaled.mesh), 16)
    p1, p3 = (_host(s.params) for s in (plain, tripled))
    flat0 = jax.tree_util.tree_flatten_with_path(p0)[0]
    names = [path_str(path) for path, _ in flat0]  # the spelling the rules match
    assert any(n.startswith("head/") for n in names) and any(not n.startswith("head/") for n in names)
    for name, a, b, c in zip(names, jax.tree.leaves(p0), jax.tree.leaves(p1), jax.tree.leaves(p3), strict=True):
        d1, d3 = b - a, c - a
        assert np.abs(d1).max() > 0, name  # the plain step moved it: the comparison can fail
        if name.startswith("head/"):
            np.testing.assert_allclose(d3, 3.0 * d1, rtol=1e-4, atol=1e-7, err_msg=name)
        else:
            np.testing.assert_array_equal(c, b, err_msg=name)


def test_lr_multipliers_reject_bad_rules_and_rules_that_match_nothing(tmp_path):
    (pattern, mult), = lr_multiplier_rules([["^fusion/", "2"]])  # lists from a config.json, a number as text
    assert pattern.pattern == "^fusion/" and mult == 2.0
    for bad, words in [((("^a", 0.0),), "positive"), ((("^a", float("inf")),), "positive"),
                       ((("^a",),), "pair"), ((("(", 2.0),), "not a regex"), ((("^a", "x"),), "number")]:
        with pytest.raises(ConfigError, match=words):
            lr_multiplier_rules(bad)
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    # a typo, and a frozen module (train.frozen: motion_encoder): both would silently do nothing
    for rule in ("^no_such_module/", "^motion_encoder/"):
        cfg = _cfg(tmp_path, (1, 1, 1))
        cfg.train.lr_multipliers = ((rule, 2.0),)
        with pytest.raises(ConfigError, match=re.escape(repr(rule)) + " matches no trainable parameter"):
            Trainer(cfg, mesh, FakeInstant4D)


def test_expression_change_needs_undriven_views_and_a_weight_at_least_zero(tmp_path):
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    for overrides, said in (({"expression_change": 1.0}, "needs data.dataset=synthetic_heads with "
                             "data.undriven_views=true (dataset 'synthetic_heads', undriven_views=False)"),
                            ({"expression_change": -1.0}, "train.loss.expression_change=-1.0: must be a finite"),
                            ({"expression_change_weighting": "squared"},
                             "train.loss.expression_change_weighting='squared': must be one of ('change', 'uniform')")):
        cfg = _cfg(tmp_path, (1, 1, 1))
        cfg.train.loss.update(overrides)
        with pytest.raises(ConfigError, match=re.escape(said)):
            Trainer(cfg, mesh, FakeInstant4D)
    cfg = _cfg(tmp_path, (1, 1, 1))
    cfg.train.loss.expression_change, cfg.data.dataset, cfg.data.undriven_views = 1.0, "teacher_clips", True
    with pytest.raises(ConfigError, match="dataset 'teacher_clips'"):  # real teacher clips have none
        Trainer(cfg, mesh, FakeInstant4D)


def test_nonfinite_batch_is_skipped(trainers):
    _, one, initial = trainers
    state = _fresh(one, initial)
    before = _host(state)
    bad = global_batch(0, 8)
    bad["source"][3, 5, 5, 1] = np.nan
    state, m = one.step(state, to_global(bad, one.mesh), 16)
    after = _host(state)
    assert int(m["nonfinite"]) == 1 and int(m["skipped"]) == 1 and int(m["streak"]) == 1
    assert not np.isfinite(float(m["loss"]))
    for a, b in zip(jax.tree.leaves(after.params) + jax.tree.leaves(after.opt_state),
                    jax.tree.leaves(before.params) + jax.tree.leaves(before.opt_state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(after.step) == 1  # the step counter moves on (data and schedule stay in lockstep)
    state, m = one.step(state, to_global(global_batch(1, 8), one.mesh), 16)
    assert int(m["nonfinite"]) == 0 and int(m["skipped"]) == 1 and int(m["streak"]) == 0
    assert not np.array_equal(_host(state.params)["head"]["kernel"], before.params["head"]["kernel"])


def test_resolution_ramp_compiles_once_per_resolution(trainers):
    _, one, initial = trainers
    state = _fresh(one, initial)
    for step, res in enumerate((8, 8, 16, 8, 16, 8)):  # adversarial from step 1 (static switch)
        state, m = one.step(state, to_global(global_batch(step, 8), one.mesh), res)
        assert np.isfinite(float(m["loss"])) and int(m["adversarial_on"]) == int(step >= 1)
    # every (resolution, adversarial) variant this ramp used was traced once, whether it was first used
    # here or by an earlier test on the same trainer
    used = [(8, False), (8, True), (16, True)]
    assert {v: one.trace_counts[v] for v in used} == {v: 1 for v in used}
    assert set(used) <= set(one.compiled_variants())


# --------------------------------------------------------------------------------------------------
# the loop: checkpoints onto another mesh, stopping after repeated non-finite steps
# --------------------------------------------------------------------------------------------------


def test_nan_streak_stops_and_checkpoint_restores_onto_a_different_mesh(tmp_path, trainers):
    four = trainers[0]  # the loop runs with this trainer (and its compiled step) on the 2x2 mesh
    cfg = _cfg(tmp_path / "run", (2, 2, 1))
    cfg.train.update(steps=8, eval_batches=0, max_nonfinite=2)
    # batches 3, 4, ... carry a NaN: steps 3 and 4 are skipped, and two in a row stop the run
    with pytest.raises(NonFiniteError) as err:
        train(cfg, data_factory=make_fake_data_factory(nan_from=2), trainer=four)
    msg = str(err.value)
    assert "stopping at step 4" in msg and "steps 3..4" in msg
    assert re.search(r"Last good checkpoint: step 2 in \S+checkpoints", msg)
    # the step-2 checkpoint (written on the 2x2 mesh of 4 devices) restores onto 2 devices and 1 device
    saved = {}
    meshes = (make_mesh((2, 2, 1)), make_mesh((1, 2, 1), jax.devices()[:2]), make_mesh((1, 1, 1), jax.devices()[:1]))
    for mesh in meshes:
        _, state = restore_state(cfg, model_factory=FakeInstant4D, mesh=mesh)
        assert int(state.step) == 2
        assert state.params["encoder"]["kernel"].sharding.mesh.size == mesh.size
        saved[mesh.size] = _host(state)
    assert saved[4].params["encoder"]["kernel"].shape == (3, 3, 3, 8)
    for size in (2, 1):
        for a, b in zip(jax.tree.leaves(saved[4]), jax.tree.leaves(saved[size]), strict=True):
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------------
# command line and cluster detection
# --------------------------------------------------------------------------------------------------


def test_train_command_is_registered_and_rejects_unknown_keys(capsys):
    from jax_instant4d import cli

    assert cli.main(["train", "--config", "configs/small.py", "--config.train.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "--coordinator_address" in capsys.readouterr().out


def test_cluster_detection(monkeypatch):
    from jax_instant4d.train import distributed

    for var in ("SLURM_JOB_ID", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                "MEGASCALE_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.detect_cluster() is None
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert distributed.detect_cluster() is None  # a single-task job needs no coordination
    monkeypatch.setenv("SLURM_NTASKS", "16")
    assert distributed.detect_cluster() == "slurm"
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2,10.0.0.3")
    assert distributed.detect_cluster() == "tpu"
    with pytest.raises(ValueError, match="go together"):
        distributed.initialize(coordinator_address="localhost:1234")
    assert distributed.initialize(mode="off") is False


def test_checkpoints_keep_the_last_k_plus_the_best(tmp_path):
    from jax_instant4d.train.checkpoint import Checkpointer
    from jax_instant4d.train.state import TrainState

    cfg = tiny_config(tmp_path)
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2, async_save=True)
    zero = jnp.zeros((), jnp.int32)
    for step, psnr in ((1, 20.0), (2, 25.0), (3, None), (4, 21.0), (5, None), (6, None)):
        state = TrainState(step=jnp.asarray(step, jnp.int32), params={"w": jnp.full((3,), float(step))}, frozen={},
                           rest={}, opt_state=(), ema=None, disc={}, disc_rest={}, disc_opt_state=(), skipped=zero,
                           streak=zero)
        ckpt.save(step, state, None, cfg, metrics=None if psnr is None else {"eval_psnr": psnr}, force=True)
    ckpt.wait()
    assert ckpt.all_steps() == [2, 5, 6]  # the best (25 dB at step 2) and the last two
    restored, data_ok = ckpt.restore(2, jax.eval_shape(lambda: state))
    assert not data_ok and float(restored.params["w"][0]) == 2.0
    assert ckpt.saved_config(6)["train"]["batch_size"] == cfg.train.batch_size
    ckpt.close()
