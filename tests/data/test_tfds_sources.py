import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from lavin_jax.data import ingest, records, scoring, tfds_sources

SIZE = 8


@pytest.fixture
def config(make_config):
    return make_config(**{"data.ingest.size": SIZE, "data.video_frames": 5})


def _mock(num_examples=3, examples=None):
    """tfds data sources of random examples made from the features' code, or of `examples`."""
    custom = {} if examples is None else {"as_data_source_fn": lambda builder, split, **kwargs: examples}
    return tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE, **custom)


# Mock bair videos have 30 frames: 3 clip pairs of 5 + 5 each.
@pytest.mark.parametrize("name, written", [("nyu_depth_v2", 3), ("bair_robot_pushing_small", 9)])
def test_adapters_write_mock_data(config, tmp_path, name, written):
    adapter = tfds_sources.ADAPTERS[name]
    out = tmp_path / "out"
    with _mock():
        ingest.ingest(config, [f"tfds:{name}"], str(out))
    report = json.loads((out / ingest.REPORT).read_text())
    assert report["written"] == {adapter.task: written} and report["skipped_items"] == []
    info = records.RecordSource(str(out)).tasks[adapter.task]
    assert (info.count, info.metric, info.size) == (written, adapter.metric, (SIZE, SIZE))
    assert info.frames == (5 if adapter.video else 1)
    assert info.flip is True  # depth and images mirror with their input.


@pytest.mark.parametrize(
    "name, reason",
    [
        # Random mock examples: trimap values and image/target sizes that real data never has.
        ("oxford_iiit_pet",
         "cannot be converted (segmentation_mask has values [0, 4, 10, 12, 15] outside the trimap's 1, 2, 3)"),
        ("scene_parse150", "its input is 27x13 but its target 43x33"),
    ],
)
def test_bad_mock_segmentation_examples_are_skipped_with_reasons(config, tmp_path, name, reason):
    """The segmentation adapters' own writing is checked on hand-made examples further down."""
    adapter = tfds_sources.ADAPTERS[name]
    assert adapter.metric in records.METRICS
    out = tmp_path / "out"
    with _mock():
        with pytest.raises(ValueError, match=f"No pair could be read from --source=tfds:{name}"):
            ingest.ingest(config, [f"tfds:{name}"], str(out))
    report = json.loads((out / ingest.REPORT).read_text())
    assert report["written"] == {adapter.task: 0} and report["skipped"] == {adapter.task: 3}
    assert report["skipped_items"][0] == {"task": adapter.task, "id": f"tfds:{name}:train[0]", "reason": reason}


def test_mismatched_examples_are_skipped_with_their_key(config, tmp_path):
    with _mock(num_examples=4):
        with pytest.raises(ValueError, match=r"No pair could be read from --source=tfds:scene_parse150:validation"):
            ingest.ingest(config, ["tfds:scene_parse150:validation"], str(tmp_path / "out"), max_examples=2)
    report = json.loads((tmp_path / "out" / ingest.REPORT).read_text())
    assert [item["id"] for item in report["skipped_items"]] == [
        "tfds:scene_parse150:validation[0]", "tfds:scene_parse150:validation[1]"]


def test_depth_is_gray_up_to_ten_metres():
    depth = np.array([[0.0, 5.0], [10.0, 20.0]], np.float16)
    example = {"image": np.zeros((2, 2, 3), np.uint8), "depth": depth}
    _, target = tfds_sources.ADAPTERS["nyu_depth_v2"].convert(example)
    np.testing.assert_array_equal(target[..., 0], [[0, 128], [255, 255]])
    assert (target == target[..., :1]).all() and target.dtype == np.uint8


# Palette colours (PASCAL VOC's) worked out by hand: the first classes, and ADE20K's last, 150.
PALETTE = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 150: (0, 224, 128)}


def test_segmentation_targets_are_exact_palette_colours(config, tmp_path):
    rng = np.random.default_rng(0)
    trimap = rng.integers(1, 4, (SIZE, SIZE, 1)).astype(np.uint8)
    annotation = rng.integers(0, 151, (SIZE, SIZE, 3)).astype(np.uint8)  # R: category, G: instance.
    annotation[..., 0] = rng.choice(list(PALETTE), (SIZE, SIZE))
    image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    cases = {  # trimap 1 (pet) -> class 1, 2 (background) -> 0, 3 (outline) -> 2.
        "oxford_iiit_pet": ({"image": image, "segmentation_mask": trimap}, np.choose(trimap[..., 0] - 1, [1, 0, 2])),
        "scene_parse150": ({"image": image, "annotation": annotation}, annotation[..., 0]),
    }
    for name, (example, labels) in cases.items():
        task = tfds_sources.ADAPTERS[name].task
        with _mock(examples=[example]):
            ingest.ingest(config, [f"tfds:{name}"], str(tmp_path / name), no_flip=[task])
        source = records.RecordSource(str(tmp_path / name))
        assert source.tasks[task].flip is False
        inputs, targets = source.read(task, 0)
        np.testing.assert_array_equal(inputs[0], image)
        expected = np.array([[PALETTE[c] for c in row] for row in labels], np.uint8)
        np.testing.assert_array_equal(targets[0], expected)
        assert (scoring.image_to_labels(scoring.from_uint8(targets[0])) == labels).all()


def test_bair_clips_follow_the_video(config, tmp_path):
    config.data.ingest.video_stride = 10
    config.data.ingest.resize = "stretch"
    with _mock(num_examples=1):
        video = tfds.data_source("bair_robot_pushing_small", split="train")[0]["image_main"]
        ingest.ingest(config, ["tfds:bair_robot_pushing_small"], str(tmp_path / "out"))
    source = records.RecordSource(str(tmp_path / "out"))
    assert source.tasks["frame_prediction"].count == 3  # starts 0, 10, 20.
    inputs, targets = source.read("frame_prediction", 1)
    np.testing.assert_array_equal(inputs, records.resize(video[10:15], SIZE, "stretch", "bilinear"))
    np.testing.assert_array_equal(targets, records.resize(video[15:20], SIZE, "stretch", "bilinear"))


def test_unprepared_dataset_is_refused_before_writing(config, tmp_path):
    out = tmp_path / "out"
    message = r"tfds:oxford_iiit_pet:train cannot be read from data_dir .*; prepare it with: tfds build oxford_iiit_pet "
    message += "--file_format=array_record"
    with pytest.raises(ValueError, match=message):
        ingest.ingest(config, ["tfds:oxford_iiit_pet"], str(out), tfds_data_dir=str(tmp_path / "tfds"))
    assert not out.exists()
