import io
import json
import os
import pickle

import msgpack
import numpy as np
import pytest
from PIL import Image

from lavin_jax.data import records, scoring


def _frames(seed, shape=(2, 6, 10, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _palette_frames(seed, shape=(1, 12, 18)):
    """Frames of random classes drawn in scoring's palette colours, and the colours used."""
    labels = np.random.default_rng(seed).integers(0, 6, shape)
    frames = scoring.to_uint8(scoring.labels_to_image(labels))
    return frames, {tuple(c) for c in frames.reshape(-1, 3)}


@pytest.mark.parametrize("encoding", ["png", "raw", "jpeg"])
def test_frames_round_trip(encoding):
    frames = np.repeat(np.linspace(0, 255, 10, dtype=np.uint8)[None, None, :, None], 6, axis=1)
    frames = np.broadcast_to(frames, (2, 6, 10, 3)).copy()  # smooth, so JPEG keeps it closely.
    encoded = records.encode_frames(frames, encoding)
    assert encoded["encoding"] == encoding and encoded["shape"] == [2, 6, 10, 3] and len(encoded["data"]) == 2
    decoded = records.decode_frames(msgpack.unpackb(msgpack.packb(encoded), raw=False))
    assert decoded.dtype == np.uint8 and decoded.shape == frames.shape
    if encoding == "jpeg":
        assert np.abs(decoded.astype(int) - frames).mean() < 4
    else:
        np.testing.assert_array_equal(decoded, frames)


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "frames, message",
    [
        ({"encoding": "png", "shape": [1, 4, 4, 3], "data": [b"not a png"]}, "cannot be decoded"),
        ({"encoding": "png", "shape": [1, 4, 4, 3], "data": [_png(np.zeros((4, 4, 4), np.uint8))]}, "mode RGBA"),
        ({"encoding": "png", "shape": [1, 4, 5, 3], "data": [_png(np.zeros((4, 4, 3), np.uint8))]}, "as 'shape' says"),
        ({"encoding": "raw", "shape": [1, 4, 4, 3], "data": [bytes(47)]}, "47 bytes"),
        ({"encoding": "raw", "shape": [2, 4, 4, 3], "data": [bytes(48)]}, "list of 2 byte strings"),
        ({"encoding": "raw", "shape": [1, 4, 4, 4], "data": [bytes(64)]}, "4 channels"),
        ({"encoding": "gif", "shape": [1, 4, 4, 3], "data": [bytes(48)]}, "encoding 'gif'"),
    ],
)
def test_decode_frames_rejects(frames, message):
    with pytest.raises(ValueError, match=message):
        records.decode_frames(frames)


def test_resize_rules():
    # Three vertical bands, red | green | blue, 4 + 8 + 4 columns wide, 8 rows.
    frames = np.zeros((1, 8, 16, 3), np.uint8)
    frames[:, :, :4, 0] = frames[:, :, 4:12, 1] = frames[:, :, 12:, 2] = 255
    for rule in records.RESIZE_RULES:
        for resample in records.RESAMPLE:
            assert records.resize(frames, 6, rule, resample).shape == (1, 6, 6, 3)
    # crop: the centred 8x8 square is all green.
    cropped = records.resize(frames, 4, "crop", "nearest")
    assert (cropped == [0, 255, 0]).all()
    # pad: 16 wide -> 8 wide, 4 high, centred between black rows.
    padded = records.resize(frames, 8, "pad", "nearest")
    assert (padded[:, :2] == 0).all() and (padded[:, 6:] == 0).all()
    np.testing.assert_array_equal(padded[0, 2:6, :, :].max(axis=(0, 2)) > 0, np.ones(8, bool))
    np.testing.assert_array_equal(padded[0, 3], records.resize(frames, 8, "stretch", "nearest")[0, 3])
    # stretch keeps all three bands, squeezed.
    stretched = records.resize(frames, 8, "stretch", "nearest")
    assert tuple(stretched[0, 0, 0]) == (255, 0, 0) and tuple(stretched[0, 0, -1]) == (0, 0, 255)
    # A frame that already has the size comes back untouched, whatever the rule.
    same = _frames(0, (2, 5, 5, 3))
    np.testing.assert_array_equal(records.resize(same, 5, "crop", "bilinear"), same)
    with pytest.raises(ValueError, match="Resize rule 'zoom'"):
        records.resize(frames, 4, "zoom", "nearest")
    with pytest.raises(ValueError, match="Resampling 'lanczos' must be one of nearest, bilinear, bicubic"):
        records.resize(frames, 4, "crop", "lanczos")


def test_nearest_keeps_palette_colours():
    frames, colours = _palette_frames(1)
    for rule in records.RESIZE_RULES:
        for size in (5, 29):
            out = records.resize(frames, size, rule, "nearest")
            assert {tuple(c) for c in out.reshape(-1, 3)} <= colours | {(0, 0, 0)}
    smooth = records.resize(frames, 5, "stretch", "bilinear")
    assert not {tuple(c) for c in smooth.reshape(-1, 3)} <= colours  # why targets need nearest.


def _write(directory, encoding="png", shard_size=2):
    pairs = {
        "colour": [(_frames(i), _frames(100 + i)) for i in range(5)],
        "seg": [(_frames(i, (1, 8, 8, 3)), _palette_frames(i, (1, 8, 8))[0]) for i in range(3)],
    }
    with records.RecordWriter(str(directory), encoding=encoding, shard_size=shard_size) as writer:
        for task, items in pairs.items():
            for i, (inputs, targets) in enumerate(items):
                metric, flip = ("segmentation", False) if task == "seg" else ("image", True)
                writer.add(task, inputs, targets, f"{task}/{i}", metric=metric, flip=flip)
    return pairs


@pytest.mark.parametrize("encoding", ["png", "raw"])
def test_written_records_read_back(tmp_path, encoding):
    pairs = _write(tmp_path / "records", encoding)
    manifest = json.loads((tmp_path / "records" / records.MANIFEST).read_text())
    assert manifest["version"] == 1
    assert manifest["tasks"]["colour"] == {
        "files": [f"colour/colour-0000{i}.array_record" for i in range(3)],
        "count": 5, "frames": 2, "size": [6, 10], "metric": "image", "flip": True,
    }
    assert manifest["tasks"]["seg"]["metric"] == "segmentation" and manifest["tasks"]["seg"]["flip"] is False
    source = records.RecordSource(str(tmp_path / "records"))
    assert source.tasks["seg"] == records.TaskInfo("seg", 3, 1, (8, 8), "segmentation", False)
    for task, items in pairs.items():
        for i, (inputs, targets) in enumerate(items):
            got = source.read(task, i)
            np.testing.assert_array_equal(got[0], inputs)
            np.testing.assert_array_equal(got[1], targets)
    with pytest.raises(KeyError, match="no task 'depth'"):
        source.read("depth", 0)
    with pytest.raises(IndexError):
        source.read("seg", 3)


def test_jpeg_keeps_palette_targets_lossless(tmp_path):
    pairs = _write(tmp_path / "records", "jpeg")
    source = records.RecordSource(str(tmp_path / "records"))
    inputs, targets = source.read("seg", 1)
    np.testing.assert_array_equal(targets, pairs["seg"][1][1])  # stored as PNG.
    assert np.abs(inputs.astype(int) - pairs["seg"][1][0]).mean() > 0  # JPEG: noise is lossy.


def test_source_pickles_and_reads_after(tmp_path):
    """Grain hands the source to its worker processes by pickling it, also once it has read."""
    pairs = _write(tmp_path / "records")
    source = records.RecordSource(str(tmp_path / "records"))
    source.read("colour", 4)  # the task's shard readers are open now, and must pickle.
    copy = pickle.loads(pickle.dumps(source))
    assert copy.tasks == source.tasks
    np.testing.assert_array_equal(copy.read("colour", 4)[1], pairs["colour"][4][1])
    np.testing.assert_array_equal(copy.read("seg", 0)[1], pairs["seg"][0][1])


def test_flip_defaults_to_whether_the_metric_survives_a_mirror(tmp_path):
    unsafe = {"flow", "normals", "keypoints"}  # mirroring would have to change their targets.
    assert records.MIRROR_SAFE == frozenset(records.METRICS) - unsafe
    pair = _frames(0, (1, 4, 4, 3)), _frames(1, (1, 4, 4, 3))
    with records.RecordWriter(str(tmp_path / "records")) as writer:
        for metric in records.METRICS:
            writer.add(metric, *pair, "x", metric=metric)
        writer.add("forced", *pair, "x", metric="flow", flip=True)  # an explicit flip is kept.
        writer.add("still", *pair, "x", flip=False)
        with pytest.raises(ValueError, match="has flip=False, but the task's earlier pairs have True"):
            writer.add("image", *pair, "y", flip=False)
    flips = {name: info.flip for name, info in records.RecordSource(str(tmp_path / "records")).tasks.items()}
    assert flips["flow"] is flips["normals"] is flips["keypoints"] is False
    assert flips["image"] is flips["depth"] is flips["segmentation"] is True
    assert flips == {**{metric: metric not in unsafe for metric in records.METRICS}, "forced": True, "still": False}


def test_shard_writer_rolls_over_and_names_shards_relative(tmp_path):
    import grain

    writer = records.ShardWriter(str(tmp_path), "part", shard_size=2)
    for i in range(5):
        writer.write(bytes([i]) * 3)
    files = writer.close()
    assert files == [f"part-0000{n}.array_record" for n in range(3)]
    assert sorted(os.listdir(tmp_path)) == files
    source = grain.sources.ArrayRecordDataSource([str(tmp_path / f) for f in files])
    assert [source[i] for i in range(5)] == [bytes([i]) * 3 for i in range(5)]
    assert records.ShardWriter(str(tmp_path / "nowhere"), "none", 1).close() == []  # no record, no file.
    with pytest.raises(ValueError, match="shard_size=0 must be positive"):
        records.ShardWriter(str(tmp_path), "part", 0)


def test_writer_refuses_a_bad_encoding_before_making_the_directory(tmp_path):
    with pytest.raises(ValueError, match="Encoding 'gif' is not one of png, jpeg, raw"):
        records.RecordWriter(str(tmp_path / "records"), encoding="gif")
    with pytest.raises(ValueError, match="shard_size=0 must be positive"):
        records.RecordWriter(str(tmp_path / "records"), shard_size=0)
    assert not (tmp_path / "records").exists()
    with pytest.raises(ValueError, match="Encoding 'gif' is not one of png, jpeg, raw"):
        records.encode_frames(_frames(0), "gif")


def test_writer_never_overwrites(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "notes.txt").write_text("saved")
    with pytest.raises(ValueError, match="already exists and is not empty"):
        records.RecordWriter(str(tmp_path / "old"))
    _write(tmp_path / "records")
    with pytest.raises(ValueError, match="records' already exists"):
        records.RecordWriter(str(tmp_path / "records"))


def test_writer_checks_pairs_and_leaves_no_manifest_on_error(tmp_path):
    directory = tmp_path / "records"
    with pytest.raises(ValueError, match="frames=2"):
        with records.RecordWriter(str(directory)) as writer:
            writer.add("a", _frames(0, (1, 4, 4, 3)), _frames(1, (1, 4, 4, 3)), "first")
            with pytest.raises(ValueError, match="differ"):
                writer.add("a", _frames(0, (1, 4, 4, 3)), _frames(1, (1, 4, 5, 3)), "mismatch")
            with pytest.raises(ValueError, match="metric 'colour'"):
                writer.add("a", _frames(0, (1, 4, 4, 3)), _frames(1, (1, 4, 4, 3)), "x", metric="colour")
            with pytest.raises(ValueError, match="Task name 'a b'"):
                writer.add("a b", _frames(0, (1, 4, 4, 3)), _frames(1, (1, 4, 4, 3)), "x")
            writer.add("a", _frames(0), _frames(1), "two frames")
    assert not (directory / records.MANIFEST).exists()


def _raw_directory(directory, bad_records):
    """A record directory of task 't' holding one good record, then `bad_records` (dicts or bytes)."""
    from array_record.python import array_record_module

    good = {"task": "t", "id": "good", "input": records.encode_frames(_frames(0, (1, 4, 4, 3)), "png"),
            "target": records.encode_frames(_frames(1, (1, 4, 4, 3)), "png")}
    os.makedirs(directory / "t")
    writer = array_record_module.ArrayRecordWriter(str(directory / "t" / "t-00000.array_record"), "group_size:1")
    for record in [good, *bad_records]:
        writer.write(record if isinstance(record, bytes) else msgpack.packb(record, use_bin_type=True))
    writer.close()
    entry = {"files": ["t/t-00000.array_record"], "count": 1 + len(bad_records), "frames": 1, "size": [4, 4],
             "metric": "image", "flip": True}
    (directory / records.MANIFEST).write_text(json.dumps({"version": 1, "tasks": {"t": entry}}))
    return good


def test_bad_records_name_file_index_id_and_reason(tmp_path):
    def record(id, **changes):
        frames = records.encode_frames(_frames(2, (1, 4, 4, 3)), "png")
        return {"task": "t", "id": id, "input": frames, "target": frames, **changes}

    rgba = {"encoding": "png", "shape": [1, 4, 4, 3], "data": [_png(np.zeros((4, 4, 4), np.uint8))]}
    bad = [
        record("corrupt.png", target={"encoding": "png", "shape": [1, 4, 4, 3], "data": [b"\x89PNG broken"]}),
        record("rgba.png", input=rgba),
        record("wide.png", target=records.encode_frames(_frames(3, (1, 4, 6, 3)), "png")),
        {"task": "t", "id": "lonely.png", "input": records.encode_frames(_frames(2, (1, 4, 4, 3)), "png")},
        record("video.mp4", input=records.encode_frames(_frames(3, (2, 4, 4, 3)), "raw"),
               target=records.encode_frames(_frames(3, (2, 4, 4, 3)), "raw")),
        record("stray.png", task="u"),
        b"\xc1 not msgpack",
    ]
    reasons = ["its target: a frame's png bytes cannot be decoded", "its input: a frame has mode RGBA",
               "input [1, 4, 4, 3] and target [1, 4, 6, 3] differ", "no 'target' field",
               "2 frames, the manifest says 1", "it belongs to task 'u', not 't'", "not msgpack"]
    good = _raw_directory(tmp_path, bad)
    source = records.RecordSource(str(tmp_path))
    np.testing.assert_array_equal(source.read("t", 0)[0], records.decode_frames(good["input"]))
    shard = str(tmp_path / "t" / "t-00000.array_record")
    for index, reason in enumerate(reasons, start=1):
        with pytest.raises(records.BadRecord) as error:
            source.read("t", index)
        message = str(error.value)
        assert shard in message and f"Record {index} " in message and reason in message, message
        if index < len(reasons):
            assert repr(bad[index - 1]["id"]) in message


def test_source_refuses_bad_directories(tmp_path):
    with pytest.raises(ValueError, match="has no manifest.json"):
        records.RecordSource(str(tmp_path))
    (tmp_path / records.MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match="cannot be read as JSON"):
        records.RecordSource(str(tmp_path))
    entry = {"files": ["t/t-00000.array_record"], "count": 1, "frames": 1, "size": None, "metric": "smell",
             "flip": True}
    (tmp_path / records.MANIFEST).write_text(json.dumps({"version": 1, "tasks": {"t": entry}}))
    with pytest.raises(ValueError, match="task 't' needs"):
        records.RecordSource(str(tmp_path))
    entry["metric"] = "image"
    (tmp_path / records.MANIFEST).write_text(json.dumps({"version": 1, "tasks": {"t": entry}}))
    with pytest.raises(ValueError, match="t-00000.array_record' named by manifest .* is missing"):
        records.RecordSource(str(tmp_path))
    _raw_directory(tmp_path / "short", [])
    entry["count"] = 3
    (tmp_path / "short" / records.MANIFEST).write_text(json.dumps({"version": 1, "tasks": {"t": entry}}))
    with pytest.raises(ValueError, match="has 3 records but its shards hold 1"):
        records.RecordSource(str(tmp_path / "short")).read("t", 0)
