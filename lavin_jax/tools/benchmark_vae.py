"""ST-VAE encode/decode throughput, in frames per second, on this machine's default backend.

    python -m lavin_jax.tools.benchmark_vae --config=configs/stvae_tiny.py --batch=8 --frames=17

Times the jitted posterior-mode encode and the decode of random clips of the config's image size
(compilation excluded: one warm-up call each, then `--repeats` timed calls). The weights are a
fresh initialisation: throughput does not depend on their values.
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from lavin_jax import models

_CONFIG = config_flags.DEFINE_config_file("config", None, "An ST-VAE config (model.name='stvae').")
_BATCH = flags.DEFINE_integer("batch", 8, "Clips per call.")
_FRAMES = flags.DEFINE_integer("frames", 17, "Frames per clip (1 + 4k).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls of each.")
flags.mark_flags_as_required(["config"])


def timed(fn, *args, repeats: int) -> float:
    """Seconds per call after one warm-up (compiling) call."""
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - start) / repeats


def benchmark(config, batch: int, frames: int, repeats: int) -> dict:
    if config.model.name != "stvae":
        raise ValueError(f"config.model.name={config.model.name!r}: the benchmark needs an ST-VAE config.")
    models.check(config.model)
    graphdef, params = nnx.split(models.build(config.model, nnx.Rngs(0)))
    size = config.data.image_size
    clips = np.random.default_rng(0).uniform(-1, 1, (batch, frames, size, size, 3)).astype(np.float32)
    encode = jax.jit(lambda p, x: nnx.merge(graphdef, p).encode(x).mode())
    decode = jax.jit(lambda p, z: nnx.merge(graphdef, p).decode(z))
    latents = encode(params, clips)
    encode_s = timed(encode, params, clips, repeats=repeats)
    decode_s = timed(decode, params, latents, repeats=repeats)
    return {
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "clip": [batch, frames, size, size, 3],
        "latents": list(latents.shape),
        "encode_frames_per_sec": batch * frames / encode_s,
        "decode_frames_per_sec": batch * frames / decode_s,
    }


def main(argv):
    del argv
    print(json.dumps(benchmark(_CONFIG.value, _BATCH.value, _FRAMES.value, _REPEATS.value), indent=2))


if __name__ == "__main__":
    app.run(main)
