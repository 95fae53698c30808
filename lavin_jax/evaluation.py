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


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to features a [N, D] and b [M, D]:
    |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mean_a, mean_b = a.mean(0), b.mean(0)
    # S_a = A^T A and S_b = B^T B with A, B the centred features over sqrt(count - 1).
    a = (a - mean_a) / np.sqrt(max(len(a) - 1, 1))
    b = (b - mean_b) / np.sqrt(max(len(b) - 1, 1))
    if len(a) + len(b) < a.shape[1]:
        # Fewer examples than features (an evaluation's few episodes, 2048 Inception features):
        # the eigenvalues of S_a S_b are the squared singular values of A B^T, so the trace of
        # its square root is their sum; no D x D matrix square root.
        cross = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    else:
        # Rounding leaves a tiny imaginary part on the square root of a product of covariances.
        cross = np.trace(np.real(scipy.linalg.sqrtm((a.T @ a) @ (b.T @ b))))
    return float(np.sum((mean_a - mean_b) ** 2) + np.sum(a * a) + np.sum(b * b) - 2.0 * cross)


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
    (present, each tensor of its shape, and able to score the config's episodes) and the record
    directories."""
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
    episodes.components(eval_data(config))


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


def write(report: dict, workdir: str, step: int) -> str:
    """`workdir/eval/metrics.json`: the step, the episodes and every task's scores."""
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    path = os.path.join(workdir, "eval", "metrics.json")
    kept = {name: report[name] for name in ("pairs", "episodes", "tasks")}
    with open(path, "w") as f:
        json.dump({"step": int(step), **kept}, f, indent=2)
    return path
