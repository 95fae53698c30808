import importlib.util
import io
import json
import os
import pickle
import re
import tarfile

import av
import msgpack
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core import dataset_info

from lavin_jax.data import captioned, labelled, media, records

SIZE = 16


def _picture(path, seed, shape=(20, 28)):
    """A random RGB image saved at path, in the format its extension names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path)


def _clip(path, brightness, shape=(12, 20)):
    """An mpeg4 video whose frame k is a flat gray of brightness[k] (flat frames survive mpeg4)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width, stream.pix_fmt = *shape, "yuv420p"
        for level in brightness:
            frame = av.VideoFrame.from_ndarray(np.full((*shape, 3), level, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _levels(clip):
    return np.round(clip.mean(axis=(1, 2, 3)) / 10).astype(int).tolist()


def _all(dataset):
    return [dataset.read(i) for i in range(len(dataset))]


def _one_sentence(error):
    """A refusal is one sentence: a full stop at its end and none before a new sentence."""
    message = str(error.value)
    assert message.endswith(".") and not re.search(r"\.\s+[A-Z]", message), message


# --- folders --------------------------------------------------------------------------------------


@pytest.fixture
def images(tmp_path):
    """A folder of 11 images in nested folders: 9 readable with captions (PNG, JPEG, WebP), one
    without a caption and one with a caption whose bytes are not an image; captions by path."""
    root = tmp_path / "images"
    expected = {}
    for i in range(9):
        path = root / ("a/b" if i % 2 else "c") / f"x{i}.{('png', 'jpg', 'webp')[i % 3]}"
        _picture(path, i)
        (path.with_suffix(".txt")).write_text(f"  picture number {i}\n")
        expected[str(path)] = f"picture number {i}"
    _picture(root / "lonely.png", 20)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "broken.txt").write_text("a broken picture")
    (root / "notes.txt").write_text("text beside no image")
    return root, expected


def test_folder_images_read_with_their_captions_and_split_by_seed(images, caplog):
    root, expected = images
    train, test = (captioned.open_captioned(str(root), split, SIZE, seed=0) for split in captioned.SPLITS)
    # 10 captioned images of 11; round(0.2 * 10) = 2 held out.
    assert (len(train), len(test), train.uncaptioned) == (8, 2, 1)
    assert f"1 of the 11 images of {root} have no caption and are left out." in caplog.text
    assert not set(train.files) & set(test.files)
    for dataset in (train, test):
        for index, path in enumerate(dataset.files):
            if path.endswith("broken.png"):
                message = f"{path!r} (example {index} of {dataset.name}) cannot be read: the file cannot be read as an image"
                with pytest.raises(records.BadRecord, match=re.escape(message)):
                    dataset.read(index)
                continue
            frames, caption = dataset.read(index)
            assert frames.shape == (1, SIZE, SIZE, 3) and frames.dtype == np.uint8
            np.testing.assert_array_equal(frames[0], labelled.center_crop(media.read_image(path), SIZE))
            assert caption == expected[path]
    assert captioned.open_captioned(str(root), "test", SIZE, seed=0).files == test.files  # the same seed, the same split.
    held_out = {tuple(captioned.open_captioned(str(root), "test", SIZE, seed=seed).files) for seed in range(6)}
    assert len(held_out) > 1
    assert len(captioned.open_captioned(str(root), "test", SIZE, seed=0, test_fraction=0.5)) == 5
    with pytest.raises(IndexError, match=re.escape(f"Example {len(test)} of {root}:test is not in")):
        test.read(len(test))
    # Pickled into a grain worker process, the dataset reads the same.
    good = next(i for i, path in enumerate(train.files) if not path.endswith("broken.png"))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(train)).read(good)[0], train.read(good)[0])


def test_train_and_test_folders_are_the_split(tmp_path):
    for split, count in (("train", 3), ("test", 1)):
        for i in range(count):
            _picture(tmp_path / split / f"{i}.png", i)
            (tmp_path / split / f"{i}.txt").write_text(f"{split} {i}")
    test = captioned.open_captioned(str(tmp_path), "test", SIZE, seed=0)
    assert [caption for _, caption in _all(test)] == ["test 0"]
    train = captioned.open_captioned(str(tmp_path), "train", SIZE, seed=5)
    assert sorted(caption for _, caption in _all(train)) == ["train 0", "train 1", "train 2"]
    with pytest.raises(ValueError, match=re.escape(f"Folder {str(tmp_path)!r} has its own train/ and test/ folders; "
                                                   "test_fraction=0.3 applies to folders without them.")) as error:
        captioned.open_captioned(str(tmp_path), "train", SIZE, seed=0, test_fraction=0.3)
    _one_sentence(error)


