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


def _colours(labels):
    return tfds_sources.to_uint8(scoring.labels_to_image(np.asarray(labels)))


@pytest.mark.parametrize(
    "name, written, reason",
    [
        ("nyu_depth_v2", 3, None),
        ("bair_robot_pushing_small", 9, None),  # 30 frames: 3 clip pairs of 5 + 5.
        # Random mock examples: trimap values and image/target sizes that real data never has.
        ("oxford_iiit_pet", 0,
         "cannot be converted (segmentation_mask has values [0, 4, 10, 12, 15] outside the trimap's 1, 2, 3)"),
        ("scene_parse150", 0, "its input is 27x13 but its target 43x33"),
    ],
)
def test_every_adapter_ingests_mock_data(config, tmp_path, name, written, reason):
    adapter = tfds_sources.ADAPTERS[name]
    assert adapter.metric in records.METRICS
    out = tmp_path / "out"
    with _mock():
        if written:
            ingest.ingest(config, [f"tfds:{name}"], str(out))
        else:
            with pytest.raises(ValueError, match=f"No pair could be read from --source=tfds:{name}"):
                ingest.ingest(config, [f"tfds:{name}"], str(out))
    report = json.loads((out / ingest.REPORT).read_text())
    assert report["written"] == {adapter.task: written}
    if reason:
        assert report["skipped_items"][0] == {"task": adapter.task, "id": f"tfds:{name}:train[0]", "reason": reason}
        return
    info = records.RecordSource(str(out)).tasks[adapter.task]
    assert (info.count, info.metric, info.size) == (written, adapter.metric, (SIZE, SIZE))
    assert info.frames == (5 if adapter.video else 1)


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


def test_segmentation_targets_are_exact_palette_colours(config, tmp_path):
    rng = np.random.default_rng(0)
    trimap = rng.integers(1, 4, (SIZE, SIZE, 1)).astype(np.uint8)
    annotation = rng.integers(0, 151, (SIZE, SIZE, 3)).astype(np.uint8)  # R: category, G: instance.
    image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    cases = {
        "oxford_iiit_pet": ({"image": image, "segmentation_mask": trimap}, np.choose(trimap[..., 0] - 1, [1, 0, 2])),
        "scene_parse150": ({"image": image, "annotation": annotation}, annotation[..., 0]),
    }
    for name, (example, labels) in cases.items():
        with _mock(examples=[example]):
            ingest.ingest(config, [f"tfds:{name}"], str(tmp_path / name), no_flip=[tfds_sources.ADAPTERS[name].task])
        source = records.RecordSource(str(tmp_path / name))
        task = tfds_sources.ADAPTERS[name].task
        assert source.tasks[task].flip is False
        inputs, targets = source.read(task, 0)
        np.testing.assert_array_equal(inputs[0], image)
        np.testing.assert_array_equal(targets[0], _colours(labels))
        assert (scoring.image_to_labels(targets[0] / 127.5 - 1.0) == labels).all()


def test_bair_clips_follow_the_video(config, tmp_path):
    config.data.ingest.video_stride = 10
    config.data.ingest.resize = "stretch"
    with _mock(num_examples=1):
        video = tfds.data_source("bair_robot_pushing_small", split="train")[0]["image_main"]
        ingest.ingest(config, ["tfds:bair_robot_pushing_small"], str(tmp_path / "out"))
    source = records.RecordSource(str(tmp_path / "out"))
    assert source.tasks["frame_prediction"].count == 3  # starts 0, 10, 20.
    inputs, targets = source.read("frame_prediction", 1)
    np.testing.assert_array_equal(inputs, records.resize(video[10:15], SIZE, "stretch", nearest=False))
    np.testing.assert_array_equal(targets, records.resize(video[15:20], SIZE, "stretch", nearest=False))


def test_unprepared_dataset_is_refused_before_writing(config, tmp_path):
    out = tmp_path / "out"
    message = r"tfds:oxford_iiit_pet:train cannot be read from data_dir .*; prepare it with: tfds build oxford_iiit_pet "
    message += "--file_format=array_record"
    with pytest.raises(ValueError, match=message):
        ingest.ingest(config, ["tfds:oxford_iiit_pet"], str(out), tfds_data_dir=str(tmp_path / "tfds"))
    assert not out.exists()
