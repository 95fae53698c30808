"""Class-labelled images, the data of class-conditional models (DiT): a dataset of (image, label)
and `LabelledImages`, the training examples made from it.

    open_dataset(spec, split, size, seed=..., tfds_data_dir=...)  split: 'train' or 'test'

`spec` names one of three kinds of source:
- `digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 images, classes "0".."9", ink
  16 on a background 0, scaled to uint8 255 and 0), gray replicated to RGB. It has no split of
  its own: a permutation seeded by `seed` holds out TEST_FRACTION (20%, 359 images) as 'test',
  so the split is the same for every run of one seed and the two never share an image.
- `tfds:NAME` (tfds:cifar10, tfds:mnist, tfds:imagenet2012, ...): a tensorflow-datasets dataset
  with an `image` and a class `label` feature, prepared in the ArrayRecord format and read with
  `tfds.data_source` (see `tfds_sources`). 'test' is its `validation` split when it has one, else
  its `test` split (ImageNet's `test` has no labels, its `validation` does). Class names are the
  label feature's names.
- a directory written by `python -m lavin_jax.data.ingest --classes=ROOT` from ImageNet-style
  class folders, ROOT/<class name>/<image files> (`ingest_folders`):

      DIR/labels.json                       class names, splits, what was skipped (METADATA)
      DIR/train/train-00000.array_record, ...
      DIR/test/test-00000.array_record, ...

  Classes are the class folders in sorted order (label i: the i-th name, as torchvision's
  ImageFolder numbers them). One record is a msgpack-serialised dict {"id": source file,
  "label": int, "image": frames} with frames as `records.encode_frames` writes them (one frame).
  The test split is either a second folder of the same classes (`test_root`, e.g. ImageNet's
  validation images sorted into class folders) or a `test_fraction` of each class's files drawn
  by `seed`. Each split's records are written in an order shuffled by `seed`, so neighbouring
  records mix the classes. Files that cannot be read as images (`media.read_image`) are skipped,
  logged and listed in the metadata; an empty root or a class folder without files is refused.

Every image is made square as ADM and DiT prepare ImageNet (`center_crop`): halved with a box
filter while its short side is at least twice `size`, then resized with a bicubic filter so its
short side is `size`, then the centred size x size square cut out. Ingest stores images already
cropped to its size, so reading them at that size changes nothing.

`dataset.read(i)` is (uint8 [size, size, 3], label). A record that cannot be used (bytes that do
not decode, an image that is not gray or RGB, a label outside [0, num_classes)) raises
`records.BadRecord`, a ValueError whose one sentence names the record: the file, shard and index,
or the tfds example. `LabelledImages` skips such records in training and counts them.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os

import msgpack
import numpy as np
from absl import logging
from PIL import Image

from lavin_jax.data import media, records, scoring, synthetic, tfds_sources

SPLITS = ("train", "test")
TEST_FRACTION = 0.2  # of `digits`, held out as its 'test' split.
METADATA = "labels.json"
VERSION = 1
# The seed streams of LabelledImages' draws, after synthetic's: an example's flip and label
# dropout (index: the example), and with `shuffle` an epoch's order (index: the epoch).
LABELLED_STREAM = 5
EPOCH_STREAM = 6
_CHUNK = 256  # images read ahead by ingest's threads.


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """A uint8 image ([H, W], [H, W, 1] or [H, W, 3]) as uint8 [size, size, 3], cut out as ADM
    and DiT prepare ImageNet: box-halved while the short side is >= 2 * size, bicubic-resized to a
    short side of size, the centred square kept. Gray is replicated to RGB."""
    image = np.asarray(image)
    shape = list(image.shape)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.dtype != np.uint8 or not (image.ndim == 2 or image.ndim == 3 and image.shape[-1] == 3) or 0 in image.shape:
        raise ValueError(f"An image is {image.dtype} {shape}; uint8 [H, W], [H, W, 1] or [H, W, 3] is needed.")
    if size < 1:
        raise ValueError(f"Image size {size} must be positive.")
    picture = Image.fromarray(image)
    while min(picture.size) >= 2 * size:
        picture = picture.resize((picture.width // 2, picture.height // 2), Image.Resampling.BOX)
    if min(picture.size) != size:
        scale = size / min(picture.size)
        scaled = (round(picture.width * scale), round(picture.height * scale))
        picture = picture.resize(scaled, Image.Resampling.BICUBIC)
    array = np.asarray(picture)
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    array = array[top : top + size, left : left + size]
    return np.repeat(array[..., None], 3, axis=-1) if array.ndim == 2 else np.ascontiguousarray(array)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Split {split!r} must be one of {', '.join(SPLITS)}.")


class Dataset:
    """(image, label) by index: `read(i)` for i in [0, len). Subclasses give `name` (for
    messages), `class_names`, `size`, `__len__` and `_example(i) -> (image, label, where)`,
    `where` naming the record in a sentence (e.g. "Example 3 of tfds:cifar10:train")."""

    name: str
    class_names: list[str]
    size: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        raise NotImplementedError

    def _example(self, index: int) -> tuple[np.ndarray, object, str]:
        raise NotImplementedError

    @staticmethod
    def target(image: np.ndarray, flip: bool) -> np.ndarray:
        """A read image as a training target, float32 [1, S, S, 3] in [-1, 1], mirrored if `flip`."""
        return scoring.from_uint8((image[:, ::-1] if flip else image)[None])

    def read(self, index: int) -> tuple[np.ndarray, int]:
        """(uint8 [size, size, 3], label in [0, num_classes)); BadRecord naming the record if it
        cannot be used."""
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"Image {index} of {self.name} is not in [0, {len(self)}).")
        image, label, where = self._example(index)
        image = np.asarray(image)
        channels = image.shape[-1] if image.ndim == 3 else 1
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or channels not in (1, 3) or 0 in image.shape:
            raise records.BadRecord(f"{where} is {image.dtype} {list(image.shape)}, not a uint8 gray or RGB image "
                                    "([H, W], [H, W, 1] or [H, W, 3]).")
        if isinstance(label, np.ndarray) and label.ndim == 0:
            label = label.item()
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
            raise records.BadRecord(f"{where} has label {label!r}, not an integer.")
        if not 0 <= label < self.num_classes:
            raise records.BadRecord(
                f"{where} has label {label}, outside [0, {self.num_classes}) of {self.name}'s classes."
            )
        return center_crop(image, self.size), int(label)


@functools.cache
def bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets

    digits = datasets.load_digits()
    return np.round(digits.images * (255 / 16)).astype(np.uint8), digits.target.astype(np.int64)


class Digits(Dataset):
    """scikit-learn's 8x8 digits, the split held out by `seed` (see the module's docstring)."""

    def __init__(self, split: str, size: int, *, seed: int):
        check_split(split)
        images, labels = bundled_digits()
        order = np.random.default_rng(seed).permutation(len(images))
        held_out = round(TEST_FRACTION * len(images))
        self.indices = order[:held_out] if split == "test" else order[held_out:]  # into load_digits.
        self._images, self._labels = images[self.indices], labels[self.indices]
        self.name, self.size = f"digits:{split}", int(size)
        self.class_names = [str(digit) for digit in range(10)]

    def __len__(self) -> int:
        return len(self.indices)

    def _example(self, index: int):
        return self._images[index], self._labels[index], f"Digit {index} of {self.name}"


def tfds_info(name: str, data_dir: str | None):
    """The dataset's info: its splits when prepared in data_dir, its features always."""
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir).info
    except Exception as error:  # tfds signals an unknown name or version many ways.
        raise ValueError(f"tfds:{name} is not a tensorflow-datasets dataset ({str(error).splitlines()[0]}).") from None


