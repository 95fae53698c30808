"""Class-label conditioning, DiT's: the model is told which class to draw.

A batch is {"target": images (B, 1, S, S, 3) in [-1, 1], "label": int32 (B,), "skipped"} from a
labelled dataset (`data.classes`: the bundled digits, a tfds classification dataset, or a
directory written by ingest; `data/labelled.py`), or their ST-VAE latents from a latent cache
(`data.source='latents'`, `latents.LatentImages`). A share `data.cond_drop_prob` of the examples
carries the null class `num_classes` instead of its label, which is also what guidance samples
against (DiT's label dropout, drawn by the data so that it is a pure function of (seed, index)).
A prompt is a class, by index or name, or None: the null class.

An unconditional model (`model.num_classes` 0: the image-space DiffiT's CIFAR-10) reads the same
labelled images with every label the null class, 0, and guides against nothing. Its evaluation
draws as many samples as a class-conditional run would (`eval.episodes` per class of the data),
and the labels still judge them: it reports how they spread over the classes the classifier reads
in them, as a class score (the Inception Score with the classifier in place of Inception: the
number of classes drawn, each drawn clearly), beside the real held-out images' and FID.

Evaluation draws `eval.episodes` samples of every class and judges them with a classifier fitted
on the real training images (a fixed logistic regression on small grey thumbnails, so its verdict
only says whether a sample reads as its class): its accuracy on the samples, beside its accuracy
on the real held-out images (the ceiling) and chance; with `eval.fid_weights`, FID of the samples
against the held-out images, beside the FID of as many real training images (the ceiling).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression

from lavin_jax import evaluation, latents, metrics
from lavin_jax.conditioning.base import Conditioning
from lavin_jax.config import require
from lavin_jax.data import labelled, scoring

# The classifier's input: a grey thumbnail of this side, and at most this many training images.
THUMBNAIL = 16
CLASSIFIER_IMAGES = 5000


class ClassLabels(Conditioning):
    @staticmethod
    def check(config) -> None:
        d = config.data
        require(bool(d.classes), "config.conditioning='class' needs config.data.classes: 'digits', 'tfds:<name>' or an ingested directory.")
        Conditioning.check_source(config)
        require(d.image_size >= 8, f"config.data.image_size={d.image_size} must be at least 8.")
        require(0.0 <= d.cond_drop_prob < 1.0, f"config.data.cond_drop_prob={d.cond_drop_prob} must be in [0, 1).")
        require(config.eval.episodes >= 1, f"config.eval.episodes={config.eval.episodes} must be at least 1.")
        n = config.model.num_classes
        require(n > 0 or not len(config.sample.classes), f"config.sample.classes={tuple(config.sample.classes)}: an unconditional model (config.model.num_classes=0) draws no classes.")
        bad = [k for k in config.sample.classes if not 0 <= k < n]
        require(not bad, f"config.sample.classes={tuple(config.sample.classes)} has {bad[:1]}, not a class index in [0, {n}).")

    @property
    def num_classes(self) -> int:
        """The model's classes, the null class's index; 0: unconditional."""
        return int(self.config.model.num_classes)

    @property
    def drawn(self) -> np.ndarray:
        """The labels samples are drawn for: every class, or an unconditional model's null class."""
        return np.arange(self.num_classes if self.num_classes else 1, dtype=np.int32)

    def dataset(self, split: str):
        """The labelled images of `split` ('train' or 'test'), at the run's image size."""
        d = self.config.data
        found = labelled.open_dataset(d.classes, split, int(d.image_size), seed=int(self.config.seed))
        if self.num_classes and found.num_classes != self.num_classes:
            raise ValueError(
                f"config.model.num_classes={self.num_classes} but config.data.classes={d.classes!r} has {found.num_classes} classes."
            )
        return found

    def check_files(self) -> None:
        self.dataset("train")
        if self.config.data.source == "latents":
            latents.LatentImages(self.config)

    def check_eval_files(self, judge: bool = True) -> None:
        if not judge:
            return  # the grids are drawn from the model and the class indices alone.
        e = self.config.eval
        if e.fid_weights and not os.path.exists(e.fid_weights):
            raise FileNotFoundError(f"config.eval.fid_weights={e.fid_weights!r} does not exist.")
        if e.fid_weights and e.episodes < 2:
            raise ValueError(f"config.eval.episodes={e.episodes}: FID needs at least 2 samples per class.")
        self.dataset("test")

    def source(self, seed: int):
        d = self.config.data
        images = latents.LatentImages(self.config) if d.source == "latents" else self.dataset("train")
        # An unconditional model's every label is dropped to its null class.
        drop = float(d.cond_drop_prob) if self.num_classes else 1.0
        return labelled.LabelledImages(images, seed=seed, flip_prob=float(d.flip_prob), cond_drop_prob=drop,
                                       num_classes=self.num_classes, shuffle=True)

    def largest_batch(self, batch_size: int) -> dict:
        side = int(self.config.data.image_size)
        return {
            "target": jax.ShapeDtypeStruct((batch_size, 1, side, side, 3), jnp.float32),
            "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
            "skipped": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
        }

    def example_context(self, frame) -> tuple[int, dict]:
        return 1, {"label": jax.ShapeDtypeStruct((1,), jnp.int32)}

    def null(self, context: dict, frames: int) -> dict:
        return {**context, "label": jnp.full_like(context["label"], self.num_classes)}

    def nulls(self, context: dict, frames: int) -> list[dict]:
        """The null class; none for an unconditional model, whose every label is it."""
        return [self.null(context, frames)] if self.num_classes else []

    def check_context(self, context: dict, frames: int) -> None:
        label = np.asarray(context.get("label", np.zeros((0, 0))))
        if label.ndim != 1 or frames != 1 or np.any((label < 0) | (label > self.num_classes)):
            raise ValueError(f"Labels {label.shape} for {frames}-frame images: one label in [0, {self.num_classes}] per image is needed.")

    def labels(self, prompts) -> np.ndarray:
        """Class indices of prompts given as indices, class names or None (the null class: an
        unguided draw of a class-conditional model, any draw of an unconditional one)."""
        names = None
        out = []
        for i, prompt in enumerate(prompts):
            if prompt is None:
                out.append(self.num_classes)
                continue
            if not self.num_classes:
                raise ValueError(f"prompts[{i}]={prompt!r}: an unconditional model (config.model.num_classes=0) takes None prompts alone.")
            if isinstance(prompt, str):
                names = names or list(self.dataset("train").class_names)
                if prompt not in names:
                    raise ValueError(f"prompts[{i}]={prompt!r} is not a class; classes: {', '.join(names)}.")
                prompt = names.index(prompt)
            if not 0 <= int(prompt) < self.num_classes:
                raise ValueError(f"prompts[{i}]={prompt!r} is not a class index in [0, {self.num_classes}).")
            out.append(int(prompt))
        return np.asarray(out, np.int32)

    def answer(self, predictor, prompts, *, seed: int = 0, **options) -> list[np.ndarray]:
        """Images of the prompted classes, uint8 [S, S, 3]; prompt i draws its noise from (seed, i)."""
        labels = self.labels(prompts)
        images = predictor.sample({"label": labels}, 1, seed=seed, **options)
        return list(scoring.to_uint8(images[:, 0]))

    def evaluator(self, *, count=None, distances=True, prefix="samples", judge=True):
        return ClassEvaluation(self, count=count, distances=distances, prefix=prefix, judge=judge)


