"""Captioned images and clips, the data of text-to-image and text-to-video models (GenTron): real
(pictures, caption) examples by index, as `labelled` gives class-labelled images and `clips` clips.

    open_captioned(spec, split, size, frames=1, stride=1, seed=..., tfds_data_dir=..., test_fraction=...)
        split: 'train' or 'test'

`dataset.read(i)` is (uint8 [frames, size, size, 3], caption), a pure function of the arguments
and i. With frames == 1 an example is an image; with frames > 1 a clip of every `stride`-th frame
of a video. Pictures are made square as `labelled.center_crop` makes ADM's images (a clip frame
by frame), captions are text with the whitespace at either end stripped. `spec` names one of five
kinds of source:
- `scenes`: the captioned scenes rendered with exact captions (`captions.Scenes`), endless.
- a folder of media files, each with its caption in a text file beside it: `a/b/x.jpg` and
  `a/b/x.txt`. With frames == 1 its images (IMAGE_EXTENSIONS) are read, with frames > 1 its
  videos (media.VIDEO_EXTENSIONS), cut into windows as `clips.VideoFolder` cuts them; a video's
  caption serves all its windows. A file without a caption is left out, and opening logs how many
  were in one line.
- `tar:GLOB`, webdataset shards: uncompressed tar files whose members are grouped into samples by
  key, the member's path up to the first dot of its file name (`a/000123.jpg`, `a/000123.txt`: key
  `a/000123`, extensions `jpg` and `txt`). A sample's `txt` member is its caption, its first image
  member (IMAGE_EXTENSIONS) its picture, or with frames > 1 its first video member its clip: the
  video's frames k * stride, k < frames. Opening reads every tar's member headers (not their
  data) into an index of offsets, and `read` reads a sample's two members at their offsets.
- `tfds:NAME`, a tensorflow-datasets dataset prepared in the ArrayRecord format, read with
  `tfds.data_source` (no TensorFlow): its image feature and the text feature that holds its
  captions, found by type and named by CAPTION_WORDS (coco_captions: `captions/text`, five
  captions an image; ai2dcaption: `caption`). A dataset prepared in data_dir is read from its
  files, without its builder's code, so that coco_captions' (which needs TensorFlow) is never run.
  'test' is its `validation` split when it has one, else its `test` split (coco_captions'
  Karpathy test split). Images only.
- a directory written by `python -m lavin_jax.data.ingest --captions=SPEC` (`ingest_captions`):

      DIR/captions.json                  size, frames, stride, splits, what was left out (METADATA)
      DIR/train/train-00000.array_record, ...
      DIR/test/test-00000.array_record, ...

  One record is a msgpack-serialised dict {"id": where it came from, "caption": str, "frames":
  frames as `records.encode_frames` writes them}, already square at the ingest's size. It is read
  with the frames and stride it was written with.

An example with several captions (coco_captions) gives one of them: for 'train' the caption drawn
from np.random.default_rng((seed, CAPTION_STREAM, i)), for 'test' the first; a run of one seed
therefore pairs image i with one caption throughout.

Held out as 'test': a folder's `test/` folder when it has both `train/` and `test/` folders (as
`clips.VideoFolder`), else TEST_FRACTION (at least one) of its captioned images drawn by `seed`
as VideoFolder draws its videos; the same share of the captioned samples of tar shards. A video
folder's split is VideoFolder's own, of all its videos, so that its clips and its captioned clips
are split alike. tfds datasets and ingested directories have their own splits. `test_fraction`
changes the share where the source has no split of its own (image folders and tar shards).

A mistake (a folder that does not exist, no captioned file in it, a spec of no known kind, a tfds
dataset without an image or a caption feature, a bad size, frames or stride) is a ValueError (a
FileNotFoundError for a missing folder) of one sentence naming it, raised when the dataset is
opened, before any picture is read. An example that cannot be used (bytes that do not decode, a
missing or empty caption, a video too short) raises `records.BadRecord`, naming its file or shard
and index.
"""

from __future__ import annotations

import concurrent.futures
import functools
import glob
import io
import itertools
import json
import os
import posixpath
import re
import tarfile

import msgpack
import numpy as np
from absl import logging

from lavin_jax.data import captions, clips, labelled, media, records, tfds_sources

