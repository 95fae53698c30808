"""Ingest: real input/target pairs from folders, videos and tfds datasets into one new record
directory (`records.py` describes the format).

    python -m lavin_jax.data.ingest --config=configs/tiny.py --out=DIR \\
        --source=folder:PATH --source=videos:PATH --source=tfds:NAME[:SPLIT] \\
        [--metric=TASK=METRIC ...] [--no_flip=TASK ...] [--tfds_data_dir=D] [--max_examples=N]
    python -m lavin_jax.data.ingest --config=configs/tiny.py --out=DIR \\
        --classes=ROOT [--classes_test=ROOT | --test_fraction=F]
    python -m lavin_jax.data.ingest --config=configs/gentron_tiny.py --out=DIR \\
        --captions=SPEC [--test_fraction=F] [--tfds_data_dir=D]

Sources (`--source` may repeat; all go into DIR):
- `folder:PATH`: LaVin-DiT's template layout, PATH/<task>/<id>_input.<ext> beside
  PATH/<task>/<id>_target.<ext>. Images (png, jpg, jpeg) make 1-frame pairs. Videos (mp4, avi,
  mkv, webm, mov) make pairs of aligned clips: input and target are cut at the same frames into
  clips of data.video_frames. If one video ends before the other, the clips before its end are
  kept and the rest of the pair is logged as skipped. A task's metric is `image` unless
  `--metric=TASK=METRIC` says otherwise.
- `videos:PATH`: every video file below PATH becomes forward frame-prediction pairs, task
  `frame_prediction`: input frames [s, s+T), target [s+T, s+2T), T = data.video_frames.
- `tfds:NAME[:SPLIT]` (split `train` by default): a dataset of `tfds_sources.ADAPTERS`, its
  first --max_examples examples (0: all).

`--classes=ROOT` writes class-labelled images instead of pairs (`labelled.ingest_folders`; DIR is
then read with `labelled.open_dataset(DIR, ...)`): ImageNet-style class folders ROOT/<class>/<image
files>, center-cropped to data.ingest.size and stored with data.ingest.encoding, the test split a
second folder of the same classes (--classes_test) or a --test_fraction of each class drawn by
config.seed. Unreadable files are skipped, logged and listed in DIR/labels.json.

`--captions=SPEC` writes captioned examples (`captioned.ingest_captions`; DIR is then read with
`captioned.open_captioned(DIR, ...)`): those of a folder of media files with .txt captions beside
them, `tar:GLOB` webdataset shards or `tfds:NAME`, both splits as `open_captioned(SPEC, ...)`
reads them (--test_fraction: the share held out of a source without its own split; 0:
captioned.TEST_FRACTION), center-cropped to data.ingest.size and stored with data.ingest.encoding.
They are the examples the config's model trains on: clips of data.video_frames frames every
data.frame_stride-th for a video model (model.temporal), else images. Examples that cannot be read
are skipped, logged and listed in DIR/captions.json.

Video frames are taken as decoded, whatever the frame rate. Clips start every
data.ingest.video_stride frames (0: one after the other, no frame in two clips).
Frames are resized to data.ingest.size square by data.ingest.resize and stored with
data.ingest.encoding. Only 8-bit images are read: RGB, gray and palette images become RGB, RGBA
only if every pixel is opaque. Training mirrors a task's pairs (input and target alike) when its
metric allows it (`records.MIRROR_SAFE`: not flow, normals or keypoints) and no --no_flip=TASK
forbids it.

Bad data is skipped, never fatal: an unreadable image or video, another mode, an input and a
target of different sizes, a half of a pair missing, a video too short for one pair. Each skip
is logged with its file and reason and listed in DIR/report.json with the per-task counts and the
task folders found empty. Only a run that writes nothing at all fails. A bad config, source,
--metric or --no_flip, or an --out directory that is not new and empty, is refused before any
data is read.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import json
import os
import sys
from typing import Callable, Iterable, Iterator

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from lavin_jax import config as config_lib
from lavin_jax.data import captioned, labelled, media, records, tfds_sources

FRAME_PREDICTION = "frame_prediction"
REPORT = "report.json"
_ROLES = ("input", "target")

# (label, input, target): a pair at its native resolution, uint8 [T, H, W, 3] each; the label
# tells the item's pairs apart (a clip's first frame) and is appended to the item's id.
Pair = tuple[str, np.ndarray, np.ndarray]


# An item that cannot be used; `str()` is the reason. The readers of `media` raise it too.
Skip = media.Skip


@dataclasses.dataclass(frozen=True)
class Item:
    """One file, file pair or dataset example: `pairs()` reads it, raising Skip if it cannot."""

    task: str
    id: str
    pairs: Callable[[], Iterable[Pair]]


@dataclasses.dataclass(frozen=True)
class Source:
    spec: str
    kind: str  # "folder", "videos" or "tfds", as the spec begins.
    tasks: dict[str, str]  # task -> metric.
    items: Callable[[], Iterable[Item]]
    empty: tuple[str, ...] = ()  # task folders with no files.


@dataclasses.dataclass(frozen=True)
class Clips:
    frames: int  # T, frames of each input and each target clip.
    stride: int  # frames between clip starts; 0: the span of one item, no overlap.


# --- reading ---------------------------------------------------------------------------------
# Skip reasons describe the item, which the report and the log name by its id (its input file);
# a pair's target is named in the reason when it is the culprit.


def _image(path: str) -> Iterator[np.ndarray]:
    """An image as a stream of one frame, like a video's: read when the stream is."""
    yield media.read_image(path)


