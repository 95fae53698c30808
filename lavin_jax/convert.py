"""The released LaVin-DiT weights in and out of lavin_jax.

    # the released J-DiT and ST-VAE -> two runs: OUT/jdit (J-DiT) and OUT/stvae (its ST-VAE)
    python -m lavin_jax.convert --jdit=lavin_dit.safetensors --stvae=stvae.pt --out=runs/official
    # prompt or evaluate them like any run; fine-tune from them with config.init_from
    python -m lavin_jax.main --mode=eval --config=configs/xl.py --workdir=runs/official/jdit
    python -m lavin_jax.main --config=configs/xl.py --workdir=runs/mine \\
        --config.init_from=runs/official/jdit --config.vae.checkpoint=runs/official/stvae
    # back: a run's EMA weights under the official names and layouts
    python -m lavin_jax.convert --export=runs/mine --out=lavin_dit.safetensors
    # random weights in the released J-DiT's format (measuring the converter without the release)
    python -m lavin_jax.convert --random --config=configs/xl.py --out=/tmp/lavin_dit.safetensors

The official names and layouts are in `lavin_jax/official.py`, once, as rules; this file does the
reading and writing. Every official tensor is consumed exactly once and every parameter of ours
filled, or the conversion stops listing the mismatches before anything is written. The J-DiT's
tensors stream one rule at a time from the file, which is never held whole; our parameters
(float32) go to memory-mapped scratch files; the ST-VAE's archive (0.2B parameters) is read whole.
A converted run holds its EMA weights in checkpoint 0 and the config they fit (the ST-VAE run
also the official latent statistics), and is marked so that it is started from (init_from), not
resumed. Export writes a flat .safetensors, for an ST-VAE too (the official loader reads
`torch.load(path)["state_dict"]`: wrap it so).
"""

from __future__ import annotations

import json
import os
import shutil
import struct

import jax
import ml_dtypes
import numpy as np
from absl import app, flags
from flax import nnx

from lavin_jax import checkpoint, latents, models, official, parallel, runs, torch_files
from lavin_jax import config as config_lib