def test_a_split_without_captioned_images_and_a_caption_gone_are_named(tmp_path):
    _picture(tmp_path / "train" / "a.png", 0)
    (tmp_path / "train" / "a.txt").write_text("a")
    (tmp_path / "test").mkdir()
    with pytest.raises(ValueError, match=re.escape(f"Folder {str(tmp_path)!r} has no captioned test images of its 1.")) as error:
        captioned.open_captioned(str(tmp_path), "test", SIZE, seed=0)
    _one_sentence(error)
    train = captioned.open_captioned(str(tmp_path), "train", SIZE, seed=0)
    os.remove(tmp_path / "train" / "a.txt")
    with pytest.raises(records.BadRecord, match=re.escape(f"{str(tmp_path / 'train' / 'a.png')!r} (example 0 of {tmp_path}:train) "
                                                          f"has a caption file {str(tmp_path / 'train' / 'a.txt')!r} that cannot be read")):
        train.read(0)


def test_video_folder_windows_share_their_video_caption(tmp_path):
    _clip(tmp_path / "train" / "a.mp4", [10 * k for k in range(9)])
    (tmp_path / "train" / "a.txt").write_text("a brightening gray\n")
    _clip(tmp_path / "train" / "deep" / "b.mp4", [200 - 10 * k for k in range(4)])
    (tmp_path / "train" / "deep" / "b.txt").write_text("a darkening gray")
    _clip(tmp_path / "train" / "c.mp4", [0] * 8)  # no caption: left out.
    _clip(tmp_path / "test" / "d.mp4", [50] * 4)
    (tmp_path / "test" / "d.txt").write_text("a flat gray")
    train = captioned.open_captioned(str(tmp_path), "train", 8, frames=2, stride=2, seed=0)
    # Windows of 4 frames: a.mp4 0-3 and 4-7, b.mp4 0-3; c.mp4 has no caption.
    assert len(train) == 3 and train.uncaptioned == 1
    read = _all(train)
    assert [caption for _, caption in read] == ["a brightening gray"] * 2 + ["a darkening gray"]
    assert [_levels(clip) for clip, _ in read] == [[0, 2], [4, 6], [20, 18]]
    assert read[0][0].shape == (2, 8, 8, 3) and read[0][0].dtype == np.uint8
    test = captioned.open_captioned(str(tmp_path), "test", 8, frames=4, seed=0)
    assert [(_levels(clip), caption) for clip, caption in _all(test)] == [([5] * 4, "a flat gray")]
    (tmp_path / "train" / "a.txt").write_text(" \n")
    with pytest.raises(records.BadRecord, match=re.escape(f"{str(tmp_path / 'train' / 'a.mp4')!r} (example 1 of "
                                                          f"{tmp_path}:train) has an empty caption.")):
        train.read(1)
    with pytest.raises(ValueError, match=re.escape(f"Folder {str(tmp_path)!r} has no captioned images (.png, .jpg, "
                                                   ".jpeg, .webp files with a .txt caption beside them); its 3 captioned "
                                                   "videos are read with frames > 1.")) as error:
        captioned.open_captioned(str(tmp_path), "train", 8, seed=0)
    _one_sentence(error)
    with pytest.raises(ValueError, match=re.escape("test_fraction=0.5 applies to images; a video folder holds out")):
        captioned.open_captioned(str(tmp_path), "train", 8, frames=2, seed=0, test_fraction=0.5)
    # A split whose long video has no caption and whose captioned video is too short has no clip.
    other = tmp_path / "other"
    _clip(other / "train" / "long.mp4", [0] * 6)
    _clip(other / "train" / "short.mp4", [0] * 2)
    (other / "train" / "short.txt").write_text("too short")
    (other / "test").mkdir()
    with pytest.raises(ValueError, match=re.escape(f"Folder {str(other)!r} has no captioned train video of at least 6 "
                                                   "frames that decodes.")) as error:
        captioned.open_captioned(str(other), "train", 8, frames=3, stride=2, seed=0)
    _one_sentence(error)


