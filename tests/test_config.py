"""Config loading, overrides and their errors."""

import pytest

from jax_instant4d.config import ConfigError, apply_overrides, base_config, get_config, split_config_args


def test_overrides_convert_by_type():
    cfg = apply_overrides(base_config(), ["--config.train.steps=17", "render.antialiased=true",
                                          "render.fov_degrees=23.28", "model.fusion=global"])
    assert cfg.train.steps == 17 and isinstance(cfg.train.steps, int)
    assert cfg.render.antialiased is True
    assert cfg.render.fov_degrees == pytest.approx(23.28)
    assert cfg.model.fusion == "global"
    assert base_config().train.steps != 17  # the defaults were not modified


@pytest.mark.parametrize("override, match", [
    ("train.stepz=3", "train.stepz"),
    ("nosuch.key=3", "nosuch"),
    ("train.steps=many", "train.steps"),
    ("render.antialiased=maybe", "render.antialiased"),
    ("train.steps", "key.sub=value"),
])
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(base_config(), [override])


def test_config_files_load_and_are_locked():
    for name in ("base", "small", "full"):
        cfg = get_config(f"configs/{name}.py")
        with pytest.raises(AttributeError):
            cfg.train.not_a_key = 1


def test_unknown_key_in_config_file(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("from jax_instant4d.config import base_config\n"
                 "def get_config():\n    c = base_config()\n    c.unlock()\n    c.train.lr_typo = 1\n    return c\n")
    with pytest.raises(ConfigError, match=r"bad\.py.*train\.lr_typo"):
        get_config(f)
    with pytest.raises(ConfigError, match="not found"):
        get_config(tmp_path / "missing.py")


def test_split_config_args():
    rest, ov = split_config_args(["train", "--config", "x.py", "--config.train.steps", "5", "--config.seed=2"])
    assert rest == ["train", "--config", "x.py"]
    assert ov == ["--config.train.steps=5", "--config.seed=2"]