class TfdsImages(Dataset):
    """The `image` and `label` features of a prepared tfds dataset (see the module's docstring)."""

    def __init__(self, name: str, split: str, size: int, *, data_dir: str | None = None):
        check_split(split)
        info = tfds_info(name, data_dir)
        known = list(info.splits)
        features = info.features
        label = features["label"] if "label" in features else None
        if "image" not in features or not getattr(label, "names", None):
            raise ValueError(
                f"tfds:{name} needs an 'image' feature and a class 'label' feature with names; "
                f"it has {', '.join(features.keys())}."
            )
        class_names = list(label.names)
        if split == "train":
            candidates = ["train"]
        else:
            candidates = [s for s in ("validation", "test") if s in known]
            if known and not candidates:
                raise ValueError(f"tfds:{name} has no validation or test split to read as 'test'; it has {', '.join(known)}.")
            candidates = candidates or ["test", "validation"]  # splits unknown until prepared: try both.
        for candidate in candidates:
            try:
                self._data = tfds_sources.open_source(name, candidate, data_dir)
                break
            except ValueError as error:
                if candidate == candidates[0]:
                    first = error
        else:
            raise first
        self.tfds_split = candidate
        self.name, self.size = f"tfds:{name}:{candidate}", int(size)
        self.class_names = class_names

    def __len__(self) -> int:
        return len(self._data)

    def _example(self, index: int):
        where = f"Example {index} of {self.name}"
        try:
            example = self._data[index]
        except Exception as error:  # tfds's decoders fail on bad bytes in many ways.
            raise records.BadRecord(f"{where} cannot be decoded ({str(error).splitlines()[0]}).") from None
        return example["image"], example["label"], where


