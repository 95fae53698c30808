"""Frozen networks read from released Hugging Face directories, as `save_pretrained` writes them and
the hub serves them (GenTron's text encoders: `t5`, `clip_text`): `config.json`, the weights as
`model.safetensors` or as shards listed by `model.safetensors.index.json`, and a tokenizer file.
This module reads and checks such a directory; each network says which tensors it reads
(a `Release`) and how it computes.

A `Release` maps each of our parameters to the released tensors it is made of: one tensor, or one
per layer stacked on a new leading axis (the networks scan over their layers); a torch Linear's
weight (out, in) becomes our kernel (in, out). Whatever is wrong with a directory is named in one
sentence before any tensor is read: the directory, config.json or the tokenizer missing, a shard
missing, a tensor missing, misshapen, of a type that is not floating point, or unknown (read by
no parameter and not among the names the network ignores: the other half of a bigger model).
Every released tensor is read exactly once, but for ties (one tensor saved under two names), whose
copies must be equal. Our parameters keep the file's dtype (a bfloat16 release stays bfloat16 in
memory); the networks compute in float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence

import jax
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy
import tokenizers

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"  # a sharded checkpoint: {"weight_map": {tensor: shard file}}
FLOATS = ("F64", "F32", "F16", "BF16")  # safetensors' names of the types read.
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16)}

# What `write_random`'s tokenizers learn from: a few captions.
CAPTIONS = (
    "a photograph of a red cube on a wooden table",
    "two green spheres beside a blue cylinder",
    "a small yellow cat sleeping in the morning sun",
    "an oil painting of a lighthouse at night, waves crashing",
    "the city skyline under heavy snow",
    "a bowl of fruit: apples, pears and one banana",
    "three dogs running across a field of tall grass",
    "a close-up of a watch with golden hands",
)


@dataclasses.dataclass(frozen=True)
class Encoder:
    """A loaded text encoder. `tokenize(texts, length)` -> (int32 tokens [N, length], int32
    lengths [N]); `encode(params, tokens, lengths)` -> (float32 hidden [B, L, width] with padding
    rows zero, float32 pooled [B, width]), pure and jittable."""

    width: int  # the width of what `encode` returns: what the diffusion model receives.
    max_length: int  # the longest token sequence `tokenize` and `encode` take.
    params: dict[str, np.ndarray]  # our names and layouts, in the file's dtype.
    tokenize: Callable[[Sequence[str], int], tuple[np.ndarray, np.ndarray]]
    encode: Callable[[Mapping[str, jax.Array], jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Source:
    """The released tensors one of our parameters is made of."""

    names: tuple[str, ...]  # one tensor, or one per layer (`stacked`)
    shape: tuple[int, ...]  # each released tensor's shape
    linear: bool = False  # a torch Linear weight (out, in): ours is its transpose (in, out).
    stacked: bool = False  # the layers' tensors stacked on a new leading axis.
    tied: tuple[str, ...] = ()  # other names a release may hold the same tensor under, instead or as well.

    @property
    def ours(self) -> tuple[int, ...]:
        shape = self.shape[::-1] if self.linear else self.shape
        return (len(self.names), *shape) if self.stacked else shape


def tensor(name: str, shape: Sequence[int], *, linear: bool = False, tied: Sequence[str] = ()) -> Source:
    return Source((name,), tuple(shape), linear, tied=tuple(tied))


def per_layer(pattern: str, depth: int, shape: Sequence[int], *, linear: bool = False) -> Source:
    """One released tensor per layer, named by `pattern` with the layer for "{i}"."""
    return Source(tuple(pattern.format(i=i) for i in range(depth)), tuple(shape), linear, stacked=True)


@dataclasses.dataclass(frozen=True)
class Release:
    network: str  # the network's name in messages.
    sources: Mapping[str, Source]  # our name -> the released tensors it is made of.
    ignored: tuple[str, ...]  # released names no parameter reads: whole names, or prefixes ending in ".".

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Our parameters' shapes."""
        return {ours: source.ours for ours, source in self.sources.items()}

    def released_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every released tensor read, name -> shape (for a tie, its first name only)."""
        return {name: s.shape for s in self.sources.values() for name in s.names}

    def ignores(self, name: str) -> bool:
        return any(name == kept or (kept.endswith(".") and name.startswith(kept)) for kept in self.ignored)

    def check(self, checkpoint: Checkpoint) -> None:
        """Raises ValueError naming the first missing, misshapen, non-float or unknown tensor of
        `checkpoint`, from its headers alone."""
        missing = []
        for s in self.sources.values():
            if s.tied and not any(name in checkpoint.shapes for name in s.names + s.tied):
                missing.append(" or ".join(repr(name) for name in s.names + s.tied))
            elif not s.tied:
                missing.extend(repr(name) for name in s.names if name not in checkpoint.shapes)
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ValueError(f"{checkpoint.source} lacks the {self.network} tensor {missing[0]}{more}.")
        expected = {name: s.shape for s in self.sources.values() for name in s.names + s.tied}
        for name, shape in expected.items():
            if name in checkpoint.shapes and checkpoint.shapes[name] != shape:
                raise ValueError(
                    f"{checkpoint.source} has tensor {name!r} of shape {checkpoint.shapes[name]}, where the {self.network} "
                    f"of its config.json has {shape}."
                )
            if name in checkpoint.shapes and checkpoint.dtypes[name] not in FLOATS:
                raise ValueError(f"{checkpoint.source} has tensor {name!r} of type {checkpoint.dtypes[name]}, not floating point.")
        unknown = sorted(name for name in checkpoint.shapes if name not in expected and not self.ignores(name))
        if unknown:
            raise ValueError(
                f"{checkpoint.source} has {len(unknown)} tensors the {self.network} does not know, e.g. {unknown[0]!r}: "
                f"is it a {self.network} release?"
            )

    def read(self, checkpoint: Checkpoint) -> dict[str, np.ndarray]:
        """Our parameters from `checkpoint`, checked first."""
        self.check(checkpoint)
        params = {}
        with checkpoint.reader() as get:
            for ours, s in self.sources.items():
                present = [name for name in s.names + s.tied if name in checkpoint.shapes]
                if s.stacked:
                    layers = [get(name) for name in s.names]
                    params[ours] = np.stack([layer.T if s.linear else layer for layer in layers])
                    continue
                value = get(present[0])
                for twin in present[1:]:
                    if not np.array_equal(get(twin), value):
                        raise ValueError(
                            f"{checkpoint.source} holds {present[0]!r} and {twin!r}, one tensor tied under two names, but they differ."
                        )
                params[ours] = np.ascontiguousarray(value.T) if s.linear else value
        return params


def read_config(directory: str, network: str) -> tuple[dict, str]:
    """(the parsed config.json of the `network` release in `directory`, its path)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"The {network} directory {directory} does not exist.")
    path = os.path.join(directory, CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory} has no {CONFIG}: it is not a {network} directory as save_pretrained writes it.")
    try:
        with open(path) as f:
            return json.load(f), path
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}).") from None


