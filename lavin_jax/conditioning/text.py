"""Text conditioning, GenTron's: the model is told what to draw by a caption.

A batch is {"target": images (B, 1, S, S, 3) in [-1, 1] (clips (B, T, S, S, 3) for a model with
`model.temporal`), "text": int32 byte tokens (B, model.text_length) and "text_length" (B,)
(`models.text.tokenize`), for clips "motion_free" bool (B,), "skipped"}. The captioned scenes
(`data.captions='scenes'`, `data/captions.py`) make the examples, each a pure function of (seed,
index): a share `data.cond_drop_prob` carries the empty caption, the null text that
classifier-free guidance samples against, and a share `data.motion_free_prob` of the clips is
marked motion-free (their temporal attention sees each frame alone: GenTron's motion-free
training). A prompt is a caption; the answer is an image (a clip for a video model).

Evaluation draws `eval.episodes` held-out scenes (their own seed stream), samples each from its
caption, and reads the samples back with the renderer's fixed detector (`captions.alignment`):
per aspect (colour, shape, size, relation, motion) the share the picture shows as the caption
says, and `all`, beside the same model told nothing (the empty caption: a text-blind baseline)
and, for a video model sampled with motion-free guidance, beside its clips without it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lavin_jax import evaluation, metrics
from lavin_jax.conditioning.base import Conditioning
from lavin_jax.config import require
from lavin_jax.data import captions, scoring, synthetic
from lavin_jax.models import text

SOURCES = ("scenes",)
SCENE_STREAMS = {"train": 13, "test": 14}  # after clips.py's streams.


class CaptionedScenes:
    """Training examples, a random-access source for grain: example i draws its scene from
    (seed, stream, i), then whether its caption is dropped and whether it is motion-free."""

    def __init__(self, config, seed: int, split: str = "train"):
        self._config, self._seed, self._stream = config, int(seed), SCENE_STREAMS[split]
        self.frames = frames_of(config)
        self.size = int(config.data.image_size)

    def __len__(self) -> int:
        return synthetic.NUM_EXAMPLES

    def scene(self, index: int) -> tuple[np.random.Generator, tuple]:
        rng = np.random.default_rng((self._seed, self._stream, int(index)))
        return rng, captions.draw(rng, moving=self.frames > 1, frames=self.frames)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng, things = self.scene(index)
        d = self._config.data
        words = "" if rng.random() < float(d.cond_drop_prob) else captions.caption(things)
        tokens, lengths = text.tokenize([words], int(self._config.model.text_length))
        example = {
            "target": scoring.from_uint8(captions.render_clip(things, self.size, self.frames)),
            "text": tokens[0],
            "text_length": lengths[0],
            "skipped": np.array(0, np.int32),
        }
        if self.frames > 1:
            example["motion_free"] = np.array(rng.random() < float(d.motion_free_prob))
        return example

    map = __getitem__  # grain's MapTransform protocol.


def frames_of(config) -> int:
    """A training example's frames: the clip length for a video model, else 1."""
    return int(config.data.video_frames) if config.model.get("temporal", False) else 1


