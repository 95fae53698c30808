"""Text conditioning, GenTron's: the model is told what to draw by a caption.

A batch is {"target": images (B, 1, S, S, 3) in [-1, 1] (clips (B, T, S, S, 3) for a model with
`model.temporal`), "text": int32 tokens (B, model.text_length) of the model's tokenizer
(`models.text.tokenizer`: bytes, or a frozen encoder's own) and "text_length" (B,), for clips
"motion_free" bool (B,), "skipped"}. A frozen encoder (T5, CLIP) is run on the tokens in the step
and the sampler (`Captions.encoded`: its weights are the conditioning's constants), or once into
the latent cache, whose batches carry its "text_hidden" and "text_pooled" instead of "text".

The examples come from `data.captions` (`data/captioned.py`): the captioned scenes, or real
captioned pictures; each is a pure function of (seed, index): a share `data.cond_drop_prob`
carries the empty caption, the null text that classifier-free guidance samples against, and a
share `data.motion_free_prob` of the clips is marked motion-free (their temporal attention sees
each frame alone: GenTron's motion-free training), as is every still a share `data.image_share`
of the clips are (a scene drawn without motion, or a clip's first frame over all its frames:
GenTron's joint image-video training). A prompt is a caption; the answer is an image (a clip for
a video model).

Evaluation samples `eval.episodes` held-out captions beside the same model told nothing (the
empty caption: a text-blind baseline) and, for a video model sampled with motion-free guidance,
beside its clips without it. Scenes are read back with the renderer's fixed detector
(`captions.alignment`: per aspect, colour, shape, size, relation and motion, the share the
picture shows as the caption says, and `all`); real pictures are scored by FID (FVD for clips)
against the held-out ones where `eval.fid_weights` (`eval.fvd_weights`) is set.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lavin_jax import evaluation, latents, metrics
from lavin_jax.conditioning.base import Conditioning
from lavin_jax.config import caption_frames, require
from lavin_jax.data import captioned, captions, labelled, records, scoring, synthetic
from lavin_jax.models import layers, text

EXAMPLE_STREAM = 16  # after captioned.py's streams: a training example's own draws.


class CaptionedExamples:
    """Training examples, a random-access source for grain. Example i draws from (seed,
    EXAMPLE_STREAM, i) whether it is a still (`data.image_share`, video only), whether its caption
    is dropped (`data.cond_drop_prob`) and whether it is motion-free (`data.motion_free_prob`, and
    every still), then reads the dataset's example i (with `shuffle`, epoch by epoch in a
    permutation; a bad record is passed over for the next, counted in `skipped`)."""

    def __init__(self, dataset, config, seed: int, *, shuffle: bool):
        if len(dataset) == 0:
            raise ValueError(f"The captioned dataset {dataset.name} has no examples.")
        self._dataset, self._config, self._seed = dataset, config, int(seed)
        self._order = labelled.EpochOrder(seed, len(dataset)) if shuffle else None
        self.frames = caption_frames(config)

    def __len__(self) -> int:
        return synthetic.NUM_EXAMPLES

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        d, index = self._config.data, int(index)
        rng = np.random.default_rng((self._seed, EXAMPLE_STREAM, index))
        still = self.frames > 1 and rng.random() < float(d.image_share)
        drop = rng.random() < float(d.cond_drop_prob)
        motion_free = rng.random() < float(d.motion_free_prob) or still
        record = self._order(index) if self._order else index % len(self._dataset)
        scenes = isinstance(self._dataset, captions.Scenes)  # whose stills are scenes drawn without motion
        (pictures, words), skipped = records.read_past_bad(self._dataset, record, **({"still": still} if scenes else {}))
        if still and not scenes:  # the first frame over all the frames, the caption as it is.
            pictures = np.repeat(pictures[:1], len(pictures), axis=0)
        if isinstance(words, str):
            tokens, lengths = text.tokenizer(self._config.model)(["" if drop else words], int(self._config.model.text_length))
            words = {"text": tokens[0], "text_length": lengths[0]}
        elif drop:  # a latent cache's caption, as the step would have encoded it: its empty caption's.
            words = self._dataset.null
        example = {"target": scoring.from_uint8(pictures) if pictures.dtype == np.uint8 else pictures, **words,
                   "skipped": np.array(skipped, np.int32)}
        if self.frames > 1:
            example["motion_free"] = np.array(motion_free)
        return example

    map = __getitem__  # grain's MapTransform protocol.


class Captions(Conditioning):
    frames_alone = True  # a video's frames are encoded one at a time, as GenTron's SD VAE does.

    @staticmethod
    def check(config) -> None:
        d = config.data
        Conditioning.check_source(config)
        require(bool(d.captions), "config.data.captions is empty; name 'scenes' or a captioned dataset (data/captioned.py).")
        require(not (d.source == "latents" and d.captions == "scenes" and d.image_share > 0),
                f"config.data.image_share={d.image_share}: a latent cache of moving scenes holds no still scenes (their captions "
                "differ); train the stills from pixels, or set it to 0.")
        if d.captions == "scenes":
            require(d.image_size >= captions.MIN_SIZE, f"config.data.image_size={d.image_size} must be at least {captions.MIN_SIZE}, where the detector that judges samples reads every scene back exactly.")
        require(0.0 <= d.cond_drop_prob < 1.0, f"config.data.cond_drop_prob={d.cond_drop_prob} must be in [0, 1).")
        for name in ("motion_free_prob", "image_share"):
            require(0.0 <= d[name] <= 1.0, f"config.data.{name}={d[name]} must be in [0, 1].")
        if config.model.get("temporal", False):
            require(d.video_frames >= 2, f"config.data.video_frames={d.video_frames} must be at least 2 for a video model (config.model.temporal).")
            require(d.captions != "scenes" or d.video_frames <= captions.MAX_FRAMES,
                    f"config.data.video_frames={d.video_frames}: the moving scenes have at most {captions.MAX_FRAMES} frames, "
                    "so that where an object starts never tells which way it moves.")
        require(config.eval.episodes >= 1, f"config.eval.episodes={config.eval.episodes} must be at least 1.")

    @property
    def frames(self) -> int:
        return caption_frames(self.config)

    @property
    def length(self) -> int:
        return int(self.config.model.text_length)

    def dataset(self, split: str):
        """The captioned examples of a split: the scenes, or the dataset `data.captions` names
        (opened, so a missing or empty one is named here)."""
        c, d = self.config, self.config.data
        return captioned.open_captioned(d.captions, split, int(d.image_size), frames=self.frames, stride=int(d.frame_stride), seed=int(c.seed))

    def check_model_files(self) -> None:
        if self.frozen:
            text.check_frozen(self.config.model)

    def check_files(self) -> None:
        if self.config.data.source == "latents":
            latents.LatentCaptions(self.config)
        else:
            self.dataset("train")

    def check_eval_files(self, judge: bool = True) -> None:
        if self.config.data.captions != "scenes":  # its held-out captions are drawn, judged or not.
            if judge:
                evaluation.check_distance_files(self.config)
            self.dataset("test")

    def source(self, seed: int):
        if self.config.data.source == "latents":  # the pictures' latents and the captions as the step reads them.
            return CaptionedExamples(latents.LatentCaptions(self.config), self.config, seed, shuffle=True)
        return CaptionedExamples(self.dataset("train"), self.config, seed, shuffle=self.config.data.captions != "scenes")

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
        """What the model reads of one caption: its tokens, or a frozen encoder's output."""
        m = self.config.model
        words = ({"text": jax.ShapeDtypeStruct((1, self.length), jnp.int32)} if m.text_encoder == "bytes" else
                 {"text_hidden": jax.ShapeDtypeStruct((1, self.length, m.text_width), jnp.float32),
                  "text_pooled": jax.ShapeDtypeStruct((1, m.text_width), jnp.float32)})
        return self.frames, {**words, "text_length": jax.ShapeDtypeStruct((1,), jnp.int32)}

    @property
    def frozen(self) -> bool:
        return self.config.model.text_encoder != "bytes"

    def constants(self) -> dict:
        return {"text_encoder": text.frozen_weights(self.config.model)} if self.frozen else {}

    def abstract_constants(self) -> dict:
        if not self.frozen:
            return {}
        m = self.config.model
        text.check_frozen(m)
        dtype = layers.DTYPES[m.text_encoder_dtype]
        return {"text_encoder": {name: jax.ShapeDtypeStruct(shape, dtype) for name, shape in text.FROZEN[m.text_encoder].shapes(m.text_encoder_path).items()}}

    def encoded(self, context: dict, constants: dict) -> dict:
        """The caption's tokens replaced by the frozen encoder's output (hidden states, pooled)."""
        if not self.frozen or "text" not in context:
            return context
        m = self.config.model
        hidden, pooled = text.frozen_encode(m.text_encoder, m.text_encoder_path)(constants["text_encoder"], context["text"], context["text_length"])
        rest = {name: value for name, value in context.items() if name != "text"}
        return {**rest, "text_hidden": jax.lax.stop_gradient(hidden), "text_pooled": jax.lax.stop_gradient(pooled)}

    def null(self, context: dict, frames: int) -> dict:
        tokens, lengths = text.tokenizer(self.config.model)([""], self.length)
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
                or np.any((lengths < 1) | (lengths > self.length))):
            raise ValueError(
                f"Captions {tokens.shape} of lengths {lengths.shape} for {frames}-frame answers: tokens (N, {self.length}) "
                f"from the model's tokenizer and {self.frames}-frame answers are needed (motion-free is the sampler's motion_scale)."
            )

    def context(self, words: list[str]) -> dict[str, np.ndarray]:
        """The model inputs of captions (a video is drawn with motion: no `motion_free`)."""
        tokens, lengths = text.tokenizer(self.config.model)(words, self.length)
        return {"text": tokens, "text_length": lengths}

    def prompt_context(self, batch: dict) -> dict:
        """The caption as a batch holds it: tokens, or a latent cache's encoded caption."""
        return {name: batch[name] for name in ("text", "text_hidden", "text_pooled", "text_length") if name in batch}

    def answer(self, predictor, prompts, *, seed: int = 0, **options) -> list[np.ndarray]:
        """Pictures of the captions: uint8 [S, S, 3], or [T, S, S, 3] clips for a video model;
        prompt i draws its noise from (seed, i)."""
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise ValueError(f"prompts[{i}]={prompt!r} is not a caption (a string).")
        out = scoring.to_uint8(predictor.sample(self.context(list(prompts)), self.frames, seed=seed, **options))
        return list(out[:, 0] if self.frames == 1 else out)

    def evaluator(self, *, count=None, distances=True, prefix="samples", judge=True):
        return CaptionEvaluation(self, count=count, prefix=prefix, distances=distances and judge)


