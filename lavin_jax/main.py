"""Entry point: `python -m lavin_jax.main --config=configs/tiny.py --workdir=DIR [--mode=...]`.

Run the same command on every host of a pod; run it again to resume. Any config field can be
overridden, e.g. `--config.total_steps=1000 --config.mesh.fsdp=4`. A mistake in the command, the
config or the files it names stops the run with one line, `error: <sentence>`, and exit status 1.
"""

from __future__ import annotations

import functools
import json
import logging as logging_std
import os
import re
import time

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from lavin_jax import inference, latents, metrics, objectives, parallel, runs, summary, train, validation
from lavin_jax import config as config_lib
from lavin_jax.data import scoring

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "summary", "compile", "latent_stats", "latent_cache", "sample", "eval"],
    "train; summary (params, FLOPs); compile (the train step, ahead of time for --topology, with "
    "its per-device memory); latent_stats (of the autoencoder run in --workdir); latent_cache (encode "
    "--examples episodes, images or clips of the config into --workdir, with config.vae.checkpoint); sample (grids of "
    "the run in --workdir, DIR/samples/sampled_<task, classes or mask mode>_<step>.png, and GIFs of clips; a class-conditional run "
    "also writes config.sample.num images to DIR/samples/<step>.npz); eval (its scores, in "
    "DIR/eval/metrics.json). sample and eval take the model "
    "and data from the run's checkpoint, and from --config the fields EVAL_FIELDS name (e.g. "
    "--config.eval.episodes=64).",
)
_TOPOLOGY = flags.DEFINE_string(
    "topology", "cpu:8", "compile: the devices to compile for: cpu:N (N CPU devices) or a TPU topology "
    "such as v5p:4x4x4 (abstract devices; needs libtpu).",
)
_EXAMPLES = flags.DEFINE_integer("examples", 256, "latent_stats / latent_cache: how many images, episodes or clips to encode.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "sample / eval: the folder their files go to instead of --workdir (e.g. for a run that cannot be written).",
)
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
    use_compile_cache(config.compile_cache)
    parallel.use_cpu_devices(config.mesh.cpu_devices)  # before JAX starts; --mode=compile's --topology overrides it.
    if _MODE.value == "summary":
        # Abstract evaluation only: the mesh is for the pod, not this host, so it is not checked.
        validation.validate(config, num_devices=None)
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
        print(json.dumps(latents.compute_stats(_WORKDIR.value, config.model.name, _EXAMPLES.value)))
        return
    if _MODE.value == "latent_cache":
        validation.validate(config, num_devices=None)
        objectives.get(config).check_files()  # the autoencoder, a frozen encoder and the data, before any is read
        written = latents.write_cache(config, _WORKDIR.value, _EXAMPLES.value)
        print(f"Wrote {written['examples']} examples in {len(written['shards'])} shards to {_WORKDIR.value}.")
        return
    parallel.initialize_distributed()
    logging.info("Process %d of %d, %d local devices.", jax.process_index(), jax.process_count(), jax.local_device_count())
    if _MODE.value in ("sample", "eval"):
        evaluate_run(config, _WORKDIR.value, _MODE.value, _OUTPUT_DIR.value)
        return
    train.train(config, _WORKDIR.value)


# What --mode=sample/eval take from --config; the model, the data and the autoencoder are the run's own.
EVAL_FIELDS = ("eval", "sample", "flow.sample_steps", "flow.sampler", "flow.time_grid", "flow.cfg_scale", "flow.motion_scale",
               "ddpm.sample_steps", "ddpm.sampler", "ddpm.eta", "ddpm.cfg_scale", "ddpm.motion_scale", "ddpm.guided_channels")