SPLITS = labelled.SPLITS
TEST_FRACTION = clips.TEST_FRACTION
METADATA = "captions.json"
VERSION = 1
IMAGE_EXTENSIONS = media.IMAGE_EXTENSIONS + (".webp",)
CAPTION_EXTENSION = ".txt"
# A tfds dataset's caption feature: among its text features, the one whose name holds the first of
# these words that any holds (coco_captions: `captions/text`; `image/filename` holds none).
CAPTION_WORDS = ("caption", "description", "prompt", "text")
CAPTION_STREAM = 15  # a training example's caption among several (index: the example), after conditioning.text's.
_CHUNK = 256  # examples read ahead by ingest's threads.


def _caption_text(caption, where: str) -> str:
    """A caption (str, or UTF-8 bytes) with the whitespace at its ends stripped; BadRecord naming
    `where` if it is not text or is empty."""
    if isinstance(caption, (bytes, np.bytes_)):
        try:
            caption = bytes(caption).decode("utf-8")
        except UnicodeDecodeError as error:
            raise records.BadRecord(f"{where} has a caption that is not UTF-8 text ({error}).") from None
    if not isinstance(caption, str):
        raise records.BadRecord(f"{where} has caption {caption!r}, not text.")
    if not caption.strip():
        raise records.BadRecord(f"{where} has an empty caption.")
    return str(caption).strip()


def _read_caption(path: str, where: str) -> str:
    try:
        with open(path, "rb") as f:
            return _caption_text(f.read(), where)
    except OSError as error:
        raise records.BadRecord(f"{where} has a caption file {path!r} that cannot be read ({error}).") from None


class Captioned:
    """(pictures, caption) by index: `read(i)` for i in [0, len). Subclasses give `name` (for
    messages), `size`, `frames`, `__len__` and `_example(i) -> (frames, caption, where)`: uint8
    [T, H, W(, 1 or 3)] frames, the raw caption and a phrase naming the example for messages.
    `uncaptioned` counts the source's media files (both splits') left out for want of a caption;
    `skipped` lists the (file, reason) of files passed over at opening (FolderClips: the videos
    VideoFolder could not use), which ingest reports."""

    name: str
    size: int
    frames: int
    uncaptioned: int = 0
    skipped: tuple = ()

    def __len__(self) -> int:
        raise NotImplementedError

    def _example(self, index: int) -> tuple[np.ndarray, object, str]:
        raise NotImplementedError

    def read(self, index: int) -> tuple[np.ndarray, str]:
        """(uint8 [frames, size, size, 3], caption); BadRecord naming the example if it cannot be
        used."""
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"Example {index} of {self.name} is not in [0, {len(self)}).")
        frames, caption, where = self._example(index)
        try:
            square = np.stack([labelled.center_crop(frame, self.size) for frame in frames])
        except ValueError as error:  # center_crop's sentence on a frame that is not uint8 gray or RGB.
            raise records.BadRecord(f"{where} cannot be used ({str(error).rstrip('.')}).") from None
        return square, _caption_text(caption, where)


def _held_out(items: list, split: str, seed: int, fraction: float) -> list:
    """The items of `split` when `fraction` of them (at least one) is held out as 'test', drawn by
    `seed` as clips.VideoFolder draws its held-out videos."""
    count = max(1, round(fraction * len(items)))
    test = set(np.random.default_rng((seed, clips.FOLDER_STREAM, 0)).permutation(len(items))[:count].tolist())
    return [item for k, item in enumerate(items) if (k in test) == (split == "test")]


def _kind(frames: int) -> str:
    return "images" if frames == 1 else "videos"


def _is_wanted(path: str, frames: int) -> bool:
    """Whether a file is read for `frames`-frame examples: an image for 1, a video for more."""
    return media.is_video(path) if frames > 1 else path.lower().endswith(IMAGE_EXTENSIONS)


def _caption_of(path: str) -> str:
    return os.path.splitext(path)[0] + CAPTION_EXTENSION


def _left_out(total: int, kept: int, what: str, name: str) -> int:
    """How many of `total` media files (or samples) have no caption, logged in one line."""
    if total > kept:
        logging.warning("%d of the %d %s of %s have no caption and are left out.", total - kept, total, what, name)
    return total - kept


