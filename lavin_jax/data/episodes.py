"""Episodes: K (input, target) pairs of one task and a query, the examples J-DiT trains on.

Tasks come from two kinds of sources that look the same to an episode: the built-in synthetic
suite (`synthetic.TASKS`, rendered on the fly) and directories of real pairs written by
`python -m lavin_jax.data.ingest` (`records.RecordSource`). Every (source, task) is a component
of one mixture with weight 1 unless `data.task_weights` says otherwise. A component has a `name`,
`video`, `metric` and `make(rng, size, frames) -> (input, target)`, float32 [frames, size, size, 3]
in [-1, 1]. grain's own `mix` interleaves whole examples of several datasets; an episode needs all
its pairs from one task, so the mixture is drawn here, per episode.

An episode is a pure function of (seed, index), so any host can rebuild any example alone and a
resumed run sees exactly the data an uninterrupted one would have.

Shapes are bucketed by global batch, so the train step compiles few variants: every episode of
global batch b has the same K = `num_pairs(seed, b, ...)` and the same item length, 1 frame for
image tasks or `data.video_frames` for video tasks (a draw per batch, video with the video
components' share of the total weight). At most 2 * (max_pairs + 1) shapes.

A record that cannot be used (corrupt bytes, wrong channels, mismatched input and target) is
skipped: a warning names its file, the draw is repeated from the same generator (so the episode
stays deterministic), and the episode counts it in `skipped`, which the trainer logs.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from absl import logging

from lavin_jax.data import records, scoring, synthetic

NUM_EXAMPLES = synthetic.NUM_EXAMPLES


def num_pairs(seed: int, batch_index: int, max_pairs: int, cond_drop_prob: float) -> int:
    """K for every episode of one global batch: 0 with probability cond_drop_prob (the
    unconditional branch of classifier-free guidance), else uniform in [1, max_pairs]."""
    rng = np.random.default_rng((seed, synthetic.NUM_PAIRS_STREAM, batch_index))
    if rng.random() < cond_drop_prob:
        return 0
    return int(rng.integers(1, max_pairs + 1))


def batch_kind(seed: int, batch_index: int, data_config, video_share: float) -> tuple[int, bool]:
    """(K, video) shared by every episode of global batch `batch_index`: video with probability
    `video_share` (the video tasks' share of the mixture's weight)."""
    k = num_pairs(seed, batch_index, int(data_config.max_pairs), float(data_config.cond_drop_prob))
    video = np.random.default_rng((seed, synthetic.VIDEO_STREAM, batch_index)).random() < video_share
    return k, bool(video)


@dataclasses.dataclass(frozen=True)
class RecordTask:
    """One task of a record directory as a mixture component: a pair is a uniformly drawn record,
    resized to the run's frame size and mirrored (input and target alike) with `flip_prob`."""

    name: str
    source: records.RecordSource
    task: str
    video: bool
    metric: str
    flip_prob: float

    def make(self, rng: np.random.Generator, size: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
        index = int(rng.integers(self.source.tasks[self.task].count))
        flip = rng.random() < self.flip_prob
        pair = []
        for item in self.source.read(self.task, index):
            item = records.resize(item[:frames], size, "stretch", records.resample_for(self.metric))
            pair.append(scoring.from_uint8(item[:, :, ::-1] if flip else item))
        return pair[0], pair[1]


def components(data_config) -> list:
    """The mixture's components: the configured synthetic tasks, then every task of every record
    directory (named `<directory name>/<task>`). Raises ValueError naming the field or directory."""
    known = ", ".join(synthetic.TASKS)
    unknown = [name for name in data_config.tasks if name not in synthetic.TASKS]
    if unknown:
        raise ValueError(f"config.data.tasks has unknown task(s) {', '.join(map(repr, unknown))}; known tasks: {known}.")
    found = [synthetic.TASKS[name] for name in data_config.tasks]
    for directory in data_config.records:
        source = records.RecordSource(directory)
        for task, info in source.tasks.items():
            if info.count == 0:
                logging.warning("Record directory %r: task %r has no records; it is left out.", directory, task)
                continue
            video = info.frames > 1
            if video and info.frames < data_config.video_frames:
                raise ValueError(
                    f"config.data.records: task {task!r} of {directory!r} has {info.frames}-frame clips, "
                    f"fewer than config.data.video_frames={data_config.video_frames}."
                )
            flip_prob = float(data_config.flip_prob) if info.flip else 0.0
            name = f"{os.path.basename(os.path.normpath(directory))}/{task}"
            found.append(RecordTask(name, source, task, video, info.metric, flip_prob))
    if not found:
        raise ValueError("config.data.tasks and config.data.records are both empty: there is nothing to train on.")
    return found


def weights(data_config, found: list) -> np.ndarray:
    """Each component's weight: 1, or the `data.task_weights` entry `name=weight` naming it (the
    full component name, or a task name, which covers that task in every source)."""
    result = np.ones(len(found))
    for entry in data_config.task_weights:
        name, sep, value = str(entry).partition("=")
        try:
            weight = float(value) if sep else -1.0
        except ValueError:
            weight = -1.0
        if weight < 0:
            raise ValueError(f"config.data.task_weights entry {entry!r} is not 'task=weight' with a weight >= 0.")
        hits = [i for i, c in enumerate(found) if name in (c.name, getattr(c, "task", c.name))]
        if not hits:
            raise ValueError(
                f"config.data.task_weights entry {entry!r} names no task in the mixture "
                f"({', '.join(c.name for c in found)})."
            )
        result[hits] = weight
    if not result.sum() > 0:
        raise ValueError("config.data.task_weights gives every task weight 0.")
    return result


class Episodes:
    """Random-access episodes, a source for `grain.MapDataset.source`.

    Example i has K = num_pairs(seed, i // global_batch_size, ...) pairs, so all examples of one
    global batch stack into one array. It is a dict with `cond` float32[(2K+1)T, H, W, 3] (items
    in_1, tgt_1, ..., in_K, tgt_K, query_in of T frames each; [zeros, query_in] when K=0), `target`
    float32[T, H, W, 3] (the query's answer), `task` int32[] (index into `task_names`) and
    `skipped` int32[] (bad records replaced while building it).
    """

    def __init__(self, data_config, seed: int, global_batch_size: int, found: list | None = None):
        self.components = tuple(components(data_config) if found is None else found)
        self.task_names = tuple(c.name for c in self.components)
        w = weights(data_config, list(self.components))
        is_video = np.array([c.video for c in self.components])
        self._pools = {}
        for video in (False, True):
            members = np.flatnonzero((is_video == video) & (w > 0))
            if len(members):
                self._pools[video] = (members, w[members] / w[members].sum())
        self.video_share = float(w[is_video].sum() / w.sum())
        self._data_config = data_config
        self._image_size = int(data_config.image_size)
        self._video_frames = int(data_config.video_frames)
        self._seed = int(seed)
        self._global_batch_size = int(global_batch_size)

    def __len__(self) -> int:
        return NUM_EXAMPLES

    def batch_kind(self, batch_index: int) -> tuple[int, bool]:
        return batch_kind(self._seed, batch_index, self._data_config, self.video_share)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.episode(index, *self.batch_kind(int(index) // self._global_batch_size))

    def episode(self, index: int, num_pairs: int, video: bool = False, task: int | None = None) -> dict[str, np.ndarray]:
        """Example `index` with an explicit number of pairs, of a video task or an image task
        drawn by weight, or of component `task` (evaluation, per task); its task and query do not
        depend on num_pairs, so episodes with and without context can be compared (guidance)."""
        if num_pairs < 0:
            raise ValueError(f"num_pairs={num_pairs} must be non-negative.")
        # A given task draws from its own stream, so the tasks of an evaluation get unrelated scenes.
        rng = np.random.default_rng((self._seed, synthetic.EPISODE_STREAM, int(index), *(() if task is None else (task,))))
        if task is None:
            if video not in self._pools:
                raise ValueError(f"The mixture has no {'video' if video else 'image'} task with weight > 0.")
            members, probs = self._pools[video]
            task = int(members[rng.choice(len(members), p=probs)])
        component = self.components[task]
        frames = self._video_frames if component.video else 1
        skipped = 0

        def pair():
            nonlocal skipped
            for _ in range(records.MAX_BAD_IN_A_ROW):
                try:
                    return component.make(rng, self._image_size, frames)
                except records.BadRecord as error:
                    skipped += 1
                    last = error
                    logging.warning("Skipping a bad record of task %r: %s", component.name, error)
            raise RuntimeError(f"Task {component.name!r} gave {records.MAX_BAD_IN_A_ROW} bad records in a row; the last: {last}")

        query_input, query_target = pair()
        items = []
        for _ in range(num_pairs):
            items.extend(pair())
        if not items:
            # Dropped context looks as it does to guidance at inference (`conditioning.incontext.InContext.null`):
            # one zero item in place of the pairs, then the query.
            items.append(np.zeros_like(query_input))
        items.append(query_input)
        return {
            "cond": np.concatenate(items),
            "target": query_target,
            "task": np.array(task, np.int32),
            "skipped": np.array(skipped, np.int32),
        }