# --- tar shards -----------------------------------------------------------------------------------


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _encoded(seed, format):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (18, 24, 3), dtype=np.uint8)).save(buffer, format=format)
    return buffer.getvalue()


@pytest.fixture
def shards(tmp_path):
    """Two webdataset shards: 6 captioned images (PNG, JPEG, WebP; one under a folder; one whose
    bytes are broken), one image without a caption, members that are no sample's picture."""
    data = {}  # key -> (image bytes, caption)
    with tarfile.open(tmp_path / "shard-000.tar", "w") as tar:
        for key, format, extension in (("000", "PNG", "png"), ("001", "JPEG", "jpg"), ("002", "WEBP", "webp"),
                                       ("part/003", "PNG", "png")):
            data[key] = (_encoded(len(data), format), f"caption of {key}")
            _add(tar, f"{key}.txt", data[key][1].encode())
            _add(tar, f"{key}.{extension}", data[key][0])
        _add(tar, "004.png", _encoded(9, "PNG"))
        _add(tar, "004.json", b"{}")
        _add(tar, "005.seg.png", _encoded(10, "PNG"))  # extension seg.png: not a picture.
        _add(tar, "005.txt", b"a caption without a picture")
    with tarfile.open(tmp_path / "shard-001.tar", "w") as tar:
        data["006"] = (_encoded(11, "JPEG"), "caption of 006")
        _add(tar, "006.jpeg", data["006"][0])
        _add(tar, "006.txt", data["006"][1].encode())
        data["007"] = (b"\x89PNG broken", "caption of 007")
        _add(tar, "007.png", data["007"][0])
        _add(tar, "007.txt", data["007"][1].encode())
    return tmp_path, data


def test_tar_shards_group_members_into_samples_by_key(shards):
    root, data = shards
    spec = f"tar:{root}/shard-*.tar"
    train, test = (captioned.open_captioned(spec, split, SIZE, seed=0) for split in captioned.SPLITS)
    # 6 captioned samples with a picture (004 has no caption); round(0.2 * 6) = 1 held out.
    assert (len(train), len(test), train.uncaptioned) == (5, 1, 1)
    for dataset in (train, test):
        for index, (shard, key, extension, _, _) in enumerate(dataset.samples):
            if key == "007":
                where = f"Sample '007' of shard {str(root / 'shard-001.tar')!r} (example {index} of {dataset.name})"
                with pytest.raises(records.BadRecord, match=re.escape(f"{where} cannot be read: its png member cannot be "
                                                                      "read as an image (cannot identify image file '007.png')")):
                    dataset.read(index)
                continue
            frames, caption = dataset.read(index)
            assert caption == data[key][1] and frames.shape == (1, SIZE, SIZE, 3)
            with Image.open(io.BytesIO(data[key][0])) as image:
                np.testing.assert_array_equal(frames[0], labelled.center_crop(np.asarray(image.convert("RGB")), SIZE))
    assert {key for _, key, *_ in train.samples + test.samples} == set(data)


def test_tar_shards_of_videos_give_a_clip_a_sample(tmp_path):
    _clip(tmp_path / "v.mp4", [10 * k for k in range(7)])
    _clip(tmp_path / "w.mp4", [100, 110])
    with tarfile.open(tmp_path / "clips.tar", "w") as tar:
        for key, video in (("v", "v.mp4"), ("w", "w.mp4"), ("x", "v.mp4")):
            _add(tar, f"{key}.mp4", (tmp_path / video).read_bytes())
            _add(tar, f"{key}.txt", f"video {key}".encode())
    both = [captioned.open_captioned(f"tar:{tmp_path}/clips.tar", split, 8, frames=3, stride=2, seed=0) for split in captioned.SPLITS]
    read = {}
    for dataset in both:
        for index, (_, key, *_) in enumerate(dataset.samples):
            if key == "w":  # 2 frames: too short for frames 0, 2 and 4.
                with pytest.raises(records.BadRecord, match="has a video of fewer than the 5 frames a clip of 3 every 2 frames needs"):
                    dataset.read(index)
            else:
                read[key] = dataset.read(index)
    assert {key: (_levels(clip), caption) for key, (clip, caption) in read.items()} == {
        "v": ([0, 2, 4], "video v"), "x": ([0, 2, 4], "video x")}


