"""Prompting a trained J-DiT: a few input/target pairs and a query in, the query's target out.

    from lavin_jax import inference

    predictor = inference.Predictor.from_workdir("runs/tiny")  # newest checkpoint, EMA weights
    answer = predictor.predict([("a.png", "a_edges.png"), ("b.png", "b_edges.png")], "c.png")

Items are uint8 images [H, W, 3], clips [T, H, W, 3] (T = the run's `data.video_frames`) or
paths of image or video files. Every item is fitted into the model's square frame, by default by
the `pad` rule (long side to `data.image_size`, centred on black; `fit="stretch"` scales both
sides), and the prediction is cut out of its frame and scaled back to the query's own size.
Many episodes go through `predict_batch`, in batches of `batch_size` (padded to it, so each kind
of episode compiles once); episode i of a call draws its noise from (seed, i) alone, so its
answer does not depend on the batch size or on the other episodes of the call.

The released inference script's recipe is a preset: 4 pairs drawn (with replacement) from a
template folder of `<id>_input.png` / `<id>_target.png` files, items stretched with bicubic
resampling, the official 20-point time grid with Euler steps, guidance 1.5. The script works at
512 px by default, so load the run with {"data.image_size": 512}:

    predictor = inference.Predictor.from_workdir(run, overrides={"data.image_size": 512})
    pairs = inference.template_pairs("template/depth_estimation", seed=0)
    answer = predictor.predict(pairs, "query.png", **inference.OFFICIAL)

Two differences remain: the script encodes the prompts with a sample of the ST-VAE's posterior
(ours: its mode) and returns the 512 px square (ours: the query's own size).
"""

from __future__ import annotations

import collections
import glob
import os

import jax
import numpy as np
from PIL import Image

from lavin_jax import flow, parallel, train
from lavin_jax.data import ingest, records, scoring


OFFICIAL = {"steps": len(flow.OFFICIAL_GRID) - 1, "time_grid": "official", "sampler": "euler", "cfg_scale": 1.5,
            "fit": "stretch", "resample": "bicubic"}
FITS = ("pad", "stretch")


def template_pairs(directory: str, count: int = 4, seed: int = 0) -> list[tuple[str, str]]:
    """`count` (input, target) file pairs drawn with replacement, as the released script draws its
    prompts, from a template folder of `<id>_input.png` and `<id>_target.png` files."""
    inputs = sorted(glob.glob(os.path.join(directory, "*_input.png")))
    pairs = [(path, path[: -len("_input.png")] + "_target.png") for path in inputs]
    missing = [target for _, target in pairs if not os.path.exists(target)]
    if not pairs or missing:
        raise FileNotFoundError(
            f"Template folder {directory!r} has {len(pairs)} <id>_input.png files"
            + (f" and lacks {missing[0]}" if missing else "") + "; every input needs its <id>_target.png."
        )
    rng = np.random.default_rng(seed)
    return [pairs[i] for i in rng.integers(len(pairs), size=count)]