def thumbnails(images: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S, 3] -> the classifier's features, [N, THUMBNAIL**2] grey values in [0, 1]."""
    return np.stack([
        np.asarray(Image.fromarray(image).convert("L").resize((THUMBNAIL, THUMBNAIL), Image.BILINEAR), np.float32).ravel() / 255.0
        for image in images
    ])


def read_all(dataset, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, labels) of a dataset's first `limit` records, spread evenly over it."""
    indices = np.arange(len(dataset)) if limit is None or limit >= len(dataset) else np.linspace(0, len(dataset) - 1, limit).astype(int)
    read = [dataset.read(int(i)) for i in indices]
    return np.stack([image for image, _ in read]), np.asarray([label for _, label in read], np.int32)


def class_score(probabilities: np.ndarray) -> float:
    """exp(mean KL(p(y|x) || p(y))) of the classifier's [N, classes] probabilities: the Inception
    Score's formula with the classifier in place of Inception. 1 where every image reads alike; the
    number of classes where each image is clearly one class and the classes are drawn equally."""
    p = np.clip(probabilities, 1e-12, 1.0)
    kl = np.sum(p * (np.log(p) - np.log(p.mean(axis=0, keepdims=True))), axis=1)
    return float(np.exp(kl.mean()))


def class_grid(images: np.ndarray) -> np.ndarray:
    """uint8 [C, N, S, S, 3] -> one row per class, enlarged for a person, 2 px gaps."""
    scale = metrics.display_scale(images.shape[2])
    big = images.repeat(scale, axis=2).repeat(scale, axis=3)
    c, n, s = big.shape[:3]
    grid = np.full((c * (s + 2) + 2, n * (s + 2) + 2, 3), 255, np.uint8)
    for row in range(c):
        for col in range(n):
            grid[2 + row * (s + 2) : 2 + row * (s + 2) + s, 2 + col * (s + 2) : 2 + col * (s + 2) + s] = big[row, col]
    return grid