def test_tar_refusals_name_the_shard(tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"tar:{tmp_path}/*.tar matches no file.")) as error:
        captioned.open_captioned(f"tar:{tmp_path}/*.tar", "train", SIZE, seed=0)
    _one_sentence(error)
    (tmp_path / "zipped.tar").write_bytes(b"PK\x03\x04 not a tar at all" * 40)
    with pytest.raises(ValueError, match=re.escape(f"Shard {str(tmp_path / 'zipped.tar')!r} is not an uncompressed tar file")) as error:
        captioned.open_captioned(f"tar:{tmp_path}/*.tar", "train", SIZE, seed=0)
    _one_sentence(error)
    os.remove(tmp_path / "zipped.tar")
    with tarfile.open(tmp_path / "one.tar", "w") as tar:
        _add(tar, "000.png", _encoded(0, "PNG"))
        _add(tar, "000.txt", b"the only caption")
    with pytest.raises(ValueError, match=re.escape(f"tar:{tmp_path}/*.tar has no captioned train samples of its 1.")) as error:
        captioned.open_captioned(f"tar:{tmp_path}/*.tar", "train", SIZE, seed=0)
    _one_sentence(error)
    test = captioned.open_captioned(f"tar:{tmp_path}/*.tar", "test", SIZE, seed=0)
    with open(tmp_path / "one.tar", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(records.BadRecord, match=re.escape(f"Sample '000' of shard {str(tmp_path / 'one.tar')!r} (example 0 of "
                                                          f"{test.name}) cannot be read: its shard ends before it")):
        test.read(0)
    os.remove(tmp_path / "one.tar")
    with tarfile.open(tmp_path / "bare.tar", "w") as tar:
        _add(tar, "000.png", _encoded(0, "PNG"))
    with pytest.raises(ValueError, match=re.escape(f"tar:{tmp_path}/*.tar has no sample with a txt caption and an image "
                                                   "member (png, jpg, jpeg, webp).")) as error:
        captioned.open_captioned(f"tar:{tmp_path}/*.tar", "train", SIZE, seed=0)
    _one_sentence(error)


# --- tfds -----------------------------------------------------------------------------------------


def _coco_captions_metadata(data_dir, examples=3, splits=("train", "val", "test", "restval")):
    """coco_captions' metadata as `tfds build` writes it beside the prepared shards: its features
    (as coco_captions.py declares them) and the Karpathy splits. Its builder's code cannot run
    here (coco.py's features name tf.int64, and TensorFlow is not installed), so tfds mocks the
    dataset from these files, as it reads a prepared copy."""
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="jpeg"),
        "image/filename": tfds.features.Text(),
        "image/id": np.int64,
        "objects": tfds.features.Sequence({"id": np.int64, "area": np.int64, "bbox": tfds.features.BBoxFeature(),
                                           "label": tfds.features.ClassLabel(num_classes=80), "is_crowd": np.bool_}),
        "captions": tfds.features.Sequence({"text": np.str_, "id": np.int64}),
    })
    directory = data_dir / "coco_captions" / "2014" / "1.1.0"
    directory.mkdir(parents=True)
    splits = [tfds.core.SplitInfo(name=split, shard_lengths=[examples], num_bytes=0, filename_template=tfds.core.ShardedFileTemplate(
        data_dir=directory, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}", dataset_name="coco_captions",
        split=split, filetype_suffix="array_record")) for split in splits]
    identity = dataset_info.DatasetIdentity(name="coco_captions", version=tfds.core.Version("1.1.0"), data_dir=str(directory),
                                            module_name="tensorflow_datasets.object_detection.coco_captions", config_name="2014")
    info = tfds.core.DatasetInfo(builder=identity, features=features, split_dict=tfds.core.SplitDict(splits))
    info.set_file_format("array_record")
    info.write_to_directory(directory)


def _mock(policy, data_dir=None, examples=None):
    custom = {} if examples is None else {"as_data_source_fn": lambda builder, split, **kwargs: examples}
    return tfds.testing.mock_data(num_examples=3, policy=policy, data_dir=data_dir, **custom)