def _read_metadata(directory: str) -> dict:
    path, metadata = records.read_json(directory, METADATA, "Metadata", "python -m lavin_jax.data.ingest --classes=ROOT")
    valid = (
        isinstance(metadata, dict)
        and metadata.get("version") == VERSION
        and isinstance(metadata.get("class_names"), list) and metadata["class_names"]
        and all(isinstance(name, str) for name in metadata["class_names"])
        and isinstance(metadata.get("splits"), dict)
        and all(
            isinstance(metadata["splits"].get(split), dict)
            and isinstance(metadata["splits"][split].get("files"), list)
            and all(isinstance(file, str) for file in metadata["splits"][split]["files"])
            and isinstance(metadata["splits"][split].get("count"), int)
            for split in SPLITS
        )
    )
    if not valid:
        raise ValueError(
            f"Metadata {path!r} is not a version {VERSION} {METADATA} with class_names (strings) and "
            f"splits {', '.join(SPLITS)} (files and count each)."
        )
    return metadata


class RecordImages(Dataset):
    """One split of a directory written by `ingest_folders`; shard readers open on the first read
    (and again after pickling, in a worker process)."""

    def __init__(self, directory: str, split: str, size: int):
        check_split(split)
        metadata = _read_metadata(directory)
        entry = metadata["splits"][split]
        if entry["count"] == 0:
            raise ValueError(
                f"Directory {directory!r} has no {split} images; ingest one with --classes_test or --test_fraction."
            )
        for file in entry["files"]:
            if not os.path.isfile(os.path.join(directory, file)):
                raise ValueError(f"Shard {os.path.join(directory, file)!r} named by {METADATA} of {directory!r} is missing.")
        self.directory, self.split = directory, split
        self.name, self.size = f"{directory}:{split}", int(size)
        self.class_names = list(metadata["class_names"])
        self.stored_size = metadata.get("size")
        if isinstance(self.stored_size, int) and self.size > self.stored_size:
            logging.warning("%s holds %dx%d images; reading them at %d upsamples them.", directory, self.stored_size,
                            self.stored_size, self.size)
        self._files, self._count = list(entry["files"]), entry["count"]
        self._shards = None  # (readers, the first index of each), opened on the first read.

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_shards": None}

    def __len__(self) -> int:
        return self._count

    def _open(self):
        if self._shards is None:
            import grain

            readers, starts, total = [], [], 0
            for file in self._files:
                readers.append(grain.sources.ArrayRecordDataSource([os.path.join(self.directory, file)]))
                starts.append(total)
                total += len(readers[-1])
            if total != self._count:
                raise ValueError(
                    f"{METADATA} of {self.directory!r} says split {self.split!r} has {self._count} images, "
                    f"but its shards hold {total}."
                )
            self._shards = readers, starts
        return self._shards

    def _example(self, index: int):
        readers, starts = self._open()
        shard = int(np.searchsorted(starts, index, side="right")) - 1
        local = index - starts[shard]
        where = f"Record {local} of shard {os.path.join(self.directory, self._files[shard])!r}"
        record, frames, where = records.unpack_example(readers[shard][local], where, ("id", "label", "image"), "image")
        if len(frames) != 1:
            raise records.BadRecord(f"{where} has {len(frames)} frames, not one image.")
        return frames[0], record["label"], where


def open_dataset(spec: str, split: str, size: int, *, seed: int, tfds_data_dir: str | None = None) -> Dataset:
    """The `split` ('train' or 'test') of the labelled images `spec` names ('digits', 'tfds:NAME'
    or an ingested directory), read at size x size; ValueError naming the spec, split or file.
    `seed` draws the digits' held-out split; the other sources have fixed splits."""
    check_split(split)
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"Image size {size!r} must be a positive integer.")
    if spec == "digits":
        return Digits(split, size, seed=seed)
    if spec.startswith("tfds:") and spec[len("tfds:"):]:
        return TfdsImages(spec[len("tfds:"):], split, size, data_dir=tfds_data_dir)
    if os.path.isdir(spec):
        return RecordImages(spec, split, size)
    raise ValueError(
        f"Labelled dataset {spec!r} is not 'digits', 'tfds:NAME' or a directory written by "
        "python -m lavin_jax.data.ingest --classes=ROOT."
    )


