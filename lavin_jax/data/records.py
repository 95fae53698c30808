"""Real input/target pairs on disk: the record format that ingest writes and training reads.

A record directory holds the pairs of one or more tasks, each task its own set of ArrayRecord
shards, so every task is one random-access source (grain reads ArrayRecord by index, also from
its worker processes):

    DIR/manifest.json
    DIR/<task>/<task>-00000.array_record, <task>-00001.array_record, ...

The manifest describes every task:

    {"version": 1, "tasks": {"<task>": {
        "files": ["<task>/<task>-00000.array_record", ...],  # relative to DIR, in index order
        "count": n,          # records in all its shards
        "frames": T,         # frames of each input and of each target: 1 for images
        "size": [h, w],      # the frame size every record shares, or null if they differ
        "metric": "depth",   # how predictions are scored: one of METRICS
        "flip": true}}}      # a horizontal flip of input and target together is still a pair

One record is one pair, a msgpack-serialised dict

    {"task": str, "id": str,  # id: where it came from (file path, tfds key), for error messages
     "input": frames, "target": frames}
    frames = {"encoding": "png" | "jpeg" | "raw", "shape": [T, H, W, 3], "data": [bytes per frame]}

where raw data is the frame's uint8 array bytes in C order. Frames are uint8 RGB throughout.

Targets read as classes (METRICS in NEAREST_METRICS: palette colours of classes, instances and
keypoints, box outlines, binary edge maps) are resized with nearest neighbours, so every pixel
keeps an exact colour of the original, and are always stored lossless (PNG when the directory's
encoding is JPEG, whose blocks would smear the colours). Images, depth, normals and flow are
continuous and resized smoothly. Flow is encoded as a share of the image side (`scoring`), which
only `stretch` preserves on a non-square frame.

A task's `flip` is by default whether its metric is in MIRROR_SAFE: whether a pair mirrored
input and target alike is still a true pair. Flow's is not (R = u would have to become -u), nor
normals' (R = x would have to change sign), nor keypoints' (left and right joints are different
classes and would have to swap), so those tasks are written with flip false unless
`RecordWriter.add` is told otherwise.

`RecordWriter` writes a new directory (it refuses one that holds anything: saved data is never
overwritten) and `RecordSource` reads one: `read(task, i)` decodes and checks record i of a task,
raising `BadRecord` (naming the shard, index, id and reason) for one that cannot be used.
`ShardWriter` writes the numbered shards of one ArrayRecord source (also the latent cache's).
"""

from __future__ import annotations

import bisect
import dataclasses
import io
import json
import os
import re

import msgpack
import numpy as np
from absl import logging
from PIL import Image

from lavin_jax.data import scoring

MANIFEST = "manifest.json"
VERSION = 1
ENCODINGS = ("png", "jpeg", "raw")
RESIZE_RULES = ("crop", "pad", "stretch")
METRICS = tuple(scoring.METRICS)  # the ways a task's predictions are scored.
# Targets whose scoring reads classes from exact colours (palette classes, instances, keypoints,
# the box outline's colour, edge or no edge): interpolation would invent colours between them.
NEAREST_METRICS = frozenset({"segmentation", "panoptic", "keypoints", "boxes", "edges"})
# Metrics whose pairs stay true pairs when input and target are mirrored together (see above).
MIRROR_SAFE = frozenset(METRICS) - {"flow", "normals", "keypoints"}
_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_JPEG_QUALITY = 95


class BadRecord(ValueError):
    """A record that cannot be used; the message names its shard file, index, id and the reason."""


# A source that yields this many bad records in a row is broken, not unlucky: stop and say so
# rather than spin or train on whatever is left.
MAX_BAD_IN_A_ROW = 32


def read_past_bad(dataset, index: int, **options):
    """(dataset.read(i, **options), how many bad records were passed over) for the first i from
    `index` on (wrapping around) whose record reads; each BadRecord is logged. A RuntimeError
    names the dataset after MAX_BAD_IN_A_ROW bad ones in a row."""
    for skipped in range(MAX_BAD_IN_A_ROW):
        try:
            return dataset.read((index + skipped) % len(dataset), **options), skipped
        except BadRecord as error:
            last = error
            logging.warning("Skipping a bad record of %s: %s", dataset.name, error)
    raise RuntimeError(f"{dataset.name} gave {MAX_BAD_IN_A_ROW} bad records in a row; the last: {last}")


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """A task of a record directory, as its manifest describes it."""

    name: str
    count: int
    frames: int
    size: tuple[int, int] | None
    metric: str
    flip: bool


