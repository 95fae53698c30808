"""Frame masks, VDT's conditioning: the model is told what to make by which part of a clip it is given.

A batch is {"target": clips (B, T, S, S, 3) in [-1, 1] (or their per-frame latents from a cache,
`data.source='latents'`), "known": float32 (B, T, h, w) on the model's grid (1: given),
"skipped"}. The objective (`objectives.generative.given`) puts
the clean target where `known` is 1 into the model's noisy input and learns only the rest, so
one model does every task a mask can state. Each example draws its mode by `mask.weights`:

- `spatial`: blocks covering `mask.spatial_ratio` of the frame hidden (BEiT's block masking, on
  the token grid so that a token is wholly given or wholly made), on every frame but up to
  `mask.spatial_edge` at each end, which are given whole (completion);
- `predict` / `backward`: the first / last `mask.given_frames` frames given (0: half the clip);
- `interpolate`: every `mask.interpolation_step`-th frame given;
- `unconditional`: nothing given;
- `one_frame`: one random frame given (animation);
- `random`: each frame hidden with probability `mask.random_ratio`.

VDT's own generator lays the spatial blocks on the latent grid and leaves them out when it draws
0 frames to keep at the end (its `mask[start:-0]` is empty); ours covers the frames it says.

A prompt is (clip, known): a clip (uint8 [T, H, W, 3] or a video file) and what of it is given:
frame indices, or a boolean [T, H, W] array (`known_pixels` builds one from frames and a hole);
the answer is the clip completed, at its own size. Evaluation completes held-out clips in every
trained mode and scores the frames it made (PSNR/SSIM per frame, FVD with `eval.fvd_weights`)
beside copying the nearest given frame.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from lavin_jax import evaluation, latents, metrics
from lavin_jax.conditioning.base import Conditioning
from lavin_jax.config import frame_shape, require
from lavin_jax.data import clips, media, records, scoring, synthetic

MODES = ("spatial", "predict", "backward", "interpolate", "unconditional", "one_frame", "random")
MASK_STREAM = 0x6D61736B  # the masks' own seed stream, apart from the clips'.


def model_grid(config) -> tuple[int, int]:
    """(side of the model's input grid, its cells per token side)."""
    return frame_shape(config)[0], int(config.model.patch_size)


def block_mask(rng: np.random.Generator, side: int, count: float, min_cells: int = 4, min_aspect: float = 0.3) -> np.ndarray:
    """bool [side, side], about `count` cells True in rectangles of at least `min_cells` cells and
    aspect in [min_aspect, 1/min_aspect], added until the count is reached or ten tries in a row
    add nothing (BEiT's block-wise masking, which VDT's spatial mode uses)."""
    hidden = np.zeros((side, side), bool)
    log_aspect = (math.log(min_aspect), -math.log(min_aspect))
    while hidden.sum() < count:
        left = count - hidden.sum()
        for _ in range(10):
            area = rng.uniform(min_cells, max(min_cells, left))
            aspect = math.exp(rng.uniform(*log_aspect))
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < h < side and 0 < w < side:
                top, first = rng.integers(0, side - h + 1), rng.integers(0, side - w + 1)
                added = h * w - hidden[top : top + h, first : first + w].sum()
                if 0 < added <= left:
                    hidden[top : top + h, first : first + w] = True
                    break
        else:
            break
    return hidden


def draw_mask(mode: str, rng: np.random.Generator, frames: int, tokens: int, m) -> np.ndarray:
    """bool [frames, tokens, tokens], True where given, of `mode` with the `mask` config `m`."""
    known = np.zeros((frames, tokens, tokens), bool)
    given = int(m.given_frames) or frames // 2
    if mode == "spatial":
        edge = min(int(m.spatial_edge), (frames - 1) // 2)
        start, end = rng.integers(0, edge + 1, size=2)
        known[:] = True
        known[start : frames - end] = ~block_mask(rng, tokens, float(m.spatial_ratio) * tokens * tokens)
    elif mode == "predict":
        known[:given] = True
    elif mode == "backward":
        known[frames - given :] = True
    elif mode == "interpolate":
        known[:: int(m.interpolation_step)] = True
    elif mode == "one_frame":
        known[rng.integers(frames)] = True
    elif mode == "random":
        known[rng.random(frames) >= float(m.random_ratio)] = True
    elif mode != "unconditional":
        raise ValueError(f"Mask mode {mode!r} is unknown; known modes: {', '.join(MODES)}.")
    return known


def upsample(known: np.ndarray, factor: int) -> np.ndarray:
    """A mask [..., n, n] on a coarse grid as [..., n*factor, n*factor]."""
    return known.repeat(factor, axis=-2).repeat(factor, axis=-1)


def known_pixels(frames: int, size: int, *, given_frames=(), hole: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """bool [frames, size, size] for a prompt: the frames `given_frames` given whole; the other
    frames given outside `hole` (top, left, height, width in pixels) when there is one, else not
    at all."""
    known = np.zeros((frames, size, size), bool)
    if hole is not None:
        top, left, height, width = hole
        known[:] = True
        known[:, top : top + height, left : left + width] = False
    known[list(given_frames)] = True
    return known


def nearest_given(clip: np.ndarray, known: np.ndarray) -> np.ndarray:
    """The baseline answer: every hidden pixel copied from the nearest frame (in time, earlier
    first on a tie) where that pixel is given; mid-grey where it is given nowhere. clip [T, S, S,
    3] in [-1, 1], known bool [T, S, S]."""
    out = np.where(known[..., None], clip, 0.0)
    filled = known.copy()
    for distance in range(1, len(clip)):
        for shift in (distance, -distance):
            source = np.roll(clip, shift, axis=0)
            source_known = np.roll(known, shift, axis=0)
            valid = np.zeros(len(clip), bool)
            valid[max(shift, 0) : len(clip) + min(shift, 0)] = True  # no wrapping around the clip.
            take = ~filled & source_known & valid[:, None, None]
            out = np.where(take[..., None], source, out)
            filled |= take
    return out


class MaskedClips:
    """Training examples, a random-access source for grain: example i is a pure function of
    (seed, i): a clip of the dataset drawn from (seed, MASK_STREAM, i), with a mode drawn by the
    weights and its mask. A clip that raises BadRecord is replaced by the next, with a warning,
    and counted in "skipped"."""

    def __init__(self, dataset, config, seed: int):
        self.dataset = dataset
        self._config = config
        self._seed = int(seed)
        weights = np.array([float(config.mask.weights[mode]) for mode in MODES])
        self._modes = weights / weights.sum()
        side, self._cell = model_grid(config)
        self._tokens = side // self._cell

    def __len__(self) -> int:
        return synthetic.NUM_EXAMPLES

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((self._seed, MASK_STREAM, int(index)))
        clip, skipped = records.read_past_bad(self.dataset, int(rng.integers(len(self.dataset))))
        mode = MODES[rng.choice(len(MODES), p=self._modes)]
        known = draw_mask(mode, rng, len(clip), self._tokens, self._config.mask)
        return {
            "target": scoring.from_uint8(clip) if clip.dtype == np.uint8 else clip,  # pixels, or a cache's latents.
            "known": upsample(known, self._cell).astype(np.float32),
            "skipped": np.array(skipped, np.int32),
        }

    map = __getitem__  # grain's MapTransform protocol.


class FrameMasks(Conditioning):
    pixel_fields = ("given",)
    frames_alone = True  # VDT learns per-frame latents.

    @staticmethod
    def check(config) -> None:
        d, m = config.data, config.mask
        Conditioning.check_source(config)
        require(bool(d.clips), "config.conditioning='mask' needs config.data.clips: 'moving_digits', 'synthetic', a video folder or 'tfds:<name>'.")
        require(d.video_frames >= 2, f"config.data.video_frames={d.video_frames} must be at least 2 (the clip length).")
        require(d.frame_stride >= 1, f"config.data.frame_stride={d.frame_stride} must be at least 1.")
        side, cell = model_grid(config)
        require(side % cell == 0, f"config.data.image_size={d.image_size} gives a model grid of {side}, not divisible by config.model.patch_size={cell}.")
        require(set(m.weights.keys()) == set(MODES), f"config.mask.weights names {sorted(m.weights.keys())}; it must weigh exactly the modes {', '.join(MODES)}.")
        for mode in MODES:
            require(m.weights[mode] >= 0, f"config.mask.weights.{mode}={m.weights[mode]} must not be negative.")
        require(sum(m.weights[mode] for mode in MODES) > 0, "config.mask.weights are all 0: give some mode a positive weight.")
        require(0 <= m.given_frames < d.video_frames, f"config.mask.given_frames={m.given_frames} must be in [0, config.data.video_frames={d.video_frames}).")
        require(m.interpolation_step >= 2, f"config.mask.interpolation_step={m.interpolation_step} must be at least 2.")
        require(0.0 <= m.random_ratio <= 1.0, f"config.mask.random_ratio={m.random_ratio} must be in [0, 1].")
        require(0.0 < m.spatial_ratio < 1.0, f"config.mask.spatial_ratio={m.spatial_ratio} must be in (0, 1).")
        require(m.spatial_edge >= 0, f"config.mask.spatial_edge={m.spatial_edge} must not be negative.")
        require(config.eval.episodes >= 1, f"config.eval.episodes={config.eval.episodes} must be at least 1.")

    @property
    def frames(self) -> int:
        return int(self.config.data.video_frames)

    def modes(self) -> list[str]:
        """The modes trained on (weight above 0), in MODES' order."""
        return [mode for mode in MODES if float(self.config.mask.weights[mode]) > 0]

    def dataset(self, split: str):
        d = self.config.data
        return clips.open_clips(d.clips, split, int(d.image_size), self.frames, stride=int(d.frame_stride), seed=int(self.config.seed))

    def check_files(self) -> None:
        self.dataset("train")
        if self.config.data.source == "latents":
            latents.LatentClips(self.config)

    def check_eval_files(self, judge: bool = True) -> None:
        evaluation.check_distance_files(self.config)  # FVD's file and the clip length it needs.
        self.dataset("test")

    def source(self, seed: int):
        cached = self.config.data.source == "latents"
        return MaskedClips(latents.LatentClips(self.config) if cached else self.dataset("train"), self.config, seed)

    def largest_batch(self, batch_size: int) -> dict:
        s, t = int(self.config.data.image_size), self.frames
        side, _ = model_grid(self.config)
        return {
            "target": jax.ShapeDtypeStruct((batch_size, t, s, s, 3), jnp.float32),
            "known": jax.ShapeDtypeStruct((batch_size, t, side, side), jnp.float32),
            "skipped": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
        }

    def example_context(self, frame) -> tuple[int, dict]:
        return self.frames, {"known": jax.ShapeDtypeStruct((1, self.frames, frame[0], frame[1]), jnp.float32)}

    def prompt_context(self, batch: dict) -> dict:
        return {"given": batch["target"], "known": batch["known"]}

    def null(self, context: dict, frames: int) -> dict:
        return {**context, "known": jnp.zeros_like(context["known"])}

    def check_context(self, context: dict, frames: int) -> None:
        side, _ = model_grid(self.config)
        s = int(self.config.data.image_size)
        given, known = (np.asarray(context.get(name, np.zeros(0))) for name in ("given", "known"))
        n = len(given)
        if given.shape != (n, frames, s, s, 3) or known.shape != (n, frames, side, side):
            raise ValueError(
                f"Clips {given.shape} with masks {known.shape}: clips (N, {frames}, {s}, {s}, 3) and masks "
                f"(N, {frames}, {side}, {side}) on the model's grid are needed."
            )

    def model_known(self, known: np.ndarray) -> np.ndarray:
        """A pixel mask bool [..., S, S] on the model's grid: a cell is given only where all its
        pixels are."""
        side, _ = model_grid(self.config)
        f = int(self.config.data.image_size) // side
        return known.reshape(*known.shape[:-2], side, f, side, f).all(axis=(-3, -1))

    def complete(self, predictor, clips_: np.ndarray, known: np.ndarray, *, seed: int = 0, indices=None, **options) -> np.ndarray:
        """Clips uint8 [N, T, S, S, 3] at the model's size, completed where `known` (bool
        [N, T, S, S] pixels) is False; float32 [-1, 1]. Given pixels come back as given."""
        cells = self.model_known(known)
        shown = upsample(cells, int(self.config.data.image_size) // cells.shape[-1])  # what the model was given.
        context = {"given": np.where(shown[..., None], clips_, 0).astype(np.uint8), "known": cells.astype(np.float32)}
        out = predictor.sample(context, clips_.shape[1], seed=seed, indices=indices, **options)
        return np.where(shown[..., None], scoring.from_uint8(clips_), out)

    def answer(self, predictor, prompts, *, seed: int = 0, **options) -> list[np.ndarray]:
        """Each (clip, known) prompt's clip completed, uint8 at the clip's own size; prompt i
        draws its noise from (seed, i). Clips of one length are sampled together."""
        s = int(self.config.data.image_size)
        fitted, masks, originals = [], [], []
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, (tuple, list)) or len(prompt) != 2:
                raise ValueError(f"prompts[{i}] must be (clip, known): a clip (array or video file) and its given frames or mask.")
            clip, known = prompt
            clip = media.read_frames(clip) if isinstance(clip, (str, os.PathLike)) else np.asarray(clip)
            if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != np.uint8:
                raise ValueError(f"prompts[{i}]'s clip is {clip.dtype} {clip.shape}, not uint8 frames [T, H, W, 3].")
            known = np.asarray(known)
            if known.dtype != bool:
                frames = [int(f) for f in known.ravel()]
                if any(not -len(clip) <= f < len(clip) for f in frames):
                    raise ValueError(f"prompts[{i}] gives frames {frames}, not all within the clip's {len(clip)}.")
                known = np.zeros(clip.shape[:3], bool)
                known[frames] = True
            if known.shape != clip.shape[:3]:
                raise ValueError(f"prompts[{i}]'s mask {known.shape} does not match its clip's frames {clip.shape[:3]}.")
            originals.append((clip, known))
            fitted.append(np.stack([np.asarray(Image.fromarray(f).resize((s, s), Image.BICUBIC)) for f in clip]))
            masks.append(np.stack([np.asarray(Image.fromarray(k).resize((s, s), Image.NEAREST)) for k in known]))
        answers: list = [None] * len(prompts)
        for length in sorted({len(f) for f in fitted}):
            group = [i for i, f in enumerate(fitted) if len(f) == length]
            done = self.complete(predictor, np.stack([fitted[i] for i in group]), np.stack([masks[i] for i in group]),
                                 seed=seed, indices=np.asarray(group), **options)
            for i, clip in zip(group, scoring.to_uint8(done)):
                original, known = originals[i]
                h, w = original.shape[1:3]
                if (h, w) != (s, s):
                    clip = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in clip])
                answers[i] = np.where(known[..., None], original, clip)  # given pixels exactly as given.
        return answers

    def evaluator(self, *, count=None, distances=True, prefix="samples", judge=True):
        return ClipEvaluation(self, count=count, distances=distances, prefix=prefix)


class ClipEvaluation:
    """`eval.episodes` (or `count`) held-out clips completed in every trained mode, each mode's
    masks drawn from (seed + 1, mode, clip) so that evaluations of different steps compare. The
    frames the model made (any hidden pixel) are scored by PSNR and SSIM, per frame index and
    overall, beside the baseline that copies each hidden pixel from the nearest frame giving it;
    with `eval.fvd_weights` and `distances`, FVD of the completed clips against the real ones.
    Unconditional clips have no baseline and only FVD. Grids and GIFs show given | model | copy
    (the baseline's answer) | real per mode, so the copy is judged by eye beside the model."""

    def __init__(self, masks: FrameMasks, *, count=None, distances=True, prefix="samples"):
        c = masks.config
        self.masks, self.prefix = masks, prefix
        self.count = int(c.eval.episodes if count is None else count)
        test = masks.dataset("test")
        self.clips = np.stack([test.read(i % len(test)) for i in range(self.count)])
        side, cell = model_grid(c)
        pixels = int(c.data.image_size) // side * cell  # pixels per token side.
        self.known = {}
        for index, mode in enumerate(masks.modes()):
            drawn = [draw_mask(mode, np.random.default_rng((int(c.seed) + 1, MASK_STREAM, index, i)), masks.frames, side // cell, c.mask)
                     for i in range(self.count)]
            self.known[mode] = upsample(np.stack(drawn), pixels)
        self.real = scoring.from_uint8(self.clips)
        # The baseline's answers and scores depend on the held-out clips and masks alone: made
        # and scored once (mid-grey where nothing is given), shown in every grid.
        self.copied = {mode: np.stack([nearest_given(r, k) for r, k in zip(self.real, known)]) for mode, known in self.known.items()}
        self.baseline = {mode: score_frames(self.copied[mode], self.real, known) for mode, known in self.known.items() if known.any()}
        self._fvd = None
        if distances and c.eval.fvd_weights:
            features = evaluation.feature_networks(c.eval)[True][1]
            self._fvd = (features, features(self.real))

    def grid_name(self, mode: str) -> str:
        return f"{self.prefix}_{mode}"

    def run(self, predictor, **options) -> dict:
        c, real = self.masks.config, self.real
        report = {"modes": {}, "grids": {}, "animations": {}}
        shown = min(int(c.sample.num_examples), self.count)
        scale = metrics.display_scale(real.shape[2])
        for mode, known in self.known.items():
            model = self.masks.complete(predictor, self.clips, known, seed=int(c.seed) + 2, **options)
            scores = {"model": score_frames(model, real, known)}
            if mode in self.baseline:
                scores["nearest_given"] = self.baseline[mode]
            if self._fvd is not None:
                features, reference = self._fvd
                scores["fvd"] = evaluation.frechet_distance(features(model), reference)
            report["modes"][mode] = scores
            given = np.where(known[..., None], real, -0.6)  # hidden pixels shown dark grey.
            rows = np.stack([given[:shown], model[:shown], self.copied[mode][:shown], real[:shown]], axis=1)  # [n, 4, T, S, S, 3]
            report["grids"][self.grid_name(mode)] = metrics.frame_grid(rows.reshape(-1, *rows.shape[2:]), scale=scale)
            report["animations"][self.grid_name(mode)] = [
                metrics.frame_grid(rows[:, :, t], scale=scale) for t in range(rows.shape[2])
            ]
        return report

    @staticmethod
    def scalars(report: dict) -> dict[str, float]:
        out = {}
        for mode, scores in report["modes"].items():
            for answer in ("model", "nearest_given"):
                for metric in ("psnr", "ssim"):
                    if answer in scores and metric in scores[answer]:
                        out[f"eval/{mode}/{metric}" + ("" if answer == "model" else f"_{answer}")] = scores[answer][metric]
            if "fvd" in scores:
                out[f"eval/{mode}/fvd"] = scores["fvd"]
        return out

    @staticmethod
    def table(report: dict) -> str:
        lines = [f"{'mode':<14} {'PSNR model':>11} {'nearest':>8} {'SSIM model':>11} {'nearest':>8}   per made frame: PSNR"]
        for mode, scores in report["modes"].items():
            m, b = scores["model"], scores.get("nearest_given")
            if "psnr" not in m:
                lines.append(f"{mode:<14} {'(nothing given: FVD only)':>42}" + (f"   FVD {scores['fvd']:.1f}" if "fvd" in scores else ""))
                continue
            star = lambda metric: "*" if b is not None and m[metric] > b[metric] else " "
            per_frame = " ".join(f"{t}:{v:.1f}" for t, v in m["psnr_per_frame"].items())
            lines.append(f"{mode:<14} {m['psnr']:>10.2f}{star('psnr')} {b['psnr']:>8.2f} {m['ssim']:>10.3f}{star('ssim')} {b['ssim']:>8.3f}   {per_frame}"
                         + (f"   FVD {scores['fvd']:.1f}" if "fvd" in scores else ""))
        lines.append("* the model beats copying the nearest given frame")
        return "\n".join(lines)

    @staticmethod
    def write(report: dict, workdir: str, step: int) -> str:
        return evaluation.write(report, workdir, step, fields=("modes",))


def score_frames(prediction: np.ndarray, real: np.ndarray, known: np.ndarray) -> dict:
    """PSNR and SSIM of every frame the model made (one with a hidden pixel) of [N, T, S, S, 3]
    clips: their mean, and the mean per frame index (`psnr_per_frame`, `ssim_per_frame`). Empty
    when nothing was given: an unconditional clip is no reconstruction of the real one."""
    made = ~known.all(axis=(2, 3))  # [N, T]
    if not made.any() or not known.any():
        return {}
    psnr, ssim = scoring.frame_scores(prediction[made], real[made])
    frame = np.nonzero(made)[1]
    out = {}
    for metric, values in (("psnr", psnr), ("ssim", ssim)):
        out[metric] = float(values.mean())
        out[f"{metric}_per_frame"] = {int(t): float(values[frame == t].mean()) for t in np.unique(frame)}
    return out
