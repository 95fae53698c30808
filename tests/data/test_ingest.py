import json
import os
import re
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from lavin_jax.data import ingest, records

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = 8


@pytest.fixture
def config(make_config):
    return make_config(**{"data.ingest.size": SIZE, "data.video_frames": 2})


def _image(path, shape=(12, 16, 3), seed=0):
    """A random image of `shape` saved at `path` (2-D: gray; 4 channels: RGBA); returns it."""
    array = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(array).save(path)
    return array


def _video(path, frames, size=(16, 16)):
    """A video whose frame i is a flat gray of brightness 20 * i (mpeg4 keeps flat frames)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((*size, 3), 20 * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.fixture
def template(tmp_path):
    """LaVin-DiT's template layout: good pairs and every kind of bad one."""
    root = tmp_path / "template"
    colors, clips = root / "colors", root / "clips"
    for folder in (colors, clips, root / "empty"):
        folder.mkdir(parents=True)
    opaque = _image(colors / "opaque_input.png", (12, 16, 4), seed=5)
    opaque[..., 3] = 255
    Image.fromarray(opaque).save(colors / "opaque_input.png")
    good = {
        "a": (_image(colors / "a_input.png", seed=1), _image(colors / "a_target.png", seed=2)),
        "gray": (_image(colors / "gray_input.png", (12, 16), seed=3), _image(colors / "gray_target.png", seed=4)),
        "opaque": (opaque[..., :3], _image(colors / "opaque_target.png", seed=6)),
    }
    # A palette target, as VOC stores its masks: read as its palette's colours.
    palette = Image.fromarray(np.arange(12 * 16, dtype=np.uint8).reshape(12, 16) % 4, "L").convert("P")
    palette.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0])
    palette.save(colors / "pal_target.png")
    good["pal"] = (_image(colors / "pal_input.png", seed=10), np.asarray(palette.convert("RGB")))
    _image(colors / "b_input.jpg", seed=7)
    _image(colors / "b_target.png", seed=8)
    _image(colors / "clear_input.png", (12, 16, 4), seed=9)  # random alpha: transparent pixels.
    _image(colors / "clear_target.png")
    (colors / "corrupt_input.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _image(colors / "corrupt_target.png")
    _image(colors / "wide_input.png")
    _image(colors / "wide_target.png", (12, 20, 3))
    _image(colors / "lonely_input.png")
    _image(colors / "orphan_target.jpeg")
    Image.fromarray(np.zeros((12, 16), np.uint16)).save(colors / "deep_input.png")
    _image(colors / "deep_target.png")
    (colors / "notes.txt").write_text("not a pair")
    _image(colors / "bad_input.png")
    (colors / "bad_target.png").write_bytes(b"not an image")
    _image(colors / "twice_input.jpg")
    _image(colors / "twice_input.png")
    _image(colors / "twice_target.png")
    _image(clips / "mixed_input.png")
    _video(clips / "mixed_target.mp4", 4)
    _video(clips / "v_input.mp4", 8)
    _video(clips / "v_target.mp4", 8)
    _video(clips / "uneven_input.mp4", 8)
    _video(clips / "uneven_target.mp4", 6)
    return root, good


def _skipped(report):
    return {os.path.basename(item["id"]): item["reason"] for item in report["skipped_items"]}


def test_folder_ingest_writes_good_pairs_and_reports_bad_ones(template, config, tmp_path):
    root, good = template
    out = tmp_path / "out"
    report = ingest.ingest(config, [f"folder:{root}"], str(out), metrics={"colors": "segmentation"}, no_flip=["clips"])
    colors = root / "colors"
    assert _skipped(report) == {
        "clear_input.png": "has transparent pixels; only fully opaque RGBA is used",
        "corrupt_input.png": "cannot be read as an image (Truncated File Read)",
        "deep_input.png": "has mode I;16; 8-bit RGB, gray, palette or opaque RGBA is needed",
        "bad_input.png": f"its target {colors / 'bad_target.png'} cannot be read as an image "
                         f"(cannot identify image file '{colors / 'bad_target.png'}')",
        "lonely_input.png": "has no target file lonely_target.<ext> beside it",
        "notes.txt": "is not a file <id>_input.<ext> or <id>_target.<ext> "
                     "(ext: .png, .jpg, .jpeg, .mp4, .avi, .mkv, .webm, .mov)",
        "orphan_target.jpeg": "has no input file orphan_input.<ext> beside it",
        "twice_input.jpg": f"pair 'twice' has several input files "
                           f"({colors / 'twice_input.jpg'}, {colors / 'twice_input.png'})",
        "wide_input.png": "its input is 12x16 but its target 12x20",
        "mixed_input.png": f"is paired with {root / 'clips' / 'mixed_target.mp4'}, but only one of them is a video",
        "uneven_input.mp4": "its target video ends after 6 frames, before the other; its first 3 pairs were kept",
    }
    assert report["written"] == {"clips": 7, "colors": 5, "empty": 0}
    assert report["skipped"] == {"clips": 2, "colors": 9, "empty": 0}
    assert report["empty_tasks"] == [{"task": "empty", "source": f"folder:{root}"}]
    assert json.loads((out / ingest.REPORT).read_text()) == report

    source = records.RecordSource(str(out))
    assert source.tasks == {
        "clips": records.TaskInfo("clips", 7, 2, (SIZE, SIZE), "image", False),
        "colors": records.TaskInfo("colors", 5, 1, (SIZE, SIZE), "segmentation", True),
    }
    # Written in file order: a, b (a JPEG input), gray, opaque, pal; PNG keeps crops exactly.
    for index, name in [(0, "a"), (2, "gray"), (3, "opaque"), (4, "pal")]:
        inputs, targets = source.read("colors", index)
        expected_input = np.broadcast_to(good[name][0][..., None], (12, 16, 3)) if name == "gray" else good[name][0]
        np.testing.assert_array_equal(inputs, records.resize(expected_input[None], SIZE, "crop", "bilinear"))
        np.testing.assert_array_equal(targets, records.resize(good[name][1][None], SIZE, "crop", "nearest"))
    # Aligned clips of 2 frames, one after the other: clip k holds frames 2k, 2k+1 of both videos;
    # uneven's 3 clips come first, then v's 4.
    for index, k in enumerate([0, 1, 2, 0, 1, 2, 3]):
        inputs, targets = source.read("clips", index)
        np.testing.assert_allclose(inputs.mean(axis=(1, 2, 3)), [40 * k, 40 * k + 20], atol=3)
        np.testing.assert_array_equal(inputs, targets)


@pytest.mark.parametrize("stride, starts", [(0, [0, 4, 8]), (3, [0, 3, 6])])
def test_videos_become_frame_prediction_pairs(tmp_path, config, stride, starts):
    (tmp_path / "videos" / "deep").mkdir(parents=True)
    _video(tmp_path / "videos" / "deep" / "long.mkv", 12)
    _video(tmp_path / "videos" / "short.mp4", 3)
    (tmp_path / "videos" / "cover.png").write_bytes(b"ignored: not a video")
    config.data.ingest.video_stride = stride
    report = ingest.ingest(config, [f"videos:{tmp_path / 'videos'}"], str(tmp_path / "out"))
    assert report["written"] == {"frame_prediction": len(starts)}
    assert _skipped(report) == {"short.mp4": "has 3 frames, fewer than the 4 that one pair needs"}
    source = records.RecordSource(str(tmp_path / "out"))
    assert source.tasks["frame_prediction"].frames == 2
    for index, start in enumerate(starts):
        inputs, targets = source.read("frame_prediction", index)
        brightness = np.concatenate([inputs, targets]).mean(axis=(1, 2, 3))
        np.testing.assert_allclose(brightness, 20 * np.arange(start, start + 4), atol=3)


def test_flip_follows_the_metric_unless_no_flip_forbids_it(tmp_path, config):
    metrics = {"motion": "flow", "shape": "normals", "pose": "keypoints", "depth": "depth"}
    for task in [*metrics, "plain", "still"]:
        (tmp_path / "in" / task).mkdir(parents=True)
        _image(tmp_path / "in" / task / "a_input.png")
        _image(tmp_path / "in" / task / "a_target.png")
    ingest.ingest(config, [f"folder:{tmp_path / 'in'}"], str(tmp_path / "out"), metrics=metrics, no_flip=["still"])
    flips = {name: info.flip for name, info in records.RecordSource(str(tmp_path / "out")).tasks.items()}
    assert flips == {"motion": False, "shape": False, "pose": False, "depth": True, "plain": True, "still": False}


def test_refusals_come_before_any_data_is_read(template, config, tmp_path):
    root, _ = template
    out = tmp_path / "out"
    folder = f"folder:{root}"

    def refused(message, specs=(folder,), **kwargs):
        with pytest.raises(ValueError, match=message):
            ingest.ingest(config, list(specs), str(out), **kwargs)
        assert not out.exists()

    refused("is not folder:PATH, videos:PATH or tfds:NAME", ["pictures:/data"])
    refused("'/nowhere' is not a directory", ["folder:/nowhere"])
    refused("has no task folders", [f"folder:{root / 'empty'}"])
    refused("holds no video files", [f"videos:{root / 'colors'}"])
    refused("no adapter for tfds dataset 'mnist'", ["tfds:mnist"])
    refused("--metric=colours=segmentation names no task folder", metrics={"colours": "segmentation"})
    refused("--metric=colors=smell: the metric must be one of", metrics={"colors": "smell"})
    refused("--no_flip=colours names no task", no_flip=["colours"])
    refused("No --source given", [])
    config.data.ingest.resize = "zoom"
    refused("config.data.ingest.resize='zoom' must be one of crop, pad, stretch")
    config.data.ingest.resize = "crop"
    (tmp_path / "videos").mkdir()
    _video(tmp_path / "videos" / "v.mp4", 4)
    os.rename(root / "clips", root / "frame_prediction")
    refused("Task 'frame_prediction' is scored as 'segmentation' by --source=folder:.* "
            "but as 'image' by --source=videos",
            [folder, f"videos:{tmp_path / 'videos'}"], metrics={"frame_prediction": "segmentation"})

    out.mkdir()
    (out / "keep.txt").write_text("saved")
    with pytest.raises(ValueError, match="already exists and is not empty"):
        ingest.ingest(config, [folder], str(out))
    assert sorted(os.listdir(out)) == ["keep.txt"]


def test_nothing_written_is_an_error_naming_the_source(tmp_path, config):
    (tmp_path / "bad" / "task").mkdir(parents=True)
    (tmp_path / "bad" / "task" / "x_input.png").write_bytes(b"garbage")
    _image(tmp_path / "bad" / "task" / "x_target.png")
    out = tmp_path / "out"
    message = f"No pair could be read from --source=folder:{tmp_path / 'bad'}; {out}/report.json lists why."
    with pytest.raises(ValueError, match=re.escape(message)):
        ingest.ingest(config, [f"folder:{tmp_path / 'bad'}"], str(out))
    assert not (out / records.MANIFEST).exists()
    assert json.loads((out / ingest.REPORT).read_text())["skipped"] == {"task": 1}


def test_command_line(template, tmp_path):
    root, _ = template
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lavin_jax.data.ingest", "--config=configs/tiny.py", f"--source=folder:{root}",
               f"--out={out}", f"--config.data.ingest.size={SIZE}", "--config.data.ingest.resize=pad",
               "--config.data.ingest.encoding=raw", "--config.data.video_frames=5", "--metric=colors=segmentation",
               "--no_flip=colors"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "colors" in done.stdout and f"Wrote 7 pairs to {out}" in done.stdout
    manifest = json.loads((out / records.MANIFEST).read_text())
    assert manifest["tasks"]["colors"]["metric"] == "segmentation" and manifest["tasks"]["colors"]["flip"] is False
    # 5-frame clips: one from v, one from uneven before its target ends.
    assert manifest["tasks"]["clips"]["frames"] == 5 and manifest["tasks"]["clips"]["count"] == 2
    inputs, _ = records.RecordSource(str(out)).read("colors", 0)
    assert (inputs[:, :1] == 0).all() and (inputs[:, -1:] == 0).all()  # pad: 12x16 -> 6x8 on black.

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1] == (
        f"Error: Record directory {str(out)!r} already exists and is not empty; "
        "records are only written to a new directory."
    )