def test_coco_captions_read_from_its_prepared_files_one_caption_an_image(tmp_path):
    _coco_captions_metadata(tmp_path)
    files = tfds.testing.MockPolicy.USE_FILES
    with _mock(files, tmp_path):
        for split in captioned.SPLITS:
            dataset = captioned.open_captioned("tfds:coco_captions", split, SIZE, seed=0)
            assert len(dataset) == 3 and dataset.name == f"tfds:coco_captions:{split}"  # 'test': Karpathy's test.
            assert (dataset.image, dataset.caption, dataset.several) == ("image", ("captions", "text"), True)
            frames, caption = dataset.read(2)
            assert frames.shape == (1, SIZE, SIZE, 3) and frames.dtype == np.uint8 and isinstance(caption, str)
    image = np.random.default_rng(0).integers(0, 256, (24, 30, 3), dtype=np.uint8)
    texts = [f"caption {k} " for k in range(5)]
    examples = [{"image": image, "captions": {"text": np.array(texts), "id": np.arange(5)}}] * 40
    examples[3] = {"image": image, "captions": {"text": np.array([], str), "id": np.array([], np.int64)}}
    with _mock(files, tmp_path, examples):
        test = captioned.open_captioned("tfds:coco_captions", "test", SIZE, seed=0)
        assert test.read(0)[1] == "caption 0"  # 'test': the first.
        np.testing.assert_array_equal(test.read(0)[0][0], labelled.center_crop(image, SIZE))
        with pytest.raises(records.BadRecord, match=re.escape("Example 3 of tfds:coco_captions:test has no caption in captions/text.")):
            test.read(3)
        for seed in (0, 1):
            train = captioned.open_captioned("tfds:coco_captions", "train", SIZE, seed=seed)
            picks = [train.read(i)[1] for i in (0, 1, 2, 4, 5)]
            draws = [np.random.default_rng((seed, captioned.CAPTION_STREAM, i)).integers(5) for i in (0, 1, 2, 4, 5)]
            assert picks == [f"caption {k}" for k in draws]
        assert len({train.read(i)[1] for i in range(4, 40)}) == 5  # 'train': any of the five.


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="with TensorFlow, coco_captions' code runs")
def test_a_split_the_prepared_dataset_lacks_is_named(tmp_path):
    _coco_captions_metadata(tmp_path, splits=("val", "test"))
    with _mock(tfds.testing.MockPolicy.USE_FILES, tmp_path), pytest.raises(
            ValueError, match=re.escape("tfds:coco_captions has no train split to read as 'train'; it has val, test.")) as error:
        captioned.open_captioned("tfds:coco_captions", "train", SIZE, seed=0)
    _one_sentence(error)


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="with TensorFlow, coco_captions' code runs")
def test_a_dataset_whose_code_needs_tensorflow_must_be_prepared(tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"tfds:coco_captions is not prepared in data_dir {str(tmp_path)!r}, and "
                                                   "its builder's code cannot run here (")) as error:
        captioned.open_captioned("tfds:coco_captions", "train", SIZE, seed=0, tfds_data_dir=str(tmp_path))
    assert "No module named 'tensorflow'); prepare it with: tfds build coco_captions" in str(error.value)
    _one_sentence(error)


def test_a_dataset_with_an_image_and_a_caption_feature_needs_no_table_entry():
    image = np.zeros((10, 12, 1), np.uint8)
    examples = [{"image": image, "caption": "a diagram"}, {"image": image, "caption": b"\xff\xfe"},
                {"image": np.zeros((10, 12, 4), np.uint8), "caption": "four channels"}, {"image": image},
                {"image": image, "caption": 7}]
    with _mock(tfds.testing.MockPolicy.USE_CODE, examples=examples):
        dataset = captioned.open_captioned("tfds:ai2dcaption", "train", 8, seed=0)
        assert (dataset.image, dataset.caption, dataset.several) == ("image", ("caption",), False)
        frames, caption = dataset.read(0)
        assert caption == "a diagram" and frames.shape == (1, 8, 8, 3) and (frames == 0).all()
        with pytest.raises(records.BadRecord, match=re.escape("Example 1 of tfds:ai2dcaption:train has a caption that is not UTF-8 text")):
            dataset.read(1)
        with pytest.raises(records.BadRecord, match=re.escape("Example 2 of tfds:ai2dcaption:train cannot be used (An image is uint8 "
                                                              "[10, 12, 4]; uint8 [H, W], [H, W, 1] or [H, W, 3] is needed).")):
            dataset.read(2)
        with pytest.raises(records.BadRecord, match=re.escape("Example 3 of tfds:ai2dcaption:train cannot be decoded ('caption').")):
            dataset.read(3)
        with pytest.raises(records.BadRecord, match=re.escape("Example 4 of tfds:ai2dcaption:train has caption 7, not text.")):
            dataset.read(4)