def settings(config: Mapping, source: str, network: str, required: Sequence[str], defaults: Mapping) -> dict:
    """The `required` fields of `config` and the others of `defaults` (transformers' defaults, for
    releases older than the field), unknown ones dropped; `source` names the config in messages."""
    for field in required:
        if field not in config:
            raise ValueError(f"{source} lacks {field!r}, which the {network} needs.")
    return {**defaults, **{field: config[field] for field in (*required, *defaults) if field in config}}


def find_file(directory: str, names: Sequence[str], what: str) -> str:
    """The path of the first of `names` in `directory`."""
    for name in names:
        if os.path.isfile(os.path.join(directory, name)):
            return os.path.join(directory, name)
    raise FileNotFoundError(f"{directory} has no {what} ({' or '.join(names)}).")


def read_tokenizer_json(path: str) -> tokenizers.Tokenizer:
    try:
        tokenizer = tokenizers.Tokenizer.from_file(path)
    except Exception as error:  # the library's errors name no file.
        raise ValueError(f"{path} is not a tokenizer.json the tokenizers library reads ({error}).") from None
    # `pack` pads and cuts; padding or truncation saved in the file would count as text.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


class Checkpoint:
    """The tensors of a released directory's safetensors file(s), from their headers: each one's
    file, shape and type."""

    def __init__(self, directory: str, network: str):
        index = os.path.join(directory, INDEX)
        if os.path.isfile(os.path.join(directory, WEIGHTS)):
            self.source, files = os.path.join(directory, WEIGHTS), [WEIGHTS]
        elif os.path.isfile(index):
            self.source, weight_map = index, _weight_map(index)
            files = sorted(set(weight_map.values()))
            absent = [shard for shard in files if not os.path.isfile(os.path.join(directory, shard))]
            if absent:
                raise FileNotFoundError(
                    f"{index} lists the shard {absent[0]!r}, which {directory} lacks ({len(absent)} of {len(files)} shards missing)."
                )
        else:
            raise FileNotFoundError(f"{directory} has neither {WEIGHTS} nor {INDEX}: no {network} weights in safetensors.")
        self.files, self.shapes, self.dtypes = {}, {}, {}
        for name in files:
            path = os.path.join(directory, name)
            try:
                with safetensors.safe_open(path, "numpy") as f:
                    for key in f.keys():
                        slice_ = f.get_slice(key)
                        self.files[key], self.shapes[key], self.dtypes[key] = path, tuple(slice_.get_shape()), slice_.get_dtype()
            except Exception as error:  # safetensors' own errors name no file.
                raise ValueError(f"{path} is not a safetensors file ({error}).") from None
        if self.source == index:
            for key, shard in weight_map.items():
                if self.files.get(key) != os.path.join(directory, shard):
                    raise ValueError(f"{index} puts tensor {key!r} in {shard!r}, which does not hold it.")

    @contextlib.contextmanager
    def reader(self):
        """A function name -> array, each file opened once."""
        with contextlib.ExitStack() as stack:
            opened = {}

            def get(name: str) -> np.ndarray:
                path = self.files[name]
                if path not in opened:
                    opened[path] = stack.enter_context(safetensors.safe_open(path, "numpy"))
                return opened[path].get_tensor(name)

            yield get