def _target(path: str, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """The frames of a pair's target file, whose skips name it."""
    try:
        yield from frames
    except Skip as skip:
        raise Skip(f"its target {path} {skip}") from None


def _windows(frames: Iterable, length: int, step: int) -> Iterator[tuple[int, list]]:
    """(start, frames[start:start+length]) for start = 0, step, 2*step, ... while a whole window
    fits, holding one window at a time; Skip if not even one fits."""
    window, start, count = [], 0, 0
    for index, frame in enumerate(frames):
        count = index + 1
        if index >= start:
            window.append(frame)
        if len(window) == length:
            yield start, window
            start += step
            window = window[step:]
    if count < length:
        raise Skip(f"has {count} frames, fewer than the {length} that one pair needs")


def _frame_prediction(frames: Iterable[np.ndarray], clips: Clips) -> Iterator[Pair]:
    t = clips.frames
    for start, window in _windows(frames, 2 * t, clips.stride or 2 * t):
        yield f"@{start}", np.stack(window[:t]), np.stack(window[t:])


def _aligned(inputs: Iterable[np.ndarray], targets: Iterable[np.ndarray]) -> Iterator[tuple]:
    for count, (a, b) in enumerate(itertools.zip_longest(inputs, targets)):
        if a is None or b is None:
            raise Skip(f"its {'input' if a is None else 'target'} video ends after {count} frames, before the other")
        yield a, b


def _image_pair(input_path: str, target_path: str) -> Iterator[Pair]:
    yield "", np.stack(list(_image(input_path))), np.stack(list(_target(target_path, _image(target_path))))


def _video_pair(input_path: str, target_path: str, clips: Clips) -> Iterator[Pair]:
    frames = _aligned(media.read_video(input_path), _target(target_path, media.read_video(target_path)))
    for start, window in _windows(frames, clips.frames, clips.stride or clips.frames):
        yield f"@{start}", np.stack([a for a, _ in window]), np.stack([b for _, b in window])


def _video_file(path: str, clips: Clips) -> Iterator[Pair]:
    yield from _frame_prediction(media.read_video(path), clips)


def _tfds_example(data, index: int, adapter: tfds_sources.Adapter, clips: Clips) -> Iterator[Pair]:
    try:
        converted = adapter.convert(data[index])
    except (OSError, ValueError) as error:
        raise Skip(f"cannot be converted ({error})") from None
    if adapter.video:
        yield from _frame_prediction(converted, clips)
    else:
        yield "", converted[0][None], converted[1][None]


def _fails(reason: str) -> Callable[[], Iterable[Pair]]:
    """The `pairs` of an item found bad before reading it."""

    def pairs():
        raise Skip(reason)

    return pairs


# --- sources ---------------------------------------------------------------------------------


def _visible(directory: str) -> list[str]:
    return sorted(name for name in os.listdir(directory) if not name.startswith("."))


def _pair_item(task: str, pair_id: str, paths: dict[str, list[str]], clips: Clips) -> Item:
    first = (paths["input"] or paths["target"])[0]
    for role in _ROLES:
        if not paths[role]:
            return Item(task, first, _fails(f"has no {role} file {pair_id}_{role}.<ext> beside it"))
        if len(paths[role]) > 1:
            return Item(task, first, _fails(f"pair {pair_id!r} has several {role} files ({', '.join(paths[role])})"))
    input_path, target_path = paths["input"][0], paths["target"][0]
    video = [os.path.splitext(p)[1].lower() in media.VIDEO_EXTENSIONS for p in (input_path, target_path)]
    if video[0] != video[1]:
        return Item(task, input_path, _fails(f"is paired with {target_path}, but only one of them is a video"))
    if video[0]:
        return Item(task, input_path, functools.partial(_video_pair, input_path, target_path, clips))
    return Item(task, input_path, functools.partial(_image_pair, input_path, target_path))


def _folder_task(task: str, directory: str, clips: Clips) -> list[Item]:
    """The items of one task folder: a pair per id, or the reason it has none."""
    extensions = media.IMAGE_EXTENSIONS + media.VIDEO_EXTENSIONS
    found: dict[str, dict[str, list[str]]] = {}
    items = []
    for name in _visible(directory):
        path = os.path.join(directory, name)
        stem, ext = os.path.splitext(name)
        pair_id, _, role = stem.rpartition("_")
        if os.path.isfile(path) and pair_id and role in _ROLES and ext.lower() in extensions:
            found.setdefault(pair_id, {"input": [], "target": []})[role].append(path)
        else:
            reason = f"is not a file <id>_input.<ext> or <id>_target.<ext> (ext: {', '.join(extensions)})"
            items.append(Item(task, path, _fails(reason)))
    return items + [_pair_item(task, pair_id, paths, clips) for pair_id, paths in found.items()]


def _folder(spec: str, path: str, clips: Clips, metrics: dict[str, str]) -> Source:
    tasks = [name for name in _visible(path) if os.path.isdir(os.path.join(path, name))]
    if not tasks:
        raise ValueError(f"--source={spec} has no task folders; the layout is {path}/<task>/<id>_input.<ext>.")
    for task in tasks:
        records.check_task_name(task)
    scanned = {task: _folder_task(task, os.path.join(path, task), clips) for task in tasks}
    return Source(
        spec,
        "folder",
        {task: metrics.get(task, "image") for task in tasks},
        lambda: itertools.chain.from_iterable(scanned.values()),
        tuple(task for task, items in scanned.items() if not items),
    )


def _videos(spec: str, path: str, clips: Clips) -> Source:
    files = sorted(
        os.path.join(parent, name)
        for parent, _, names in os.walk(path)
        for name in names
        if os.path.splitext(name)[1].lower() in media.VIDEO_EXTENSIONS and not name.startswith(".")
    )
    if not files:
        raise ValueError(f"--source={spec} holds no video files ({', '.join(media.VIDEO_EXTENSIONS)}).")
    items = [Item(FRAME_PREDICTION, f, functools.partial(_video_file, f, clips)) for f in files]
    return Source(spec, "videos", {FRAME_PREDICTION: "image"}, lambda: items)


def _tfds(spec: str, name: str, split: str, clips: Clips, data_dir: str | None, max_examples: int) -> Source:
    adapter = tfds_sources.ADAPTERS.get(name)
    if adapter is None:
        known = ", ".join(tfds_sources.ADAPTERS)
        raise ValueError(f"--source={spec}: no adapter for tfds dataset {name!r}; known: {known}.")
    data = tfds_sources.open_source(name, split, data_dir)
    count = min(len(data), max_examples) if max_examples else len(data)
    items = [
        Item(adapter.task, f"tfds:{name}:{split}[{i}]", functools.partial(_tfds_example, data, i, adapter, clips))
        for i in range(count)
    ]
    return Source(spec, "tfds", {adapter.task: adapter.metric}, lambda: items)


def open_source(spec: str, clips: Clips, *, metrics: dict[str, str], tfds_data_dir: str | None,
                max_examples: int) -> Source:
    """A `--source` spec's tasks and items, listed but not read; ValueError naming the spec."""
    kind, _, rest = spec.partition(":")
    if kind in ("folder", "videos"):
        if not os.path.isdir(rest):
            raise ValueError(f"--source={spec}: {rest!r} is not a directory.")
        return _folder(spec, rest, clips, metrics) if kind == "folder" else _videos(spec, rest, clips)
    if kind == "tfds" and rest:
        name, _, split = rest.partition(":")
        return _tfds(spec, name, split or "train", clips, tfds_data_dir, max_examples)
    raise ValueError(f"--source={spec!r} is not folder:PATH, videos:PATH or tfds:NAME[:SPLIT].")


# --- writing ---------------------------------------------------------------------------------


def check_config(config) -> None:
    """The fields ingest uses; ValueError naming the field."""
    i, require = config.data.ingest, config_lib.require
    require(i.size >= 1, f"config.data.ingest.size={i.size} must be positive.")
    rules, encodings = ", ".join(records.RESIZE_RULES), ", ".join(records.ENCODINGS)
    require(i.resize in records.RESIZE_RULES, f"config.data.ingest.resize={i.resize!r} must be one of {rules}.")
    require(i.encoding in records.ENCODINGS, f"config.data.ingest.encoding={i.encoding!r} must be one of {encodings}.")
    require(i.video_stride >= 0, f"config.data.ingest.video_stride={i.video_stride} must be non-negative.")
    require(config.data.video_frames >= 1, f"config.data.video_frames={config.data.video_frames} must be positive.")


def _shape(frames: np.ndarray) -> str:
    t, h, w = frames.shape[:3]
    return f"{h}x{w}" if t == 1 else f"{t} frames of {h}x{w}"


def _write_item(item: Item, writer: records.RecordWriter, metric: str, flip: bool | None, size: int,
                rule: str) -> tuple[int, str | None]:
    """Writes the item's pairs, metric and flip as `RecordWriter.add` takes them; (pairs written,
    why the rest was skipped or None)."""
    written = 0
    try:
        for label, inputs, targets in item.pairs():
            if inputs.shape != targets.shape:
                raise Skip(f"its input is {_shape(inputs)} but its target {_shape(targets)}")
            task = writer.tasks.get(item.task)
            if task is not None and task.frames != len(inputs):
                raise Skip(f"it has {len(inputs)}-frame items but task {item.task!r} has {task.frames}-frame items")
            inputs = records.resize(inputs, size, rule, "bilinear")
            targets = records.resize(targets, size, rule, records.resample_for(metric))
            writer.add(item.task, inputs, targets, item.id + label, metric=metric, flip=flip)
            written += 1
    except Skip as skip:
        kept = f"; its first {written} pairs were kept" if written else ""
        return written, f"{skip}{kept}"
    return written, None


def ingest(config, specs: list[str], out: str, *, metrics: dict[str, str] | None = None, no_flip: Iterable[str] = (),
           tfds_data_dir: str | None = None, max_examples: int = 0) -> dict:
    """Writes the pairs of every source into the new record directory `out`; returns the report
    (also written to out/report.json). ValueError for a bad config, spec, --metric, --no_flip or
    out, before any data is read, or when nothing at all could be written."""
    metrics, no_flip = dict(metrics or {}), set(no_flip)
    check_config(config)
    clips = Clips(int(config.data.video_frames), int(config.data.ingest.video_stride))
    if not specs:
        raise ValueError("No --source given.")
    for task, metric in metrics.items():
        if metric not in records.METRICS:
            raise ValueError(f"--metric={task}={metric}: the metric must be one of {', '.join(records.METRICS)}.")
    sources = [
        open_source(spec, clips, metrics=metrics, tfds_data_dir=tfds_data_dir, max_examples=max_examples)
        for spec in specs
    ]
    task_metric, owner = {}, {}
    for source in sources:
        for task, metric in source.tasks.items():
            if task_metric.setdefault(task, metric) != metric:
                raise ValueError(
                    f"Task {task!r} is scored as {task_metric[task]!r} by --source={owner[task]} but as {metric!r} "
                    f"by --source={source.spec}; rename a task folder or set --metric={task}=METRIC."
                )
            owner.setdefault(task, source.spec)
    folder_tasks = {t for s in sources if s.kind == "folder" for t in s.tasks}
    for task, metric in metrics.items():
        if task not in folder_tasks:
            known = ", ".join(sorted(folder_tasks)) or "none"
            raise ValueError(f"--metric={task}={metric} names no task folder of the folder sources ({known}).")
    unknown = sorted(no_flip - task_metric.keys())
    if unknown:
        raise ValueError(f"--no_flip={unknown[0]} names no task of the sources ({', '.join(sorted(task_metric))}).")

    ingest_config = config.data.ingest
    if "flow" in task_metric.values() and ingest_config.resize != "stretch":
        logging.warning("Flow targets are encoded relative to the frame's sides; resize=%r changes their scale on "
                        "non-square frames, which resize='stretch' does not.", ingest_config.resize)
    empty_tasks = [{"task": task, "source": s.spec} for s in sources for task in s.empty]
    for empty in empty_tasks:
        logging.warning("Task folder %r of --source=%s is empty.", empty["task"], empty["source"])
    written, skipped_items = dict.fromkeys(task_metric, 0), []
    with records.RecordWriter(out, encoding=ingest_config.encoding) as writer:
        for source in sources:
            logging.info("Reading --source=%s.", source.spec)
            for item in source.items():
                flip = False if item.task in no_flip else None  # None: as the metric allows.
                count, reason = _write_item(item, writer, task_metric[item.task], flip, int(ingest_config.size),
                                            ingest_config.resize)
                written[item.task] += count
                if reason is not None:
                    logging.warning("Skipped %s: %s.", item.id, reason)
                    skipped_items.append({"task": item.task, "id": item.id, "reason": reason})
        skipped = collections.Counter(skip["task"] for skip in skipped_items)
        report = {
            "out": out,
            "sources": list(specs),
            "ingest": {**ingest_config.to_dict(), "video_frames": clips.frames},
            "written": written,
            "skipped": {task: skipped[task] for task in task_metric},
            "skipped_items": skipped_items,
            "empty_tasks": empty_tasks,
        }
        with open(os.path.join(out, REPORT), "w") as f:
            json.dump(report, f, indent=2)
        if not sum(report["written"].values()):
            # Leaving the block by this error writes no manifest: the directory holds no data.
            named = ", --source=".join(specs)
            raise ValueError(f"No pair could be read from --source={named}; {out}/{REPORT} lists why.")
    return report


def table(report: dict) -> str:
    """The report's per-task counts as a text table."""
    width = max([len("task")] + [len(task) for task in report["written"]])
    lines = [f"{'task':<{width}}  {'written':>8}  {'skipped':>8}"]
    for task, written in report["written"].items():
        lines.append(f"{task:<{width}}  {written:>8}  {report['skipped'][task]:>8}")
    lines += [f"empty task folder: {e['task']} (--source={e['source']})" for e in report["empty_tasks"]]
    return "\n".join(lines)


def parse_metrics(entries: Iterable[str]) -> dict[str, str]:
    """`TASK=METRIC` flag values as a dict."""
    metrics = {}
    for entry in entries:
        task, sep, metric = entry.partition("=")
        if not (sep and task and metric):
            raise ValueError(f"--metric={entry!r} is not TASK=METRIC.")
        metrics[task] = metric
    return metrics


def run():
    # Flags are defined here, not on import, so importing this module beside lavin_jax.main
    # (which has its own --config) does not define a flag twice.
    config = config_flags.DEFINE_config_file(
        "config", None, "Path to a config file (data.ingest, data.video_frames).", lock_config=True
    )
    sources = flags.DEFINE_multi_string("source", None, "folder:PATH, videos:PATH or tfds:NAME[:SPLIT]; may repeat.")
    out = flags.DEFINE_string("out", None, "The new record directory.")
    metric = flags.DEFINE_multi_string("metric", [], "TASK=METRIC: how a folder task is scored (default image).")
    no_flip = flags.DEFINE_multi_string(
        "no_flip", [], "A task whose pairs must not be mirrored (flow, normals and keypoints tasks never are)."
    )
    tfds_data_dir = flags.DEFINE_string("tfds_data_dir", None, "Where tfds datasets are prepared (unset: tfds's).")
    max_examples = flags.DEFINE_integer("max_examples", 0, "Examples read from each tfds source; 0: all.")
    classes = flags.DEFINE_string("classes", None, "ROOT/<class>/<images>: class-labelled images, not pairs.")
    classes_test = flags.DEFINE_string("classes_test", None, "With --classes: the test split's class folders.")
    test_fraction = flags.DEFINE_float("test_fraction", 0.0, "With --classes: each class's share held out as test.")
    captions = flags.DEFINE_string("captions", None, "A folder, tar:GLOB or tfds:NAME of captioned images or videos.")
    flags.mark_flags_as_required(["config", "out"])

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
        if captions.value:
            return main_captions()
        if classes.value:
            return main_classes()
        try:
            if classes_test.value or test_fraction.value:
                raise ValueError("--classes_test and --test_fraction go with --classes.")
            if not sources.value:
                raise ValueError("No --source or --classes given.")
            report = ingest(config.value, sources.value, out.value, metrics=parse_metrics(metric.value),
                            no_flip=no_flip.value, tfds_data_dir=tfds_data_dir.value, max_examples=max_examples.value)
        except ValueError as error:  # every refusal above is one sentence for the user.
            sys.exit(f"Error: {error}")
        print(table(report))
        written, skipped = sum(report["written"].values()), len(report["skipped_items"])
        print(f"Wrote {written} pairs to {out.value}; skipped {skipped} items (see {os.path.join(out.value, REPORT)}).")

    def main_classes():
        try:
            if sources.value:
                raise ValueError("--classes writes labelled images and --source pairs, to one new directory each; give one.")
            check_config(config.value)
            metadata = labelled.ingest_folders(
                classes.value, out.value, int(config.value.data.ingest.size), test_root=classes_test.value,
                test_fraction=test_fraction.value, seed=int(config.value.seed),
                encoding=config.value.data.ingest.encoding, num_threads=min(16, os.cpu_count() or 1),
            )
        except ValueError as error:
            sys.exit(f"Error: {error}")
        splits = metadata["splits"]
        print(f"Wrote {splits['train']['count']} train and {splits['test']['count']} test images of "
              f"{len(metadata['class_names'])} classes to {out.value}; skipped {len(metadata['skipped'])} files "
              f"(see {os.path.join(out.value, labelled.METADATA)}).")

    def main_captions():
        c = config.value
        try:
            if sources.value or classes.value or classes_test.value:
                raise ValueError("--captions, --classes and --source write one kind of data each, to a new directory; give one.")
            check_config(c)
            # The examples the config's model trains on, as config.caption_frames counts them.
            frames = config_lib.caption_frames(c)
            metadata = captioned.ingest_captions(
                captions.value, out.value, int(c.data.ingest.size), frames=frames, stride=int(c.data.frame_stride),
                seed=int(c.seed), test_fraction=test_fraction.value or None, tfds_data_dir=tfds_data_dir.value,
                encoding=c.data.ingest.encoding, num_threads=min(16, os.cpu_count() or 1),
            )
        except (ValueError, FileNotFoundError) as error:
            sys.exit(f"Error: {error}")
        splits = metadata["splits"]
        what = "images" if frames == 1 else f"clips of {frames} frames"
        print(f"Wrote {splits['train']['count']} train and {splits['test']['count']} test captioned {what} to {out.value}; "
              f"skipped {len(metadata['skipped'])} examples and {metadata['uncaptioned']} files without captions "
              f"(see {os.path.join(out.value, captioned.METADATA)}).")

    app.run(main)


if __name__ == "__main__":
    run()
