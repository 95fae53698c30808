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
filled, or the conversion stops listing the mismatches, checked from the files' headers before
any tensor is read. Tensors stream one rule at a time: the released file is never held whole,
only our parameters (float32) are. A converted run holds its EMA weights in checkpoint 0 and
the config they fit; the ST-VAE run also holds the official latent statistics.
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

from lavin_jax import checkpoint, latents, models, official, parallel, torch_files, train
from lavin_jax import config as config_lib

class SafetensorsReader:
    """Names and shapes from a .safetensors header; each tensor read from the file when asked
    for, into its own array (the safetensors package's numpy reader holds the whole file)."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            length = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(length))
        header.pop("__metadata__", None)
        self._start = 8 + length
        self._entries = header
        self.shapes = {name: tuple(entry["shape"]) for name, entry in header.items()}

    def get(self, name: str) -> np.ndarray:
        entry = self._entries[name]
        dtype = np.dtype(_DTYPES_BY_NAME[entry["dtype"]])
        begin, end = entry["data_offsets"]
        data = np.fromfile(self.path, dtype, count=(end - begin) // dtype.itemsize, offset=self._start + begin)
        return data.reshape(self.shapes[name])


class DictReader:
    """The tensors of a loaded state dict (the ST-VAE's .pt), under the released file's nesting."""

    def __init__(self, state: dict, path: str):
        self._state, self.path = state, path
        self.shapes = {name: tuple(np.shape(value)) for name, value in state.items()}

    def get(self, name: str) -> np.ndarray:
        return np.asarray(self._state[name])


def _our_shapes(model_config) -> dict[str, tuple]:
    """Our parameters' "/"-joined paths and shapes, by abstract evaluation."""
    state = nnx.state(nnx.eval_shape(lambda: models.build(model_config, nnx.Rngs(0))), nnx.Param).to_pure_dict()
    return {"/".join(str(k.key) for k in path): tuple(x.shape) for path, x in jax.tree_util.tree_flatten_with_path(state)[0]}


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


def to_ours(rules: list[official.Rule], ours: dict[str, tuple], reader, family: str, scratch: str) -> dict:
    """Our parameter pure dict (float32), one rule at a time from `reader`. Each parameter lands
    in a memory-mapped file in the directory `scratch`: orbax copies every array it saves, and
    file-backed parameters leave that copy the only one in memory (a 3.4B model's 13.6 GB twice
    would not fit in 24 GB)."""
    check_names(rules, ours, reader, family)
    os.makedirs(scratch, exist_ok=True)
    params: dict = {}
    for index, rule in enumerate(rules):
        value = rule.to_ours([reader.get(name) for name in rule.official])
        mapped = np.lib.format.open_memmap(os.path.join(scratch, f"{index}.npy"), mode="w+", dtype=np.float32, shape=value.shape)
        mapped[...] = value
        mapped.flush()
        del mapped, value
        value = np.load(os.path.join(scratch, f"{index}.npy"), mmap_mode="r")
        *parents, leaf = _keys(rule.ours)
        node = params
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return params


def write_run(out: str, config, params: dict) -> None:
    """`params` as the EMA weights of checkpoint 0 of a run in `out`, with `config`."""
    checkpointer = checkpoint.Checkpointer(os.path.join(out, "checkpoints"), keep=1, save_every=1, host_copy=False)
    checkpointer.save(0, {"ema": params}, config, force=True)
    checkpointer.close()


def convert(jdit: str | None, stvae: str | None, out: str, config, vae_config) -> dict[str, str]:
    """Converts whichever released files are given into runs under `out` (J-DiT `config`, ST-VAE
    `vae_config`); returns their paths."""
    if os.path.exists(out) and os.listdir(out):
        raise FileExistsError(f"--out={out!r} is not empty; conversions write into a new directory.")
    written = {}
    scratch = os.path.join(out, ".scratch")
    try:
        _convert(jdit, stvae, out, config, vae_config, written, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return written


def _convert(jdit, stvae, out, config, vae_config, written, scratch) -> None:
    if stvae:
        vae_config = train.data_parallel(vae_config)
        state = torch_files.load(stvae)
        reader = DictReader(official.stvae_state(state, stvae), stvae)
        params = to_ours(official.stvae_rules(vae_config.model), _our_shapes(vae_config.model), reader, "stvae", os.path.join(scratch, "stvae"))
        written["stvae"] = os.path.join(out, "stvae")
        write_run(written["stvae"], vae_config, params)
        with open(os.path.join(written["stvae"], latents.STATS_FILE), "w") as f:
            json.dump({"shift": latents.OFFICIAL_SHIFT, "scale": latents.OFFICIAL_SCALE, "examples": 0, "source": "official"}, f, indent=2)
    if jdit:
        if stvae:
            config.vae.checkpoint = os.path.abspath(written["stvae"])
        reader = SafetensorsReader(jdit)
        params = to_ours(official.jdit_rules(config.model), _our_shapes(config.model), reader, "jdit", os.path.join(scratch, "jdit"))
        written["jdit"] = os.path.join(out, "jdit")
        write_run(written["jdit"], train.data_parallel(config), params)


def export(run: str, out: str, dtype=np.float32) -> int:
    """The EMA weights of `run` (a J-DiT or ST-VAE) written to `out` (.safetensors) under the
    official names and layouts, one tensor at a time; returns how many tensors."""
    family = _saved_config(run)["model"]["name"]
    config, step = train.trained_config(run, family)
    s = train.setup(config, parallel.make_mesh(config))
    params = train.restore_ema(run, step, s.abstract_state["ema"])
    rules = official.jdit_rules(config.model) if family == "jdit" else official.stvae_rules(config.model)
    ours = _our_shapes(config.model)
    shapes = official.official_shapes(rules, ours)
    leaf = lambda path: np.asarray(jax.device_get(_get(params, path)))
    tensors = ((name, array) for rule in rules for name, array in zip(rule.official, rule.to_official(leaf(rule.ours))))
    return write_safetensors(out, shapes, tensors, np.dtype(dtype))


def _keys(path: str) -> list:
    """A "/"-joined parameter path as pure-dict keys: list entries (nnx.List) are ints."""
    return [int(part) if part.isdigit() else part for part in path.split("/")]


def _get(tree: dict, path: str):
    for key in _keys(path):
        tree = tree[key]
    return tree


def _saved_config(run: str) -> dict:
    directory = os.path.join(run, "checkpoints")
    step = checkpoint.latest_step(directory) if os.path.isdir(directory) else None
    if step is None:
        raise FileNotFoundError(f"--export={run!r} holds no checkpoint.")
    reader = checkpoint.Checkpointer(directory, keep=1, save_every=1)
    try:
        return reader.read_config(step)
    finally:
        reader.close()


DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
_DTYPE_NAMES = {np.dtype(np.float32): "F32", np.dtype(ml_dtypes.bfloat16): "BF16"}
_DTYPES_BY_NAME = {"F32": np.float32, "BF16": ml_dtypes.bfloat16, "F16": np.float16, "F64": np.float64}


def write_safetensors(path: str, shapes: dict[str, tuple], tensors, dtype: np.dtype) -> int:
    """A .safetensors file written as `tensors` (name, array) come, in `shapes`' order: the header
    first (all sizes are known from the shapes), then each tensor's bytes, so no two are held."""
    offsets, start = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        offsets[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [start, start + size]}
        start += size
    header = json.dumps(offsets, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format aligns the data to 8 bytes.
    written = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        pending = dict(offsets)
        for name, array in tensors:
            entry = pending.pop(name)
            if tuple(array.shape) != tuple(entry["shape"]):
                raise ValueError(f"Tensor {name} has shape {array.shape}, not {tuple(entry['shape'])}.")
            f.seek(8 + len(header) + entry["data_offsets"][0])
            f.write(np.ascontiguousarray(array, dtype).tobytes())
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
