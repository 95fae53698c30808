"""The released weights of every family with a released layout (LaVin-DiT's J-DiT and ST-VAE,
DiT, DiffiT) in and out of lavin_jax.

    # the released J-DiT and ST-VAE -> two runs: OUT/jdit (J-DiT) and OUT/stvae (its ST-VAE)
    python -m lavin_jax.convert --jdit=lavin_dit.safetensors --stvae=stvae.pt --out=runs/official
    # prompt or evaluate them like any run; fine-tune from them with config.init_from
    python -m lavin_jax.main --mode=eval --config=configs/xl.py --workdir=runs/official/jdit
    python -m lavin_jax.main --config=configs/xl.py --workdir=runs/mine \\
        --config.init_from=runs/official/jdit --config.vae.checkpoint=runs/official/stvae
    # the released DiT-XL/2 (256 or 512 px, read from the file) -> the run OUT/dit; another size
    # with --config=configs/dit.py:B/4; of a checkpoint of DiT's train.py, its EMA weights (where
    # torch_files reads the argparse.Namespace such a checkpoint holds as `args`)
    python -m lavin_jax.convert --dit=DiT-XL-2-256x256.pt --out=runs/dit_xl2_256
    # the released latent DiffiT with its SD VAE -> OUT/diffit and OUT/sdvae (image size and
    # window read from the file)
    python -m lavin_jax.convert --diffit=diffit_256.safetensors --vae=sd-vae-ft-ema.safetensors --out=runs/diffit_256
    # back: a run's EMA weights under the official names and layouts, .safetensors or .pt
    python -m lavin_jax.convert --export=runs/mine --out=lavin_dit.safetensors
    python -m lavin_jax.convert --export=runs/dit_xl2_256/dit --out=DiT-XL-2-256x256.pt
    # random weights in the released format of --config's family (measuring without the release)
    python -m lavin_jax.convert --random --config=configs/xl.py --out=/tmp/lavin_dit.safetensors
    python -m lavin_jax.convert --random --config=configs/dit.py:XL/2 --out=/tmp/DiT-XL-2-256x256.pt

The official names and layouts are in `lavin_jax/official.py`, once, as rules; this file does the
reading and writing. Each released file is one job, made into one run under --out. Every official
tensor is consumed exactly once and every parameter of ours filled, or the conversion stops listing
the mismatches before anything is written; a tensor the config fixes (DiT's position embedding)
must be ours. A .safetensors file streams one rule at a time and is never held whole; a .pt
(torch.save) archive is read whole by `torch_files`, which runs no pickled code (the ST-VAE's 0.2B
and DiT-XL/2's 0.7B parameters). Our parameters (float32) go to memory-mapped scratch files. A
converted run holds its EMA weights in checkpoint 0 and the config they fit (the ST-VAE run also
the official latent statistics; the DiT run the image size its file was built for), and is marked
so that it is started from (init_from), not resumed. Export writes a .safetensors (flat) or a .pt
as torch.save writes it, without torch, which torch.load(weights_only=True) reads: DiT's
`sample.py --ckpt`, or the ST-VAE nested under `state_dict` as the official loader reads it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pickle
import shutil
import struct
import zipfile
from typing import Callable

import jax
import ml_collections
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
    """The tensors of an already loaded state dict (a .pt's, out of its nesting)."""

    def __init__(self, state: dict, path: str):
        self._state, self.path = state, path
        self.shapes = {name: tuple(np.shape(value)) for name, value in state.items()}

    def get(self, name: str) -> np.ndarray:
        return np.asarray(self._state[name])


class RenamedReader:
    """A reader whose names are another reader's through `rename` (releases of one model that
    differ in names only)."""

    def __init__(self, reader, rename: Callable[[str], str]):
        self._reader, self.path = reader, reader.path
        self._names = {rename(name): name for name in reader.shapes}
        self.shapes = {name: reader.shapes[original] for name, original in self._names.items()}

    def get(self, name: str) -> np.ndarray:
        return self._reader.get(self._names[name])


def read_release(path: str, family: str):
    """A reader of the `family` file at `path`: a .safetensors read tensor by tensor, anything
    else a torch.save archive read whole (no pickled code runs) and taken out of its nesting."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist.")
    if path.endswith(".safetensors"):
        reader = SafetensorsReader(path)
    else:
        reader = DictReader(official.state_dict(torch_files.load(path), path, family), path)
    rename = official.family(family).rename
    return RenamedReader(reader, rename) if rename else reader


def _shapes(params) -> dict[str, tuple]:
    """A parameter pure dict's "/"-joined paths and shapes."""
    return {"/".join(str(k.key) for k in path): tuple(x.shape) for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def _our_shapes(model_config) -> dict[str, tuple]:
    """Our parameters' "/"-joined paths and shapes, by abstract evaluation."""
    return _shapes(nnx.state(nnx.eval_shape(lambda: models.build(model_config, nnx.Rngs(0))), nnx.Param).to_pure_dict())


def check_names(rules: list[official.Rule], ours: dict[str, tuple], reader, family: str, fixed: dict | None = None) -> None:
    """Raises ValueError listing every official tensor missing, misshapen or unused (beyond what
    `official.ignored` drops), and every parameter of ours no rule fills, before any tensor is
    read. `fixed`: the tensors the config fixes (`official.Family.fixed`), expected too."""
    expected = {name: tuple(value.shape) for name, value in (fixed or {}).items()} | official.official_shapes(rules, ours)
    present = {name: shape for name, shape in reader.shapes.items() if not official.ignored(name, family)}
    problems = []
    missing = sorted(set(expected) - set(present))
    unused = sorted(set(present) - set(expected))
    misshapen = [f"{name} {present[name]} (expected {expected[name]})" for name in expected if name in present and present[name] != expected[name]]
    unfilled = sorted(set(ours) - {path for rule in rules for path in rule.ours})
    for label, names in (("missing", missing), ("unused", unused), ("misshapen", misshapen), ("parameters of ours no tensor fills", unfilled)):
        if names:
            shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
            problems.append(f"{len(names)} {label}: {shown}")
    if problems:
        raise ValueError(f"{reader.path} does not fit the model: " + "; ".join(problems) + ".")


def check_fixed(fixed: dict[str, np.ndarray], reader) -> None:
    """Raises ValueError unless each tensor the config fixes is the file's, to `official.FIXED_ATOL`
    (the names and shapes are checked already)."""
    for name, value in fixed.items():
        difference = float(np.max(np.abs(reader.get(name).astype(np.float64) - value), initial=0.0))
        if not difference <= official.FIXED_ATOL:  # NaN too
            raise ValueError(
                f"{reader.path}'s {name} differs from the {name} our model computes for this config by up to "
                f"{difference:.3g}, so the converted model would not compute what the file's does."
            )


def to_ours(rules: list[official.Rule], reader, ours: dict[str, tuple], scratch: str) -> dict:
    """Our parameter pure dict (float32, `ours`' shapes), one official tensor at a time from
    `reader`. Each parameter is a memory-mapped file in the directory `scratch`, filled in place,
    so the parameters are file-backed pages the kernel may write out rather than memory of the
    process: a 3.4B model's 13.6 GB plus what saving needs would not fit in 24 GB otherwise."""
    os.makedirs(scratch, exist_ok=True)
    params: dict = {}
    for index, rule in enumerate(rules):
        mapped = [
            np.lib.format.open_memmap(os.path.join(scratch, f"{index}.{part}.npy"), mode="w+", dtype=np.float32, shape=ours[path])
            for part, path in enumerate(rule.ours)
        ]
        rule.fill(mapped, reader.get)
        for path, array in zip(rule.ours, mapped):
            array.flush()
            put(params, path, array)
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


@dataclasses.dataclass
class Job:
    """One released file made into the run `name` under --out."""

    name: str
    config: ml_collections.ConfigDict  # the run's
    reader: SafetensorsReader | DictReader | RenamedReader
    rules: list[official.Rule]
    ours: dict[str, tuple]  # our parameters' paths and shapes
    fixed: dict[str, np.ndarray]  # tensors of the file the config fixes
    finish: Callable[[str], None] | None = None  # writes what else the run (its directory) holds


def job(family: str, path: str, config) -> Job:
    """The conversion of the `family` file at `path` into a run of `config` (a data-parallel copy,
    checked against the official code's reading, with what the file decides set in it)."""
    config = runs.data_parallel(config.copy_and_resolve_references())
    if config.model.name != family:
        raise ValueError(f"The config's model is a {config.model.name!r} (config.model.name), not the {family!r} that {path} holds.")
    layout = official.family(family)
    if layout.check:
        layout.check(config)
    reader = read_release(path, family)
    if layout.fit:
        layout.fit(config, reader.shapes, path)
    fixed = layout.fixed(config) if layout.fixed else {}
    return Job(family, config, reader, layout.rules(config.model), _our_shapes(config.model), fixed)


def _released_stats(family: str) -> Callable[[str], None]:
    """Writes into a run the latent statistics its released diffusion model was trained with."""
    shift, scale = latents.RELEASED[family]
    return lambda run: latents.write_stats(run, {"shift": shift, "scale": scale, "examples": 0, "source": "official"})


def convert(out: str, config=None, vae_config=None, *, jdit: str | None = None, stvae: str | None = None,
            dit: str | None = None, sdvae: str | None = None, diffit: str | None = None) -> dict[str, str]:
    """Converts whichever released files are given into runs under `out`, one per file, named by
    its family: LaVin-DiT's J-DiT (`config`) and ST-VAE (`vae_config`), or a DiT (`config`; its
    image size is the file's) and the SD VAE (`vae_config`, default the released one). A
    diffusion model converted with its autoencoder learns and samples in that run's latents. The
    configs passed are left unchanged. Every file's names, shapes and fixed tensors are checked
    before anything is written; on any failure `out` is removed again. Returns the runs' paths by
    name."""
    if (dit or diffit or sdvae) and (jdit or stvae):
        raise ValueError("DiT or DiffiT and their SD VAE are converted apart from LaVin-DiT's files: each takes its own configs.")
    if dit and diffit:
        raise ValueError("A DiT and a DiffiT are converted apart: each takes its own config.")
    if os.path.exists(out) and os.listdir(out):
        raise FileExistsError(f"--out={out!r} is not empty; conversions write into a new directory.")
    jobs = []
    latent_model = ("diffit", diffit) if diffit else ("dit", dit)
    for family, path, (name, model) in (("stvae", stvae, ("jdit", jdit)), ("sdvae", sdvae, latent_model)):
        if path:
            autoencoder = config_lib.base(family) if vae_config is None else vae_config
            jobs.append(dataclasses.replace(job(family, path, autoencoder), finish=_released_stats(family)))
        if model:
            # Before job(): the image size a DiT (DiffiT) file decides is counted in its autoencoder's latents.
            config = config.copy_and_resolve_references()
            if path:
                config.vae.checkpoint = os.path.abspath(os.path.join(out, family))
            jobs.append(job(name, model, config))
    for j in jobs:
        check_names(j.rules, j.ours, j.reader, j.name, j.fixed)
        check_fixed(j.fixed, j.reader)
    written = {}
    try:
        for j in jobs:
            written[j.name] = os.path.join(out, j.name)
            scratch = os.path.join(out, ".scratch", j.name)
            write_run(written[j.name], j.config, to_ours(j.rules, j.reader, j.ours, scratch))
            shutil.rmtree(scratch)
            if j.finish:
                j.finish(written[j.name])
        os.rmdir(os.path.join(out, ".scratch"))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return written


def _released(config, ours: dict[str, tuple]):
    """(shapes, the fixed tensors, the rules) of `config`'s model in its released layout."""
    layout = official.family(config.model.name)
    rules = layout.rules(config.model)
    fixed = layout.fixed(config) if layout.fixed else {}
    # Fixed tensors first, as the official state dicts hold a model's own parameters (pos_embed).
    shapes = {name: tuple(value.shape) for name, value in fixed.items()} | official.official_shapes(rules, ours)
    return shapes, fixed, rules


def export(run: str, out: str, dtype=np.float32) -> int:
    """The EMA weights of `run` written to `out` (.safetensors or .pt) under the official names
    and layouts, one tensor at a time, tensors the config fixes in their own types; returns how many."""
    writer = _writer(out)
    config, step = runs.trained_config(run)
    layout = official.family(config.model.name)
    if layout.check:
        layout.check(config)
    _, abstract = runs.abstract_model(config.model, parallel.make_mesh(config), config.mesh.rules)
    params = runs.restore_ema(run, step, abstract)
    shapes, fixed, rules = _released(config, _shapes(abstract))
    leaf = lambda path: np.asarray(jax.device_get(_get(params, path)))
    from_rules = ((name, array) for rule in rules for name, array in zip(rule.official, rule.to_official([leaf(path) for path in rule.ours])))
    dtypes = {name: fixed[name].dtype if name in fixed else np.dtype(dtype) for name in shapes}
    return writer(out, shapes, dtypes, itertools.chain(fixed.items(), from_rules), layout.nest)


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
# safetensors' names of the types read (all) and written (the first two, and int64 for index buffers).
_SAFETENSORS_TYPES = {"F32": np.dtype(np.float32), "BF16": np.dtype(ml_dtypes.bfloat16), "F16": np.dtype(np.float16), "F64": np.dtype(np.float64),
                      "I64": np.dtype(np.int64)}
_SAFETENSORS_NAMES = {dtype: name for name, dtype in _SAFETENSORS_TYPES.items()}
# torch's storage classes of the types written.
_TORCH_STORAGES = {np.dtype(np.float32): "FloatStorage", np.dtype(ml_dtypes.bfloat16): "BFloat16Storage", np.dtype(np.int64): "LongStorage"}


def _writer(path: str):
    """The writer of `path`'s format, by its extension: (path, shapes, dtypes, tensors, nest)."""
    # A .safetensors file is flat: a family whose loader reads a nested dict is nested by its user.
    writers = {".safetensors": lambda path, shapes, dtypes, tensors, nest: write_safetensors(path, shapes, dtypes, tensors), ".pt": write_torch}
    extension = os.path.splitext(path)[1]
    if extension not in writers:
        raise ValueError(f"--out={path!r} must end in .safetensors or .pt, the formats written.")
    return writers[extension]


def _atomically(path: str, write: Callable[[str], int]) -> int:
    """`write(partial)` into a file beside `path`, moved there at the end: a failure leaves no
    partial file."""
    partial = path + ".partial"
    try:
        written = write(partial)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    os.replace(partial, path)
    return written


def _bytes(pending: dict[str, tuple], dtypes: dict[str, np.dtype], name: str, array) -> memoryview:
    """The tensor `name`'s bytes in its type, after checking it is expected and of its shape."""
    shape = pending.pop(name)
    if tuple(np.shape(array)) != tuple(shape):
        raise ValueError(f"Tensor {name} has shape {np.shape(array)}, not {tuple(shape)}.")
    return np.ascontiguousarray(array, dtypes[name]).reshape(-1).view(np.uint8).data  # no copy of bytes.


def _all_written(pending: dict) -> None:
    if pending:
        raise ValueError(f"{len(pending)} tensors were not written, e.g. {next(iter(pending))}.")


def write_safetensors(path: str, shapes: dict[str, tuple], dtypes: dict[str, np.dtype], tensors) -> int:
    """A .safetensors file written as `tensors` (name, array) come, in `shapes`' order, each in its
    type of `dtypes`: the header first (all sizes are known from the shapes), then each tensor's
    bytes, so no two are held. Returns how many tensors."""
    offsets, start = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape, dtype=np.int64)) * dtypes[name].itemsize
        offsets[name] = {"dtype": _SAFETENSORS_NAMES[dtypes[name]], "shape": list(shape), "data_offsets": [start, start + size]}
        start += size
    header = json.dumps(offsets, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format aligns the data to 8 bytes.

    def write(partial: str) -> int:
        pending, written = dict(shapes), 0
        with open(partial, "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
            for name, array in tensors:
                data = _bytes(pending, dtypes, name, array)
                f.seek(8 + len(header) + offsets[name]["data_offsets"][0])
                f.write(data)
                written += 1
        _all_written(pending)
        return written

    return _atomically(path, write)


def write_torch(path: str, shapes: dict[str, tuple], dtypes: dict[str, np.dtype], tensors, nest: str | None = None) -> int:
    """A torch.save archive of {name: tensor} (inside {nest: ...} when given) written without
    torch as `tensors` (name, array) come: a zip of `data.pkl` (first: all it says follows from
    the shapes), one storage per tensor, `byteorder` and `version`, as torch.save lays it out.
    torch.load(weights_only=True) and `torch_files.load` read it. Returns how many tensors."""
    keys = {name: str(index) for index, name in enumerate(shapes)}

    def write(partial: str) -> int:
        pending, written = dict(shapes), 0
        # Entries are dated 1980 (ZipInfo's default), not now: the same weights make the same file.
        with zipfile.ZipFile(partial, "w") as archive:
            archive.writestr(zipfile.ZipInfo("archive/data.pkl"), _state_pickle(shapes, dtypes, keys, nest))
            archive.writestr(zipfile.ZipInfo("archive/byteorder"), "little")
            for name, array in tensors:
                data = _bytes(pending, dtypes, name, array)
                entry = zipfile.ZipInfo(f"archive/data/{keys[name]}")
                entry.file_size = data.nbytes  # so zipfile chooses zip64 for a tensor over 2 GB.
                with archive.open(entry, "w") as f:
                    f.write(data)
                written += 1
            archive.writestr(zipfile.ZipInfo("archive/version"), "3\n")
        _all_written(pending)
        return written

    return _atomically(path, write)


def _state_pickle(shapes: dict[str, tuple], dtypes: dict[str, np.dtype], keys: dict[str, str], nest: str | None) -> bytes:
    """`data.pkl` of a torch.save of {name: tensor} (in {nest: ...}): pickle protocol 2 as torch
    writes it, with only the opcodes and globals torch.load(weights_only=True) allows. Each tensor
    is `torch._utils._rebuild_tensor_v2(storage, 0, shape, row-major strides, False,
    OrderedDict())`, its storage the persistent id ('storage', torch.<Type>Storage, key, 'cpu',
    elements) of the archive's `data/<key>`."""

    def text(value: str) -> bytes:
        encoded = value.encode()
        return pickle.BINUNICODE + struct.pack("<I", len(encoded)) + encoded

    def integer(value: int) -> bytes:
        if value < 2**31:
            return pickle.BININT + struct.pack("<i", value)
        encoded = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
        return pickle.LONG1 + bytes([len(encoded)]) + encoded

    def tuple_(items) -> bytes:
        return pickle.MARK + b"".join(items) + pickle.TUPLE

    def global_(module: str, name: str) -> bytes:
        return pickle.GLOBAL + f"{module}\n{name}\n".encode()

    def tensor(name: str) -> bytes:
        shape = tuple(shapes[name])
        strides = [int(np.prod(shape[axis + 1 :], dtype=np.int64)) for axis in range(len(shape))]
        elements = int(np.prod(shape, dtype=np.int64))
        storage = tuple_([text("storage"), global_("torch", _TORCH_STORAGES[dtypes[name]]), text(keys[name]), text("cpu"), integer(elements)])
        hooks = global_("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
        arguments = tuple_([storage + pickle.BINPERSID, integer(0), tuple_(map(integer, shape)), tuple_(map(integer, strides)), pickle.NEWFALSE, hooks])
        return global_("torch._utils", "_rebuild_tensor_v2") + arguments + pickle.REDUCE

    state = pickle.EMPTY_DICT + pickle.MARK + b"".join(text(name) + tensor(name) for name in shapes) + pickle.SETITEMS
    if nest:
        state = pickle.EMPTY_DICT + text(nest) + state + pickle.SETITEM
    return pickle.PROTO + bytes([2]) + state + pickle.STOP


def write_random(config_path: str, out: str, dtype) -> int:
    """Random weights (0.02 N(0, 1), about a trained transformer's scale) in the released format
    of the config's model family, tensors the config fixes as they are, written one tensor at a
    time to `out` (.safetensors or .pt); returns how many tensors."""
    writer = _writer(out)
    config = config_lib.load(config_path)
    shapes, fixed, _ = _released(config, _our_shapes(config.model))
    rng = np.random.default_rng(0)
    tensors = ((name, fixed[name] if name in fixed else 0.02 * rng.standard_normal(shape, np.float32)) for name, shape in shapes.items())
    dtypes = {name: fixed[name].dtype if name in fixed else np.dtype(dtype) for name in shapes}
    return writer(out, shapes, dtypes, tensors, official.family(config.model.name).nest)


# The config a conversion's weights fit when --config is not given.
DEFAULT_CONFIGS = {"jdit": "configs/xl.py", "dit": "configs/dit.py:XL/2", "diffit": "configs/diffit.py:XL/2", "stvae": "configs/stvae.py", "sdvae": "configs/sdvae.py"}


def define_flags() -> None:
    """The command line's flags, defined only when this module runs as the program: as a library
    (tests, notebooks) it must not claim names such as --config and --out."""
    flags.DEFINE_string("jdit", None, "The released J-DiT, lavin_dit.safetensors.")
    flags.DEFINE_string("stvae", None, "The released ST-VAE, stvae.pt.")
    flags.DEFINE_string("dit", None, "A released DiT, DiT-XL-2-256x256.pt or DiT-XL-2-512x512.pt, or a checkpoint of DiT's train.py.")
    flags.DEFINE_string("diffit", None, "A released latent DiffiT, diffit_256.safetensors or diffit_512.safetensors.")
    flags.DEFINE_string("vae", None, "The SD VAE DiT and DiffiT work in, diffusers' diffusion_pytorch_model.safetensors of sd-vae-ft-ema or -mse.")
    flags.DEFINE_string("export", None, "A run (J-DiT, ST-VAE, DiT) to write under the official names.")
    flags.DEFINE_bool("random", False, "Write random weights in the released format of --config's family to --out.")
    flags.DEFINE_string("out", None, "Convert: the directory of the runs. Export, random: the .safetensors or .pt file.")
    flags.DEFINE_string(
        "config", None,
        f"Convert, random: the config the weights fit (default: {DEFAULT_CONFIGS['jdit']} for --jdit and --random, {DEFAULT_CONFIGS['dit']} for --dit, {DEFAULT_CONFIGS['diffit']} for --diffit).",
    )
    flags.DEFINE_string("vae_config", None, "Convert: the autoencoder config the released weights fit (default: configs/stvae.py for --stvae, configs/sdvae.py for --vae).")
    flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Export, random: the tensors' type (a fixed tensor keeps its own).")
    flags.mark_flags_as_required(["out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    if sum(map(bool, (f.random, f.export, f.jdit or f.stvae, f.dit or f.diffit or f.vae))) > 1:
        raise app.UsageError("--random, --export, --jdit/--stvae and --dit/--diffit/--vae are separate jobs: give one.")
    if f.random:
        print(f"Wrote {write_random(f.config or DEFAULT_CONFIGS['jdit'], f.out, DTYPES[f.dtype])} tensors to {f.out}.")
    elif f.export:
        print(f"Wrote {export(f.export, f.out, DTYPES[f.dtype])} tensors to {f.out}.")
    elif f.jdit or f.stvae or f.dit or f.diffit or f.vae:
        family, autoencoder = ("diffit" if f.diffit else "dit", "sdvae") if f.dit or f.diffit or f.vae else ("jdit", "stvae")
        config = config_lib.load(f.config or DEFAULT_CONFIGS[family])
        vae_config = config_lib.load(f.vae_config or DEFAULT_CONFIGS[autoencoder])
        for name, path in convert(f.out, config, vae_config, jdit=f.jdit, stvae=f.stvae, dit=f.dit, sdvae=f.vae, diffit=f.diffit).items():
            print(f"{name}: {path}")
    else:
        raise app.UsageError("Give --jdit and/or --stvae, or --dit or --diffit and/or --vae, to convert; --export=RUN; or --random.")


if __name__ == "__main__":
    define_flags()
    config_lib.for_people(lambda: app.run(main))
