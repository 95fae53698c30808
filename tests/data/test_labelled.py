import json
import os
import pickle
import re
import subprocess
import sys

import grain
import msgpack
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from sklearn import datasets

from lavin_jax.data import labelled, media, records

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLOURS = {"cat": 0, "dog": 1, "owl": 2}  # each class's images are brightest in this channel.


# --- digits ------------------------------------------------------------------------------------


def test_digits_are_ten_classes_held_out_by_seed():
    digits = datasets.load_digits()
    train, test = labelled.open_dataset("digits", "train", 16, seed=0), labelled.open_dataset("digits", "test", 32, seed=0)
    assert (len(train), len(test)) == (1797 - 359, 359)  # TEST_FRACTION of the 1,797 held out.
    assert train.num_classes == test.num_classes == 10 and train.class_names == [str(d) for d in range(10)]
    assert not set(train.indices) & set(test.indices) and len(set(train.indices) | set(test.indices)) == 1797
    again = labelled.open_dataset("digits", "test", 8, seed=0)
    other = labelled.open_dataset("digits", "test", 8, seed=1)
    np.testing.assert_array_equal(again.indices, test.indices)
    assert set(other.indices) != set(test.indices)
    for dataset, size in ((train, 16), (test, 32)):
        for i in (0, 1, len(dataset) - 1):
            image, label = dataset.read(i)
            assert image.shape == (size, size, 3) and image.dtype == np.uint8
            source = dataset.indices[i]
            assert label == digits.target[source] and 0 <= label < 10
            gray = np.round(digits.images[source] * 255 / 16).astype(np.uint8)
            np.testing.assert_array_equal(image, labelled.center_crop(gray, size))
            assert (image[..., 0] == image[..., 2]).all() and image.max() > 128  # gray, ink bright.
    with pytest.raises(IndexError, match="Image 359 of digits:test is not in"):
        test.read(359)


# --- center crop --------------------------------------------------------------------------------


@pytest.mark.parametrize("height, width", [(120, 300), (300, 120), (700, 512)])
def test_center_crop_keeps_the_middle_square(height, width):
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = 255  # red margins around a green middle square of the short side.
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    image[top : top + side, left : left + side] = (0, 255, 0)
    crop = labelled.center_crop(image, 32)
    assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
    inner = crop[2:-2, 2:-2].astype(int)
    assert (inner[..., 1] > 240).all() and (inner[..., 0] < 15).all()
    assert labelled.center_crop(image[:, :, :1], 16).shape == (16, 16, 3)  # 1 channel: gray.
    square = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(labelled.center_crop(square, 16), square)  # already the size: exact.
    # ADM's steps for 170x200 -> 32, written out: box-halved while the short side is >= 64 (170, 85;
    # not 42), bicubic to a short side of 32 (42x50 -> 32x38), the middle columns 3..34 kept.
    noise = np.random.default_rng(1).integers(0, 256, (170, 200, 3), dtype=np.uint8)
    picture = Image.fromarray(noise).resize((100, 85), Image.Resampling.BOX).resize((50, 42), Image.Resampling.BOX)
    expected = np.asarray(picture.resize((38, 32), Image.Resampling.BICUBIC))[:, 3:35]
    np.testing.assert_array_equal(labelled.center_crop(noise, 32), expected)
    with pytest.raises(ValueError, match=re.escape("An image is uint8 [16, 16, 4]; uint8 [H, W], [H, W, 1] or [H, W, 3]")):
        labelled.center_crop(np.zeros((16, 16, 4), np.uint8), 8)


# --- tfds -------------------------------------------------------------------------------------


def _mock(num_examples=4, examples=None):
    custom = {} if examples is None else {"as_data_source_fn": lambda builder, split, **kwargs: examples}
    return tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE, **custom)


@pytest.mark.parametrize("name, classes, first", [("cifar10", 10, "0"), ("mnist", 10, "0"), ("imagenet2012", 1000, "n01440764")])
def test_tfds_datasets_read_through_mock_data(name, classes, first):
    with _mock():
        for split in labelled.SPLITS:
            dataset = labelled.open_dataset(f"tfds:{name}", split, 8, seed=0)
            assert len(dataset) == 4 and dataset.num_classes == classes and dataset.class_names[0] == first
            assert dataset.class_names == list(tfds.builder(name).info.features["label"].names)
            for i in range(len(dataset)):
                image, label = dataset.read(i)
                assert image.shape == (8, 8, 3) and image.dtype == np.uint8 and 0 <= label < classes
    assert dataset.tfds_split == "test"  # no split is known before preparing: test, then validation.