class ClassEvaluation:
    """`eval.episodes` (or `count`) samples of every class, judged by the fixed classifier; FID
    where configured and `distances`. The classifier and the real images' scores are computed
    once. Unjudged (`judge` False: `--mode=sample`), only the grid is drawn, of the classes
    `sample.classes` names (all where it names none), and no data is read: a converted ImageNet
    model draws without ImageNet. An unconditional model draws `count` samples for each class of
    the data, all of its one (null) class, judged by how they spread over the classes
    (`class_score`) rather than by accuracy."""

    def __init__(self, labels: ClassLabels, *, count=None, distances=True, prefix="samples", judge=True):
        c = labels.config
        self.labels, self.prefix, self.judge = labels, prefix, judge
        self.count = int(c.eval.episodes if count is None else count)
        self.unconditional = not labels.num_classes
        chosen = not judge and len(c.sample.classes)
        self.classes = np.asarray(c.sample.classes, np.int32) if chosen else labels.drawn
        if not judge:
            return
        train_images, train_labels = read_all(labels.dataset("train"), CLASSIFIER_IMAGES)
        held_images, held_labels = read_all(labels.dataset("test"))
        self.classifier = LogisticRegression(max_iter=1000).fit(thumbnails(train_images), train_labels)
        self.class_names = list(labels.dataset("train").class_names)
        self.real_accuracy = float(np.mean(self.classifier.predict(thumbnails(held_images)) == held_labels))
        self.real_score = class_score(self.classifier.predict_proba(thumbnails(held_images)))
        if self.unconditional:  # as many samples as a class-conditional run of the data draws.
            self.count *= len(self.class_names)
        self._fid = None
        if distances and c.eval.fid_weights:
            _, features = evaluation.feature_networks(c.eval)[False]
            as_frames = lambda images: scoring.from_uint8(images)[:, None]
            self._fid = (features, features(as_frames(held_images)))
            self.real_fid = evaluation.frechet_distance(features(as_frames(train_images[: len(held_images)])), self._fid[1])

    def run(self, predictor, **options) -> dict:
        c = self.labels.config
        n = self.labels.num_classes
        labels = np.repeat(self.classes, self.count)
        images = scoring.to_uint8(predictor.sample({"label": labels}, 1, seed=int(c.seed) + 2, **options)[:, 0])
        report = {"samples_per_class": self.count, "images": images, "labels": labels}
        shown = min(int(c.sample.num_examples), self.count)
        report["grids"] = {f"{self.prefix}_classes": class_grid(images.reshape(len(self.classes), self.count, *images.shape[1:])[:, :shown])}
        if not self.judge:
            return report
        probabilities = self.classifier.predict_proba(thumbnails(images))
        judged = self.classifier.classes_[probabilities.argmax(axis=1)]
        if self.unconditional:
            report["classes"] = {name: float(np.mean(judged == k)) for k, name in enumerate(self.class_names)}
            report["class_score"] = {"model": class_score(probabilities), "real": self.real_score, "classes": len(self.class_names)}
        else:
            report["classes"] = {self.class_names[k]: float(np.mean(judged[labels == k] == k)) for k in range(n)}
            report["accuracy"] = {"model": float(np.mean(judged == labels)), "real": self.real_accuracy, "chance": 1.0 / n}
        if self._fid is not None:
            features, real = self._fid
            report["fid"] = {"model": evaluation.frechet_distance(features(scoring.from_uint8(images)[:, None]), real), "real": self.real_fid}
        return report

    @staticmethod
    def scalars(report: dict) -> dict[str, float]:
        # An unconditional model's per-class figure is the share of its samples read as the class.
        score, per_class = ("class_score", "share") if "class_score" in report else ("accuracy", "accuracy")
        out = {f"eval/{score}": report[score]["model"], f"eval/{score}_real": report[score]["real"]}
        if "fid" in report:
            out.update({"eval/fid": report["fid"]["model"], "eval/fid_real": report["fid"]["real"]})
        out.update({f"eval/{per_class}/{name}": value for name, value in report["classes"].items()})
        return out

    @staticmethod
    def table(report: dict) -> str:
        if "class_score" in report:
            s = report["class_score"]
            lines = [f"{'class':<16} {'share of samples':>20}"]
            lines += [f"{name:<16} {value:>20.3f}" for name, value in report["classes"].items()]
            lines.append(f"class score {s['model']:.2f} (real held-out images {s['real']:.2f}; 1 to {s['classes']})")
        else:
            a = report["accuracy"]
            lines = [f"{'class':<16} {'accuracy of samples':>20}"]
            lines += [f"{name:<16} {value:>20.3f}" for name, value in report["classes"].items()]
            lines.append(f"{'all':<16} {a['model']:>20.3f}   (real held-out images {a['real']:.3f}, chance {a['chance']:.3f})")
        if "fid" in report:
            lines.append(f"FID {report['fid']['model']:.2f} (real training images: {report['fid']['real']:.2f})")
        return "\n".join(lines)

    @staticmethod
    def write(report: dict, workdir: str, step: int) -> str:
        path = os.path.join(workdir, "eval", "metrics.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        kept = {k: v for k, v in report.items() if k not in ("images", "labels", "grids")}
        with open(path, "w") as f:
            json.dump({"step": step, **kept}, f, indent=2)
        return path
