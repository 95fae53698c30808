"""In-context conditioning, J-DiT's: a few input/target pairs of one task and a query.

A batch is {"cond": [in_1, tgt_1, ..., in_K, tgt_K, query], "target": [answer], "task",
"skipped"}, each item T frames (1 for image tasks, `data.video_frames` for video tasks), from the
synthetic suite and record directories (`data/episodes.py`) or a latent cache (`latents.py`).
Guidance's null condition drops the pairs and keeps the query, as the official LaVin-DiT code does.
A prompt is (pairs, query): uint8 arrays or image/video files of any size, fitted into the model's
square frame and the answer cut back to the query's size. Evaluation scores held-out episodes of
every task beside two baselines (`lavin_jax.evaluation`).
"""

from __future__ import annotations

import collections
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from lavin_jax import evaluation, flow, latents
from lavin_jax.conditioning.base import Conditioning
from lavin_jax.config import require
from lavin_jax.data import episodes, media, records, scoring, synthetic

# The released inference script's recipe (`Predictor.predict(..., **OFFICIAL)`): the official
# 20-point time grid with Euler steps, guidance 1.5, items stretched with bicubic resampling.
OFFICIAL = {"steps": len(flow.OFFICIAL_GRID) - 1, "time_grid": "official", "sampler": "euler", "cfg_scale": 1.5, "fit": "stretch", "resample": "bicubic"}
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


class InContext(Conditioning):
    pixel_fields = ("cond",)

    @staticmethod
    def check(config) -> None:
        d, v = config.data, config.vae
        Conditioning.check_source(config)
        require(
            not d.tasks or (d.image_size >= 16 and d.image_size % 4 == 0),
            f"config.data.image_size={d.image_size}: the synthetic tasks render frames whose side is a multiple of 4, at least 16.",
        )
        require(d.video_frames >= 2, f"config.data.video_frames={d.video_frames} must be at least 2.")
        if v.name == "stvae":
            synthetic.check_clip_frames("config.data.video_frames", int(d.video_frames))
        require(d.max_pairs >= 1, f"config.data.max_pairs={d.max_pairs} must be at least 1.")
        require(0.0 <= d.cond_drop_prob < 1.0, f"config.data.cond_drop_prob={d.cond_drop_prob} must be in [0, 1).")
        require(config.sample.num_pairs >= 0, f"config.sample.num_pairs={config.sample.num_pairs} must be non-negative.")
        require(config.eval.episodes >= 1, f"config.eval.episodes={config.eval.episodes} must be at least 1.")

    def check_eval_files(self, judge: bool = True) -> None:
        evaluation.check_files(self.config)  # episodes are drawn from the data, judged or not.

    def source(self, seed: int):
        if self.config.data.source == "latents":
            return latents.LatentEpisodes(self.config)
        return episodes.Episodes(self.config.data, seed, self.config.global_batch_size)

    def largest_batch(self, batch_size: int) -> dict:
        """max_pairs pairs of video items if the mixture has video tasks (else images)."""
        c = self.config
        mixture = episodes.Episodes(c.data, c.seed, batch_size)
        example = mixture.episode(0, c.data.max_pairs, mixture.video_share > 0)
        return {name: jax.ShapeDtypeStruct((batch_size, *x.shape), x.dtype) for name, x in example.items()}

    def example_context(self, frame) -> tuple[int, dict]:
        """One image episode of max_pairs pairs and a query."""
        return 1, {"cond": jax.ShapeDtypeStruct((1, 2 * self.config.data.max_pairs + 1, *frame), jnp.float32)}

    def null(self, context: dict, frames: int) -> dict:
        """The pairs dropped, the query kept: as in the official inference code, one zero item in
        front of the query, so the condition stream is [0, query], each `frames` frames long (what
        training sees in a batch whose pairs were dropped)."""
        query = context["cond"][:, -frames:]
        return {**context, "cond": jnp.concatenate([jnp.zeros_like(query), query], axis=1)}

    def evaluator(self, *, count=None, distances=True, prefix="samples", judge=True):
        return evaluation.Evaluation(self.config, episodes_per_task=count, distances=distances, prefix=prefix)

    def answer(self, predictor, prompts, *, fit: str = "pad", resample: str = "bilinear", seed: int = 0, **options) -> list[np.ndarray]:
        """Answers to (pairs, query) prompts, uint8, each of its query's shape. Episodes with the
        same number of pairs and frames are sampled together. `fit`: pad or stretch items into
        the model's frame; `resample`: bilinear, bicubic or nearest (class-coloured targets);
        further options (steps, cfg_scale, sampler, ...) go to `predictor.sample`."""
        if fit not in FITS:
            raise ValueError(f"fit={fit!r} must be one of {', '.join(FITS)}.")
        if resample not in records.RESAMPLE:
            raise ValueError(f"resample={resample!r} must be one of {', '.join(records.RESAMPLE)}.")
        prepared = []
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, (tuple, list)) or len(prompt) != 2:
                raise ValueError(f"prompts[{i}] must be a (pairs, query) episode.")
            prepared.append(self._prepare(*prompt, fit, resample, f"episodes[{i}]"))
        groups = collections.defaultdict(list)  # by frames and shape: a 9-item episode may be 9 images or 3 clips.
        for i, (cond, query, _) in enumerate(prepared):
            groups[len(query), cond.shape].append(i)
        answers = [None] * len(prepared)
        for members in groups.values():
            cond = np.stack([prepared[i][0] for i in members])
            frames = len(prepared[members[0]][1])
            predicted = scoring.to_uint8(predictor.sample({"cond": cond}, frames, indices=members, seed=seed, **options))
            for i, answer in zip(members, predicted):
                answers[i] = _restore(answer, *prepared[i][1:], fit, resample)
        return answers

    def check_context(self, context: dict, frames: int) -> None:
        """Episodes already at the model's size: `cond` [N, (2K+1)*frames, S, S, 3], K pairs then
        the query, or a zero item then the query."""
        cond = context.get("cond")
        items, extra = divmod(cond.shape[1], frames) if cond is not None and cond.ndim == 5 else (0, 1)
        if extra or not (items % 2 or items == 2):
            raise ValueError(
                f"Episodes {None if cond is None else cond.shape}: {frames}-frame items are needed, K pairs then the "
                "query, or a zero item then the query."
            )

    def _prepare(self, pairs, query, fit: str, resample: str, where: str):
        """(cond float32 [(2K+1)T, S, S, 3], the query's frames, whether the query was one image)."""
        size = int(self.config.data.image_size)
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
        fitted = lambda x: scoring.from_uint8(records.resize(x, size, fit, resample))
        # uint8 black is -1, not the zero item that stands for dropped pairs: floats from here on.
        cond = [fitted(item) for item, _ in items[1:]] or [np.zeros((frames, size, size, 3), np.float32)]
        # As training sees an episode: in_1, tgt_1, ..., in_K, tgt_K, query; no pairs: [zeros, query].
        return np.concatenate(cond + [fitted(query_frames)]), query_frames, single


def _frames(item, name: str) -> tuple[np.ndarray, bool]:
    """An item as uint8 [T, H, W, 3], and whether it was a single image."""
    if isinstance(item, (str, os.PathLike)):
        try:
            frames = media.read_frames(os.fspath(item))
        except media.Skip as skip:
            raise ValueError(f"The {name}, {os.fspath(item)!r}, {skip}.") from None
        return frames, frames.shape[0] == 1 and not os.fspath(item).lower().endswith(media.VIDEO_EXTENSIONS)
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