def test_tfds_bad_examples_name_their_index():
    examples = [
        {"image": np.zeros((28, 28, 1), np.uint8), "label": np.int64(3)},
        {"image": np.zeros((28, 28, 1), np.uint8), "label": np.int64(12)},
        {"image": np.zeros((28, 28, 4), np.uint8), "label": np.int64(1)},
    ]
    with _mock(examples=examples):
        dataset = labelled.open_dataset("tfds:mnist", "train", 8, seed=0)
        assert dataset.read(0)[1] == 3
        with pytest.raises(ValueError, match=re.escape("Example 1 of tfds:mnist:train has label 12, outside [0, 10)")):
            dataset.read(1)
        with pytest.raises(ValueError, match=re.escape("Example 2 of tfds:mnist:train is uint8 [28, 28, 4], not a uint8 gray or RGB")):
            dataset.read(2)
    with pytest.raises(ValueError, match="tfds:no_such_dataset is not a tensorflow-datasets dataset"):
        labelled.open_dataset("tfds:no_such_dataset", "train", 8, seed=0)


# --- class folders ------------------------------------------------------------------------------


def _picture(path, colour, shape=(20, 30), seed=0):
    """A noisy image brightest in channel `colour` (None: gray) saved at path."""
    rng = np.random.default_rng(seed)
    if colour is None:
        array = rng.integers(0, 256, shape, dtype=np.uint8)
    else:
        array = rng.integers(0, 60, (*shape, 3), dtype=np.uint8)
        array[..., colour] += 180
    Image.fromarray(array).save(path, quality=95) if str(path).endswith(".jpg") else Image.fromarray(array).save(path)


@pytest.fixture
def folders(tmp_path):
    """cat: 4 images (a JPEG) and a corrupt file; dog: 3 (one wide, one tall); owl: 3 (one gray)."""
    root = tmp_path / "classes"
    for name in COLOURS:
        (root / name).mkdir(parents=True)
    for i in range(3):
        _picture(root / "cat" / f"cat{i}.png", COLOURS["cat"], seed=i)
    _picture(root / "cat" / "cat3.jpg", COLOURS["cat"], seed=3)
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _picture(root / "dog" / "dog0.png", COLOURS["dog"], (40, 12), seed=4)
    _picture(root / "dog" / "dog1.png", COLOURS["dog"], (12, 40), seed=5)
    _picture(root / "dog" / "dog2.png", COLOURS["dog"], seed=6)
    _picture(root / "owl" / "owl0.png", COLOURS["owl"], seed=7)
    _picture(root / "owl" / "owl1.png", COLOURS["owl"], seed=8)
    _picture(root / "owl" / "gray.png", None, seed=9)
    (root / "notes.txt").write_text("files beside the class folders are not classes")
    return root


def _expected(root, size):
    """class -> the sorted bytes of its readable images, cropped as ingest stores them."""
    found = {}
    for name in COLOURS:
        for file in sorted(os.listdir(root / name)):
            try:
                image = media.read_image(str(root / name / file))
            except media.Skip:
                continue
            found.setdefault(name, []).append(labelled.center_crop(image, size).tobytes())
    return {name: sorted(images) for name, images in found.items()}


def _read_all(dataset):
    found = {}
    for i in range(len(dataset)):
        image, label = dataset.read(i)
        found.setdefault(dataset.class_names[label], []).append(image.tobytes())
    return {name: sorted(images) for name, images in found.items()}