class SafetensorsReader:
    """Names and shapes from a .safetensors header, checked; each tensor read from the file when
    asked for, into its own array, so the file is never held whole."""

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        try:
            with open(path, "rb") as f:
                length = struct.unpack("<Q", f.read(8))[0]
                if length > size - 8:
                    raise ValueError("its header length exceeds the file")
                header = json.loads(f.read(length))
            header.pop("__metadata__", None)
            self.shapes = {name: tuple(entry["shape"]) for name, entry in header.items()}
            for name, entry in header.items():
                begin, end = entry["data_offsets"]
                if entry["dtype"] not in _SAFETENSORS_TYPES or end - begin != np.prod(entry["shape"], dtype=np.int64) * _SAFETENSORS_TYPES[entry["dtype"]].itemsize:
                    raise ValueError(f"tensor {name} ({entry['dtype']}, {entry['shape']}) has a type or byte range that cannot be read")
        except (ValueError, KeyError, TypeError, struct.error) as error:
            raise ValueError(f"{path} is not a readable .safetensors file: {error}.") from None
        self._start = 8 + length
        self._entries = header

    def get(self, name: str) -> np.ndarray:
        entry = self._entries[name]
        dtype = _SAFETENSORS_TYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        data = np.fromfile(self.path, dtype, count=(end - begin) // dtype.itemsize, offset=self._start + begin)
        return data.reshape(self.shapes[name])


class DictReader:
    """The tensors of an already loaded state dict (the ST-VAE's, out of its .pt's nesting)."""

    def __init__(self, state: dict, path: str):
        self._state, self.path = state, path
        self.shapes = {name: tuple(np.shape(value)) for name, value in state.items()}

    def get(self, name: str) -> np.ndarray:
        return np.asarray(self._state[name])


def _shapes(params) -> dict[str, tuple]:
    """A parameter pure dict's "/"-joined paths and shapes."""
    return {"/".join(str(k.key) for k in path): tuple(x.shape) for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def _our_shapes(model_config) -> dict[str, tuple]:
    """Our parameters' "/"-joined paths and shapes, by abstract evaluation."""
    return _shapes(nnx.state(nnx.eval_shape(lambda: models.build(model_config, nnx.Rngs(0))), nnx.Param).to_pure_dict())


def check_names(rules: list[official.Rule], ours: dict[str, tuple], reader, family: str) -> None:
    """Raises ValueError listing every official tensor missing, misshapen or unused (beyond
    `official.IGNORED`), and every parameter of ours no rule fills, before any tensor is read."""
    expected = official.official_shapes(rules, ours)
    present = {name: shape for name, shape in reader.shapes.items() if not official.ignored(name, family)}
    problems = []
    missing = sorted(set(expected) - set(present))
    unused = sorted(set(present) - set(expected))
    misshapen = [f"{name} {present[name]} (expected {expected[name]})" for name in expected if name in present and present[name] != expected[name]]
    unfilled = sorted(set(ours) - {rule.ours for rule in rules})
    for label, names in (("missing", missing), ("unused", unused), ("misshapen", misshapen), ("parameters of ours no tensor fills", unfilled)):
        if names:
            shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
            problems.append(f"{len(names)} {label}: {shown}")
    if problems:
        raise ValueError(f"{reader.path} does not fit the model: " + "; ".join(problems) + ".")


def to_ours(rules: list[official.Rule], reader, ours: dict[str, tuple], scratch: str) -> dict:
    """Our parameter pure dict (float32, `ours`' shapes), one official tensor at a time from
    `reader`. Each parameter is a memory-mapped file in the directory `scratch`, filled in place,
    so the parameters are file-backed pages the kernel may write out rather than memory of the
    process: a 3.4B model's 13.6 GB plus what saving needs would not fit in 24 GB otherwise."""
    os.makedirs(scratch, exist_ok=True)
    params: dict = {}
    for index, rule in enumerate(rules):
        mapped = np.lib.format.open_memmap(os.path.join(scratch, f"{index}.npy"), mode="w+", dtype=np.float32, shape=ours[rule.ours])
        rule.fill(mapped, reader.get)
        mapped.flush()
        put(params, rule.ours, mapped)
    return params


def write_run(out: str, config, params: dict) -> None:
    """`params` as the EMA weights of checkpoint 0 of a run in `out`, with `config`, marked as a
    conversion (not a run to resume)."""
    checkpointer = checkpoint.Checkpointer(os.path.join(out, "checkpoints"), keep=1, save_every=1, host_copy=False)
    try:
        checkpointer.save(0, {"ema": params}, config, force=True)
    finally:
        checkpointer.close()
    open(os.path.join(out, checkpoint.CONVERTED), "w").close()


def convert(jdit: str | None, stvae: str | None, out: str, config, vae_config) -> dict[str, str]:
    """Converts whichever released files are given into runs under `out` (J-DiT `config`, ST-VAE
    `vae_config`, both left unchanged); returns their paths. Both files' names and shapes are
    checked before anything is written; on any failure `out` is removed again."""
    if os.path.exists(out) and os.listdir(out):
        raise FileExistsError(f"--out={out!r} is not empty; conversions write into a new directory.")
    jobs = []  # (name, config, rules, reader, our shapes)
    if stvae:
        vae_config = runs.data_parallel(vae_config.copy_and_resolve_references())
        reader = DictReader(official.stvae_state(torch_files.load(stvae), stvae), stvae)
        jobs.append(("stvae", vae_config, official.stvae_rules(vae_config.model), reader, _our_shapes(vae_config.model)))
    if jdit:
        config = runs.data_parallel(config.copy_and_resolve_references())
        if stvae:
            config.vae.checkpoint = os.path.abspath(os.path.join(out, "stvae"))
        jobs.append(("jdit", config, official.jdit_rules(config.model), SafetensorsReader(jdit), _our_shapes(config.model)))
    for name, _, rules, reader, ours in jobs:
        check_names(rules, ours, reader, name)
    written = {}
    try:
        for name, job_config, rules, reader, ours in jobs:
            written[name] = os.path.join(out, name)
            write_run(written[name], job_config, to_ours(rules, reader, ours, os.path.join(out, ".scratch", name)))
            shutil.rmtree(os.path.join(out, ".scratch", name))
        if stvae:
            latents.write_stats(written["stvae"], {"shift": latents.OFFICIAL_SHIFT, "scale": latents.OFFICIAL_SCALE, "examples": 0, "source": "official"})
        os.rmdir(os.path.join(out, ".scratch"))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return written


def export(run: str, out: str, dtype=np.float32) -> int:
    """The EMA weights of `run` (a J-DiT or ST-VAE) written to `out` (.safetensors) under the
    official names and layouts, one tensor at a time; returns how many tensors."""
    config, step = runs.trained_config(run)
    family = config.model.name
    if family == "jdit" and config.flow.prediction != "velocity":
        raise ValueError(
            f"Run {run!r} predicts {config.flow.prediction!r} (config.flow.prediction); the official code "
            "reads a J-DiT's output as a velocity, so only a velocity model can be exported."
        )
    _, abstract = runs.abstract_model(config.model, parallel.make_mesh(config), config.mesh.rules)
    params = runs.restore_ema(run, step, abstract)
    rules = official.jdit_rules(config.model) if family == "jdit" else official.stvae_rules(config.model)
    shapes = official.official_shapes(rules, _shapes(abstract))
    leaf = lambda path: np.asarray(jax.device_get(_get(params, path)))
    tensors = ((name, array) for rule in rules for name, array in zip(rule.official, rule.to_official(leaf(rule.ours))))
    return write_safetensors(out, shapes, tensors, np.dtype(dtype))


def _keys(path: str) -> list:
    """A "/"-joined parameter path as pure-dict keys: list entries (nnx.List) are ints."""
    return [int(part) if part.isdigit() else part for part in path.split("/")]


def put(tree: dict, path: str, value) -> None:
    """Sets the "/"-joined `path` of a nested pure dict to `value`, making the dicts on the way."""
    *parents, leaf = _keys(path)
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def _get(tree: dict, path: str):
    for key in _keys(path):
        tree = tree[key]
    return tree


DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}  # the command line's names
# safetensors' names of the types read (all) and written (the first two).
_SAFETENSORS_TYPES = {"F32": np.dtype(np.float32), "BF16": np.dtype(ml_dtypes.bfloat16), "F16": np.dtype(np.float16), "F64": np.dtype(np.float64)}
_SAFETENSORS_NAMES = {dtype: name for name, dtype in _SAFETENSORS_TYPES.items()}


def write_safetensors(path: str, shapes: dict[str, tuple], tensors, dtype: np.dtype) -> int:
    """A .safetensors file written as `tensors` (name, array) come, in `shapes`' order: the header
    first (all sizes are known from the shapes), then each tensor's bytes, so no two are held.
    Written beside `path` and moved there at the end: a failure leaves no partial file."""
    offsets, start = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        offsets[name] = {"dtype": _SAFETENSORS_NAMES[dtype], "shape": list(shape), "data_offsets": [start, start + size]}
        start += size
    header = json.dumps(offsets, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format aligns the data to 8 bytes.
    partial = path + ".partial"
    try:
        written = _write_tensors(partial, header, offsets, tensors, dtype)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    os.replace(partial, path)
    return written


def _write_tensors(path, header, offsets, tensors, dtype) -> int:
    written = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        pending = dict(offsets)
        for name, array in tensors:
            entry = pending.pop(name)
            if tuple(array.shape) != tuple(entry["shape"]):
                raise ValueError(f"Tensor {name} has shape {array.shape}, not {tuple(entry['shape'])}.")
            f.seek(8 + len(header) + entry["data_offsets"][0])
            f.write(np.ascontiguousarray(array, dtype).reshape(-1).view(np.uint8).data)  # no copy of bytes.
            written += 1
    if pending:
        raise ValueError(f"{len(pending)} tensors were not written, e.g. {next(iter(pending))}.")
    return written


def write_random(config_path: str, out: str, dtype) -> int:
    """Random weights (0.02 N(0, 1), about a trained transformer's scale) in the released J-DiT's
    format for the config's model, written one tensor at a time; returns how many tensors."""
    model = config_lib.load(config_path).model
    shapes = official.official_shapes(official.jdit_rules(model), _our_shapes(model))
    rng = np.random.default_rng(0)
    tensors = ((name, 0.02 * rng.standard_normal(shape, np.float32)) for name, shape in shapes.items())
    return write_safetensors(out, shapes, tensors, np.dtype(dtype))


def define_flags() -> None:
    """The command line's flags, defined only when this module runs as the program: as a library
    (tests, notebooks) it must not claim names such as --config and --out."""
    flags.DEFINE_string("jdit", None, "The released J-DiT, lavin_dit.safetensors.")
    flags.DEFINE_string("stvae", None, "The released ST-VAE, stvae.pt.")
    flags.DEFINE_string("export", None, "A J-DiT or ST-VAE run to write under the official names.")
    flags.DEFINE_bool("random", False, "Write random weights in the released J-DiT's format for --config to --out.")
    flags.DEFINE_string("out", None, "Convert: the directory of the two runs. Export, random: the .safetensors file.")
    flags.DEFINE_string("config", "configs/xl.py", "Convert, random: the J-DiT config the weights fit.")
    flags.DEFINE_string("vae_config", "configs/stvae.py", "Convert: the ST-VAE config the released weights fit.")
    flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Export, random: the tensors' type.")
    flags.mark_flags_as_required(["out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    if sum(map(bool, (f.random, f.export, f.jdit or f.stvae))) > 1:
        raise app.UsageError("--random, --export and --jdit/--stvae are separate jobs: give one.")
    if f.random:
        print(f"Wrote {write_random(f.config, f.out, DTYPES[f.dtype])} tensors to {f.out}.")
    elif f.export:
        print(f"Wrote {export(f.export, f.out, DTYPES[f.dtype])} tensors to {f.out}.")
    elif f.jdit or f.stvae:
        for name, path in convert(f.jdit, f.stvae, f.out, config_lib.load(f.config), config_lib.load(f.vae_config)).items():
            print(f"{name}: {path}")
    else:
        raise app.UsageError("Give --jdit and/or --stvae to convert, --export=RUN, or --random.")


if __name__ == "__main__":
    define_flags()
    app.run(main)
