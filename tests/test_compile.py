"""`--mode=compile`: the train step compiled ahead of time for a topology, with per-device memory."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from lavin_jax import parallel
from lavin_jax import state as state_lib
from conftest import ROOT, SMALL, config_flags, small_config


def shard_bytes(x, sharding) -> int:
    return int(np.prod(sharding.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize


def test_compile_mode_reports_what_each_device_holds(tmp_path):
    """In a fresh process for 4 CPU devices with fsdp=4: the arguments it reports are one device's
    shards of the state and of the largest batch, exactly, and the donated state is aliased."""
    fields = {"mesh.data": 1, "mesh.fsdp": 4, "data.max_pairs": 2}
    result = subprocess.run(
        [sys.executable, "-m", "lavin_jax.main", "--mode=compile", "--config=configs/tiny.py", f"--workdir={tmp_path}",
         "--topology=cpu:4", *config_flags({**SMALL, **fields})],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "XLA_FLAGS": ""},  # not the tests' 8 devices.
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "peak_bytes" in result.stdout and "GiB per device" in result.stdout
    report = json.loads((tmp_path / "compile.json").read_text())
    assert report["devices"] == 4 and report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}

    config = small_config(**fields)
    mesh = parallel.make_mesh(config, jax.devices()[:4])
    s = state_lib.setup(config, mesh)
    state = sum(shard_bytes(x, x.sharding) for x in jax.tree.leaves(s.abstract_state))
    batch = s.objective.largest_batch(config.global_batch_size)
    assert batch["cond"].shape == (8, 5, 16, 16, 3)  # 2 pairs and the query.
    rows = parallel.batch_sharding(mesh, config.mesh.rules)
    read = {name: x for name, x in batch.items() if name != "task"}  # jit drops arguments the step never reads.
    assert report["argument_bytes"] == state + sum(shard_bytes(x, rows) for x in read.values())
    assert report["alias_bytes"] == state
    assert report["temp_bytes"] > 0
    assert report["peak_bytes"] == report["argument_bytes"] + report["output_bytes"] - state + report["temp_bytes"]


def test_unknown_topology_is_named():
    with pytest.raises(ValueError, match=r"--topology='cpu:x'"):
        parallel.target_devices("cpu:x")
    with pytest.raises(ValueError, match=r"--topology='v9z:3x3'.*install libtpu"):
        parallel.target_devices("v9z:3x3")


def test_without_its_stvae_run_a_latent_config_takes_the_released_shapes(tmp_path):
    from lavin_jax import latents
    from lavin_jax.models import stvae

    vae = latents.load(str(tmp_path / "no_run_yet"), abstract=True)
    assert tuple(vae.config.model.channels) == tuple(stvae.official_config().channels)
    assert (vae.shift, vae.scale) == (latents.OFFICIAL_SHIFT, latents.OFFICIAL_SCALE)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(vae.params))
    with pytest.raises(FileNotFoundError, match="has no checkpoints directory"):
        latents.load(str(tmp_path / "no_run_yet"))


def test_a_dit_variant_compiles_on_an_fsdp_and_tensor_parallel_mesh(tmp_path):
    """configs/dit.py:S/8 as it trains, on SD VAE latents encoded in the step (the released SD
    VAE's shapes: no autoencoder run is needed to compile), its heads and MLP split over 2 tensor
    devices and its weights over 4 FSDP ones."""
    result = subprocess.run(
        [sys.executable, "-m", "lavin_jax.main", "--mode=compile", "--config=configs/dit.py:S/8", f"--workdir={tmp_path}", "--topology=cpu:8",
         "--config.mesh.fsdp=4", "--config.mesh.tensor=2", "--config.global_batch_size=16", "--config.data.image_size=64", "--config.compile_cache="],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "XLA_FLAGS": ""},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "compile.json").read_text())
    assert report["devices"] == 8 and report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2}
    assert report["argument_bytes"] > report["alias_bytes"] > 0


def test_vdt_compiles_on_an_fsdp_and_tensor_parallel_mesh(tmp_path):
    """configs/vdt.py:S/2 as it trains, on SD VAE latents of each frame encoded in the step, with
    its temporal attention's heads split over 2 tensor devices and its weights over 4 FSDP ones."""
    result = subprocess.run(
        [sys.executable, "-m", "lavin_jax.main", "--mode=compile", "--config=configs/vdt.py:S/2", f"--workdir={tmp_path}", "--topology=cpu:8",
         "--config.mesh.fsdp=4", "--config.mesh.tensor=2", "--config.global_batch_size=8", "--config.data.image_size=32",
         "--config.data.video_frames=4", "--config.compile_cache="],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "XLA_FLAGS": ""},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "compile.json").read_text())
    assert report["devices"] == 8 and report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2}
    assert report["argument_bytes"] > report["alias_bytes"] > 0
