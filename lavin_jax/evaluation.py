"""How good an in-context model is, task by task, beside two baselines that show what it has learnt.

Every task of the mixture (the configured synthetic tasks and the tasks of `eval.records`, or of
`data.records` when that is empty) gets `eval.episodes` held-out episodes: drawn with seed
`config.seed + 1` (training uses `config.seed`), each with `sample.num_pairs` pairs (0: the
`data.max_pairs` of training). The model answers every query, its noise fixed by `config.seed + 2`,
and the task's metric (`data/scoring.py`) scores the answers. Two baselines are scored alike:

- `query_copied`: the query itself as the answer, a model that ignores the pairs;
- `mean_target`: the mean of the episode's in-context targets, a model that ignores the query.

A model that reads both the pairs and the query beats both. With `eval.fid_weights` (Inception-v3)
image tasks also get FID, and with `eval.fvd_weights` (I3D) video tasks FVD, of each answer set
against the targets.

The same evaluation runs every `eval_every` steps of training and as `--mode=eval`, which writes
`DIR/eval/metrics.json`; `--mode=sample` writes a grid per task (and a GIF per video task), named
apart from training's.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import scipy.linalg

from lavin_jax import metrics
from lavin_jax.data import episodes, scoring
from lavin_jax.models import i3d, inception

ANSWERS = ("model", "query_copied", "mean_target")


def mean_target(cond: np.ndarray, frames: int) -> np.ndarray:
    """The mean of each episode's in-context targets: cond [N, (2K+1)*T, ...] -> [N, T, ...]."""
    items = cond.reshape(cond.shape[0], -1, frames, *cond.shape[2:])
    return items[:, 1:-1:2].mean(axis=1)


