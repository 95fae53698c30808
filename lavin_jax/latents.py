"""Latents for the diffusion transformers: an autoencoder run (an ST-VAE, or the SD VAE converted
by `lavin_jax.convert --vae`) as a frozen autoencoder, its latent statistics, and the latent cache.

J-DiT and DiT learn on normalised latents z_n = (z - shift) * scale and their predictions are
decoded back to pixels. `load(workdir, family)` reads the run (its newest checkpoint's EMA weights
and config, and `latent_stats.json` beside the checkpoints). The commands:

    # shift and scale of a trained ST-VAE's latents, written to RUN/latent_stats.json
    python -m lavin_jax.main --mode=latent_stats --config=configs/stvae_tiny.py --workdir=RUN
    # episodes of a J-DiT config, the labelled images of a DiT config or the clips of a VDT
    # config (each frame alone), encoded once into
    # ArrayRecord shards in DIR (config.vae.checkpoint names the ST-VAE run); then train with
    # --config.data.source=latents --config.data.latent_dir=DIR
    python -m lavin_jax.main --mode=latent_cache --config=configs/tiny_latent.py --workdir=DIR --examples=4096

The released weights use fixed statistics: LaVin-DiT's ST-VAE `OFFICIAL_SHIFT`, `OFFICIAL_SCALE`;
the SD VAE no shift and DiT's scale 0.18215 (`RELEASED`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from lavin_jax import checkpoint, models, parallel, runs
from lavin_jax import config as config_lib
from lavin_jax.data import captioned, clips, episodes, labelled, records, scoring, synthetic
from lavin_jax.models import sdvae, text

OFFICIAL_SHIFT = 0.032470703125
OFFICIAL_SCALE = 1.08936170213
# (shift, scale) of each released autoencoder's latents, as its diffusion model was trained on them.
RELEASED = {"stvae": (OFFICIAL_SHIFT, OFFICIAL_SCALE), "sdvae": (0.0, sdvae.SCALE)}
STATS_FILE = "latent_stats.json"
CACHE_FILE = "latents.json"  # the cache's description, beside its shards.
NULL_TEXT_FILE = "null_text.npz"  # a caption cache's empty caption, as the step reads it.


@dataclasses.dataclass
class Autoencoder:
    """A trained autoencoder (ST-VAE or SD VAE), frozen: `encode` pixels (B, T, H, W, 3) to
    normalised latents (posterior mode) and `decode` them back. `params` are its EMA weights."""

    config: ml_collections.ConfigDict  # the autoencoder run's config.
    graphdef: Any
    params: Any
    shift: float
    scale: float

    def model(self, params):
        return nnx.merge(self.graphdef, params)

    def encode(self, params, frames: jax.Array) -> jax.Array:
        return (self.model(params).encode(frames).mode() - self.shift) * self.scale

    def decode(self, params, latents: jax.Array) -> jax.Array:
        return self.model(params).decode(latents / self.scale + self.shift)

    def latent_frames(self, frames: int) -> int:
        """Latent frames of an item of `frames` pixel frames (the family's rule)."""
        return models.FAMILIES[self.config.model.name].latent_frames(self.config.model, frames)

    def encode_frames(self, params, frames: jax.Array, item_frames: int = 1) -> jax.Array:
        """Frames (B, N*T, H, W, 3), N items of T = `item_frames` frames, each item encoded as one
        clip (an image as a 1-frame clip): (B, N*T', h, w, C)."""
        b, n = frames.shape[0], frames.shape[1] // item_frames
        latents = self.encode(params, frames.reshape(b * n, item_frames, *frames.shape[2:]))
        return latents.reshape(b, -1, *latents.shape[2:])

    def decode_frames(self, params, latents: jax.Array, item_frames: int = 1) -> jax.Array:
        """The inverse of `encode_frames`: latents of N items back to (B, N*T, H, W, 3)."""
        b, per_item = latents.shape[0], self.latent_frames(item_frames)
        n = latents.shape[1] // per_item
        frames = self.decode(params, latents.reshape(b * n, per_item, *latents.shape[2:]))
        return frames.reshape(b, -1, *frames.shape[2:])


def load(workdir: str, family: str = "stvae", *, need_stats: bool = True, abstract: bool = False, mesh=None) -> Autoencoder:
    """The newest checkpoint of the `family` (stvae, sdvae) run in `workdir`, replicated on `mesh`
    (default: this process's devices).

    With `abstract`, only shapes: `params` are ShapeDtypeStructs, no array is read, and a workdir
    without checkpoints stands for the released autoencoder (`--mode=compile` on a laptop)."""
    directory = os.path.join(workdir, "checkpoints")
    released = abstract and (not os.path.isdir(directory) or checkpoint.latest_step(directory) is None)
    if released:
        config = runs.data_parallel(config_lib.base(family))  # its model config is the released one's.
    else:
        config, step = runs.trained_config(workdir, family)
    mesh = mesh or parallel.make_mesh(config)
    graphdef, abstract_params = runs.abstract_model(config.model, mesh, config.mesh.rules)  # shapes and shardings only.
    if released:
        return Autoencoder(config, graphdef, abstract_params, *RELEASED[family])
    params = abstract_params if abstract else runs.restore_ema(workdir, step, abstract_params)
    shift, scale = 0.0, 1.0
    stats_path = os.path.join(workdir, STATS_FILE)
    if os.path.exists(stats_path):
        with open(stats_path) as f:
            stats = json.load(f)
        shift, scale = stats["shift"], stats["scale"]
    elif need_stats and not abstract:
        raise FileNotFoundError(
            f"Autoencoder run {workdir!r} has no {STATS_FILE}; compute it with: "
            f"python -m lavin_jax.main --mode=latent_stats --config=CONFIG --workdir={workdir}"
        )
    return Autoencoder(config, graphdef, params, float(shift), float(scale))


def compute_stats(workdir: str, family: str = "stvae", examples: int = 256, batch: int = 16) -> dict:
    """Shift (mean) and scale (1 / std) of the `family` run's image latents over held-out
    synthetic scenes, written to workdir/latent_stats.json."""
    vae = load(workdir, family, need_stats=False)
    source = synthetic.SyntheticClips(vae.config.data, vae.config.seed + 2, frames=1)
    encode = jax.jit(vae.encode)
    total, total_sq, count = 0.0, 0.0, 0
    for start in range(0, examples, batch):
        frames = np.stack([source[i]["video"] for i in range(start, min(start + batch, examples))])
        z = np.asarray(jax.device_get(encode(vae.params, frames)), np.float64)
        total, total_sq, count = total + z.sum(), total_sq + np.square(z).sum(), count + z.size
    mean = total / count
    std = np.sqrt(max(total_sq / count - mean**2, 1e-12))
    return write_stats(workdir, {"shift": float(mean), "scale": float(1.0 / std), "examples": examples})


def write_stats(workdir: str, stats: dict) -> dict:
    """`stats` (shift, scale and where they came from) as workdir/latent_stats.json, which `load` reads."""
    with open(os.path.join(workdir, STATS_FILE), "w") as f:
        json.dump(stats, f, indent=2)
    return stats


# --- the latent cache ------------------------------------------------------------------------


def _to_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _from_bytes(record: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(record)) as arrays:
        return {name: arrays[name] for name in arrays.files}


def _cache_description(config) -> dict:
    """What decides a cache's contents; a config reading the cache must agree on it."""
    d = config.data
    common = {"conditioning": config.conditioning, "seed": int(config.seed), "image_size": int(d.image_size),
              "vae": os.path.abspath(config.vae.checkpoint)}
    if config.conditioning == "class":
        return {**common, "classes": d.classes, "mirrored": bool(d.flip_prob > 0)}
    if config.conditioning == "mask":
        return {**common, "clips": d.clips, "video_frames": int(d.video_frames), "frame_stride": int(d.frame_stride)}
    if config.conditioning == "text":
        m = config.model
        return {**common, "captions": d.captions, "video_frames": config_lib.caption_frames(config), "frame_stride": int(d.frame_stride),
                "text_encoder": m.text_encoder, "text_encoder_path": os.path.abspath(m.text_encoder_path) if m.text_encoder_path else "",
                "text_length": int(m.text_length)}
    return {
        **common,
        "max_pairs": int(d.max_pairs),
        "tasks": list(d.tasks),
        "records": [os.path.abspath(r) for r in d.records],
        "task_weights": list(d.task_weights),
        "video_frames": int(d.video_frames),
    }


def write_cache(config, out_dir: str, examples: int, *, batch: int = 8, shard_size: int = 1024) -> dict:
    """Encodes `examples` examples of `config`'s source into ArrayRecord shards in `out_dir`,
    described by its CACHE_FILE: episodes (in-context), class-labelled images or clips (masks)."""
    if examples < 1:
        raise ValueError(f"examples={examples}: the latent cache needs at least one example.")
    vae = load(config.vae.checkpoint, config.vae.name)
    os.makedirs(out_dir, exist_ok=True)
    writer = records.ShardWriter(out_dir, "latents", shard_size)
    write = {"class": _write_images, "mask": _write_clips, "text": _write_captions}.get(config.conditioning, _write_episodes)
    written = write(config, vae, writer, examples, batch)
    description = {**_cache_description(config), **written, "shards": writer.close(), "shift": vae.shift, "scale": vae.scale}
    with open(os.path.join(out_dir, CACHE_FILE), "w") as f:
        json.dump(description, f, indent=2)
    return description


def _write_episodes(config, vae: Autoencoder, writer: records.ShardWriter, examples: int, batch: int) -> dict:
    """Episodes 0 .. examples-1 of the episode source, each with data.max_pairs pairs (fewer are a
    prefix: `LatentEpisodes` cuts them) and of the kind (image or video task) its global batch
    draws."""
    source = episodes.Episodes(config.data, config.seed, config.global_batch_size)
    video = [source.batch_kind(i // config.global_batch_size)[1] for i in range(examples)]
    encode = jax.jit(vae.encode_frames, static_argnums=2)
    for start in range(0, examples, batch):
        indices = range(start, min(start + batch, examples))
        drawn = [source.episode(i, config.data.max_pairs, video[i]) for i in indices]
        latent = {}  # encoded by kind: image and video items have different shapes.
        for kind in {video[i] for i in indices}:
            group = [i for i in indices if video[i] == kind]
            frames = np.stack([np.concatenate([drawn[i - start]["cond"], drawn[i - start]["target"]]) for i in group])
            item_frames = int(config.data.video_frames) if kind else 1
            z = np.asarray(jax.device_get(encode(vae.params, frames, item_frames)), np.float32)
            latent.update(zip(group, z))
        for i, episode in zip(indices, drawn):
            z = latent[i]
            per_item = z.shape[0] // (2 * config.data.max_pairs + 2)  # items: K pairs, query, answer.
            writer.write(_to_bytes({"cond": z[:-per_item], "target": z[-per_item:], "task": episode["task"]}))
    return {"examples": examples, "video": [i for i in range(examples) if video[i]], "video_share": source.video_share}


def _good_batches(dataset, examples: int, batch: int):
    """The reads of the first `examples` records of `dataset` (all, if it has fewer) in batches
    of up to `batch`, bad records passed over with a warning."""
    count = min(examples, len(dataset))
    for start in range(0, count, batch):
        read = []
        for i in range(start, min(start + batch, count)):
            try:
                read.append(dataset.read(i))
            except records.BadRecord as error:
                logging.warning("Leaving a bad record of %s out of the latent cache: %s", dataset.name, error)
        if read:
            yield read


def _write_images(config, vae: Autoencoder, writer: records.ShardWriter, examples: int, batch: int) -> dict:
    """The first `examples` images of the labelled training split (all, if it has fewer), each
    with its mirror image where the run flips (`data.flip_prob`): a flip of the latents is not the
    latents of the flipped image. Bad records are passed over and counted."""
    d = config.data
    dataset = labelled.open_dataset(d.classes, "train", int(d.image_size), seed=int(config.seed))
    views = (False, True) if d.flip_prob > 0 else (False,)
    encode = jax.jit(vae.encode_frames)
    written = 0
    for read in _good_batches(dataset, examples, batch):
        pixels = np.concatenate([dataset.target(image, flip) for image, _ in read for flip in views])[:, None]
        z = np.asarray(jax.device_get(encode(vae.params, pixels)), np.float32)  # [images * views, 1, h, w, C]
        for (_, label), latents in zip(read, z.reshape(len(read), len(views), *z.shape[1:])):
            writer.write(_to_bytes({"target": latents, "label": np.int32(label)}))
        written += len(read)
    return {"examples": written, "skipped": min(examples, len(dataset)) - written, "class_names": list(dataset.class_names)}


def _write_clips(config, vae: Autoencoder, writer: records.ShardWriter, examples: int, batch: int) -> dict:
    """The first `examples` training clips (all, if there are fewer), each frame encoded alone as
    VDT learns them. Bad clips are passed over and counted."""
    d = config.data
    dataset = clips.open_clips(d.clips, "train", int(d.image_size), int(d.video_frames), stride=int(d.frame_stride), seed=int(config.seed))
    encode = jax.jit(vae.encode_frames)
    written = 0
    for read in _good_batches(dataset, examples, batch):
        z = np.asarray(jax.device_get(encode(vae.params, scoring.from_uint8(np.stack(read)))), np.float32)
        for latents in z:
            writer.write(_to_bytes({"target": latents}))
        written += len(read)
    return {"examples": written, "skipped": min(examples, len(dataset)) - written}


def _caption_fields(model_cfg):
    """A function of captions -> them as the step reads them, by name ([N, ...] each): a frozen
    encoder's hidden states and pooled vector (its weights put on the devices once), or a
    trained one's tokens."""
    to_tokens, length = text.tokenizer(model_cfg), int(model_cfg.text_length)
    if model_cfg.text_encoder == "bytes":
        return lambda words: dict(zip(("text", "text_length"), to_tokens(words, length)))
    weights = jax.device_put(text.frozen_weights(model_cfg))
    encode = jax.jit(text.frozen_encode(model_cfg.text_encoder, model_cfg.text_encoder_path))

    def fields(words):
        tokens, lengths = to_tokens(words, length)
        hidden, pooled = jax.device_get(encode(weights, tokens, lengths))
        return {"text_hidden": np.asarray(hidden, np.float32), "text_pooled": np.asarray(pooled, np.float32), "text_length": lengths}

    return fields


def _stored_caption(fields: dict) -> dict:
    """A frozen encoder's hidden states as the cache keeps them: the caption's own rows, in
    float16 (T5-XXL's 120 x 4096 floats are 2 MB an example in float32)."""
    if "text_hidden" not in fields:
        return fields
    return {**fields, "text_hidden": fields["text_hidden"][: int(fields["text_length"])].astype(np.float16)}


def _read_caption(fields: dict, length: int) -> dict:
    """`_stored_caption`'s fields as the step reads them: float32, padded with zero rows to
    `length`."""
    if "text_hidden" not in fields:
        return fields
    hidden = fields["text_hidden"].astype(np.float32)
    return {**fields, "text_hidden": np.pad(hidden, ((0, length - len(hidden)), (0, 0)))}


def _write_captions(config, vae: Autoencoder, writer: records.ShardWriter, examples: int, batch: int) -> dict:
    """The first `examples` captioned training examples (all, if there are fewer), each frame
    encoded alone, with their captions as the step would read them (`_caption_fields`: a frozen
    encoder's output, computed once here); the empty caption's beside them (NULL_TEXT_FILE), for
    the captions the run drops. Bad examples are passed over and counted."""
    d, m = config.data, config.model
    dataset = captioned.open_captioned(d.captions, "train", int(d.image_size), frames=config_lib.caption_frames(config),
                                       stride=int(d.frame_stride), seed=int(config.seed))
    encode, caption_fields = jax.jit(vae.encode_frames), _caption_fields(m)
    written = 0
    for read in _good_batches(dataset, examples, batch):
        z = np.asarray(jax.device_get(encode(vae.params, scoring.from_uint8(np.stack([pictures for pictures, _ in read])))), np.float32)
        fields = caption_fields([words for _, words in read])
        for i, latents in enumerate(z):
            writer.write(_to_bytes({"target": latents, **_stored_caption({name: value[i] for name, value in fields.items()})}))
        written += len(read)
    np.savez(os.path.join(writer.directory, NULL_TEXT_FILE), **_stored_caption({name: value[0] for name, value in caption_fields([""]).items()}))
    return {"examples": written, "skipped": min(examples, len(dataset)) - written}


def _open_cache(config):
    """(description, record source) of the cache in config.data.latent_dir, checked against the
    config; a cache written for other data is named."""
    import grain

    directory = config.data.latent_dir
    path = os.path.join(directory, CACHE_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"config.data.latent_dir={directory!r} has no {CACHE_FILE}; write the cache with: "
            "python -m lavin_jax.main --mode=latent_cache --config=CONFIG --workdir=DIR --examples=N"
        )
    with open(path) as f:
        description = json.load(f)
    for field, value in _cache_description(config).items():
        cached = description.get(field)
        ok = cached is not None and value <= cached if field == "max_pairs" else value == cached
        if not ok:
            raise ValueError(
                f"Latent cache {directory!r} was written with {field}={cached!r} but the config "
                f"has {value!r}; write a cache for this config."
            )
    return description, grain.sources.ArrayRecordDataSource([os.path.join(directory, shard) for shard in description["shards"]])


class LatentImages:
    """The class-labelled images of a latent cache, read as a `labelled.Dataset` is (so
    `labelled.LabelledImages` draws from it as from pixels): `read(i)` is (the image's latents
    [views, 1, h, w, C], its label), the views being the image and, where the run flips, its
    mirror image; `target` picks the view."""

    def __init__(self, config):
        self.description, self._records = _open_cache(config)
        self.name = f"the latent cache {config.data.latent_dir!r}"
        self.class_names = list(self.description["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.description["examples"])

    def read(self, index: int) -> tuple[np.ndarray, int]:
        record = _from_bytes(self._records[int(index)])
        return record["target"], int(record["label"])

    @staticmethod
    def target(latents: np.ndarray, flip: bool) -> np.ndarray:
        return latents[1 if flip and len(latents) > 1 else 0]


class LatentClips:
    """The clips of a latent cache, read as `data.clips` are (so `masks.MaskedClips` draws from
    it as from pixels): `read(i)` is the clip's per-frame latents [T, h, w, C]."""

    def __init__(self, config):
        self.description, self._records = _open_cache(config)
        self.name = f"the latent cache {config.data.latent_dir!r}"

    def __len__(self) -> int:
        return int(self.description["examples"])

    def read(self, index: int) -> np.ndarray:
        return _from_bytes(self._records[int(index)])["target"]


class LatentCaptions:
    """The captioned examples of a latent cache, read as `data.captioned`'s are (so the text
    conditioning's source draws from it as from pixels): `read(i)` is (the per-frame latents [T,
    h, w, C], the caption as the step reads it, by name), `null` the empty caption's."""

    def __init__(self, config):
        self.description, self._records = _open_cache(config)
        self.name = f"the latent cache {config.data.latent_dir!r}"
        self._length = int(config.model.text_length)
        with np.load(os.path.join(config.data.latent_dir, NULL_TEXT_FILE)) as null:
            self.null = _read_caption({name: null[name] for name in null.files}, self._length)

    def __len__(self) -> int:
        return int(self.description["examples"])

    def read(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        record = _from_bytes(self._records[int(index)])
        return record.pop("target"), _read_caption(record, self._length)


class LatentEpisodes:
    """Random-access episodes from a latent cache, the `episodes.Episodes` of latent space.

    Global batch b draws (K, video) as the pixel source does; its example i is cached episode
    i mod n of that kind (n of them), with its first K pairs and the query (K = 0: a zero latent
    item, then the query, as `incontext.InContext.null` builds it)."""

    def __init__(self, config):
        self.description, self._records = _open_cache(config)
        video = set(self.description["video"])
        examples = range(int(self.description["examples"]))
        self._pools = {kind: [i for i in examples if (i in video) == kind] for kind in (False, True)}
        self._video_share = float(self.description["video_share"])
        self._data = config.data
        self._seed = int(config.seed)
        self._global_batch_size = int(config.global_batch_size)

    def __len__(self) -> int:
        return episodes.NUM_EXAMPLES

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        batch_index = index // self._global_batch_size
        k, video = episodes.batch_kind(self._seed, batch_index, self._data, self._video_share)
        pool = self._pools[video]
        if not pool:
            raise ValueError(
                f"Latent cache {self._data.latent_dir!r} holds no {'video' if video else 'image'} "
                "episodes; write it with more --examples."
            )
        record = _from_bytes(self._records[pool[index % len(pool)]])
        cond, target = record["cond"], record["target"]
        per_item = target.shape[0]
        pairs = cond[:-per_item][: 2 * k * per_item] if k else np.zeros_like(target)
        return {"cond": np.concatenate([pairs, cond[-per_item:]]), "target": target, "task": record["task"]}