def test_command_line_ingests_captioned_images(tmp_path):
    from lavin_jax.data import captioned

    folder = tmp_path / "captioned"
    folder.mkdir()
    for i in range(6):
        _image(folder / f"{i}.png", seed=i)
        (folder / f"{i}.txt").write_text(f"picture {i}\n")
    _image(folder / "lonely.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lavin_jax.data.ingest", "--config=configs/gentron_tiny.py", f"--captions={folder}",
               f"--out={out}", "--test_fraction=0.5", f"--config.data.ingest.size={SIZE}", "--config.data.ingest.encoding=raw"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"Wrote 3 train and 3 test captioned images to {out}; skipped 0 examples and 1 files "
                                   f"without captions (see {out / captioned.METADATA}).")
    for split in captioned.SPLITS:  # gentron_tiny's seed holds out the same half again.
        source = captioned.open_captioned(str(folder), split, SIZE, seed=0, test_fraction=0.5)
        ingested = captioned.open_captioned(str(out), split, SIZE, seed=0)
        for i in range(len(source)):
            frames, caption = source.read(i)
            np.testing.assert_array_equal(ingested.read(i)[0], frames)
            assert ingested.read(i)[1] == caption
    both = subprocess.run([*command, f"--classes={folder}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert both.returncode == 1 and both.stderr.strip().splitlines()[-1] == (
        "Error: --captions, --classes and --source write one kind of data each, to a new directory; give one.")