def _folder_files(directory: str, frames: int) -> tuple[list[str], int]:
    """(the captioned media files below a folder, sorted; how many have no caption). ValueError,
    before any file is read, if it holds no captioned file of the kind."""
    found = labelled.files_below(directory)
    listed = set(found)

    def with_captions(frames: int) -> tuple[list[str], int]:
        files = [path for path in found if _is_wanted(path, frames)]
        return [path for path in files if _caption_of(path) in listed], len(files)

    files, total = with_captions(frames)
    if not files:
        other = with_captions(2 if frames == 1 else 1)[0]
        relation = ">" if frames == 1 else "=="
        hint = f"; its {len(other)} captioned {_kind(2 if frames == 1 else 1)} are read with frames {relation} 1"
        extensions = ", ".join(IMAGE_EXTENSIONS if frames == 1 else media.VIDEO_EXTENSIONS)
        raise ValueError(f"Folder {directory!r} has no captioned {_kind(frames)} ({extensions} files with a "
                         f"{CAPTION_EXTENSION} caption beside them){hint if other else ''}.")
    return files, _left_out(total, len(files), _kind(frames), directory)


class FolderImages(Captioned):
    """The captioned images of a folder (see the module's docstring); a caption is read with its
    image."""

    def __init__(self, directory: str, split: str, size: int, *, seed: int, test_fraction: float | None = None):
        self.name, self.size, self.frames = f"{directory}:{split}", int(size), 1
        files, self.uncaptioned = _folder_files(directory, 1)
        if all(os.path.isdir(os.path.join(directory, name)) for name in SPLITS):
            if test_fraction is not None:
                raise ValueError(f"Folder {directory!r} has its own train/ and test/ folders; test_fraction={test_fraction} "
                                 "applies to folders without them.")
            self.files = [path for path in files if path.startswith(os.path.join(directory, split, ""))]
        else:
            self.files = _held_out(files, split, seed, TEST_FRACTION if test_fraction is None else test_fraction)
        if not self.files:  # an empty test/ folder, or one captioned image held out.
            raise ValueError(f"Folder {directory!r} has no captioned {split} images of its {len(files)}.")

    def __len__(self) -> int:
        return len(self.files)

    def _example(self, index: int):
        path = self.files[index]
        where = f"{path!r} (example {index} of {self.name})"
        try:
            image = media.read_image(path)
        except media.Skip as skip:
            raise records.BadRecord(f"{where} cannot be read: the file {skip}.") from None
        return image[None], _read_caption(_caption_of(path), where), where


class FolderClips(clips.VideoFolder):
    """The windows of a folder's captioned videos: `clips.VideoFolder`'s (its split, its windows),
    those of uncaptioned videos left out; `read(i)` is (its clip, its video's caption)."""

    def __init__(self, directory: str, split: str, size: int, frames: int, stride: int, *, seed: int):
        # The captions first: a folder without them is refused before VideoFolder reads any video.
        files, self.uncaptioned = _folder_files(directory, frames)
        super().__init__(directory, split, size, frames, stride, seed=seed)
        self.name = f"{directory}:{split}"
        windows, files = np.diff(self._starts), set(files)
        kept = [k for k, path in enumerate(self.files) if path in files]
        if not kept:
            raise ValueError(f"Folder {directory!r} has no captioned {split} video of at least {frames * stride} "
                             "frames that decodes.")
        self.files = [self.files[k] for k in kept]
        self._starts = np.cumsum([0] + [int(windows[k]) for k in kept])

    def read(self, index: int) -> tuple[np.ndarray, str]:
        """(uint8 [frames, size, size, 3], caption); BadRecord naming the window if it cannot be read."""
        clip = super().read(index)
        path = self.files[int(np.searchsorted(self._starts, int(index), side="right")) - 1]
        return clip, _read_caption(_caption_of(path), f"{path!r} (example {index} of {self.name})")