def test_class_folders_are_ingested_and_opened(folders, tmp_path):
    out = tmp_path / "out"
    metadata = labelled.ingest_folders(str(folders), str(out), 8, test_fraction=0.34, seed=3, num_threads=2)
    assert metadata["class_names"] == ["cat", "dog", "owl"]
    assert metadata["skipped"] == [{"file": str(folders / "cat" / "broken.png"), "split": metadata["skipped"][0]["split"],
                                    "reason": "cannot be read as an image (Truncated File Read)"}]
    # Held out: round(0.34 * n) of each class's n files: cat 2 of 5, dog 1 of 3, owl 1 of 3.
    train, test = metadata["splits"]["train"], metadata["splits"]["test"]
    assert train["count"] + test["count"] == 10 and [a + b for a, b in zip(train["per_class"], test["per_class"])] == [4, 3, 3]
    assert test["per_class"][1:] == [1, 1] and json.loads((out / labelled.METADATA).read_text()) == metadata

    datasets_ = {split: labelled.open_dataset(str(out), split, 8, seed=0) for split in labelled.SPLITS}
    assert [len(d) for d in datasets_.values()] == [train["count"], test["count"]]
    assert datasets_["train"].class_names == ["cat", "dog", "owl"] and datasets_["train"].num_classes == 3
    read = {split: _read_all(d) for split, d in datasets_.items()}
    everything = {name: sorted(read["train"].get(name, []) + read["test"].get(name, [])) for name in COLOURS}
    assert everything == _expected(folders, 8)  # every readable image, exactly, under its own label.
    for split, classes in read.items():
        for name, images in classes.items():
            assert not set(images) & set(read["test" if split == "train" else "train"].get(name, []))
    assert labelled.open_dataset(str(out), "train", 4, seed=0).read(0)[0].shape == (4, 4, 3)


def test_a_test_folder_gives_the_test_split(folders, tmp_path):
    validation = tmp_path / "validation"
    (validation / "dog").mkdir(parents=True)
    (validation / "owl").mkdir()
    _picture(validation / "dog" / "v0.png", COLOURS["dog"], seed=20)
    _picture(validation / "owl" / "v1.png", COLOURS["owl"], seed=21)
    metadata = labelled.ingest_folders(str(folders), str(tmp_path / "out"), 8, test_root=str(validation), num_threads=1)
    assert metadata["splits"]["test"]["per_class"] == [0, 1, 1] and metadata["splits"]["train"]["per_class"] == [4, 3, 3]
    test = labelled.open_dataset(str(tmp_path / "out"), "test", 8, seed=0)
    assert sorted(test.read(i)[1] for i in range(len(test))) == [1, 2]
    (validation / "fox").mkdir()
    _picture(validation / "fox" / "v2.png", 0)
    with pytest.raises(ValueError, match=re.escape(f"Test class folder {str(validation / 'fox')!r} names no class of")):
        labelled.ingest_folders(str(folders), str(tmp_path / "again"), 8, test_root=str(validation))


def test_class_folder_refusals_name_the_culprit(folders, tmp_path):
    def refused(message, root, out=tmp_path / "out", **kwargs):
        with pytest.raises(ValueError, match=re.escape(message)):
            labelled.ingest_folders(str(root), str(out), 8, **kwargs)

    (tmp_path / "empty").mkdir()
    refused(f"Class folder root {str(tmp_path / 'empty')!r} has no class folders", tmp_path / "empty")
    refused(f"Class folder root {str(tmp_path / 'nowhere')!r} is not a directory", tmp_path / "nowhere")
    (folders / "fox").mkdir()
    refused(f"Class folder {str(folders / 'fox')!r} holds no image files", folders)
    assert not (tmp_path / "out").exists()  # refused before writing anything.
    (folders / "fox" / "fox.png").write_bytes(b"not an image")
    refused(f"Class folder {str(folders / 'fox')!r} has no file that can be read as an image "
            f"({folders / 'fox' / 'fox.png'} cannot be read as an image", folders)
    assert not (tmp_path / "out" / labelled.METADATA).exists()
    os.remove(folders / "fox" / "fox.png")
    os.rmdir(folders / "fox")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("saved")
    refused(f"Directory {str(tmp_path / 'full')!r} already exists and is not empty", folders, tmp_path / "full")
    refused("test_fraction=1.0 must be in [0, 1)", folders, test_fraction=1.0)