def evaluate_run(config, workdir: str, mode: str, output_dir: str | None = None) -> dict:
    """Samples (`sample`: the conditioning's grids in `samples/`, a GIF per video task, and for a
    class-conditional run `sample.num` images in `samples/<step>.npz`) or scores (`eval`: the table,
    `eval/metrics.json`, `metrics.jsonl`, TensorBoard) the newest checkpoint of the run in
    `workdir`, writing into `output_dir` (default: `workdir`). Where that cannot be written it
    says so before any work: `eval` then only prints its table, `sample` stops."""
    out = output_dir or workdir
    blocked = unwritable(out)
    if blocked and (output_dir or mode == "sample"):
        raise PermissionError(f"--mode={mode} cannot write {blocked}; name a folder it can write with --output_dir.")
    if blocked:
        logging.warning("%s cannot be written: the scores are printed, not saved; --output_dir=DIR saves them in DIR.", blocked)
    overrides = {name: functools.reduce(lambda node, part: node[part], name.split("."), config) for name in EVAL_FIELDS}
    trained = runs.trained_config(workdir, overrides=overrides)[0]
    validation.validate(trained, num_devices=None)
    objective = objectives.get(trained)
    if not objective.samples:
        raise ValueError(f"--mode={mode} samples a generative run; {workdir!r} trained config.objective={trained.objective!r}.")
    objective.check_eval_files(judge=mode == "eval")  # before any weight is read.
    predictor = inference.Predictor.from_workdir(workdir, overrides=overrides)
    shown = predictor.config.sample.num_examples if mode == "sample" else None
    # Named apart from the grids training writes, which --mode=sample's would overwrite.
    judged = predictor.conditioning.evaluator(count=shown, distances=mode == "eval", prefix="sampled", judge=mode == "eval")
    report = judged.run(predictor)
    primary = jax.process_index() == 0
    if mode == "eval" and primary:
        print(judged.table(report))
    if blocked:
        return report
    writer = metrics.MetricWriter(out, enabled=primary)
    step = predictor.step
    if mode == "sample":
        writer.write_images(step, report["grids"])
        videos = {task: examples for task, examples in report.get("examples", {}).items() if examples[2].shape[1] > 1}
        for task, examples in videos.items():
            writer.write_animation(step, judged.grid_name(task), metrics.episode_animation(*examples, scale=metrics.display_scale(examples[2].shape[2])))
        for name, frames in report.get("animations", {}).items():
            writer.write_animation(step, name, frames)
        gifs = len(videos) + len(report.get("animations", {}))
        message = f"Wrote the grids of step {step} ({len(report['grids'])} PNGs, {gifs} GIFs) to {os.path.join(out, 'samples', judged.prefix)}_*"
        if predictor.config.sample.num:
            message += ", and " + write_npz(predictor, os.path.join(out, "samples", f"{step}.npz"), int(predictor.config.sample.num))
        if primary:
            print(message + ".")
    else:
        writer.write_scalars(step, judged.scalars(report))
        if primary:
            print(f"Wrote the scores of step {step} to {judged.write(report, out, step)} and {os.path.join(out, 'metrics.jsonl')}.")
    writer.close()
    return report


def write_npz(predictor, path: str, num: int) -> str:
    """`num` images of a class-conditional model, classes balanced (image i is of class i mod the
    class count; an unconditional model's are all its null class, 0), image i's noise from
    (config.seed, i) on any mesh and batch size, into `path` as ADM's evaluator reads them:
    `arr_0` uint8 [N, H, W, 3], and `labels`. Every process samples its share of the devices'
    rows; process 0 writes."""
    c = predictor.config
    drawn = predictor.conditioning.drawn
    labels = drawn[np.arange(num) % len(drawn)]
    images = predictor.sample({"label": labels}, 1, seed=int(c.seed))
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.savez(path, arr_0=scoring.to_uint8(images[:, 0]), labels=labels)
    return f"{num} images to {path}"


# What --mode=sample/eval write into their folder: MetricWriter's files and evaluation.write's.
OUTPUTS = ("metrics.jsonl", "tensorboard", "samples", "eval", os.path.join("eval", "metrics.json"))


def unwritable(directory: str) -> str | None:
    """The first path of `directory` and its OUTPUTS that this process may not write (the path
    itself where it exists, else the folder it would be made in), or None where all can be."""
    for path in (directory, *(os.path.join(directory, name) for name in OUTPUTS)):
        path = os.path.abspath(path)
        while not os.path.exists(path):
            path = os.path.dirname(path)
        if not os.access(path, os.W_OK):
            return path
    return None


def use_compile_cache(directory: str) -> None:
    """Turns on JAX's persistent compilation cache in `directory` ("": leaves it off), so that a
    restarted or repeated run reads its compiled programs instead of compiling them again."""
    if not directory:
        return
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
    # JAX keeps only programs that took a second or more to compile; the tiny config's train step,
    # initialisation and samplers take about that on a fast CPU. The many programs under 0.1 s are
    # as quick to compile again as to read.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def compile_report(config, topology: str) -> dict:
    """Compiles the train step for `topology` and reports its per-device memory, so that a job
    that would run out of memory on the pod is caught on a laptop."""
    devices = parallel.target_devices(topology)  # first: it sets the CPU device count.
    processes = len({device.process_index for device in devices})
    shape = validation.validate(config, len(devices), processes)
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


# Where a --config.<field> override or the --config file appears on a command line, as
# ml_collections finds them.
_OVERRIDE = re.compile(r"-{1,2}(?:no)?config\.([^=]+)")
_CONFIG_FILE = re.compile(r"-{1,2}config(?:=(.*))?$")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing of the command line, each mistake in it a ValueError sentence. The --config
    file and the fields its --config.<field> flags name are checked first: ml_collections looks the
    fields up while absl parses, and a misspelt one escapes as an AttributeError traceback."""
    try:
        args = flags.FLAGS.read_flags_from_files(argv[1:], force_gnu=False)
        path, fields = None, []
        for i, arg in enumerate(args):
            if file := _CONFIG_FILE.match(arg):
                path = file.group(1) if file.group(1) is not None else (args[i + 1] if i + 1 < len(args) else None)
            elif override := _OVERRIDE.match(arg):
                fields.append(override.group(1))
        if path is not None:
            config = config_lib.load(path)
            for name in fields:
                config_lib.locate(config, name)
        return flags.FLAGS(argv)
    except flags.Error as error:
        raise ValueError(str(error)) from None


def run():
    config_lib.for_people(lambda: app.run(main, flags_parser=_parse_flags))


if __name__ == "__main__":
    run()