def check_task_name(task: str) -> None:
    """Task names become directory and file names."""
    if not isinstance(task, str) or not _TASK_NAME.fullmatch(task):
        raise ValueError(
            f"Task name {task!r} must be letters, digits, '_', '-' or '.', starting with a letter or digit."
        )


def _check_frames(frames: np.ndarray, what: str) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(f"{what} must be uint8 [T, H, W, 3], T, H, W > 0, not {frames.dtype} {list(frames.shape)}.")


def _check_encoding(encoding: str, what: str) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(f"{what} {encoding!r} is not one of {', '.join(ENCODINGS)}")


def encode_frames(frames: np.ndarray, encoding: str) -> dict:
    """uint8 [T, H, W, 3] -> the record's frames dict."""
    frames = np.asarray(frames)
    _check_frames(frames, "Frames")
    _check_encoding(encoding, "Encoding")
    if encoding == "raw":
        data = [np.ascontiguousarray(frame).tobytes() for frame in frames]
    else:
        data = []
        for frame in frames:
            buffer = io.BytesIO()
            options = {"quality": _JPEG_QUALITY} if encoding == "jpeg" else {}
            Image.fromarray(frame).save(buffer, format=encoding.upper(), **options)
            data.append(buffer.getvalue())
    return {"encoding": encoding, "shape": list(frames.shape), "data": data}


def _decode_frame(data: bytes, encoding: str, height: int, width: int) -> np.ndarray:
    if encoding == "raw":
        if len(data) != height * width * 3:
            raise ValueError(f"a raw frame has {len(data)} bytes, not {height}*{width}*3")
        return np.frombuffer(data, np.uint8).reshape(height, width, 3)
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != encoding.upper():
                raise ValueError(f"a frame is {image.format}, not {encoding}")
            image.load()
            if image.mode != "RGB":
                raise ValueError(f"a frame has mode {image.mode}, not 3-channel RGB")
            frame = np.asarray(image)
    except (OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"a frame's {encoding} bytes cannot be decoded ({error})") from None
    if frame.shape != (height, width, 3):
        raise ValueError(f"a frame is {list(frame.shape)}, not [{height}, {width}, 3] as 'shape' says")
    return frame


def decode_frames(frames: dict) -> np.ndarray:
    """The record's frames dict -> uint8 [T, H, W, 3]; ValueError saying what is wrong."""
    if not isinstance(frames, dict) or not {"encoding", "shape", "data"} <= frames.keys():
        raise ValueError("frames are not a dict with 'encoding', 'shape' and 'data'")
    encoding, shape, data = frames["encoding"], frames["shape"], frames["data"]
    _check_encoding(encoding, "encoding")
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(n, int) and n > 0 for n in shape)):
        raise ValueError(f"shape {shape!r} is not [T, H, W, 3]")
    if shape[3] != 3:
        raise ValueError(f"shape {shape} has {shape[3]} channels, not 3")
    if not isinstance(data, list) or len(data) != shape[0] or not all(isinstance(d, bytes) for d in data):
        raise ValueError(f"data is not a list of {shape[0]} byte strings as 'shape' says")
    return np.stack([_decode_frame(d, encoding, shape[1], shape[2]) for d in data])


def unpack_example(data: bytes, where: str, keys: tuple[str, ...], frames_key: str) -> tuple[dict, np.ndarray, str]:
    """A msgpack record of one example (a dict of `keys`, 'id' where it came from and its
    `frames_key` frames as `encode_frames` writes them) -> (the record, its frames, `where` with
    its id); BadRecord naming `where` otherwise."""
    try:
        record = msgpack.unpackb(data, raw=False)
    except ValueError as error:
        raise BadRecord(f"{where} is not msgpack ({error}).") from None
    if not isinstance(record, dict) or not set(keys) <= record.keys():
        raise BadRecord(f"{where} is not a dict with {', '.join(repr(k) for k in keys[:-1])} and {keys[-1]!r}.")
    where = f"{where} (from {record['id']!r})"
    try:
        return record, decode_frames(record[frames_key]), where
    except ValueError as error:
        raise BadRecord(f"{where} is bad: its {frames_key}: {error}.") from None


RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def resample_for(metric: str) -> str:
    """How frames scored by `metric` are resized: nearest for class-coloured targets (every pixel
    stays an encoded value), bilinear otherwise."""
    return "nearest" if metric in NEAREST_METRICS else "bilinear"


def pad_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a height x width frame inside the size x size square that
    the `pad` rule makes of it: the long side scaled to size, centred."""
    scale = size / max(height, width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    return (size - h) // 2, (size - w) // 2, h, w


def resize(frames: np.ndarray, size: int, rule: str, resample: str) -> np.ndarray:
    """uint8 [T, H, W, 3] -> uint8 [T, size, size, 3].

    crop: the centred square of side min(H, W), scaled to size; pad: the long side scaled to size,
    centred on black; stretch: both sides scaled to size. `resample`: nearest (palette targets:
    every output pixel is an input colour), bilinear or bicubic, the last two averaging over the
    footprint when shrinking (Pillow's antialiased filters)."""
    if rule not in RESIZE_RULES:
        raise ValueError(f"Resize rule {rule!r} must be one of {', '.join(RESIZE_RULES)}.")
    frames = np.asarray(frames)
    _check_frames(frames, "Frames to resize")
    height, width = frames.shape[1:3]
    if (height, width) == (size, size):
        return frames  # even a smooth filter would change nothing; be exact.
    if resample not in RESAMPLE:
        raise ValueError(f"Resampling {resample!r} must be one of {', '.join(RESAMPLE)}.")
    resample = RESAMPLE[resample]
    out = np.zeros((len(frames), size, size, 3), np.uint8)
    for frame, target in zip(frames, out):
        image = Image.fromarray(frame)
        if rule == "crop":
            side = min(height, width)
            left, top = (width - side) / 2, (height - side) / 2
            target[:] = np.asarray(image.resize((size, size), resample, box=(left, top, left + side, top + side)))
        elif rule == "pad":
            top, left, h, w = pad_box(height, width, size)
            target[top : top + h, left : left + w] = np.asarray(image.resize((w, h), resample))
        else:
            target[:] = np.asarray(image.resize((size, size), resample))
    return out


class ShardWriter:
    """Writes records (bytes), in index order, into the ArrayRecord shards of one random-access
    source: directory/<prefix>-00000.array_record, <prefix>-00001.array_record, ..., `shard_size`
    records each. `close` returns their names, relative to `directory`."""

    def __init__(self, directory: str, prefix: str, shard_size: int):
        if shard_size < 1:
            raise ValueError(f"shard_size={shard_size} must be positive.")
        self.directory, self._prefix, self._shard_size = directory, prefix, shard_size
        self._files: list[str] = []
        self._writer = None  # the open shard, from the first write until close.
        self._count = 0

    def write(self, record: bytes) -> None:
        if self._count % self._shard_size == 0:  # the first record, or the open shard is full.
            from array_record.python import array_record_module

            self.close()
            name = f"{self._prefix}-{len(self._files):05d}.array_record"
            # group_size:1: each record is its own chunk, so reading one decompresses only it.
            self._writer = array_record_module.ArrayRecordWriter(os.path.join(self.directory, name), "group_size:1")
            self._files.append(name)
        self._writer.write(record)
        self._count += 1

    def close(self) -> list[str]:
        """Closes the open shard; the names of all shards written."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return list(self._files)


class RecordWriter:
    """Writes one new record directory: `add` pairs, then `close` (or leave the `with` block) to
    write the manifest. A block left by an exception writes no manifest, so a half-written
    directory is never mistaken for data. It refuses a directory that holds anything: saved data
    is never overwritten."""

    def __init__(self, directory: str, *, encoding: str = "png", shard_size: int = 2048):
        _check_encoding(encoding, "Encoding")
        if shard_size < 1:  # ShardWriter would refuse it too, but only after the directory is made.
            raise ValueError(f"shard_size={shard_size} must be positive.")
        if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
            raise ValueError(
                f"Record directory {directory!r} already exists and is not empty; "
                "records are only written to a new directory."
            )
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self._encoding = encoding
        self._shard_size = shard_size
        self._tasks: dict[str, dict] = {}  # name -> its manifest entry, being built.
        self._shards: dict[str, ShardWriter] = {}  # name -> the writer of its shards.

    @property
    def tasks(self) -> dict[str, TaskInfo]:
        """The tasks written so far."""
        return {name: _task_info(name, entry) for name, entry in self._tasks.items()}

    def add(self, task: str, input_frames: np.ndarray, target_frames: np.ndarray, id: str,
            *, metric: str = "image", flip: bool | None = None) -> None:
        """Appends one pair (uint8 [T, H, W, 3] each, same shape) to `task`'s shards. A task's
        frames, metric and flip are fixed by its first pair; flip None: whether the metric is in
        MIRROR_SAFE."""
        input_frames, target_frames = np.asarray(input_frames), np.asarray(target_frames)
        _check_frames(input_frames, f"Input of {id!r}")
        _check_frames(target_frames, f"Target of {id!r}")
        if input_frames.shape != target_frames.shape:
            raise ValueError(
                f"Pair {id!r}: input {list(input_frames.shape)} and target {list(target_frames.shape)} differ."
            )
        if metric not in METRICS:
            raise ValueError(f"Task {task!r}: metric {metric!r} must be one of {', '.join(METRICS)}.")
        flip = metric in MIRROR_SAFE if flip is None else bool(flip)
        entry = self._tasks.get(task)
        if entry is None:
            check_task_name(task)
            os.makedirs(os.path.join(self.directory, task))
            entry = self._tasks[task] = {"files": [], "count": 0, "frames": len(input_frames),  # files: on close.
                                         "size": list(input_frames.shape[1:3]), "metric": metric, "flip": flip}
            self._shards[task] = ShardWriter(os.path.join(self.directory, task), task, self._shard_size)
        fixed = {"frames": len(input_frames), "metric": metric, "flip": flip}
        for field, value in fixed.items():
            if entry[field] != value:
                raise ValueError(
                    f"Pair {id!r} of task {task!r} has {field}={value!r}, "
                    f"but the task's earlier pairs have {entry[field]!r}."
                )
        if entry["size"] != list(input_frames.shape[1:3]):
            entry["size"] = None
        target_encoding = "png" if self._encoding == "jpeg" and metric in NEAREST_METRICS else self._encoding
        record = {"task": task, "id": str(id), "input": encode_frames(input_frames, self._encoding),
                  "target": encode_frames(target_frames, target_encoding)}
        self._shards[task].write(msgpack.packb(record, use_bin_type=True))
        entry["count"] += 1

    def _close_shards(self) -> None:
        for task, shards in self._shards.items():
            self._tasks[task]["files"] = [f"{task}/{name}" for name in shards.close()]

    def close(self) -> None:
        """Closes the shards and writes the manifest."""
        self._close_shards()
        with open(os.path.join(self.directory, MANIFEST), "w") as f:
            json.dump({"version": VERSION, "tasks": self._tasks}, f, indent=2)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self._close_shards()


def _task_info(name: str, entry: dict) -> TaskInfo:
    size = entry["size"]
    size = None if size is None else tuple(size)
    return TaskInfo(name, entry["count"], entry["frames"], size, entry["metric"], entry["flip"])


def read_json(directory: str, name: str, what: str, command: str) -> tuple[str, object]:
    """(path, contents) of the JSON file `name` in `directory`, which ingest `command` writes; a
    missing or unreadable one is a ValueError naming it (`what`: how a person calls the file)."""
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        raise ValueError(f"Directory {directory!r} has no {name}; write one with {command}.")
    try:
        with open(path) as f:
            return path, json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"{what} {path!r} cannot be read as JSON ({error}).") from None


def _read_manifest(directory: str) -> dict[str, dict]:
    path, manifest = read_json(directory, MANIFEST, "Manifest", "python -m lavin_jax.data.ingest")
    valid = isinstance(manifest, dict) and manifest.get("version") == VERSION
    if not (valid and isinstance(manifest.get("tasks"), dict)):
        raise ValueError(f"Manifest {path!r} is not a version {VERSION} manifest with a 'tasks' dict.")
    for name, entry in manifest["tasks"].items():
        valid = (
            isinstance(entry, dict)
            and isinstance(entry.get("files"), list) and all(isinstance(f, str) for f in entry["files"])
            and isinstance(entry.get("count"), int) and entry["count"] >= 0
            and isinstance(entry.get("frames"), int) and entry["frames"] >= 1
            and (entry.get("size") is None or (isinstance(entry["size"], list) and len(entry["size"]) == 2
                                               and all(isinstance(n, int) and n > 0 for n in entry["size"])))
            and entry.get("metric") in METRICS
            and isinstance(entry.get("flip"), bool)
        )
        if not valid:
            raise ValueError(
                f"Manifest {path!r}: task {name!r} needs files (list), count (int >= 0), frames (int >= 1), "
                f"size ([h, w] or null), metric (one of {', '.join(METRICS)}) and flip (bool)."
            )
        for file in entry["files"]:
            if not os.path.isfile(os.path.join(directory, file)):
                raise ValueError(f"Shard {os.path.join(directory, file)!r} named by manifest {path!r} is missing.")
    return manifest["tasks"]


class RecordSource:
    """The tasks of one record directory, each readable by index: `read(task, i)` for
    i in [0, tasks[task].count). The shard readers open on a task's first read."""

    def __init__(self, directory: str):
        self.directory = directory
        entries = _read_manifest(directory)
        self.tasks = {name: _task_info(name, entry) for name, entry in entries.items()}
        self._files = {name: entry["files"] for name, entry in entries.items()}
        self._shards: dict[str, tuple[list, list[int]]] = {}  # task -> (readers, first index of each).

    def _open(self, task: str) -> tuple[list, list[int]]:
        if task not in self._shards:
            import grain

            readers, starts, total = [], [], 0
            for file in self._files[task]:
                readers.append(grain.sources.ArrayRecordDataSource([os.path.join(self.directory, file)]))
                starts.append(total)
                total += len(readers[-1])
            if total != self.tasks[task].count:
                raise ValueError(
                    f"Manifest {os.path.join(self.directory, MANIFEST)!r} says task {task!r} has "
                    f"{self.tasks[task].count} records but its shards hold {total}."
                )
            self._shards[task] = (readers, starts)
        return self._shards[task]

    def read(self, task: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(input, target) of record `index` of `task`, uint8 [T, H, W, 3] each; BadRecord if the
        record cannot be decoded or disagrees with itself or the manifest."""
        if task not in self.tasks:
            known = ", ".join(self.tasks) or "none"
            raise KeyError(f"Record directory {self.directory!r} has no task {task!r}; it has {known}.")
        info = self.tasks[task]
        if not 0 <= index < info.count:
            raise IndexError(f"Record {index} of task {task!r} in {self.directory!r} is not in [0, {info.count}).")
        readers, starts = self._open(task)
        shard = bisect.bisect_right(starts, index) - 1
        local = index - starts[shard]
        record_id = "unknown"

        def bad(reason: str) -> BadRecord:
            file = os.path.join(self.directory, self._files[task][shard])
            return BadRecord(f"Record {local} of shard {file!r} (id {record_id!r}) is bad: {reason}.")

        try:
            record = msgpack.unpackb(readers[shard][local], raw=False)
        except ValueError as error:
            raise bad(f"it is not msgpack ({error})") from None
        if not isinstance(record, dict):
            raise bad("it is not a dict")
        record_id = str(record.get("id", "unknown"))
        if record.get("task") != task:
            raise bad(f"it belongs to task {record.get('task')!r}, not {task!r}")
        pair = []
        for field in ("input", "target"):
            if field not in record:
                raise bad(f"it has no {field!r} field")
            try:
                pair.append(decode_frames(record[field]))
            except ValueError as error:
                raise bad(f"its {field}: {error}") from None
        inputs, targets = pair
        if inputs.shape != targets.shape:
            raise bad(f"input {list(inputs.shape)} and target {list(targets.shape)} differ")
        if len(inputs) != info.frames:
            raise bad(f"it has {len(inputs)} frames, the manifest says {info.frames}")
        if info.size is not None and inputs.shape[1:3] != info.size:
            raise bad(f"its frames are {list(inputs.shape[1:3])}, the manifest says {list(info.size)}")
        return inputs, targets
