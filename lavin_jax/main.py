"""Entry point: `python -m lavin_jax.main --config=configs/tiny.py --workdir=DIR [--mode=...]`.

Run the same command on every host of a pod; run it again to resume. Any config field can be
overridden, e.g. `--config.total_steps=1000 --config.mesh.fsdp=4`.
"""

from __future__ import annotations

import functools
import json
import logging as logging_std
import os
import time

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from lavin_jax import config as config_lib
from lavin_jax import evaluation, inference, latents, metrics, parallel, summary, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "summary", "compile", "latent_stats", "latent_cache", "sample", "eval"],
    "train; summary (params, FLOPs); compile (the train step, ahead of time for --topology, with "
    "its per-device memory); latent_stats (of the ST-VAE run in --workdir); latent_cache (encode "
    "--examples episodes of the config into --workdir, with config.vae.checkpoint); sample (a grid "
    "per task of the J-DiT run in --workdir, in DIR/samples); eval (its per-task scores beside the "
    "baselines, in DIR/eval/metrics.json). sample and eval take the model and data from the run's "
    "checkpoint, and from --config the fields EVAL_FIELDS name (e.g. --config.eval.episodes=64).",
)
_TOPOLOGY = flags.DEFINE_string(
    "topology", "cpu:8", "compile: the devices to compile for: cpu:N (N CPU devices) or a TPU topology "
    "such as v5p:4x4x4 (abstract devices; needs libtpu).",
)
_EXAMPLES = flags.DEFINE_integer("examples", 256, "latent_stats / latent_cache: how many images or episodes to encode.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(logging_std.Filter):
    """Keeps orbax's and grain's routine INFO lines off the terminal; warnings still show."""

    def filter(self, record):
        noisy = any(f"/{name}/" in record.pathname for name in ("orbax", "grain", "tensorstore"))
        return record.levelno >= logging_std.WARNING or not noisy


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    config = _CONFIG.value
    if _MODE.value == "summary":
        # Abstract evaluation only: the mesh is for the pod, not this host, so it is not checked.
        config_lib.validate(config, num_devices=None)
        result, table = summary.summarize(config)
        os.makedirs(_WORKDIR.value, exist_ok=True)
        with open(os.path.join(_WORKDIR.value, "summary.json"), "w") as f:
            json.dump(result, f, indent=2)
        print(table)
        print(f"{result['params']:,} parameters, {result['flops_per_example']:.4g} forward FLOPs per example.")
        return
    if _MODE.value == "compile":
        report = compile_report(config, _TOPOLOGY.value)
        os.makedirs(_WORKDIR.value, exist_ok=True)
        with open(os.path.join(_WORKDIR.value, "compile.json"), "w") as f:
            json.dump(report, f, indent=2)
        print(_report_table(report))
        if not report["fits"]:
            raise SystemExit(f"The train step does not fit on {_TOPOLOGY.value}: {report['error']}")
        return
    if _MODE.value == "latent_stats":
        print(json.dumps(latents.compute_stats(_WORKDIR.value, _EXAMPLES.value)))
        return
    if _MODE.value == "latent_cache":
        config_lib.validate(config, num_devices=None)
        written = latents.write_cache(config, _WORKDIR.value, _EXAMPLES.value)
        print(f"Wrote {written['examples']} episodes in {len(written['shards'])} shards to {_WORKDIR.value}.")
        return
    parallel.initialize_distributed()
    logging.info("Process %d of %d, %d local devices.", jax.process_index(), jax.process_count(), jax.local_device_count())
    if _MODE.value in ("sample", "eval"):
        evaluate_run(config, _WORKDIR.value, _MODE.value)
        return
    train.train(config, _WORKDIR.value)


# What --mode=sample/eval take from --config; the model, the data and the ST-VAE are the run's own.
EVAL_FIELDS = ("eval", "sample", "flow.sample_steps", "flow.sampler", "flow.time_grid", "flow.cfg_scale")


def evaluate_run(config, workdir: str, mode: str) -> dict:
    """Samples (`sample`: a PNG grid per task, a GIF per video task) or scores (`eval`: the
    table, `DIR/eval/metrics.json`, TensorBoard) the newest checkpoint of the J-DiT run in
    `workdir`."""
    overrides = {name: functools.reduce(lambda node, part: node[part], name.split("."), config) for name in EVAL_FIELDS}
    evaluation.check_files(train.trained_config(workdir, "jdit", overrides=overrides)[0])  # before any weight is read.
    predictor = inference.Predictor.from_workdir(workdir, overrides=overrides)
    shown = predictor.config.sample.num_examples if mode == "sample" else None
    report = evaluation.Evaluation(predictor.config, episodes_per_task=shown, distances=mode == "eval").run(predictor)
    writer = metrics.MetricWriter(workdir, enabled=jax.process_index() == 0)
    if mode == "sample":
        writer.write_images(predictor.step, report["grids"])
        for task, examples in report["examples"].items():
            if examples[2].shape[1] > 1:
                writer.write_animation(predictor.step, f"samples_{evaluation.file_name(task)}", metrics.episode_animation(*examples, scale=metrics.display_scale(examples[2].shape[2])))
    else:
        writer.write_scalars(predictor.step, evaluation.scalars(report))
        if jax.process_index() == 0:
            evaluation.write(report, workdir, predictor.step)
            print(evaluation.table(report))
    writer.close()
    return report


def compile_report(config, topology: str) -> dict:
    """Compiles the train step for `topology` and reports its per-device memory, so that a job
    that would run out of memory on the pod is caught on a laptop."""
    devices = parallel.target_devices(topology)  # first: it sets the CPU device count.
    processes = len({device.process_index for device in devices})
    shape = config_lib.validate(config, len(devices), processes)
    report = {
        "topology": topology,
        "device_kind": devices[0].device_kind,
        "devices": len(devices),
        "processes": processes,
        "mesh": shape,
        "global_batch_size": config.global_batch_size,
    }
    started = time.perf_counter()
    try:
        compiled = train.compile_step(config, parallel.make_mesh(config, devices))
    except jax.errors.JaxRuntimeError as error:
        # The TPU compiler refuses a program that exceeds the device's memory, saying by how much.
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        return {**report, "fits": False, "error": str(error).strip().splitlines()[0]}
    memory = compiled.memory_analysis()
    # Donated state is both an argument and an output; XLA counts it once, as an alias.
    peak = memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes + memory.temp_size_in_bytes
    return {
        **report,
        "fits": True,  # as far as the compiler knows: CPU devices have no memory limit.
        "compile_seconds": round(time.perf_counter() - started, 1),
        "argument_bytes": memory.argument_size_in_bytes,
        "output_bytes": memory.output_size_in_bytes,
        "alias_bytes": memory.alias_size_in_bytes,
        "temp_bytes": memory.temp_size_in_bytes,
        "peak_bytes": peak,
    }


def _report_table(report: dict) -> str:
    rows = [(name, f"{value / 2**30:.3f} GiB per device" if name.endswith("_bytes") else value) for name, value in report.items()]
    return "\n".join(f"{name:>18}  {value}" for name, value in rows)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