class Captions(Conditioning):
    frames_alone = True  # a video's frames are encoded one at a time, as GenTron's SD VAE does.

    @staticmethod
    def check(config) -> None:
        d = config.data
        Conditioning.check_source(config)
        require(d.source == "synthetic", "config.conditioning='text' renders its captioned scenes live: config.data.source must be 'synthetic'.")
        require(d.captions in SOURCES, f"config.data.captions={d.captions!r} is unknown; known: {', '.join(SOURCES)}.")
        require(d.image_size >= captions.MIN_SIZE, f"config.data.image_size={d.image_size} must be at least {captions.MIN_SIZE}, where the detector that judges samples reads every scene back exactly.")
        require(0.0 <= d.cond_drop_prob < 1.0, f"config.data.cond_drop_prob={d.cond_drop_prob} must be in [0, 1).")
        require(0.0 <= d.motion_free_prob <= 1.0, f"config.data.motion_free_prob={d.motion_free_prob} must be in [0, 1].")
        if config.model.get("temporal", False):
            require(d.video_frames >= 2, f"config.data.video_frames={d.video_frames} must be at least 2 for a video model (config.model.temporal).")
        require(config.eval.episodes >= 1, f"config.eval.episodes={config.eval.episodes} must be at least 1.")

    @property
    def frames(self) -> int:
        return frames_of(self.config)

    @property
    def length(self) -> int:
        return int(self.config.model.text_length)

    def source(self, seed: int):
        return CaptionedScenes(self.config, seed)

    def largest_batch(self, batch_size: int) -> dict:
        s, t = int(self.config.data.image_size), self.frames
        batch = {
            "target": jax.ShapeDtypeStruct((batch_size, t, s, s, 3), jnp.float32),
            "text": jax.ShapeDtypeStruct((batch_size, self.length), jnp.int32),
            "text_length": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
            "skipped": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
        }
        if t > 1:
            batch["motion_free"] = jax.ShapeDtypeStruct((batch_size,), jnp.bool_)
        return batch

    def example_context(self, frame) -> tuple[int, dict]:
        return self.frames, {"text": jax.ShapeDtypeStruct((1, self.length), jnp.int32),
                             "text_length": jax.ShapeDtypeStruct((1,), jnp.int32)}

    def null(self, context: dict, frames: int) -> dict:
        tokens, lengths = text.tokenize([""], self.length)
        return {**context, "text": jnp.broadcast_to(jnp.asarray(tokens), context["text"].shape),
                "text_length": jnp.full_like(context["text_length"], int(lengths[0]))}

    def nulls(self, context: dict, frames: int) -> list[dict]:
        """The empty caption, then (video) the empty caption with every frame alone: GenTron's
        motion-free guidance."""
        null = self.null(context, frames)
        if self.frames == 1:
            return [null]
        return [null, {**null, "motion_free": jnp.ones(context["text_length"].shape, jnp.bool_)}]

    def check_context(self, context: dict, frames: int) -> None:
        tokens, lengths = (np.asarray(context.get(name, np.zeros(0))) for name in ("text", "text_length"))
        n = len(tokens)
        if (tokens.shape != (n, self.length) or lengths.shape != (n,) or frames != self.frames or "motion_free" in context
                or np.any((lengths < 2) | (lengths > self.length))):
            raise ValueError(
                f"Captions {tokens.shape} of lengths {lengths.shape} for {frames}-frame answers: tokens (N, {self.length}) "
                f"from models.text.tokenize and {self.frames}-frame answers are needed (motion-free is the sampler's motion_scale)."
            )

    def context(self, words: list[str]) -> dict[str, np.ndarray]:
        """The model inputs of captions (a video is drawn with motion: no `motion_free`)."""
        tokens, lengths = text.tokenize(words, self.length)
        return {"text": tokens, "text_length": lengths}

    def prompt_context(self, batch: dict) -> dict:
        return {name: batch[name] for name in ("text", "text_length")}

    def answer(self, predictor, prompts, *, seed: int = 0, **options) -> list[np.ndarray]:
        """Pictures of the captions: uint8 [S, S, 3], or [T, S, S, 3] clips for a video model;
        prompt i draws its noise from (seed, i)."""
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise ValueError(f"prompts[{i}]={prompt!r} is not a caption (a string).")
        out = scoring.to_uint8(predictor.sample(self.context(list(prompts)), self.frames, seed=seed, **options))
        return list(out[:, 0] if self.frames == 1 else out)

    def evaluator(self, *, count=None, distances=True, prefix="samples", judge=True):
        return CaptionEvaluation(self, count=count, prefix=prefix)