def test_bad_records_name_their_shard_and_file(folders, tmp_path):
    out = tmp_path / "out"
    labelled.ingest_folders(str(folders), str(out), 8, num_threads=2)
    metadata = json.loads((out / labelled.METADATA).read_text())
    # Metadata that lists fewer classes than the records use: owl's label 2 is out of range.
    (out / labelled.METADATA).write_text(json.dumps({**metadata, "class_names": ["cat", "dog"]}))
    dataset = labelled.open_dataset(str(out), "train", 8, seed=0)
    shard = grain.sources.ArrayRecordDataSource([str(out / metadata["splits"]["train"]["files"][0])])
    labels = [msgpack.unpackb(shard[i], raw=False)["label"] for i in range(len(shard))]
    owl = labels.index(2)
    shard = str(out / "train" / "train-00000.array_record")
    with pytest.raises(ValueError, match=re.escape(f"Record {owl} of shard {shard!r} (from ")
                       + r".*owl.*" + re.escape("has label 2, outside [0, 2)")):
        dataset.read(owl)

    # A record whose image has 4 channels, and one whose bytes are not msgpack, written by hand.
    bad = tmp_path / "bad"
    (bad / "train").mkdir(parents=True)
    writer = records.ShardWriter(str(bad / "train"), "train", 16)
    frames = {"encoding": "raw", "shape": [1, 4, 4, 4], "data": [bytes(64)]}
    writer.write(msgpack.packb({"id": "rgba.png", "label": 0, "image": frames}, use_bin_type=True))
    writer.write(b"\xc1 not msgpack")
    good = records.encode_frames(np.zeros((1, 8, 8, 3), np.uint8), "png")
    writer.write(msgpack.packb({"id": "good.png", "label": 1, "image": good}, use_bin_type=True))
    files = [f"train/{name}" for name in writer.close()]
    splits = {"train": {"files": files, "count": 3}, "test": {"files": [], "count": 0}}
    (bad / labelled.METADATA).write_text(json.dumps({"version": 1, "size": 8, "class_names": ["a", "b"], "splits": splits}))
    dataset = labelled.open_dataset(str(bad), "train", 8, seed=0)
    shard = str(bad / "train" / "train-00000.array_record")
    with pytest.raises(ValueError, match=re.escape(f"Record 0 of shard {shard!r} (from 'rgba.png') is bad: its image: "
                                                   "shape [1, 4, 4, 4] has 4 channels, not 3.")):
        dataset.read(0)
    with pytest.raises(ValueError, match=re.escape(f"Record 1 of shard {shard!r} is not msgpack")):
        dataset.read(1)
    assert dataset.read(2)[1] == 1
    with pytest.raises(ValueError, match=re.escape(f"Directory {str(bad)!r} has no test images")):
        labelled.open_dataset(str(bad), "test", 8, seed=0)

    # In training both bad records are passed over for the next good one, and counted.
    images = labelled.LabelledImages(dataset, seed=0, flip_prob=0.0, cond_drop_prob=0.0, num_classes=2)
    example = images[0]
    assert int(example["skipped"]) == 2 and int(example["label"]) == 1
    assert int(images[2]["skipped"]) == 0 and int(images[4]["skipped"]) == 1  # 4: record 1, then 2.
    # Pickled into a grain worker process, the source reads the same (its shards reopen there).
    again = pickle.loads(pickle.dumps(images))
    np.testing.assert_array_equal(again[5]["target"], images[5]["target"])


def test_open_dataset_refusals(tmp_path):
    with pytest.raises(ValueError, match="Labelled dataset 'pictures' is not 'digits', 'tfds:NAME' or a directory"):
        labelled.open_dataset("pictures", "train", 8, seed=0)
    with pytest.raises(ValueError, match=f"Directory {str(tmp_path)!r} has no labels.json"):
        labelled.open_dataset(str(tmp_path), "train", 8, seed=0)
    with pytest.raises(ValueError, match="Split 'val' must be one of train, test"):
        labelled.open_dataset("digits", "val", 8, seed=0)
    with pytest.raises(ValueError, match="Image size 0 must be a positive integer"):
        labelled.open_dataset("digits", "train", 0, seed=0)


