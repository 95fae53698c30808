"""Video clips, the data of video diffusion models (VDT): uint8 clips by index, as `labelled` gives
class-labelled images.

    open_clips(spec, split, size, frames, stride=..., seed=..., tfds_data_dir=...)  split: 'train' or 'test'

`clips.read(i)` is uint8 [frames, size, size, 3], a pure function of the arguments and i. A clip
takes every `stride`-th frame of the `frames * stride` frames it spans. `spec` names one of four
kinds of source:
- `moving_digits`: Moving MNIST's recipe with scikit-learn's 8x8 digits. NUM_DIGITS digits, each
  upscaled bilinearly to a side of size // 2 (nearest would repeat each of the 8 pixels 4 or 5
  times unevenly at most sizes; bilinear strokes are smooth, as MNIST's anti-aliased ones), start
  at random places of a black canvas and move at a constant random velocity of DIGIT_SPEED pixels a
  frame at size 64 (scaled with size), bouncing off the edges; the canvas is their maximum, gray
  replicated to RGB. The digits come from `labelled.Digits`' split of the same `seed`, so train and
  test clips never share a digit image.
- `synthetic`: the built-in moving scenes (`synthetic.draw_scene`, rendered as `base_clip` does).
- `tfds:NAME`: a tensorflow-datasets video dataset prepared in the ArrayRecord format (see
  `tfds_sources`), its video feature named by VIDEO_FEATURES or, for another dataset, its one
  `Video` feature. Example i gives clip i: for 'train' a window starting at a random frame, for
  'test' the first window. 'test' is the dataset's `test` split.
- a directory of video files (media.VIDEO_EXTENSIONS, found below it): its `train/` and `test/`
  folders, or else TEST_FRACTION of its files (at least one) held out by `seed` as 'test'. Each
  video is cut into non-overlapping windows of frames * stride frames, one clip each.

The two generated kinds have NUM_TRAIN clips for 'train' and NUM_TEST for 'test'; a draw of clip i
is np.random.default_rng((seed, stream, i)) with a stream per kind and split. Frames of real
videos are made square as `labelled.center_crop` makes images. A clip that cannot be read raises
`records.BadRecord` naming the file and window or the tfds example.
"""

from __future__ import annotations

import importlib
import os

import numpy as np
from absl import logging
from PIL import Image

from lavin_jax.data import labelled, media, records, scoring, synthetic, tfds_sources

SPLITS = labelled.SPLITS
NUM_TRAIN = synthetic.NUM_EXAMPLES  # virtual: a training run never reads them all.
NUM_TEST = 256
NUM_DIGITS = 2
DIGIT_SPEED = (2.0, 5.0)  # pixels a frame on a 64-pixel canvas, Moving MNIST's pace.
MIN_DIGITS_SIZE = 16  # below it an 8x8 digit would shrink.
TEST_FRACTION = labelled.TEST_FRACTION  # of a directory's files without train/ and test/ folders.
# Seed streams of the clips' draws, after labelled's: a clip (index: the clip), a tfds training
# clip's first frame (index: the example), a directory's held-out files (index: 0).
DIGITS_STREAMS = {"train": 7, "test": 8}
SYNTHETIC_STREAMS = {"train": 9, "test": 10}
WINDOW_STREAM = 11
FOLDER_STREAM = 12
# The video feature of known datasets; bair's frames also hold a second camera, `image_aux1`.
VIDEO_FEATURES = {"bair_robot_pushing_small": "image_main", "ucf101": "video", "moving_mnist": "image_sequence"}


class Clips:
    """Clips by index: `read(i)` for i in [0, len). Subclasses give `__len__` and `_clip(i)`."""

    def __init__(self, spec: str, size: int, frames: int, stride: int):
        self.name, self.size, self.frames, self.stride = spec, int(size), int(frames), int(stride)

    def __len__(self) -> int:
        raise NotImplementedError

    def _clip(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def read(self, index: int) -> np.ndarray:
        """uint8 [frames, size, size, 3]; BadRecord naming the clip's source if it cannot be read."""
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"Clip {index} of {self.name} is not in [0, {len(self)}).")
        return self._clip(index)