def frechet_from_statistics(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2),
    |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)), computed as
    guided-diffusion's evaluator does (`FIDStatistics.frechet_distance`, after TTUR's FID): the
    square root by scipy's sqrtm, taken again of (sigma1 + eps I)(sigma2 + eps I) when it is not
    finite (a nearly singular product), its imaginary part dropped when that part's diagonal is
    within 1e-3 of zero (rounding) and refused beyond."""
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(root).all():
        offset = eps * np.eye(len(sigma1))
        root = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0.0, atol=1e-3):
            raise ValueError(
                f"The Fréchet distance's matrix square root has an imaginary part of {np.abs(root.imag).max():.3g}: "
                "the covariances are too ill-conditioned; use more images."
            )
        root = root.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(root))


def frechet_distance(a, b) -> float:
    """The Fréchet distance between Gaussians fitted to features a [N, D] and b [M, D] (mean and
    np.cov's unbiased covariance); either side may instead be given as its statistics, a tuple
    (mean [D], covariance [D, D]).

    A side of fewer examples than features (an evaluation's few episodes, 2048 Inception
    features) has a singular covariance S = F^T F, F its centred features over sqrt(N - 1). The
    nonzero eigenvalues of S S' are then those of F S' F^T, so the root's trace is the sum of
    their square roots: exact, and no D x D matrix square root (ill-conditioned on a singular
    product). Otherwise `frechet_from_statistics`, the evaluator's computation."""

    def fitted(x):  # (mean, F or None, S or None): F where it is the smaller form.
        if isinstance(x, tuple):
            return np.asarray(x[0], np.float64), None, np.asarray(x[1], np.float64)
        x = np.asarray(x, np.float64)
        mean = x.mean(0)
        factor = (x - mean) / np.sqrt(max(len(x) - 1, 1))
        return (mean, factor, None) if len(x) < x.shape[1] else (mean, None, factor.T @ factor)

    # The low-rank side first (the smaller one where both are).
    low, other = sorted((fitted(a), fitted(b)), key=lambda side: np.inf if side[1] is None else len(side[1]))
    (mean, factor, cov), (other_mean, other_factor, other_cov) = low, other
    if factor is None:
        return frechet_from_statistics(mean, cov, other_mean, other_cov)
    if other_factor is None:
        inner, other_trace = factor @ other_cov @ factor.T, np.trace(other_cov)
    else:  # S' = F'^T F' kept factored: F S' F^T = (F F'^T)(F F'^T)^T.
        cross = factor @ other_factor.T
        inner, other_trace = cross @ cross.T, np.sum(other_factor * other_factor)
    root_trace = np.sqrt(np.clip(np.linalg.eigvalsh(inner), 0.0, None)).sum()
    return float(np.sum((mean - other_mean) ** 2) + np.sum(factor * factor) + other_trace - 2.0 * root_trace)


# (video items?, distance, config.eval field, feature network): FID of images, FVD of clips.
DISTANCES = ((False, "fid", "fid_weights", inception), (True, "fvd", "fvd_weights", i3d))


def feature_networks(eval_config) -> dict[bool, tuple[str, object]]:
    """{video: (distance name, frames [N, T, H, W, 3] -> features [N, D])} for the configured
    FID (image items) and FVD (video items) weight files."""

    def network(module, path, video):
        weights, apply = jax.device_put(module.load(path)), jax.jit(module.features)  # on the device once.
        return lambda frames: np.asarray(apply(weights, frames if video else frames[:, 0]))

    return {video: (name, network(module, eval_config[field], video)) for video, name, field, module in DISTANCES if eval_config[field]}


def eval_data(config):
    """The data config of the held-out episodes: `eval.records` (or `data.records`) as the record
    directories, every task weighing the same and no pair mirrored."""
    data = config.data.copy_and_resolve_references()
    data.records = tuple(config.eval.records) or tuple(config.data.records)
    data.task_weights = ()
    data.flip_prob = 0.0
    return data


def check_files(config) -> None:
    """Whatever the evaluation reads, checked before anything runs: the FID and FVD weight files
    (`check_distance_files`) and the record directories."""
    check_distance_files(config)
    episodes.components(eval_data(config))


def check_distance_files(config) -> None:
    """The FID and FVD weight files: present, each tensor of its shape, and able to score the
    config's items (`data.video_frames`)."""
    e = config.eval
    for _, _, field, module in DISTANCES:
        if e[field] and not os.path.exists(e[field]):
            raise FileNotFoundError(f"config.eval.{field}={e[field]!r} does not exist; make it with: {module.CONVERT_COMMAND}")
    if (e.fid_weights or e.fvd_weights) and e.episodes < 2:
        raise ValueError(f"config.eval.episodes={e.episodes}: FID and FVD need at least 2 episodes per task.")
    if e.fvd_weights and config.data.video_frames < i3d.MIN_FRAMES:
        raise ValueError(
            f"config.eval.fvd_weights is set but config.data.video_frames={config.data.video_frames}: "
            f"I3D needs clips of at least {i3d.MIN_FRAMES} frames."
        )
    for _, _, field, module in DISTANCES:
        if e[field]:
            module.check_file(e[field])  # every tensor named and shaped, not only the file present.


class Evaluation:
    """The held-out episodes of every task, drawn once and kept as uint8 (a quarter of float32's
    memory); `run(predictor)` scores a model on them. `episodes_per_task` defaults to
    `eval.episodes`; `distances`: FID/FVD where configured; `prefix`: the grids' names,
    `<prefix>_<task>`."""

    def __init__(self, config, *, episodes_per_task: int | None = None, distances: bool = True, prefix: str = "samples"):
        c = config
        self.prefix = prefix
        source = episodes.Episodes(eval_data(c), c.seed + 1, c.global_batch_size)
        self.config = c
        self.pairs = int(c.sample.num_pairs or c.data.max_pairs)
        self.count = int(c.eval.episodes if episodes_per_task is None else episodes_per_task)
        self.tasks = {}
        for index, component in enumerate(source.components):
            drawn = [source.episode(i, self.pairs, task=index) for i in range(self.count)]
            self.tasks[component.name] = (component, {name: scoring.to_uint8(np.stack([e[name] for e in drawn])) for name in ("cond", "target")})
        self._networks = feature_networks(c.eval) if distances else {}
        self._fixed = {}  # per task, what no model changes: the baselines' scores, the targets' features.

    def run(self, predictor, **options) -> dict:
        """{"tasks": {task: {"metric", "video", "model", "query_copied", "mean_target"}}, "grids":
        {name: uint8 grid}, "examples": {task: (cond, answer, target)}} for the first
        `sample.num_examples` episodes; `options` (steps, cfg_scale, ...) go to the predictor."""
        c = self.config
        shown = int(c.sample.num_examples)
        rows, grids, examples = {}, {}, {}
        for name, (component, drawn) in self.tasks.items():
            frames = drawn["target"].shape[1]
            model = predictor.sample({"cond": drawn["cond"]}, frames, seed=c.seed + 2, **options)
            target = scoring.from_uint8(drawn["target"])
            baselines, real = self._baselines(name, component, drawn, target)
            row = {"metric": component.metric, "video": component.video, "model": scoring.METRICS[component.metric](model, target)}
            if real is not None:
                distance, features = self._networks[component.video]
                row["model"][distance] = frechet_distance(features(np.clip(model, -1.0, 1.0)), real)
            rows[name] = {**row, **{who: dict(scores) for who, scores in baselines.items()}}
            examples[name] = (scoring.from_uint8(drawn["cond"][:shown]), model[:shown], target[:shown])
            grids[self.grid_name(name)] = metrics.episode_grid(*examples[name], scale=metrics.display_scale(target.shape[2]))
        return {"pairs": self.pairs, "episodes": self.count, "tasks": rows, "grids": grids, "examples": examples}

    # A conditioning's evaluator is read through these (`lavin_jax.conditioning`).
    scalars = staticmethod(lambda report: scalars(report))
    table = staticmethod(lambda report: table(report))
    write = staticmethod(lambda report, workdir, step: write(report, workdir, step))

    def grid_name(self, task: str) -> str:
        """The name of a task's grid (and a video task's animation): `<prefix>_<task>`."""
        return f"{self.prefix}_{file_name(task)}"

    def _baselines(self, name: str, component, drawn: dict, target: np.ndarray) -> tuple[dict, np.ndarray | None]:
        """({baseline: its scores}, the targets' features or None) of a task, computed at the
        first run: neither depends on the model."""
        if name not in self._fixed:
            frames = target.shape[1]
            cond = scoring.from_uint8(drawn["cond"])
            answers = {"query_copied": cond[:, -frames:], "mean_target": mean_target(cond, frames)}
            scores = {who: scoring.METRICS[component.metric](a, target) for who, a in answers.items()}
            real = None
            if component.video in self._networks:
                distance, features = self._networks[component.video]
                real = features(target)
                for who, answer in answers.items():
                    scores[who][distance] = frechet_distance(features(np.clip(answer, -1.0, 1.0)), real)
            self._fixed[name] = (scores, real)
        return self._fixed[name]


def file_name(task: str) -> str:
    """A task name as a file name: record tasks are named `<directory>/<task>`."""
    return task.replace("/", "_")


def scalars(report: dict) -> dict[str, float]:
    """The report as flat scalars: `eval/<task>/<value>` for the model and
    `eval_<baseline>/<task>/<value>` for each baseline."""
    flat = {}
    for task, row in report["tasks"].items():
        for who in ANSWERS:
            prefix = "eval" if who == "model" else f"eval_{who}"
            flat.update({f"{prefix}/{task}/{value}": v for value, v in row[who].items()})
    return flat


def better(value: str, model: float, baseline: float) -> bool:
    return model < baseline if value in scoring.LOWER_IS_BETTER else model > baseline


def table(report: dict) -> str:
    """One line per task and value: the model's score, the baselines', and `*` where the model
    beats both."""
    lines = [f"{'task':<28} {'value':<13} {'model':>9} {'query copied':>13} {'mean target':>12}"]
    for task, row in report["tasks"].items():
        for value, model in row["model"].items():
            wins = all(better(value, model, row[who][value]) for who in ANSWERS[1:])
            baselines = "".join(f" {row[who][value]:>{width}.4g}" for who, width in zip(ANSWERS[1:], (13, 12)))
            lines.append(f"{task:<28} {value:<13} {model:>9.4g}{baselines}{' *' if wins else ''}")
    return "\n".join(lines)


def write(report: dict, workdir: str, step: int, fields: tuple[str, ...] = ("pairs", "episodes", "tasks")) -> str:
    """`workdir/eval/metrics.json`: the step and the report's `fields` (by default the episodes
    and every task's scores)."""
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    path = os.path.join(workdir, "eval", "metrics.json")
    kept = {name: report[name] for name in fields}
    with open(path, "w") as f:
        json.dump({"step": int(step), **kept}, f, indent=2)
    return path
