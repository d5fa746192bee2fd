"""The base config: every default, as defined in jax_instant4d/config.py."""

from jax_instant4d.config import base_config


def get_config():
    return base_config()