class CaptionEvaluation:
    """`eval.episodes` (or `count`) held-out examples drawn from their captions, beside the same
    model given the empty caption, in grids (GIFs for clips) of, per example, the real picture,
    the model's and the text-blind one. The scenes are judged per aspect by the renderer's
    detector; a captioned dataset by the FID (images) or FVD (clips) of the samples to the real
    held-out examples where `eval.fid_weights` / `eval.fvd_weights` is set."""

    def __init__(self, conditioning: Captions, *, count=None, prefix="samples", distances=True):
        c = conditioning.config
        self.conditioning, self.prefix = conditioning, prefix
        held_out = conditioning.dataset("test")
        self.count = min(int(c.eval.episodes if count is None else count), len(held_out))
        read = [records.read_past_bad(held_out, i)[0] for i in range(self.count)]
        self.captions = [words for _, words in read]
        self.real = scoring.from_uint8(np.stack([pictures for pictures, _ in read]))
        self.scenes = [held_out.scene(i) for i in range(self.count)] if isinstance(held_out, captions.Scenes) else None
        self._distance = None
        if self.scenes is None and distances:
            network = evaluation.feature_networks(c.eval).get(conditioning.frames > 1)
            if network:
                name, features = network
                self._distance = (name, features, features(self.real))

    def judged(self, pictures: np.ndarray) -> dict[str, float]:
        """The scores of the samples for the held-out captions (higher is better but for a distance)."""
        if self.scenes is not None:
            judged = [captions.alignment(things, clip if len(clip) > 1 else clip[0]) for things, clip in zip(self.scenes, scoring.to_uint8(pictures))]
            aspects = sorted({aspect for scores in judged for aspect in scores})
            return {aspect: float(np.mean([s[aspect] for s in judged if aspect in s])) for aspect in aspects}
        if self._distance is None:
            return {}
        name, features, real = self._distance
        return {name: evaluation.frechet_distance(features(pictures), real)}

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
        report = {"captions": self.captions, "scores": {name: self.judged(pictures) for name, pictures in answers.items()},
                  "grids": {}, "animations": {}}
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
        distances = {name for name, *_ in evaluation.DISTANCES}
        for aspect in [a for a in (*captions.ASPECTS, "all") if a in model] + sorted(a for a in model if a in distances):
            better = model[aspect] < blind[aspect] if aspect in distances else model[aspect] > blind[aspect]
            lines.append(f"{aspect:<10} {model[aspect]:>6.3f}{'*' if better else ' '}" + (f" {plain[aspect]:>24.3f}" if plain else "")
                         + f" {blind[aspect]:>13.3f}")
        n = len(report["captions"])
        if not model:
            lines.append(f"{n} held-out captions drawn; config.eval.fid_weights (images) or fvd_weights (clips) scores them")
        elif distances & set(model):
            lines.append(f"the distance of the samples of {n} held-out captions to their real pictures; * the model is nearer than itself told nothing")
        else:
            lines.append(f"the share of {n} held-out captions each aspect of which the detector reads back; "
                         "* the model beats itself told nothing (the empty caption)")
        return "\n".join(lines)

    @staticmethod
    def write(report: dict, workdir: str, step: int) -> str:
        return evaluation.write(report, workdir, step, fields=("captions", "scores"))