class EpochOrder:
    """Which of `count` records example i reads: the i % count-th of epoch i // count's
    permutation, drawn from (seed, EPOCH_STREAM, epoch)."""

    def __init__(self, seed: int, count: int):
        self._seed, self._count = int(seed), int(count)
        self._cached = (-1, None)  # (epoch, its permutation): one epoch's, replaced whole (threads read it).

    def __call__(self, index: int) -> int:
        epoch, position = divmod(int(index), self._count)
        cached = self._cached
        if cached[0] != epoch:
            self._cached = cached = (epoch, np.random.default_rng((self._seed, EPOCH_STREAM, epoch)).permutation(self._count))
        return int(cached[1][position])


class LabelledImages:
    """Training examples of a labelled dataset, a random-access source for grain (like
    `episodes.Episodes`: `grain.MapDataset.source(images)`, or `.map(images.map)` over indices).

    Example i is a pure function of (seed, i): the dataset's image i % len (with `shuffle`, the
    i % len-th of epoch i // len's permutation, drawn from (seed, EPOCH_STREAM, epoch)), mirrored
    with probability `flip_prob`, its label replaced by the null class `num_classes` with probability
    `cond_drop_prob` (DiT's label dropout, the unconditional branch of classifier-free guidance;
    1 for an unconditional model, whose `num_classes` may be 0), both drawn from np.random.default_rng((seed, LABELLED_STREAM, i)). A record that raises
    BadRecord is replaced by the next one that reads, with a warning naming it, and counted.

    Each example is {"target": float32 [1, S, S, 3] in [-1, 1], "label": int32 [] in
    [0, num_classes] (num_classes: dropped), "skipped": int32 [] (bad records passed over)}.
    """

    def __init__(self, dataset: Dataset, *, seed: int, flip_prob: float, cond_drop_prob: float, num_classes: int,
                 shuffle: bool = False):
        if len(dataset) == 0:
            raise ValueError(f"Labelled dataset {dataset.name} has no images.")
        for field, value in (("flip_prob", flip_prob), ("cond_drop_prob", cond_drop_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{field}={value} must be in [0, 1].")
        if cond_drop_prob < 1.0 and num_classes < dataset.num_classes:
            raise ValueError(f"num_classes={num_classes} is fewer than the {dataset.num_classes} classes of {dataset.name}.")
        self.dataset = dataset
        self.num_classes = int(num_classes)
        self._seed, self._flip_prob, self._cond_drop_prob = int(seed), float(flip_prob), float(cond_drop_prob)
        self._order = EpochOrder(seed, len(dataset)) if shuffle else None

    def __len__(self) -> int:
        return synthetic.NUM_EXAMPLES

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        rng = np.random.default_rng((self._seed, LABELLED_STREAM, index))
        flip = rng.random() < self._flip_prob
        drop = rng.random() < self._cond_drop_prob
        record = self._order(index) if self._order else index % len(self.dataset)
        (image, label), skipped = records.read_past_bad(self.dataset, record)
        return {
            "target": self.dataset.target(image, flip),
            "label": np.array(self.num_classes if drop else label, np.int32),
            "skipped": np.array(skipped, np.int32),
        }

    map = __getitem__  # grain's MapTransform protocol: MapDataset.range(n).map(images.map).


# --- ingest -----------------------------------------------------------------------------------


def _visible(directory: str) -> list[str]:
    return sorted(name for name in os.listdir(directory) if not name.startswith("."))


def files_below(folder: str) -> list[str]:
    """Every visible file below `folder` (hidden folders and files left out), sorted."""
    found = []
    for parent, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [os.path.join(parent, name) for name in files if not name.startswith(".")]
    return sorted(found)


def _class_files(root: str, what: str) -> dict[str, list[str]]:
    """class name -> its files (every visible file below its folder, sorted); ValueError naming
    an empty root or a class folder without files."""
    if not os.path.isdir(root):
        raise ValueError(f"{what} {root!r} is not a directory.")
    classes = [name for name in _visible(root) if os.path.isdir(os.path.join(root, name))]
    if not classes:
        raise ValueError(f"{what} {root!r} has no class folders; the layout is {root}/<class name>/<image files>.")
    found = {}
    for name in classes:
        folder = os.path.join(root, name)
        found[name] = files_below(folder)
        if not found[name]:
            raise ValueError(f"Class folder {folder!r} holds no image files; every class needs images.")
    return found


def _prepare(path: str, label: int, size: int, encoding: str) -> bytes:
    """One file as a record; Skip saying why it cannot be."""
    image = center_crop(media.read_image(path), size)
    record = {"id": path, "label": label, "image": records.encode_frames(image[None], encoding)}
    return msgpack.packb(record, use_bin_type=True)


def ingest_folders(root: str, out: str, size: int, *, test_root: str | None = None, test_fraction: float = 0.0,
                   seed: int = 0, encoding: str = "png", shard_size: int = 2048, num_threads: int = 8) -> dict:
    """ImageNet-style class folders, root/<class name>/<image files>, as the new directory `out`
    that `open_dataset(out, ...)` reads (see the module's docstring): each image center-cropped to
    size x size and stored with `encoding`, in train and test shards, and METADATA (also
    returned): class names, per-split and per-class counts, the files skipped and why.

    The test split is `test_root`'s class folders (each must be one of root's classes) or a
    `test_fraction` of each class's files drawn by `seed` (at least one file stays in train),
    else empty. ValueError, before any image is read, for a bad argument, an `out` that is not new
    and empty, an empty root or a class folder without files; and, after, naming a class folder of
    root none of whose files could be read (no metadata is written then)."""
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"Image size {size!r} must be a positive integer.")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction} must be in [0, 1).")
    if test_root and test_fraction:
        raise ValueError("Give a test folder or a test_fraction, not both.")
    if encoding not in records.ENCODINGS:
        raise ValueError(f"Encoding {encoding!r} must be one of {', '.join(records.ENCODINGS)}.")
    if num_threads < 1 or shard_size < 1:
        raise ValueError(f"num_threads={num_threads} and shard_size={shard_size} must be positive.")
    train = _class_files(root, "Class folder root")
    class_names = list(train)
    labels = {name: label for label, name in enumerate(class_names)}
    if test_root:
        test = _class_files(test_root, "Test class folder root")
        for name in test:
            if name not in labels:
                raise ValueError(
                    f"Test class folder {os.path.join(test_root, name)!r} names no class of {root!r} "
                    f"({len(class_names)} classes, e.g. {class_names[0]!r})."
                )
    else:
        test = {}
        for name, files in train.items():
            held_out = min(round(test_fraction * len(files)), len(files) - 1)
            order = np.random.default_rng((seed, labels[name])).permutation(len(files))
            test[name] = [files[i] for i in sorted(order[:held_out])]
            train[name] = [files[i] for i in sorted(order[held_out:])]
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ValueError(f"Directory {out!r} already exists and is not empty; images are only written to a new directory.")

    splits, skipped = {}, []
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
        for split_index, (split, folders) in enumerate((("train", train), ("test", test))):
            items = [(path, labels[name]) for name, files in folders.items() for path in files]
            items = [items[i] for i in np.random.default_rng((seed, len(SPLITS) + split_index)).permutation(len(items))]
            os.makedirs(os.path.join(out, split))
            writer = records.ShardWriter(os.path.join(out, split), split, shard_size)
            per_class = [0] * len(class_names)
            for start in range(0, len(items), _CHUNK):
                chunk = items[start : start + _CHUNK]
                futures = [pool.submit(_prepare, path, label, size, encoding) for path, label in chunk]
                for (path, label), future in zip(chunk, futures):
                    try:
                        writer.write(future.result())
                    except media.Skip as skip:
                        logging.warning("Skipped %s: %s.", path, skip)
                        skipped.append({"file": path, "split": split, "reason": str(skip)})
                        continue
                    per_class[label] += 1
            files = [f"{split}/{name}" for name in writer.close()]
            splits[split] = {"files": files, "count": sum(per_class), "per_class": per_class}
    for label, count in enumerate(splits["train"]["per_class"]):
        if not count:
            folder = os.path.join(root, class_names[label])
            first = next(s for s in skipped if s["split"] == "train" and s["file"].startswith(folder + os.sep))
            raise ValueError(
                f"Class folder {folder!r} has no file that can be read as an image "
                f"({first['file']} {first['reason']})."
            )
    metadata = {
        "version": VERSION,
        "size": int(size),
        "encoding": encoding,
        "class_names": class_names,
        "splits": splits,
        "sources": {"root": root, "test_root": test_root, "test_fraction": test_fraction, "seed": seed},
        "skipped": skipped,
    }
    with open(os.path.join(out, METADATA), "w") as f:
        json.dump(metadata, f, indent=2)
    return metadata