class Predictor:
    """A J-DiT's parameters with its objective's jitted sampler, on `mesh`.

    `from_workdir` loads a run; the trainer's evaluation builds one around the EMA parameters it
    holds. Sampling defaults (steps, guidance scale, sampler, time grid) are the run's
    `config.flow`; every call may override them. Each (episode shape, steps, sampler, guided or
    not) compiles once; another guidance scale above 1 reuses the compiled sampler."""

    def __init__(self, objective, graphdef, params, constants: dict, mesh, *, batch_size: int | None = None):
        self.config = objective.config
        self.params = params  # the trainer swaps in newer EMA parameters before each evaluation.
        self._constants = constants
        shards = parallel.batch_shards(mesh, self.config.mesh.rules)
        # Default: at least 8 episodes a call, and a whole number of rows for every batch shard.
        self.batch_size = batch_size or shards * -(-8 // shards)
        if self.batch_size % shards:
            raise ValueError(f"batch_size={self.batch_size} is not a multiple of the {shards} batch shards of the mesh.")
        self._batch_sharding = parallel.batch_sharding(mesh, self.config.mesh.rules)
        self._sample = objective.sampler(graphdef, mesh)
        self.step = None  # the checkpoint's step, when loaded from a run.

    @classmethod
    def from_workdir(cls, workdir: str, *, step: int | None = None, overrides: dict | None = None,
                     batch_size: int | None = None) -> Predictor:
        """The EMA weights of the run in `workdir` (its newest checkpoint unless `step`), with the
        run's config plus `overrides` (dotted names, e.g. {"vae.checkpoint": "runs/stvae"} when
        the ST-VAE run has moved), data-parallel over all devices."""
        config, step = train.trained_config(workdir, "jdit", step=step, overrides=overrides)
        s = train.setup(config, parallel.make_mesh(config))
        s.objective.check_files()  # a moved ST-VAE run is named before the J-DiT is read.
        params = train.restore_ema(workdir, step, s.abstract_state["ema"])
        predictor = cls(s.objective, s.graphdefs["model"], params, train.place_constants(s), s.mesh, batch_size=batch_size)
        predictor.step = step
        return predictor

    @property
    def image_size(self) -> int:
        return int(self.config.data.image_size)

    def sample(self, cond: np.ndarray, frames: int, *, indices=None, seed: int = 0, steps: int | None = None,
               cfg_scale: float | None = None, sampler: str | None = None, time_grid: str | None = None) -> np.ndarray:
        """Answers of episodes already at the model's size: `cond` [N, (2K+1)*frames, S, S, 3],
        float32 in [-1, 1] or uint8 (pairs then query, as training sees them) -> float32 [N,
        frames, S, S, 3]. Episode n draws its noise from (seed, indices[n]), by default (seed, n)."""
        f = self.config.flow
        steps = f.sample_steps if steps is None else steps
        scale = float(f.cfg_scale if cfg_scale is None else cfg_scale)
        method = sampler or f.sampler
        if method not in flow.SAMPLERS:
            raise ValueError(f"sampler={method!r} must be one of {', '.join(flow.SAMPLERS)}.")
        grid = np.asarray(flow.time_grid(steps, time_grid or f.time_grid), np.float32)
        n = len(cond)
        indices = np.arange(n) if indices is None else np.asarray(indices)
        items, extra = divmod(cond.shape[1], frames) if cond.ndim == 5 else (0, 1)
        # K pairs then the query: 2K+1 items, or [zero item, query] without pairs.
        if n == 0 or extra or not (items % 2 or items == 2) or len(indices) != n:
            raise ValueError(
                f"Episodes {cond.shape} with {len(indices)} noise indices: N >= 1 episodes of {frames}-frame "
                "items (K pairs then the query, or a zero item then the query) and one index each are needed."
            )
        answers = []
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            # Padded to batch_size with repeats of the last episode, whose answers are dropped.
            rows = np.minimum(np.arange(start, start + self.batch_size), stop - 1)
            answer = self._sample(
                self.params, self._constants, self._place(cond, rows), np.int32(seed),
                self._place(indices.astype(np.int32), rows), grid, np.float32(scale), int(frames), scale != 1.0, method,
            )
            answers.append(answer[: stop - start])
        return np.concatenate(jax.device_get(answers))  # every batch dispatched before the first is awaited.

    def _place(self, array: np.ndarray, rows: np.ndarray) -> jax.Array:
        """`array[rows]` as one batch sharded by the batch rule; each device takes only its own
        rows (uint8 frames become float32 there), so no host builds a whole batch of frames."""

        def part(index):
            block = array[rows[index[0]]][(slice(None), *index[1:])]
            return scoring.from_uint8(block) if block.dtype == np.uint8 else block

        return jax.make_array_from_callback((len(rows), *array.shape[1:]), self._batch_sharding, part)

    def predict(self, pairs, query, **options) -> np.ndarray:
        """The answer to one episode: `pairs` a list of (input, target) items, `query` an item;
        uint8 of the query's shape. Options as `predict_batch`'s."""
        return self.predict_batch([(pairs, query)], **options)[0]

    def predict_batch(self, episodes, *, fit: str = "pad", resample: str = "bilinear", seed: int = 0, **options) -> list[np.ndarray]:
        """Answers to many (pairs, query) episodes, uint8, each of its query's shape. Episodes
        with the same number of pairs and frames are sampled together. `fit`: pad or stretch
        items into the model's frame; `resample`: bilinear, bicubic or nearest (class-coloured
        targets). Further options (steps, cfg_scale, sampler, time_grid) as `sample`'s."""
        if fit not in FITS:
            raise ValueError(f"fit={fit!r} must be one of {', '.join(FITS)}.")
        if resample not in records.RESAMPLE:
            raise ValueError(f"resample={resample!r} must be one of {', '.join(records.RESAMPLE)}.")
        prepared = [self._prepare(pairs, query, fit, resample, f"episodes[{i}]") for i, (pairs, query) in enumerate(episodes)]
        groups = collections.defaultdict(list)  # by frames and shape: a 9-item episode may be 9 images or 3 clips.
        for i, (cond, query, _) in enumerate(prepared):
            groups[len(query), cond.shape].append(i)
        answers = [None] * len(prepared)
        for members in groups.values():
            cond = np.stack([prepared[i][0] for i in members])
            frames = len(prepared[members[0]][1])
            predicted = scoring.to_uint8(self.sample(cond, frames, indices=members, seed=seed, **options))
            for i, answer in zip(members, predicted):
                answers[i] = _restore(answer, *prepared[i][1:], fit, resample)
        return answers

    def _prepare(self, pairs, query, fit: str, resample: str, where: str):
        """(cond float32 [(2K+1)T, S, S, 3], the query's frames, whether the query was one image)."""
        query_frames, single = _frames(query, f"{where} query")
        items = [(query_frames, "query")]
        for k, pair in enumerate(pairs):
            if len(pair) != 2:
                raise ValueError(f"{where} pairs[{k}] must be an (input, target) pair.")
            items += [(_frames(x, f"{where} pairs[{k}] {role}")[0], f"pairs[{k}] {role}") for x, role in zip(pair, ("input", "target"))]
        frames = len(query_frames)
        allowed = (1, int(self.config.data.video_frames))
        for item, name in items:
            if len(item) != frames or frames not in allowed:
                raise ValueError(
                    f"{where} {name} has {len(item)} frames; every item must have as many as the query, 1 (images) "
                    f"or config.data.video_frames={allowed[1]} (clips), and the query has {frames}."
                )
        fitted = lambda x: scoring.from_uint8(records.resize(x, self.image_size, fit, resample))
        # uint8 black is -1, not the zero item that stands for dropped pairs: floats from here on.
        cond = [fitted(item) for item, _ in items[1:]] or [np.zeros((frames, self.image_size, self.image_size, 3), np.float32)]
        # As training sees an episode: in_1, tgt_1, ..., in_K, tgt_K, query; no pairs: [zeros, query].
        return np.concatenate(cond + [fitted(query_frames)]), query_frames, single


def _frames(item, name: str) -> tuple[np.ndarray, bool]:
    """An item as uint8 [T, H, W, 3], and whether it was a single image."""
    if isinstance(item, (str, os.PathLike)):
        try:
            frames = ingest.read_frames(os.fspath(item))
        except ingest.Skip as skip:
            raise ValueError(f"The {name}, {os.fspath(item)!r}, {skip}.") from None
        return frames, frames.shape[0] == 1 and not os.fspath(item).lower().endswith(ingest.VIDEO_EXTENSIONS)
    item = np.asarray(item)
    if item.dtype != np.uint8 or item.ndim not in (3, 4) or item.shape[-1] != 3:
        raise ValueError(f"The {name} is {item.dtype} {item.shape}; a uint8 image [H, W, 3], clip [T, H, W, 3] or file path is needed.")
    return (item[None], True) if item.ndim == 3 else (item, False)


def _restore(answer: np.ndarray, query: np.ndarray, single: bool, fit: str, resample: str) -> np.ndarray:
    """The model-size answer [T, S, S, 3] cut to the query's part of the frame (all of it when
    stretched) and scaled back to the query's size."""
    height, width = query.shape[1:3]
    size = answer.shape[1]
    top, left, h, w = records.pad_box(height, width, size) if fit == "pad" else (0, 0, size, size)
    restored = np.stack([
        np.asarray(Image.fromarray(frame[top : top + h, left : left + w]).resize((width, height), records.RESAMPLE[resample]))
        for frame in answer
    ])
    return restored[0] if single else restored