@pytest.mark.parametrize("name, message", [
    ("mnist", "tfds:mnist has no text feature named for captions (caption, description, prompt, text); its text features: none."),
    ("cifar10", "tfds:cifar10 has no text feature named for captions (caption, description, prompt, text); its text features: id."),
])
def test_tfds_datasets_without_captions_are_refused(name, message):
    with _mock(tfds.testing.MockPolicy.USE_CODE), pytest.raises(ValueError, match=re.escape(message)) as error:
        captioned.open_captioned(f"tfds:{name}", "train", 8, seed=0)
    _one_sentence(error)


def test_feature_finders_name_what_they_found():
    text, image = tfds.features.Text(), tfds.features.Image()
    with pytest.raises(ValueError, match=re.escape("tfds:words needs one Image feature (or one named 'image'); it has caption.")) as error:
        captioned.image_feature("words", {"caption": text})
    _one_sentence(error)
    assert captioned.image_feature("two", {"image": image, "depth": tfds.features.Image()}) == "image"
    with pytest.raises(ValueError, match=re.escape("tfds:two has several caption features (caption, alt/caption); "
                                                   "which to read is not known.")) as error:
        captioned.caption_feature("two", tfds.features.FeaturesDict({"caption": text, "alt": {"caption": text}}))
    _one_sentence(error)
    assert captioned.caption_feature("described", {"description": tfds.features.Sequence(text), "url": text}) == (("description",), True)


# --- ingest ---------------------------------------------------------------------------------------


def test_ingested_examples_read_back_as_the_source_reads_them(images, tmp_path):
    root, _ = images
    out = tmp_path / "out"
    metadata = captioned.ingest_captions(str(root), str(out), SIZE, seed=3, encoding="png", shard_size=3, num_threads=2)
    sources = {split: captioned.open_captioned(str(root), split, SIZE, seed=3) for split in captioned.SPLITS}
    assert [s["reason"] for s in metadata["skipped"]] == [
        f"{str(root / 'broken.png')!r} (example {sources[s['split']].files.index(str(root / 'broken.png'))} of "
        f"{root}:{s['split']}) cannot be read: the file cannot be read as an image (Truncated File Read)."
        for s in metadata["skipped"]]
    for split, source in sources.items():
        ingested = captioned.open_captioned(str(out), split, SIZE, seed=0)
        good = [source.read(i) for i, path in enumerate(source.files) if not path.endswith("broken.png")]
        assert len(ingested) == len(good) == metadata["splits"][split]["count"]
        for (frames, caption), (again, same) in zip(good, _all(ingested)):
            np.testing.assert_array_equal(again, frames)
            assert same == caption
    assert metadata["splits"]["train"]["files"][:2] == ["train/train-00000.array_record", "train/train-00001.array_record"]
    assert metadata["uncaptioned"] == 1
    with pytest.raises(ValueError, match=re.escape(f"Directory {str(out)!r} holds examples of frames=1, stride=1; they "
                                                   "cannot be read with frames=2, stride=1.")) as error:
        captioned.open_captioned(str(out), "train", SIZE, frames=2, seed=0)
    _one_sentence(error)
    with pytest.raises(ValueError, match=re.escape(f"Directory {str(out)!r} already exists and is not empty")):
        captioned.ingest_captions(str(root), str(out), SIZE)


