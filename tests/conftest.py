"""Every test runs on CPU with 8 simulated devices, so sharding is always exercised."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def small_config(**overrides):
    """configs/tiny.py shrunk further so a test compiles and steps in seconds."""
    from lavin_jax import config as config_lib

    fields = {
        "model.hidden": 48,
        "model.depth": 2,
        "model.num_heads": 2,
        "model.num_kv_heads": 1,
        "data.image_size": 16,
        "global_batch_size": 8,
        "sample.num_examples": 2,
        "flow.sample_steps": 3,
    }
    fields.update(overrides)
    return config_lib.load(str(ROOT / "configs" / "tiny.py"), fields)


@pytest.fixture
def make_config():
    return small_config
