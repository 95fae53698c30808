"""The benchmark harness: how much of the accelerator the system turns into model progress.

    python -m lavin_jax.bench --config=configs/s.py --out=bench.json
    python -m lavin_jax.bench --config=configs/l.py --parts=train,sample --profile=/tmp/profile
    python -m lavin_jax.bench --config=configs/tiny.py --config.model.scan_layers=False --parts=train

For a config of a diffusion transformer (J-DiT, DiT), on this host's devices, each part measures:

    train       the jitted train step on a fixed batch of the largest shape the pipeline makes
                (in-context: max_pairs pairs, video items if the mixture has video tasks): examples/s,
                tokens/s, model TFLOP/s and MFU against the device's peak, peak device memory,
                compile time.
    sample      sampling latency: the objective's sampler (flow: Euler; ddpm: its sampler) with
                guidance, for one of the largest examples and for a batch of them (the
                ST-VAE's encoding and decoding inside); TFLOP/s and MFU.
    vae         the autoencoder's (ST-VAE or SD VAE) encode and decode, frames/s and TFLOP/s, of images and of clips
                (latent configs).
    data        the pipeline alone (this host's examples/s), and what it costs the step: steps
                reading the pipeline live against the same batches read beforehand.
    checkpoint  saving the train state: the seconds the step waits for, the seconds until it is
                written, and the waiting's share of step time at config.checkpoint_every.
    official    with --official=DIR (a checkout of the official LaVin-DiT) and PyTorch installed:
                the official J-DiT's train step at the same shapes (`tools/official_step.py`), and
                our train step's time over its.

Model FLOPs are `models.flops.forward` (closed form, checked against XLA's cost analysis in the
tests): 3 forward passes a train step (forward and backward, whatever remat recomputes), one per
model call of a sampling step (the conditional and the unconditional branch). The autoencoder's work is not in the
MFU; its FLOPs are counted from its jaxpr (`summary.jaxpr_flops`) and reported beside: in a
pixel-source step the encoding of the example can outweigh the transformer.
Weights are random: throughput does not depend on their values. An autoencoder run that
config.vae.checkpoint names is used if it exists, else random weights of the released
autoencoder's shapes (ST-VAE or SD VAE, by vae.name), so a fresh clone can measure any config. `--profile` traces a few more calls of the
train step and the sampler (jax.profiler) and reports where their time went.

Prints a table and writes the report as JSON with the device, date and commit; every figure
published goes to BENCHMARKS.md. Not part of the test suite (no timing is asserted anywhere).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import glob
import gzip
import itertools
import json
import os
import re
import subprocess
import tempfile
import time

import jax
import numpy as np
from absl import app, flags, logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import config_flags

from lavin_jax import checkpoint, models, parallel, summary, train, validation
from lavin_jax import state as state_lib
from lavin_jax.data import pipeline
from lavin_jax.models import flops as model_flops
from lavin_jax.tools import official_step

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
PARTS = ("train", "sample", "vae", "data", "checkpoint", "official")
PROFILED_CALLS = 3
# Trace threads whose events span others' (a whole module or step): counting them would count
# their ops twice.
_SPANNING_THREADS = ("XLA Modules", "Steps")
# On a CPU backend XLA runs ops on threads named so; the dispatching thread is named after the program.
_XLA_CPU_THREADS = "tf_XLA"
# The CPU runtime's threads record their waits for each other as events: one bucket, not ops.
_WAITING = re.compile(r"wait|rendezvous", re.IGNORECASE)


@dataclasses.dataclass
class Bench:
    """What the parts share for one config: the mesh, the train setup, a random train state and
    the objective's constants, built once."""

    config: object
    mesh: Mesh
    s: state_lib.Setup
    state: dict
    constants: dict
    peak_tflops: float
    profile_dir: str = ""

    @property
    def device(self):
        return jax.devices()[0]

    def mfu(self, tflops_per_device: float) -> float | None:
        return tflops_per_device / self.peak_tflops if self.peak_tflops else None

    def model_shapes(self, batch: dict, item_frames: int) -> dict[str, tuple]:
        """The model's inputs for one example of `batch` (abstract, as the pipeline or a prompt
        gives it), without the batch axis: pixel fields are encoded into latents unless they are a
        latent cache's already."""
        one = {name: jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype) for name, x in batch.items() if name != "skipped"}
        if self.config.vae.name != "none" and self.config.data.source != "latents":
            one = jax.eval_shape(lambda constants, one: self.s.objective.encoded(one, constants, item_frames), self.constants, one)
        return {name: tuple(x.shape[1:]) for name, x in one.items()}

    def flops(self, batch: dict, item_frames: int) -> int:
        """Forward FLOPs of one example of `batch` (`model_shapes`)."""
        return model_flops.forward(self.config.model, self.model_shapes(batch, item_frames))

    def tokens(self, batch: dict, item_frames: int) -> int:
        """Tokens of one example: the patches of the target and of the pixel context fields."""
        shapes, p = self.model_shapes(batch, item_frames), self.config.model.patch_size
        fields = ("target", *self.s.objective.conditioning.pixel_fields)
        return sum(shapes[f][0] * (shapes[f][1] // p) * (shapes[f][2] // p) for f in fields if f in shapes)

    def counted_flops(self, fn, *args) -> int:
        """FLOPs of fn(*args) counted from its jaxpr (`summary.jaxpr_flops`): the ST-VAE's."""
        return summary.jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def prepare(config, peak_tflops: float = 0.0, profile_dir: str = "") -> Bench:
    """Checks the config, then builds the state and constants on this host's devices."""
    if config.model.name not in model_flops.FORMULAS:
        raise ValueError(
            f"config.model.name={config.model.name!r}: the benchmark harness measures the diffusion transformers ({', '.join(model_flops.FORMULAS)})."
        )
    validation.validate(config, jax.device_count(), jax.process_count())
    mesh = parallel.make_mesh(config)
    s = state_lib.setup(config, mesh)
    constants = _constants(config, s, mesh)
    peak = peak_tflops or PEAK_TFLOPS.get(jax.devices()[0].device_kind, 0.0)
    return Bench(config, mesh, s, state_lib.init_state(config, s), constants, peak, profile_dir)


def _constants(config, s: state_lib.Setup, mesh: Mesh) -> dict:
    """The objective's constants: from the autoencoder run config.vae.checkpoint names, or, where
    there is none yet, random weights of the released autoencoder's shapes."""
    v = config.vae
    directory = os.path.join(v.checkpoint, "checkpoints")
    if v.name == "none" or not v.checkpoint or (os.path.isdir(directory) and checkpoint.latest_step(directory) is not None):
        s.objective.check_files()
        return state_lib.place_constants(s)
    abstract = s.objective.abstract_constants(mesh)  # the released autoencoder's config and latent statistics.
    model_config = s.objective.autoencoder.config.model
    init = lambda: nnx.split(models.build(model_config, nnx.Rngs(0)), nnx.Param)[1].to_pure_dict()
    frozen = jax.tree.map(lambda x: parallel.replicate(_random(x.shape, x.dtype), mesh), abstract["conditioning"])
    return {"vae": jax.jit(init, out_shardings=NamedSharding(mesh, PartitionSpec()))(), "conditioning": frozen}


def _random(shape, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, shape).astype(dtype)


def _example(name: str, shape, dtype) -> np.ndarray:
    """An input of a batch: ones for a length (a caption's: at least one token), zeros for other
    integer fields (labels, counts), else `_random`."""
    if np.issubdtype(dtype, np.integer):
        return (np.ones if name.endswith("length") else np.zeros)(shape, dtype)
    return _random(shape, dtype)


def _tflops(flops: float, seconds: float, devices: int) -> float:
    """TFLOP/s of each of `devices` that share `flops` of work done in `seconds`."""
    return flops / seconds / devices / 1e12


def _seconds(call, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, which compiles; median seconds of `repeats` more calls).
    `call` must block until its results are ready."""
    started = time.perf_counter()
    call()
    first = time.perf_counter() - started
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return first, float(np.median(times))


def _profiled(b: Bench, name: str, call) -> dict | None:
    """With --profile, where the time of PROFILED_CALLS more calls went (`profile_summary`)."""
    if not b.profile_dir:
        return None
    directory = os.path.join(b.profile_dir, name)
    with jax.profiler.trace(directory, create_perfetto_trace=True):
        for _ in range(PROFILED_CALLS):
            call()
    return profile_summary(directory)


def profile_summary(directory: str, top: int = 12) -> dict:
    """The op time of the newest trace under `directory` (jax.profiler's perfetto file): each op
    name's self time (its own duration less that of the events nested inside it on its thread),
    summed, on the accelerators' threads (their `XLA Ops` line where there is one) or, on a CPU backend, on XLA's own threads (not the
    thread that dispatches), where the runtime's waits count as one `(waiting)`. Returns the trace's path, the total, and the `top` ops with
    their milliseconds and share of the total."""
    paths = sorted(glob.glob(os.path.join(directory, "plugins", "profile", "*", "perfetto_trace.json.gz")))
    if not paths:
        raise FileNotFoundError(f"{directory!r} holds no perfetto trace (jax.profiler.trace(..., create_perfetto_trace=True)).")
    with gzip.open(paths[-1]) as f:
        events = json.load(f)["traceEvents"]
    names = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events if e.get("ph") == "M" and e["name"] in ("process_name", "thread_name")}
    devices = {pid for (pid, tid), name in names.items() if tid is None and name.startswith("/device:")}
    # Where the device has a line of XLA ops (beside its streams' kernels), that line alone.
    op_lines = {key for key, name in names.items() if key[0] in devices and name == "XLA Ops"}

    def counted(e) -> bool:
        key = (e["pid"], e.get("tid"))
        thread = names.get(key, "")
        if op_lines:
            return key in op_lines
        if thread in _SPANNING_THREADS:
            return False
        return e["pid"] in devices if devices else thread.startswith(_XLA_CPU_THREADS)

    by_thread = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and "dur" in e and counted(e):
            by_thread[e["pid"], e.get("tid")].append(e)
    own = collections.Counter()
    for thread_events in by_thread.values():
        # Sorted by start, longest first: a stack of open events gives each one's direct children.
        stack: list[list] = []  # [end, name, self time]
        for e in sorted(thread_events, key=lambda e: (e["ts"], -e["dur"])):
            while stack and stack[-1][0] <= e["ts"]:
                _, name, own_time = stack.pop()
                own[name] += own_time
            if stack:
                stack[-1][2] -= e["dur"]
            stack.append([e["ts"] + e["dur"], "(waiting)" if _WAITING.search(e["name"]) else e["name"], e["dur"]])
        for _, name, own_time in stack:
            own[name] += own_time
    total = sum(own.values())
    return {
        "trace": paths[-1],
        "op_ms": total / 1e3,
        "top": [[name, round(us / 1e3, 3), round(us / total, 4)] for name, us in own.most_common(top)],
    }


def train_step(b: Bench, steps: int) -> dict:
    """The train step on a fixed batch of the largest shape the pipeline makes."""
    c, s = b.config, b.s
    abstract = s.objective.largest_batch(c.global_batch_size)
    batch = parallel.global_batch({name: _example(name, x.shape, x.dtype) for name, x in abstract.items()}, b.mesh, c.mesh.rules)
    started = time.perf_counter()
    compiled = train.make_train_step(c, s).lower(b.state, b.constants, batch, s.objective.phase(c.total_steps)).compile()
    compile_seconds = time.perf_counter() - started

    def call():
        b.state, stats = compiled(b.state, b.constants, batch)
        jax.block_until_ready(stats)

    _, step_seconds = _seconds(call, steps)
    item_frames = abstract["target"].shape[1]
    flops = 3 * b.flops(abstract, item_frames)
    encode_flops = 0
    if c.vae.name != "none" and c.data.source == "synthetic":  # pixels are encoded inside the step.
        one = {name: jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype) for name, x in abstract.items()}
        encode_flops = b.counted_flops(lambda constants, batch: s.objective.encoded(batch, constants, item_frames), b.constants, one)
    tokens = b.tokens(abstract, item_frames)
    examples_per_sec = c.global_batch_size / step_seconds
    achieved = _tflops(flops * c.global_batch_size, step_seconds, jax.device_count())
    memory = b.device.memory_stats() or {}
    return {
        "compile_seconds": round(compile_seconds, 2),
        "step_seconds": step_seconds,
        "examples_per_sec": examples_per_sec,
        "tokens_per_example": tokens,
        "tokens_per_sec": tokens * examples_per_sec,
        "model_flops_per_example": flops,
        "tflops_per_sec_per_device": achieved,
        "mfu": b.mfu(achieved),
        # The frozen ST-VAE's encoding in the step, not in the MFU: its share of all FLOPs done.
        "vae_encode_flops_per_example": encode_flops,
        "vae_share_of_flops": encode_flops / (encode_flops + flops),
        "peak_bytes_per_device": memory.get("peak_bytes_in_use"),
        "profile": _profiled(b, "train", call),
    }


def sample(b: Bench, batch: int, repeats: int) -> dict:
    """Latency of sampling the largest example (`largest_batch`'s context, random) with the
    objective's default sampler and guidance (flow: Euler steps), for 1 example and for `batch`."""
    c, objective = b.config, b.s.objective
    sampler = objective.sampler(b.s.graphdefs["model"], b.mesh)
    traced, static = objective.sample_options(**({"sampler": "euler"} if c.objective == "flow" else {}))
    abstract = objective.largest_batch(1)
    frames = abstract["target"].shape[1]
    context = objective.conditioning.prompt_context(abstract)
    calls = objective.model_calls(traced, static)
    flops = calls * b.flops(abstract, frames)
    # Every step also runs the model on each null condition guidance samples against (none for an
    # unconditional model, whatever the scale).
    nulls = jax.eval_shape(lambda context: objective.guidance_nulls(context, frames, static), context)
    for null in nulls:
        flops += calls * b.flops({**null, "target": abstract["target"]}, frames)
    report = {"model_calls": calls, "guided": bool(nulls), "model_flops_per_example": flops}
    shards = parallel.batch_shards(b.mesh, c.mesh.rules)
    for n in sorted({1, batch}):
        prompt = {name: parallel.replicate(_example(name, (n, *x.shape[1:]), x.dtype), b.mesh) for name, x in context.items()}
        indices = np.arange(n)
        call = lambda: jax.block_until_ready(sampler(b.state["ema"], b.constants, prompt, 0, indices, traced, frames, static))
        first, seconds = _seconds(call, repeats)
        # A batch the mesh cannot split is worked whole by every batch shard.
        achieved = _tflops(flops * n, seconds, jax.device_count() // (1 if n % shards == 0 else shards))
        report[f"batch_{n}"] = {
            "compile_seconds": round(first - seconds, 2),
            "seconds": seconds,
            "seconds_per_example": seconds / n,
            "tflops_per_sec_per_device": achieved,
            "mfu": b.mfu(achieved),
        }
        if n == batch:
            report["profile"] = _profiled(b, "sample", call)
    return report


def autoencoder(b: Bench, batch: int, repeats: int) -> dict:
    """Frames per second of the frozen autoencoder's encode and decode, for `batch` images and for
    `batch` clips of data.video_frames frames."""
    c = b.config
    vae, params = b.s.objective.autoencoder, b.constants["vae"]
    encode, decode = jax.jit(vae.encode), jax.jit(vae.decode)
    report = {}
    for kind, frames in (("image", 1), ("clip", int(c.data.video_frames))):
        pixels = parallel.replicate(_random((batch, frames, c.data.image_size, c.data.image_size, 3)), b.mesh)
        latents = encode(params, pixels)
        _, encode_seconds = _seconds(lambda: jax.block_until_ready(encode(params, pixels)), repeats)
        _, decode_seconds = _seconds(lambda: jax.block_until_ready(decode(params, latents)), repeats)
        encode_flops, decode_flops = b.counted_flops(vae.encode, params, pixels), b.counted_flops(vae.decode, params, latents)
        report[kind] = {
            "pixels": [batch, frames, c.data.image_size, c.data.image_size, 3],
            "latents": list(latents.shape),
            "encode_frames_per_sec": batch * frames / encode_seconds,
            "decode_frames_per_sec": batch * frames / decode_seconds,
            "encode_flops_per_frame": encode_flops // (batch * frames),
            "decode_flops_per_frame": decode_flops // (batch * frames),
            # Replicated: every device encodes the whole batch.
            "encode_tflops_per_sec_per_device": _tflops(encode_flops, encode_seconds, 1),
            "decode_tflops_per_sec_per_device": _tflops(decode_flops, decode_seconds, 1),
        }
    return report


def _run_steps(b: Bench, step_fn, batches) -> tuple[float, float]:
    """Trains on every batch of `batches` (this host's rows) as the trainer does; returns (the
    seconds until the last step finished, the seconds spent waiting for a batch)."""
    phase = b.s.objective.phase(b.config.total_steps)
    waited, started = 0.0, time.perf_counter()
    while True:
        asked = time.perf_counter()
        local = next(batches, None)
        waited += time.perf_counter() - asked
        if local is None:
            break
        b.state, _ = step_fn(b.state, b.constants, parallel.global_batch(local, b.mesh, b.config.mesh.rules), phase)
    jax.block_until_ready(b.state)
    return time.perf_counter() - started, waited


def data(b: Bench, steps: int) -> dict:
    """The pipeline's examples/s on this host alone; then `steps` train steps reading it live
    against the same steps on the same batches read beforehand (the step compiled for every
    shape among them first): the difference is what the pipeline costs the step. A live run's
    clock starts once its iterator has delivered a first batch (threads and workers started),
    so batches 1..steps are timed. Each is run twice, alternating, and the faster run counts."""
    c = b.config
    rows = c.global_batch_size // jax.process_count()
    examples = b.s.objective.source(c.seed)
    make = lambda: pipeline.make_iterator(c, examples, jax.process_index(), jax.process_count())
    alone = make()
    next(alone)  # threads (and workers) started, first reads done.
    started = time.perf_counter()
    for _ in itertools.islice(alone, steps):
        pass
    pipeline_rate = steps * rows / (time.perf_counter() - started)
    del alone

    read = list(itertools.islice(make(), 1, steps + 1))
    step_fn = train.make_train_step(c, b.s)
    _run_steps(b, step_fn, iter(read))  # compiles.
    runs = {"read_before": [], "live": []}
    for _ in range(2):
        runs["read_before"].append(_run_steps(b, step_fn, iter(read)))
        live = make()
        next(live)
        runs["live"].append(_run_steps(b, step_fn, itertools.islice(live, steps)))
        del live
    before, live = min(runs["read_before"]), min(runs["live"])
    return {
        "pipeline_examples_per_sec": pipeline_rate,
        "shapes": len({tuple(sorted((k, v.shape) for k, v in batch.items())) for batch in read}),
        "step_seconds_read_before": before[0] / steps,
        "step_seconds_live": live[0] / steps,
        "waited_seconds_per_step": live[1] / steps,
        "share_of_step": live[0] / before[0] - 1,
    }


def checkpointing(b: Bench, repeats: int, step_seconds: float | None) -> dict:
    """Saves of the train state to a temporary directory: the median seconds a save holds the
    step (the copy off the devices) and until it is written, and the holding's share of
    `step_seconds` over config.checkpoint_every steps."""
    c = b.config
    jax.block_until_ready(b.state)  # time the save, not the steps still in flight.
    held, written = [], []
    with tempfile.TemporaryDirectory() as directory:
        checkpointer = checkpoint.Checkpointer(directory, keep=1, save_every=1)
        for step in range(1, repeats + 1):
            started = time.perf_counter()
            checkpointer.save(step, b.state, c, force=True)
            held.append(time.perf_counter() - started)
            checkpointer.wait()
            written.append(time.perf_counter() - started)
        checkpointer.close()
    hold = float(np.median(held))
    return {
        "state_bytes": sum(x.nbytes for x in jax.tree.leaves(b.state)),
        "save_hold_seconds": hold,
        "save_written_seconds": float(np.median(written)),
        "checkpoint_every": c.checkpoint_every,
        "share_of_step": hold / (c.checkpoint_every * step_seconds) if step_seconds else None,
    }


def official_train_step(b: Bench, steps: int, official: str, ours: float | None) -> dict:
    """The official PyTorch J-DiT's train step on the shapes of ours (the largest batch), beside
    ours when the train part measured it."""
    abstract = b.s.objective.largest_batch(b.config.global_batch_size)
    shapes = b.model_shapes(abstract, abstract["target"].shape[1])
    report = official_step.measure(b.config, shapes, official, steps)
    report["our_params"] = sum(x.size for x in jax.tree.leaves(b.state["params"]["model"]))
    if ours:
        report["ours_over_official"] = ours / report["step_seconds"]
    return report


def check_parts(config, parts, official: str = "") -> list[str]:
    """The parts asked for, checked; none: every part that applies to the config (`official`
    where --official names a checkout)."""
    applies = [p for p in PARTS if (p != "vae" or config.vae.name != "none") and (p != "official" or official)]
    if not parts:
        parts = applies
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"--parts: unknown part(s) {', '.join(unknown)}; the parts: {', '.join(PARTS)}.")
    if "vae" in parts and "vae" not in applies:
        raise ValueError("--parts=vae: config.vae.name='none' trains on pixels, there is no autoencoder to measure.")
    if "official" in parts:
        if not official:
            raise ValueError("--parts=official needs --official=DIR, a checkout of DerrickWang005/LaVin-DiT.")
        official_step.check(config, official)
    return list(parts)


def _commit() -> str | None:
    """The checkout's commit, `-dirty` when files differ from it."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"], capture_output=True, text=True, check=True,
                              cwd=os.path.dirname(__file__)).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run(config, parts=(), *, steps: int = 10, sample_batch: int = 8, vae_batch: int = 4, peak_tflops: float = 0.0, profile_dir: str = "",
        official: str = "") -> dict:
    """Measures `parts` (default: all that apply) of the config; returns the report."""
    parts = check_parts(config, parts, official)
    b = prepare(config, peak_tflops, profile_dir)
    report = {
        "date": datetime.date.today().isoformat(),
        "commit": _commit(),
        "device_kind": b.device.device_kind,
        "devices": jax.device_count(),
        "peak_tflops": b.peak_tflops or None,
        "config": {"model": dict(config.model), "global_batch_size": config.global_batch_size,
                   "image_size": config.data.image_size, "max_pairs": config.data.max_pairs},
    }
    if "train" in parts:
        report["train"] = train_step(b, steps)
    if "sample" in parts:
        report["sample"] = sample(b, sample_batch, steps)
    if "vae" in parts:
        report["vae"] = autoencoder(b, vae_batch, steps)
    if "data" in parts:
        report["data"] = data(b, steps)
    if "checkpoint" in parts:
        step_seconds = report.get("train", {}).get("step_seconds") or report.get("data", {}).get("step_seconds_read_before")
        report["checkpoint"] = checkpointing(b, 3, step_seconds)
    if "official" in parts:
        report["official"] = official_train_step(b, steps, official, report.get("train", {}).get("step_seconds"))
    return report


def table(report: dict, prefix: str = "") -> str:
    """The report as `name  value` lines, nested parts as dotted names."""
    lines = []
    for name, value in report.items():
        if name == "config":
            continue
        if isinstance(value, dict):
            lines.append(table(value, f"{prefix}{name}."))
        elif name == "top":
            lines.extend(f"{'':>44}  {ms:>10.3f} ms  {share:6.1%}  {op}" for op, ms, share in value)
        else:
            lines.append(f"{prefix + name:>44}  {value:.4g}" if isinstance(value, float) else f"{prefix + name:>44}  {value}")
    return "\n".join(lines)


def define_flags() -> None:
    """The command line's flags, defined only when this module runs as the program (as a library
    it must not claim --config, which lavin_jax.main defines)."""
    config_flags.DEFINE_config_file("config", None, "A J-DiT or DiT config.", lock_config=True)
    flags.DEFINE_list("parts", [], f"What to measure, of {', '.join(PARTS)}; empty: all that apply to the config.")
    flags.DEFINE_integer("steps", 10, "Timed calls of each measurement, after those that compile.")
    flags.DEFINE_integer("sample_batch", 8, "Examples of the batched sampling call.")
    flags.DEFINE_integer("vae_batch", 4, "Images, and clips, per ST-VAE call.")
    flags.DEFINE_float("peak_tflops", 0.0, "The device's peak dense TFLOP/s for MFU; 0: from PEAK_TFLOPS by device kind.")
    flags.DEFINE_string("profile", "", "Trace the train step and the sampler into this directory and summarise the traces.")
    flags.DEFINE_string("out", "", "Also write the report here as JSON.")
    flags.DEFINE_string("official", "", "A checkout of DerrickWang005/LaVin-DiT: measure its J-DiT's train step beside ours (needs PyTorch).")
    flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
    parallel.use_cpu_devices(f.config.mesh.cpu_devices)  # as the run would.
    report = run(f.config, f.parts, steps=f.steps, sample_batch=f.sample_batch, vae_batch=f.vae_batch,
                 peak_tflops=f.peak_tflops, profile_dir=f.profile, official=f.official)
    print(table(report))
    if f.out:
        with open(f.out, "w") as out:
            json.dump(report, out, indent=2, default=str)


if __name__ == "__main__":
    define_flags()
    app.run(main)
