"""The benchmark harness: how much of the accelerator the train step turns into model progress.

    python -m lavin_jax.bench --config=configs/s.py --steps=20 --out=bench.json
    python -m lavin_jax.bench --config=configs/tiny.py --config.model.scan_layers=False

Times the jitted train step (compilation reported apart) on a fixed random batch of the largest
shape the pipeline makes for J-DiT (max_pairs pairs; video items if the mixture has video tasks),
and reports, as a table and as JSON: examples/s, tokens/s, model TFLOP/s and MFU against the
device's peak, peak device memory, compile time. Model FLOPs are the closed form of
`JDiT.forward_flops` times 3 (forward and backward), whatever the remat policy recomputes; an
ST-VAE encoding inside the step is not counted. Not part of the test suite: figures go to
BENCHMARKS.md with device, config, date and commit.
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from lavin_jax import config as config_lib
from lavin_jax import parallel, train
from lavin_jax.models import jdit
from lavin_jax.objectives import flow_matching

# Dense peak TFLOP/s per chip at the compute dtype the configs use (bfloat16), from the vendors'
# data sheets; a device kind not listed reports no MFU unless --peak_tflops is given.
PEAK_TFLOPS = {
    "NVIDIA H100 80GB HBM3": 989.0,
    "NVIDIA H100 PCIe": 756.0,
    "NVIDIA H200": 989.0,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5p": 459.0,
    "TPU v6 lite": 918.0,
}


def _random_batch(abstract: dict, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        name: np.zeros(x.shape, x.dtype) if np.issubdtype(x.dtype, np.integer) else rng.uniform(-1, 1, x.shape).astype(x.dtype)
        for name, x in abstract.items()
    }


def train_step(config, steps: int, peak_tflops: float = 0.0) -> dict:
    """Times `steps` train steps of the config on this host's devices; returns the report."""
    if config.model.name != "jdit":
        raise ValueError(f"config.model.name={config.model.name!r}: the train-step benchmark counts J-DiT FLOPs.")
    config_lib.validate(config, jax.device_count(), jax.process_count())
    mesh = parallel.make_mesh(config)
    s = train.setup(config, mesh)
    s.objective.check_files()
    state = train.init_state(config, s)
    constants = train.place_constants(s)
    abstract = s.objective.largest_batch(config.global_batch_size)
    batch = parallel.global_batch(_random_batch(abstract), mesh, config.mesh.rules)
    phase = s.objective.phase(config.total_steps)
    step_fn = train.make_train_step(config, s)
    started = time.perf_counter()
    compiled = step_fn.lower(state, constants, batch, phase).compile()
    compile_seconds = time.perf_counter() - started
    state, stats = compiled(state, constants, batch)  # warm-up
    jax.block_until_ready(stats)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        state, stats = compiled(state, constants, batch)
        jax.block_until_ready(stats)
        times.append(time.perf_counter() - started)
    step_seconds = float(np.median(times))

    item_frames = abstract["target"].shape[1]
    items = abstract["cond"].shape[1] // item_frames
    # Pixel items reach the model as latents of fewer frames; a latent cache's already are.
    frames = item_frames if config.data.source == "latents" else s.objective.model_frames(item_frames)
    cond_frames = items * frames
    size, _ = flow_matching.frame_shape(config)
    tokens = (cond_frames + frames) * (size // config.model.patch_size) ** 2
    flops = 3 * jdit.JDiT.forward_flops(config.model, cond_frames, frames, size, size)
    examples_per_sec = config.global_batch_size / step_seconds
    device = jax.devices()[0]
    peak = peak_tflops or PEAK_TFLOPS.get(device.device_kind, 0.0)
    achieved = flops * examples_per_sec / jax.device_count() / 1e12
    memory = device.memory_stats() or {}
    return {
        "config": {"model": dict(config.model), "global_batch_size": config.global_batch_size, "image_size": config.data.image_size,
                   "pairs": config.data.max_pairs},
        "device_kind": device.device_kind,
        "devices": jax.device_count(),
        "compile_seconds": round(compile_seconds, 2),
        "step_seconds": step_seconds,
        "examples_per_sec": examples_per_sec,
        "tokens_per_example": tokens,
        "tokens_per_sec": tokens * examples_per_sec,
        "model_flops_per_example": flops,
        "tflops_per_sec_per_device": achieved,
        "mfu": achieved / peak if peak else None,
        "peak_bytes_per_device": memory.get("peak_bytes_in_use"),
    }


def table(report: dict) -> str:
    rows = [(name, value) for name, value in report.items() if name != "config"]
    return "\n".join(f"{name:>28}  {value:.4g}" if isinstance(value, float) else f"{name:>28}  {value}" for name, value in rows)


def define_flags() -> None:
    """The command line's flags, defined only when this module runs as the program (as a library
    it must not claim --config, which lavin_jax.main defines)."""
    config_flags.DEFINE_config_file("config", None, "A J-DiT config.", lock_config=True)
    flags.DEFINE_integer("steps", 10, "Timed steps, after one compiling step and one warm-up step.")
    flags.DEFINE_float("peak_tflops", 0.0, "The device's peak dense TFLOP/s for MFU; 0: from PEAK_TFLOPS by device kind.")
    flags.DEFINE_string("out", "", "Also write the report here as JSON.")
    flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    report = train_step(f.config, f.steps, f.peak_tflops)
    print(table(report))
    if f.out:
        with open(f.out, "w") as out:
            json.dump(report, out, indent=2, default=str)


if __name__ == "__main__":
    define_flags()
    app.run(main)