class CaptionEvaluation:
    """`eval.episodes` (or `count`) held-out scenes drawn from their captions, judged by the
    renderer's detector beside the same model given the empty caption. Grids (GIFs for clips)
    show, per scene, the renderer's picture, the model's and the text-blind one."""

    def __init__(self, conditioning: Captions, *, count=None, prefix="samples"):
        c = conditioning.config
        self.conditioning, self.prefix = conditioning, prefix
        self.count = int(c.eval.episodes if count is None else count)
        held_out = CaptionedScenes(c, int(c.seed), split="test")
        self.scenes = [held_out.scene(i)[1] for i in range(self.count)]
        self.captions = [captions.caption(things) for things in self.scenes]
        size, frames = int(c.data.image_size), conditioning.frames
        self.real = scoring.from_uint8(np.stack([captions.render_clip(things, size, frames) for things in self.scenes]))

    def run(self, predictor, **options) -> dict:
        c = self.conditioning.config
        seed = int(c.seed) + 2
        told = self.conditioning.context(self.captions)
        blind = self.conditioning.context([""] * self.count)
        runs = [("model", told, options), ("text_blind", blind, options)]
        motion_scale = options.get("motion_scale", c[c.objective].motion_scale)
        if self.conditioning.frames > 1 and motion_scale != 1.0:  # the same clips without motion-free guidance.
            runs.insert(1, ("without_motion_guidance", told, {**options, "motion_scale": 1.0}))
        answers = {name: predictor.sample(context, self.conditioning.frames, seed=seed, **how) for name, context, how in runs}
        report = {"captions": self.captions, "scores": {}, "grids": {}, "animations": {}}
        for name, pictures in answers.items():
            judged = [captions.alignment(things, clip if len(clip) > 1 else clip[0])
                      for things, clip in zip(self.scenes, scoring.to_uint8(pictures))]
            aspects = sorted({aspect for scores in judged for aspect in scores})
            report["scores"][name] = {aspect: float(np.mean([s[aspect] for s in judged if aspect in s])) for aspect in aspects}
        shown = min(int(c.sample.num_examples), self.count)
        rows = np.stack([self.real[:shown], answers["model"][:shown], answers["text_blind"][:shown]], axis=1)  # [n, 3, T, S, S, 3]
        scale = metrics.display_scale(self.real.shape[2])
        name = f"{self.prefix}_captions"
        if self.conditioning.frames == 1:  # a row per scene: renderer, model, told nothing.
            report["grids"][name] = metrics.frame_grid(rows[:, :, 0], scale=scale)
        else:  # a row per clip, three rows per scene; and the three clips side by side as a GIF.
            report["grids"][name] = metrics.frame_grid(rows.reshape(-1, *rows.shape[2:]), scale=scale)
            report["animations"][name] = [metrics.frame_grid(rows[:, :, t], scale=scale) for t in range(rows.shape[2])]
        return report

    @staticmethod
    def scalars(report: dict) -> dict[str, float]:
        return {f"eval/{aspect}" + ("" if name == "model" else f"_{name}"): value
                for name, scores in report["scores"].items() for aspect, value in scores.items()}

    @staticmethod
    def table(report: dict) -> str:
        scores = report["scores"]
        model, blind, plain = scores["model"], scores["text_blind"], scores.get("without_motion_guidance")
        lines = [f"{'aspect':<10} {'model':>7}" + (f" {'without motion guidance':>24}" if plain else "") + f" {'told nothing':>13}"]
        for aspect in [a for a in (*captions.ASPECTS, "all") if a in model]:
            star = "*" if model[aspect] > blind[aspect] else " "
            lines.append(f"{aspect:<10} {model[aspect]:>6.3f}{star}" + (f" {plain[aspect]:>24.3f}" if plain else "") + f" {blind[aspect]:>13.3f}")
        lines.append(f"the share of {len(report['captions'])} held-out captions each aspect of which the detector reads back; "
                     "* the model beats itself told nothing (the empty caption)")
        return "\n".join(lines)

    @staticmethod
    def write(report: dict, workdir: str, step: int) -> str:
        return evaluation.write(report, workdir, step, fields=("captions", "scores"))