def test_command_line_ingests_class_folders(folders, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lavin_jax.data.ingest", "--config=configs/tiny.py", f"--classes={folders}",
               f"--out={out}", "--test_fraction=0.34", "--config.data.ingest.size=8", "--config.data.ingest.encoding=raw"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "test images of 3 classes" in done.stdout and "skipped 1 files" in done.stdout
    assert labelled.open_dataset(str(out), "test", 8, seed=0).num_classes == 3
    both = subprocess.run(command + ["--source=folder:/x"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert both.returncode == 1 and "Error: --classes writes labelled images and --source pairs" in both.stderr


# --- training examples ------------------------------------------------------------------------


class Tiny(labelled.Dataset):
    """n 4x4 images, image i an asymmetric ramp plus 10 * i, label i % 3; indices in `bad` raise
    BadRecord."""

    def __init__(self, n=5, bad=()):
        self.name, self.size, self.class_names = "tiny", 4, ["a", "b", "c"]
        self.n, self.bad = n, set(bad)

    def __len__(self):
        return self.n

    def _example(self, index):
        if index in self.bad:
            raise records.BadRecord(f"Record {index} of tiny is bad.")
        ramp = np.arange(16, dtype=np.uint8).reshape(4, 4) * 4
        return np.repeat((ramp + 10 * index)[..., None], 3, axis=-1), index % 3, f"Record {index} of tiny"


def _unflipped(dataset, record):
    return dataset.read(record)[0][None].astype(np.float32) / 127.5 - 1.0


def test_labelled_images_flip_and_drop_at_their_rates_per_seed_and_index():
    dataset = Tiny()
    images = labelled.LabelledImages(dataset, seed=7, flip_prob=0.5, cond_drop_prob=0.25, num_classes=3)
    same = labelled.LabelledImages(Tiny(), seed=7, flip_prob=0.5, cond_drop_prob=0.25, num_classes=3)
    other = labelled.LabelledImages(Tiny(), seed=8, flip_prob=0.5, cond_drop_prob=0.25, num_classes=3)
    flips = drops = 0
    differs = False
    for i in range(400):
        example = images[i]
        assert example["target"].shape == (1, 4, 4, 3) and example["target"].dtype == np.float32
        assert example["label"].dtype == np.int32 and example["label"].shape == () and int(example["skipped"]) == 0
        assert -1.0 <= example["target"].min() and example["target"].max() <= 1.0
        for key, value in same[i].items():
            np.testing.assert_array_equal(value, example[key])
        differs |= any(not np.array_equal(v, example[k]) for k, v in other[i].items())
        plain = _unflipped(dataset, i % 5)  # index i reads record i % len.
        flipped = np.array_equal(example["target"], plain[:, :, ::-1])
        assert flipped or np.array_equal(example["target"], plain)
        dropped = int(example["label"]) == 3  # the null class: num_classes.
        assert dropped or int(example["label"]) == (i % 5) % 3
        flips, drops = flips + flipped, drops + dropped
    assert 160 <= flips <= 240 and 70 <= drops <= 130  # 200 and 100 expected; 4 standard deviations.
    assert differs
    never = labelled.LabelledImages(dataset, seed=7, flip_prob=0.0, cond_drop_prob=0.0, num_classes=10)
    assert all(np.array_equal(never[i]["target"], _unflipped(dataset, i % 5)) and never[i]["label"] == (i % 5) % 3
               for i in range(20))
    # As the pipeline reads a source: batches of consecutive examples.
    batch = grain.MapDataset.source(images).batch(4)[1]
    assert batch["target"].shape == (4, 1, 4, 4, 3) and batch["label"].shape == (4,)
    np.testing.assert_array_equal(batch["label"], [images[i]["label"] for i in range(4, 8)])


def test_labelled_images_skip_bad_records_and_shuffle_by_epoch():
    dataset = Tiny(bad={1, 2})
    images = labelled.LabelledImages(dataset, seed=0, flip_prob=0.0, cond_drop_prob=0.0, num_classes=3)
    example = images[6]  # record 1 and 2 bad: record 3 read instead.
    assert int(example["skipped"]) == 2 and int(example["label"]) == 0
    np.testing.assert_array_equal(example["target"], _unflipped(dataset, 3))
    assert int(images[0]["skipped"]) == 0
    broken = labelled.LabelledImages(Tiny(bad=range(5)), seed=0, flip_prob=0.0, cond_drop_prob=0.0, num_classes=3)
    with pytest.raises(RuntimeError, match="tiny gave 32 bad records in a row"):
        broken[0]

    dataset = Tiny(n=6)
    shuffled = labelled.LabelledImages(dataset, seed=0, flip_prob=0.0, cond_drop_prob=0.0, num_classes=3, shuffle=True)
    epochs = [[int(np.round((shuffled[e * 6 + i]["target"][0, 0, 0, 0] + 1) * 127.5)) // 10 for i in range(6)]
              for e in range(3)]
    assert all(sorted(epoch) == list(range(6)) for epoch in epochs)  # each epoch reads every record once.
    assert len({tuple(epoch) for epoch in epochs}) > 1

    with pytest.raises(ValueError, match="num_classes=2 is fewer than the 3 classes of tiny"):
        labelled.LabelledImages(dataset, seed=0, flip_prob=0.0, cond_drop_prob=0.0, num_classes=2)
    with pytest.raises(ValueError, match=r"cond_drop_prob=1.5 must be in \[0, 1\]"):
        labelled.LabelledImages(dataset, seed=0, flip_prob=0.0, cond_drop_prob=1.5, num_classes=3)