def test_ingested_clips_read_back_as_the_folder_reads_them(tmp_path):
    for name, levels in (("a", range(0, 80, 10)), ("b", range(200, 120, -10)), ("c", range(0, 40, 10))):
        _clip(tmp_path / "videos" / f"{name}.mp4", list(levels))
        (tmp_path / "videos" / f"{name}.txt").write_text(f"video {name}")
    out = str(tmp_path / "out")
    captioned.ingest_captions(str(tmp_path / "videos"), out, 8, frames=2, stride=2, encoding="raw", num_threads=1)
    for split in captioned.SPLITS:
        source = _all(captioned.open_captioned(str(tmp_path / "videos"), split, 8, frames=2, stride=2, seed=0))
        ingested = _all(captioned.open_captioned(out, split, 8, frames=2, stride=2, seed=0))
        assert [c for _, c in ingested] == [c for _, c in source] and len(source) >= 1
        for (clip, _), (again, _) in zip(source, ingested):
            np.testing.assert_array_equal(again, clip)


def test_bad_ingested_records_name_their_shard(tmp_path):
    (tmp_path / "train").mkdir()
    writer = records.ShardWriter(str(tmp_path / "train"), "train", 2)
    writer.write(b"\xc1 not msgpack")
    writer.write(msgpack.packb({"id": "x.png", "caption": "", "frames": records.encode_frames(np.zeros((1, 4, 4, 3), np.uint8), "raw")}))
    writer.write(msgpack.packb({"id": "y.png", "caption": "fine", "frames": {"encoding": "raw", "shape": [1, 4, 4, 3], "data": [b"x"]}}))
    files = [f"train/{name}" for name in writer.close()]
    splits = {"train": {"files": files, "count": 3}, "test": {"files": [], "count": 0}}
    (tmp_path / captioned.METADATA).write_text(json.dumps({"version": 1, "size": 4, "frames": 1, "stride": 1, "shard_size": 2,
                                                           "splits": splits}))
    dataset = captioned.open_captioned(str(tmp_path), "train", 4, seed=0)
    first, second = (str(tmp_path / "train" / f"train-0000{k}.array_record") for k in (0, 1))
    with pytest.raises(records.BadRecord, match=re.escape(f"Record 0 of shard {first!r} is not msgpack")):
        dataset.read(0)
    with pytest.raises(records.BadRecord, match=re.escape(f"Record 1 of shard {first!r} (from 'x.png') has an empty caption.")):
        dataset.read(1)
    with pytest.raises(records.BadRecord, match=re.escape(f"Record 0 of shard {second!r} (from 'y.png') is bad: its frames: "
                                                          "a raw frame has 1 bytes, not 4*4*3.")):
        dataset.read(2)
    with pytest.raises(ValueError, match=re.escape(f"Directory {str(tmp_path)!r} has no test examples.")) as error:
        captioned.open_captioned(str(tmp_path), "test", 4, seed=0)
    _one_sentence(error)


def test_metadata_and_shards_that_disagree_are_named(tmp_path):
    writer = records.ShardWriter(str(tmp_path), "train", 8)
    frames = records.encode_frames(np.zeros((2, 4, 4, 3), np.uint8), "raw")
    writer.write(msgpack.packb(["a", "list"]))
    writer.write(msgpack.packb({"id": "clip.mp4", "caption": "two frames", "frames": frames}))
    shard = str(tmp_path / writer.close()[0])
    splits = {"train": {"files": ["train-00000.array_record"], "count": 2}, "test": {"files": ["gone.array_record"], "count": 1}}
    metadata = {"version": 1, "size": 4, "frames": 1, "stride": 1, "shard_size": 8, "splits": splits}
    (tmp_path / captioned.METADATA).write_text(json.dumps(metadata))
    dataset = captioned.open_captioned(str(tmp_path), "train", 4, seed=0)
    with pytest.raises(records.BadRecord, match=re.escape(f"Record 0 of shard {shard!r} is not a dict with 'id', 'caption' and "
                                                          "'frames'.")):
        dataset.read(0)
    with pytest.raises(records.BadRecord, match=re.escape(f"Record 1 of shard {shard!r} (from 'clip.mp4') has 2 frames, not 1.")):
        dataset.read(1)
    with pytest.raises(ValueError, match=re.escape(f"Shard {str(tmp_path / 'gone.array_record')!r} named by captions.json of "
                                                   f"{str(tmp_path)!r} is missing.")) as error:
        captioned.open_captioned(str(tmp_path), "test", 4, seed=0)
    _one_sentence(error)
    splits["train"]["count"] = 3
    (tmp_path / captioned.METADATA).write_text(json.dumps(metadata))
    message = f"captions.json says {tmp_path}:train has 3 examples, but its shards hold 2."
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        captioned.open_captioned(str(tmp_path), "train", 4, seed=0).read(0)
    _one_sentence(error)
    (tmp_path / captioned.METADATA).write_text(json.dumps({**metadata, "version": 2}))
    with pytest.raises(ValueError, match=re.escape(f"Metadata {str(tmp_path / 'captions.json')!r} is not a version 1 captions.json "
                                                   "with size, frames, stride, shard_size (positive integers) and splits train, test "
                                                   "(files and count each).")) as error:
        captioned.open_captioned(str(tmp_path), "train", 4, seed=0)
    _one_sentence(error)