def _weight_map(index: str) -> dict[str, str]:
    try:
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{index} is not a safetensors index with a weight_map ({error!r}).") from None
    return weight_map


def pack(rows: Sequence[Sequence[int]], length: int, max_length: int, before: Sequence[int], after: Sequence[int], pad: int):
    """(int32 tokens [N, length], int32 lengths [N]): each row of text tokens cut to fit between
    `before` and `after` (so a cut caption still ends in its EOS), then padded with `pad`."""
    room = length - len(before) - len(after)
    if room < 0 or length > max_length:
        raise ValueError(f"A token length of {length} is outside [{len(before) + len(after)}, {max_length}], what the encoder takes.")
    tokens = np.full((len(rows), length), pad, np.int32)
    lengths = np.zeros(len(rows), np.int32)
    for i, row in enumerate(rows):
        row = [*before, *row[:room], *after]
        tokens[i, : len(row)], lengths[i] = row, len(row)
    return tokens, lengths


def write_random(
    directory: str, release: Release, config: Mapping, seed: int = 0, *, dtype: str = "float32", shards: int = 1,
    extra: Mapping[str, Sequence[int]] | None = None, tie: bool = False,
) -> dict[str, np.ndarray]:
    """Writes `config` as config.json and random tensors of every name `release` reads (with
    `tie`, also the copies of tied tensors under their other names), plus `extra` ({name: shape},
    what a bigger model holds beside them), as model.safetensors or as `shards` shards with their
    index; returns the tensors written. Linear weights and
    embeddings are N(0, 1 / width), norms' weights 1 + N(0, 0.01), biases N(0, 0.01): structure
    only, for tests and demos without the release."""
    rng = np.random.default_rng(seed)
    shapes = {**release.released_shapes(), **{name: tuple(shape) for name, shape in (extra or {}).items()}}
    tensors = {}
    for name, shape in shapes.items():
        noise = rng.standard_normal(shape)
        if len(shape) > 1:
            tensors[name] = noise / np.sqrt(shape[-1])
        else:
            tensors[name] = 0.1 * noise + (0.0 if name.endswith("bias") else 1.0)
    tensors = {name: np.asarray(value, DTYPES[dtype]) for name, value in tensors.items()}
    if tie:
        tensors.update({twin: tensors[s.names[0]] for s in release.sources.values() for twin in s.tied})
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, CONFIG), "w") as f:
        json.dump(config, f, indent=2)
    if shards == 1:
        safetensors.numpy.save_file(tensors, os.path.join(directory, WEIGHTS))
        return tensors
    names, weight_map = list(tensors), {}
    for k, part in enumerate(np.array_split(np.arange(len(names)), shards)):
        shard = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        safetensors.numpy.save_file({names[i]: tensors[names[i]] for i in part}, os.path.join(directory, shard))
        weight_map.update({names[i]: shard for i in part})
    with open(os.path.join(directory, INDEX), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)
    return tensors