class MovingDigits(Clips):
    """Bouncing digits (see the module's docstring)."""

    def __init__(self, split: str, size: int, frames: int, stride: int, *, seed: int):
        super().__init__("moving_digits", size, frames, stride)
        if self.size < MIN_DIGITS_SIZE:
            raise ValueError(f"moving_digits needs a size of at least {MIN_DIGITS_SIZE}, not {size}.")
        self.sources = labelled.Digits(split, 8, seed=seed).indices  # into load_digits.
        self._stream, self._seed, self._count = DIGITS_STREAMS[split], int(seed), NUM_TRAIN if split == "train" else NUM_TEST
        self.side = self.size // 2

    def __len__(self) -> int:
        return self._count

    def trajectory(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Clip `index`'s digits (indices into load_digits, [NUM_DIGITS]) and their top-left
        corners in every frame (int [frames, NUM_DIGITS, 2])."""
        rng = np.random.default_rng((self._seed, self._stream, int(index)))
        digits = self.sources[rng.integers(len(self.sources), size=NUM_DIGITS)]
        room = self.size - self.side
        start = rng.uniform(0, room, (NUM_DIGITS, 2))
        angle = rng.uniform(0, 2 * np.pi, NUM_DIGITS)
        speed = rng.uniform(*DIGIT_SPEED, NUM_DIGITS) * self.size / 64
        velocity = speed[:, None] * np.stack([np.sin(angle), np.cos(angle)], axis=-1)
        times = np.arange(self.frames)[:, None, None] * self.stride
        # Free flight folded into [0, room] is the path that bounces off the walls: a triangle wave.
        corners = room - np.abs(np.mod(start + velocity * times, 2 * room) - room)
        return digits, np.rint(corners).astype(np.int64)

    def _clip(self, index: int) -> np.ndarray:
        digits, corners = self.trajectory(index)
        images = labelled.bundled_digits()[0]
        sprites = [np.asarray(Image.fromarray(images[d]).resize((self.side,) * 2, Image.Resampling.BILINEAR))
                   for d in digits]
        canvas = np.zeros((self.frames, self.size, self.size), np.uint8)
        for frame, places in enumerate(corners):
            for sprite, (top, left) in zip(sprites, places):
                window = canvas[frame, top : top + self.side, left : left + self.side]
                np.maximum(window, sprite, out=window)
        return np.repeat(canvas[..., None], 3, axis=-1)


class SyntheticScenes(Clips):
    """The built-in moving scenes, frame k of a clip rendered at time k * stride."""

    def __init__(self, split: str, size: int, frames: int, stride: int, *, seed: int):
        super().__init__("synthetic", size, frames, stride)
        self._stream, self._seed, self._count = SYNTHETIC_STREAMS[split], int(seed), NUM_TRAIN if split == "train" else NUM_TEST

    def __len__(self) -> int:
        return self._count

    def _clip(self, index: int) -> np.ndarray:
        scene = synthetic.draw_scene(np.random.default_rng((self._seed, self._stream, index)), moving=True)
        return scoring.to_uint8(np.stack([synthetic.render_scene(scene, self.size, k * self.stride)
                                          for k in range(self.frames)]))


def _square(video, size: int, where: str) -> np.ndarray:
    """uint8 [T, H, W(, 1 or 3)] frames as [T, size, size, 3]; BadRecord naming `where` if they are not."""
    video = np.asarray(video)
    if video.dtype != np.uint8 or video.ndim not in (3, 4) or video.ndim == 4 and video.shape[-1] not in (1, 3):
        raise records.BadRecord(f"{where} is {video.dtype} {list(video.shape)}, not uint8 gray or RGB frames.")
    return np.stack([labelled.center_crop(frame, size) for frame in video])


def _count_frames(path: str) -> int:
    """The frames of a video file: its container's count where it keeps one (mp4, mov), else
    counted by decoding (mkv, webm keep none); Skip saying why the file cannot be used."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise media.Skip("has no video stream")
            stream = container.streams.video[0]
            return stream.frames or sum(1 for _ in container.decode(stream))
    except (av.FFmpegError, OSError, ValueError) as error:
        raise media.Skip(f"cannot be decoded as a video ({error})") from None


class VideoFolder(Clips):
    """Windows of the video files of a directory (see the module's docstring). Opening reads each
    file's header, and decodes the files whose container keeps no frame count; reading window w
    of a file decodes it from its start through the window's end."""

    def __init__(self, directory: str, split: str, size: int, frames: int, stride: int, *, seed: int):
        super().__init__(directory, size, frames, stride)
        folders = [os.path.join(directory, name) for name in SPLITS]
        if all(os.path.isdir(folder) for folder in folders):
            paths = _videos_below(os.path.join(directory, split))
        else:
            paths = _videos_below(directory)
            held_out = max(1, round(TEST_FRACTION * len(paths)))
            order = np.random.default_rng((seed, FOLDER_STREAM, 0)).permutation(len(paths))
            paths = [paths[i] for i in sorted(order[:held_out] if split == "test" else order[held_out:])]
        span = self.frames * self.stride
        self.files, self.skipped, windows = [], [], []
        for path in paths:
            try:
                count = _count_frames(path)
                if count < span:
                    raise media.Skip(f"has {count} frames, fewer than the {span} of a clip")
            except media.Skip as skip:
                logging.warning("Skipped %s: %s.", path, skip)
                self.skipped.append((path, str(skip)))
                continue
            self.files.append(path)
            windows.append(count // span)
        if not self.files:
            raise ValueError(f"Directory {directory!r} has no {split} video of at least {span} frames that decodes.")
        self._starts = np.cumsum([0] + windows)  # the first clip of each file, then the total.

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _clip(self, index: int) -> np.ndarray:
        file = int(np.searchsorted(self._starts, index, side="right")) - 1
        window = index - self._starts[file]
        first, span = window * self.frames * self.stride, self.frames * self.stride
        where = f"Window {window} (frames {first}..{first + span - 1}) of {self.files[file]!r}"
        kept, seen = [], 0
        try:
            for seen, frame in enumerate(media.read_video(self.files[file]), start=1):
                if seen > first and (seen - 1 - first) % self.stride == 0:
                    kept.append(frame)
                    if len(kept) == self.frames:
                        return _square(kept, self.size, where)
        except media.Skip as skip:
            raise records.BadRecord(f"{where} cannot be read: the file {skip}.") from None
        raise records.BadRecord(f"{where} cannot be read: the file ends after {seen} frames.")


def _videos_below(folder: str) -> list[str]:
    return [path for path in labelled.files_below(folder) if media.is_video(path)]


def _video_feature(name: str, features) -> str:
    """The feature of dataset `name` that holds its videos; ValueError naming its features if none."""
    import tensorflow_datasets as tfds

    features = getattr(features, "feature", features)  # bair's examples are a Sequence of frames.
    known = VIDEO_FEATURES.get(name.split("/")[0])
    if known in features.keys():
        return known
    videos = [key for key, feature in features.items() if isinstance(feature, tfds.features.Video)]
    if len(videos) != 1:
        raise ValueError(f"tfds:{name} needs one Video feature (or an entry in clips.VIDEO_FEATURES); "
                         f"it has {', '.join(features.keys())}.")
    return videos[0]


class TfdsVideos(Clips):
    """A window of each example's video of a prepared tfds dataset (see the module's docstring)."""

    def __init__(self, name: str, split: str, size: int, frames: int, stride: int, *, seed: int,
                 data_dir: str | None = None):
        super().__init__(f"tfds:{name}", size, frames, stride)
        importlib.import_module("tensorflow_datasets.video")  # registers ucf101, moving_mnist: tfds imports it lazily.
        info = labelled.tfds_info(name, data_dir)
        self.feature = _video_feature(name, info.features)
        if info.splits and split not in info.splits:
            raise ValueError(f"tfds:{name} has no {split} split; it has {', '.join(info.splits)}.")
        self._data = tfds_sources.open_source(name, split, data_dir)
        self._split, self._seed = split, int(seed)

    def __len__(self) -> int:
        return len(self._data)

    def _clip(self, index: int) -> np.ndarray:
        where = f"Example {index} of {self.name}:{self._split}"
        try:
            video = self._data[index][self.feature]
        except Exception as error:  # tfds's decoders fail on bad bytes in many ways.
            raise records.BadRecord(f"{where} cannot be decoded ({str(error).splitlines()[0]}).") from None
        span = self.frames * self.stride
        if len(video) < span:
            raise records.BadRecord(f"{where} has {len(video)} frames, fewer than the {span} of a clip.")
        first = 0 if self._split == "test" else int(
            np.random.default_rng((self._seed, WINDOW_STREAM, index)).integers(len(video) - span + 1))
        return _square(video[first : first + span : self.stride], self.size, where)


def open_clips(spec: str, split: str, size: int, frames: int, *, stride: int = 1, seed: int,
               tfds_data_dir: str | None = None) -> Clips:
    """The `split` ('train' or 'test') of the clips `spec` names ('moving_digits', 'synthetic',
    'tfds:NAME' or a directory of videos), `frames` frames every `stride`-th of the source's, at
    size x size; ValueError naming the spec, split or file."""
    labelled.check_split(split)
    for field, value in (("Clip size", size), ("Clip length frames", frames), ("Frame stride", stride)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{field} {value!r} must be a positive integer.")
    if spec == "moving_digits":
        return MovingDigits(split, size, frames, stride, seed=seed)
    if spec == "synthetic":
        return SyntheticScenes(split, size, frames, stride, seed=seed)
    if spec.startswith("tfds:") and spec[len("tfds:"):]:
        return TfdsVideos(spec[len("tfds:"):], split, size, frames, stride, seed=seed, data_dir=tfds_data_dir)
    if os.path.isdir(spec):
        return VideoFolder(spec, split, size, frames, stride, seed=seed)
    raise ValueError(f"Clips {spec!r} are not 'moving_digits', 'synthetic', 'tfds:NAME' or a directory of videos.")