def test_an_ingest_that_reads_nothing_writes_no_metadata(tmp_path):
    for name in "ab":
        (tmp_path / "broken" / f"{name}.png").parent.mkdir(exist_ok=True)
        (tmp_path / "broken" / f"{name}.png").write_bytes(b"not an image")
        (tmp_path / "broken" / f"{name}.txt").write_text(f"caption {name}")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=re.escape(f"No training example of {tmp_path / 'broken'} could be read (the first: ")) as error:
        captioned.ingest_captions(str(tmp_path / "broken"), str(out), SIZE, num_threads=1)
    assert "cannot be read as an image" in str(error.value) and not (out / captioned.METADATA).exists()
    with pytest.raises(ValueError, match=re.escape("Encoding 'gif' must be one of png, jpeg, raw.")) as error:
        captioned.ingest_captions(str(tmp_path / "broken"), str(tmp_path / "again"), SIZE, encoding="gif")
    _one_sentence(error)


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, kwargs, kind, message", [
    ("{tmp}/nowhere", {}, FileNotFoundError, "Folder '{tmp}/nowhere' of captioned files does not exist."),
    ("hf:coco", {}, ValueError, "Captioned dataset 'hf:coco' is not a folder, tar:GLOB or tfds:NAME."),
    ("{tmp}/notes.txt", {}, ValueError, "Captioned dataset '{tmp}/notes.txt' is not a folder, tar:GLOB or tfds:NAME."),
    ("{tmp}", {}, ValueError, "Folder '{tmp}' has no captioned images (.png, .jpg, .jpeg, .webp files with a .txt caption beside them)."),
    ("{tmp}", {"frames": 3}, ValueError, "Folder '{tmp}' has no captioned videos (.mp4, .avi, .mkv, .webm, .mov files with a .txt "
                                         "caption beside them)."),
    ("{tmp}", {"size": 0}, ValueError, "Image size 0 of captioned examples must be a positive integer."),
    ("{tmp}", {"frames": 2.0}, ValueError, "frames 2.0 of captioned examples must be a positive integer."),
    ("{tmp}", {"stride": True}, ValueError, "stride True of captioned examples must be a positive integer."),
    ("{tmp}", {"split": "val"}, ValueError, "Split 'val' must be one of train, test."),
    ("{tmp}", {"test_fraction": 1.0}, ValueError, "test_fraction=1.0 must be in (0, 1)."),
    ("tfds:coco_captions", {"frames": 4}, ValueError, "tfds:coco_captions holds images; frames=4 needs videos (a folder or tar "
                                                      "shards of them)."),
    ("tfds:coco_captions", {"test_fraction": 0.1}, ValueError, "test_fraction=0.1 applies to folders and tar shards; "
                                                               "tfds:coco_captions has its own test split."),
    ("tfds:no_such_dataset", {}, ValueError, "tfds:no_such_dataset is not a tensorflow-datasets dataset"),
])
def test_mistakes_are_one_sentence_at_open(tmp_path, spec, kwargs, kind, message):
    (tmp_path / "notes.txt").write_text("a caption of nothing")
    _picture(tmp_path / "lonely.png", 0)
    arguments = {"split": "train", "size": SIZE, "seed": 0, **kwargs}
    with pytest.raises(kind, match=re.escape(message.format(tmp=tmp_path))) as error:
        captioned.open_captioned(spec.format(tmp=tmp_path), arguments.pop("split"), arguments.pop("size"), **arguments)
    _one_sentence(error)