class _Member(io.BytesIO):
    """A tar member's bytes, named in the errors of PIL (which shows a file object's repr)."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.name = name

    def __repr__(self) -> str:
        return repr(self.name)


class TarShards(Captioned):
    """The captioned samples of webdataset tar shards (see the module's docstring)."""

    def __init__(self, pattern: str, split: str, size: int, frames: int, stride: int, *, seed: int,
                 test_fraction: float | None = None):
        self.name, self.size, self.frames, self.stride = f"tar:{pattern}:{split}", int(size), int(frames), int(stride)
        self.shards = sorted(glob.glob(pattern))
        if not self.shards:
            raise ValueError(f"tar:{pattern} matches no file.")
        wanted = tuple(e.lstrip(".") for e in (IMAGE_EXTENSIONS if frames == 1 else media.VIDEO_EXTENSIONS))
        samples, total = [], 0  # samples: (shard, key, media extension, its (offset, size), the caption's).
        for shard, members in enumerate(map(_tar_members, self.shards)):
            for key, extensions in members.items():
                found = next((e for e in extensions if e in wanted), None)
                total += found is not None
                if found is not None and CAPTION_EXTENSION[1:] in extensions:
                    samples.append((shard, key, found, extensions[found], extensions[CAPTION_EXTENSION[1:]]))
        if not samples:
            raise ValueError(f"tar:{pattern} has no sample with a {CAPTION_EXTENSION[1:]} caption and an "
                             f"{'image' if frames == 1 else 'video'} member ({', '.join(wanted)}).")
        self.uncaptioned = _left_out(total, len(samples), "samples", f"tar:{pattern}")
        self.samples = _held_out(samples, split, seed, TEST_FRACTION if test_fraction is None else test_fraction)
        if not self.samples:  # one captioned sample, held out.
            raise ValueError(f"tar:{pattern} has no captioned {split} samples of its {len(samples)}.")

    def __len__(self) -> int:
        return len(self.samples)

    def _bytes(self, shard: int, place: tuple[int, int], where: str) -> bytes:
        offset, size = place
        try:
            with open(self.shards[shard], "rb") as f:
                f.seek(offset)
                data = f.read(size)
        except OSError as error:
            raise records.BadRecord(f"{where} cannot be read ({error}).") from None
        if len(data) != size:
            raise records.BadRecord(f"{where} cannot be read: its shard ends before it (changed since it was indexed?).")
        return data

    def _example(self, index: int):
        shard, key, extension, place, caption = self.samples[index]
        where = f"Sample {key!r} of shard {self.shards[shard]!r} (example {index} of {self.name})"
        member = _Member(self._bytes(shard, place, where), f"{key}.{extension}")
        try:
            if self.frames == 1:
                frames = media.read_image(member)[None]
            else:
                frames = list(itertools.islice(media.read_video(member), 0, self.frames * self.stride, self.stride))
        except media.Skip as skip:
            raise records.BadRecord(f"{where} cannot be read: its {extension} member {skip}.") from None
        if len(frames) < self.frames:
            raise records.BadRecord(f"{where} has a video of fewer than the {(self.frames - 1) * self.stride + 1} "
                                    f"frames a clip of {self.frames} every {self.stride} frames needs.")
        return frames, self._bytes(shard, caption, where), where


def _tar_members(path: str) -> dict[str, dict[str, tuple[int, int]]]:
    """key -> extension -> (offset, size) of the member's data, for the files of an uncompressed
    tar; ValueError naming it if it is not one. Read once per process while the file is
    unchanged: a run opens its shards for the checks, the source and the evaluation."""
    stat = os.stat(path) if os.path.exists(path) else None
    return _indexed_tar(path, stat and (stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=4096)
def _indexed_tar(path: str, version) -> dict[str, dict[str, tuple[int, int]]]:
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                folder, base = posixpath.split(member.name)
                stem, dot, extension = base.partition(".")
                if member.isfile() and dot:
                    sample = samples.setdefault(posixpath.join(folder, stem), {})
                    sample.setdefault(extension.lower(), (member.offset_data, member.size))
    except (tarfile.TarError, OSError) as error:
        raise ValueError(f"Shard {path!r} is not an uncompressed tar file ({error}).") from None
    return samples


def _text_features(features, path: tuple = ()) -> list[tuple[tuple[str, ...], bool]]:
    """(path of keys, whether it holds several texts) of every text feature below `features`, in
    dicts and sequences."""
    import tensorflow_datasets as tfds

    found = []
    for key, feature in features.items():
        several = isinstance(feature, tfds.features.Sequence)
        inner = feature.feature if several else feature
        if isinstance(inner, tfds.features.FeaturesDict):
            found += [(p, many or several) for p, many in _text_features(inner, (*path, key))]
        elif isinstance(inner, tfds.features.Tensor) and np.dtype(inner.np_dtype).kind in "OSU":  # Text is one.
            found.append(((*path, key), several))
    return found


def caption_feature(name: str, features) -> tuple[tuple[str, ...], bool]:
    """The caption feature of tfds dataset `name` (see CAPTION_WORDS): (its path of keys, whether
    it holds several captions); ValueError naming the text features if none or several fit."""
    texts = _text_features(features)
    for word in CAPTION_WORDS:
        fits = [(path, several) for path, several in texts if any(word in key.lower() for key in path)]
        if len(fits) == 1:
            return fits[0]
        if fits:
            raise ValueError(f"tfds:{name} has several caption features ({', '.join('/'.join(p) for p, _ in fits)}); "
                             "which to read is not known.")
    listed = ", ".join("/".join(path) for path, _ in texts) or "none"
    raise ValueError(f"tfds:{name} has no text feature named for captions ({', '.join(CAPTION_WORDS)}); "
                     f"its text features: {listed}.")


def image_feature(name: str, features) -> str:
    """The image feature of tfds dataset `name`: its one Image feature, or the one named 'image';
    ValueError naming its features if none fits."""
    import tensorflow_datasets as tfds

    images = [key for key, feature in features.items() if isinstance(feature, tfds.features.Image)]
    if "image" in images or len(images) == 1:
        return "image" if "image" in images else images[0]
    raise ValueError(f"tfds:{name} needs one Image feature (or one named 'image'); it has {', '.join(features.keys())}.")


def _tfds_dataset(name: str, data_dir: str | None):
    """(info, open(split) -> examples): from the files of a copy prepared in data_dir where there
    is one (no builder code runs: coco_captions' needs TensorFlow), else as `labelled` reads tfds."""
    from tensorflow_datasets.core import read_only_builder

    try:
        builder = read_only_builder.builder_from_files(name, data_dir=data_dir)
    except Exception:  # not prepared there (tfds signals it many ways): the builder's code, below.
        try:
            info = labelled.tfds_info(name, data_dir)
        except ValueError as error:
            if isinstance(error.__context__, ImportError):  # the code needs TensorFlow, absent here.
                raise ValueError(f"tfds:{name} is not prepared in data_dir {data_dir!r}, and its builder's code cannot run "
                                 f"here ({str(error.__context__).splitlines()[0]}); prepare it with: tfds build {name} "
                                 "--file_format=array_record --data_dir=DIR, where TensorFlow is installed.") from None
            raise
        return info, lambda split: tfds_sources.open_source(name, split, data_dir)
    # A version in the name makes tfds read the prepared files, as builder_from_files did.
    versioned = name if ":" in name else f"{name}:{builder.info.version}"
    return builder.info, lambda split: tfds_sources.open_source(versioned, split, data_dir)


class TfdsCaptioned(Captioned):
    """The images and captions of a tfds dataset (see the module's docstring)."""

    def __init__(self, name: str, split: str, size: int, *, seed: int, data_dir: str | None = None):
        info, open_split = _tfds_dataset(name, data_dir)
        self.image = image_feature(name, info.features)
        self.caption, self.several = caption_feature(name, info.features)
        known = list(info.splits)
        tfds_split = "train" if split == "train" else next((s for s in ("validation", "test") if s in known), "test")
        if known and tfds_split not in known:
            raise ValueError(f"tfds:{name} has no {tfds_split} split to read as {split!r}; it has {', '.join(known)}.")
        self._examples = open_split(tfds_split)
        self.name, self.size, self.frames = f"tfds:{name}:{tfds_split}", int(size), 1
        self._split, self._seed = split, int(seed)

    def __len__(self) -> int:
        return len(self._examples)

    def _example(self, index: int):
        where = f"Example {index} of {self.name}"
        try:
            example = self._examples[index]
            caption = functools.reduce(lambda value, key: value[key], self.caption, example)
            image = example[self.image]
        except Exception as error:  # tfds's decoders fail on bad bytes in many ways.
            raise records.BadRecord(f"{where} cannot be decoded ({str(error).splitlines()[0]}).") from None
        if self.several:
            captions = np.asarray(caption).reshape(-1)
            if not captions.size:
                raise records.BadRecord(f"{where} has no caption in {'/'.join(self.caption)}.")
            draw = np.random.default_rng((self._seed, CAPTION_STREAM, index))
            caption = captions[0 if self._split == "test" else draw.integers(captions.size)]
        return np.asarray(image)[None], caption, where


def _read_metadata(directory: str) -> dict:
    path, metadata = records.read_json(directory, METADATA, "Metadata", "python -m lavin_jax.data.ingest --captions=SPEC")
    numbers = ("size", "frames", "stride", "shard_size")
    valid = (
        isinstance(metadata, dict)
        and metadata.get("version") == VERSION
        and all(isinstance(metadata.get(field), int) and metadata[field] >= 1 for field in numbers)
        and isinstance(metadata.get("splits"), dict)
        and all(
            isinstance(metadata["splits"].get(split), dict)
            and isinstance(metadata["splits"][split].get("count"), int)
            and isinstance(metadata["splits"][split].get("files"), list)
            and all(isinstance(file, str) for file in metadata["splits"][split]["files"])
            for split in SPLITS
        )
    )
    if not valid:
        raise ValueError(f"Metadata {path!r} is not a version {VERSION} {METADATA} with {', '.join(numbers)} "
                         f"(positive integers) and splits {', '.join(SPLITS)} (files and count each).")
    return metadata


class RecordCaptions(Captioned):
    """One split of a directory written by `ingest_captions`; its shards open on the first read
    (and again after pickling, in a worker process)."""

    def __init__(self, directory: str, split: str, size: int, frames: int, stride: int):
        metadata = _read_metadata(directory)
        stored = (metadata["frames"], metadata["stride"] if metadata["frames"] > 1 else 1)
        if (frames, stride if frames > 1 else 1) != stored:
            raise ValueError(f"Directory {directory!r} holds examples of frames={stored[0]}, stride={stored[1]}; they "
                             f"cannot be read with frames={frames}, stride={stride}.")
        entry = metadata["splits"][split]
        if not entry["count"]:
            raise ValueError(f"Directory {directory!r} has no {split} examples.")
        self._files = [os.path.join(directory, file) for file in entry["files"]]
        for file in self._files:
            if not os.path.isfile(file):
                raise ValueError(f"Shard {file!r} named by {METADATA} of {directory!r} is missing.")
        if size > metadata["size"]:
            logging.warning("%s holds %dx%d pictures; reading them at %d upsamples them.", directory, metadata["size"],
                            metadata["size"], size)
        self.name, self.size, self.frames = f"{directory}:{split}", int(size), int(frames)
        self._count, self._shard_size = entry["count"], metadata["shard_size"]
        self._source = None  # one reader of all the shards, opened on the first read.

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_source": None}

    def __len__(self) -> int:
        return self._count

    def _example(self, index: int):
        if self._source is None:
            import grain

            source = grain.sources.ArrayRecordDataSource(self._files)
            if len(source) != self._count:
                raise ValueError(f"{METADATA} says {self.name} has {self._count} examples, but its shards hold {len(source)}.")
            self._source = source
        shard, local = divmod(index, self._shard_size)  # every shard but the last holds shard_size.
        where = f"Record {local} of shard {self._files[shard]!r}"
        record, frames, where = records.unpack_example(self._source[index], where, ("id", "caption", "frames"), "frames")
        if len(frames) != self.frames:
            raise records.BadRecord(f"{where} has {len(frames)} frames, not {self.frames}.")
        return frames, record["caption"], where


def open_captioned(spec: str, split: str, size: int, *, frames: int = 1, stride: int = 1, seed: int,
                   tfds_data_dir: str | None = None, test_fraction: float | None = None):
    """The `split` ('train' or 'test') of the captioned examples `spec` names (a folder,
    'tar:GLOB', 'tfds:NAME' or an ingested directory), `frames` frames every `stride`-th of a
    video's (1: images) at size x size; ValueError (FileNotFoundError for a missing folder) naming
    the spec, argument or file. `seed` draws held-out files and training captions; `test_fraction`
    (None: TEST_FRACTION) is the share held out of a source without splits of its own."""
    labelled.check_split(split)
    for field, value in (("Image size", size), ("frames", frames), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{field} {value!r} of captioned examples must be a positive integer.")
    if test_fraction is not None and not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction} must be in (0, 1).")
    fixed = f"test_fraction={test_fraction} applies to folders and tar shards; {spec} has its own test split."
    if spec == "scenes":
        return captions.Scenes(split, size, frames, seed=seed)
    if spec.startswith("tfds:") and spec[len("tfds:"):]:
        if frames != 1:
            raise ValueError(f"{spec} holds images; frames={frames} needs videos (a folder or tar shards of them).")
        if test_fraction is not None:
            raise ValueError(fixed)
        return TfdsCaptioned(spec[len("tfds:"):], split, size, seed=seed, data_dir=tfds_data_dir)
    if spec.startswith("tar:") and spec[len("tar:"):]:
        return TarShards(spec[len("tar:"):], split, size, frames, stride, seed=seed, test_fraction=test_fraction)
    if os.path.isfile(os.path.join(spec, METADATA)):
        if test_fraction is not None:
            raise ValueError(fixed)
        return RecordCaptions(spec, split, size, frames, stride)
    if os.path.isdir(spec):
        if frames == 1:
            return FolderImages(spec, split, size, seed=seed, test_fraction=test_fraction)
        if test_fraction is not None:
            raise ValueError(f"test_fraction={test_fraction} applies to images; a video folder holds out "
                             "clips.TEST_FRACTION of its videos as clips.VideoFolder does.")
        return FolderClips(spec, split, size, frames, stride, seed=seed)
    if os.path.exists(spec) or re.fullmatch(r"[A-Za-z][\w-]*:.*", spec):
        raise ValueError(f"Captioned dataset {spec!r} is not a folder, tar:GLOB or tfds:NAME.")
    raise FileNotFoundError(f"Folder {spec!r} of captioned files does not exist.")


# --- ingest -----------------------------------------------------------------------------------


def _record(dataset, encoding: str, index: int) -> bytes | records.BadRecord:
    """Example `index` as a record, or the BadRecord saying why it cannot be one."""
    try:
        frames, caption = dataset.read(index)
    except records.BadRecord as bad:
        return bad
    record = {"id": f"{dataset.name}[{index}]", "caption": caption, "frames": records.encode_frames(frames, encoding)}
    return msgpack.packb(record, use_bin_type=True)


def ingest_captions(spec: str, out: str, size: int, *, frames: int = 1, stride: int = 1, seed: int = 0,
                    test_fraction: float | None = None, tfds_data_dir: str | None = None, encoding: str = "png",
                    shard_size: int = 2048, num_threads: int = 8) -> dict:
    """The captioned examples of `spec` (as `open_captioned` reads them, both splits) as the new
    directory `out` that `open_captioned(out, ...)` reads (see the module's docstring), stored
    with `encoding`, and METADATA (also returned): sizes, per-split counts, the files left out
    and the examples skipped, and why. ValueError for a bad argument or an `out` that is not new
    and empty, before anything is read, and when no training example could be read (no metadata
    is written then)."""
    if encoding not in records.ENCODINGS:
        raise ValueError(f"Encoding {encoding!r} must be one of {', '.join(records.ENCODINGS)}.")
    if num_threads < 1 or shard_size < 1:
        raise ValueError(f"num_threads={num_threads} and shard_size={shard_size} must be positive.")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ValueError(f"Directory {out!r} already exists and is not empty; examples are only written to a new directory.")
    datasets = {split: open_captioned(spec, split, size, frames=frames, stride=stride, seed=seed, tfds_data_dir=tfds_data_dir,
                                      test_fraction=test_fraction) for split in SPLITS}
    splits, skipped = {}, []
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
        for split, dataset in datasets.items():
            skipped += [{"split": split, "reason": f"{file} {reason}"} for file, reason in dataset.skipped]
            os.makedirs(os.path.join(out, split))
            writer, count = records.ShardWriter(os.path.join(out, split), split, shard_size), 0
            for start in range(0, len(dataset), _CHUNK):
                chunk = range(start, min(start + _CHUNK, len(dataset)))
                for result in pool.map(functools.partial(_record, dataset, encoding), chunk):
                    if isinstance(result, records.BadRecord):
                        logging.warning("Skipped a bad example: %s", result)
                        skipped.append({"split": split, "reason": str(result)})
                        continue
                    writer.write(result)
                    count += 1
            files = [f"{split}/{name}" for name in writer.close()]
            splits[split] = {"files": files, "count": count}
    if not splits["train"]["count"]:
        first = next(s["reason"] for s in skipped if s["split"] == "train")  # open_captioned refuses an empty split.
        raise ValueError(f"No training example of {spec} could be read (the first: {first}).")
    metadata = {
        "version": VERSION,
        "size": int(size),
        "frames": int(frames),
        "stride": int(stride) if frames > 1 else 1,
        "encoding": encoding,
        "shard_size": int(shard_size),
        "splits": splits,
        "uncaptioned": datasets["train"].uncaptioned,  # of the whole source.
        "sources": {"spec": spec, "test_fraction": test_fraction, "seed": seed},
        "skipped": skipped,
    }
    with open(os.path.join(out, METADATA), "w") as f:
        json.dump(metadata, f, indent=2)
    return metadata
