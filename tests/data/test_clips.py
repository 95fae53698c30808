import re

import av
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from lavin_jax.data import clips, labelled, records, scoring, synthetic


# --- generated clips ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["moving_digits", "synthetic"])
def test_generated_clips_are_deterministic_and_strided(spec):
    train, test = clips.open_clips(spec, "train", 16, 5, seed=0), clips.open_clips(spec, "test", 16, 5, seed=0)
    assert (len(train), len(test), train.name) == (clips.NUM_TRAIN, clips.NUM_TEST, spec)
    clip = train.read(3)
    assert clip.shape == (5, 16, 16, 3) and clip.dtype == np.uint8
    np.testing.assert_array_equal(clip, clips.open_clips(spec, "train", 16, 5, seed=0).read(3))
    for other in (train.read(4), test.read(3), clips.open_clips(spec, "train", 16, 5, seed=1).read(3)):
        assert not np.array_equal(clip, other)
    # Frame k of a stride-2 clip is frame 2k of the stride-1 clip drawn from the same generator.
    strided = clips.open_clips(spec, "train", 16, 3, stride=2, seed=0).read(3)
    np.testing.assert_array_equal(strided, clip[::2])
    with pytest.raises(IndexError, match=f"Clip 256 of {spec} is not in"):
        test.read(256)


def test_synthetic_clips_are_the_moving_scenes():
    rng = np.random.default_rng((0, clips.SYNTHETIC_STREAMS["test"], 7))
    expected = scoring.to_uint8(synthetic.base_clip(rng, 16, 6))
    np.testing.assert_array_equal(clips.open_clips("synthetic", "test", 16, 6, seed=0).read(7), expected)


def test_moving_digits_come_from_their_split_and_bounce_inside_the_canvas():
    train, test = (clips.open_clips("moving_digits", split, 32, 64, seed=0) for split in labelled.SPLITS)
    for split, clip_set in zip(labelled.SPLITS, (train, test)):
        np.testing.assert_array_equal(clip_set.sources, labelled.Digits(split, 8, seed=0).indices)
    assert not set(train.sources) & set(test.sources)
    images = labelled.bundled_digits()[0]
    for clip_set in (train, test):
        for index in range(4):
            digits, corners = clip_set.trajectory(index)
            assert set(digits) <= set(clip_set.sources) and corners.shape == (64, clips.NUM_DIGITS, 2)
            assert corners.min() >= 0 and corners.max() <= 32 - clip_set.side  # whole digits in the canvas.
            steps = np.diff(corners, axis=0)
            assert np.abs(steps).sum(axis=-1).mean() >= 1  # at least a pixel a frame (32 / 64 * 2),
            assert ((steps[1:] * steps[:-1]) < 0).any()  # and turning back at a wall in 64 frames.
            clip = clip_set.read(index)
            assert (clip[..., 0] == clip[..., 2]).all()
            assert (np.diff(clip.astype(int), axis=0) != 0).any(axis=(1, 2, 3)).mean() > 0.9  # bounces may pause one.
            # Compositing by maximum keeps at least the heavier digit's ink and adds no ink.
            mass = [np.asarray(Image.fromarray(images[d]).resize((16, 16), Image.Resampling.BILINEAR), float).sum()
                    for d in digits]
            frame_mass = clip[..., 0].astype(float).sum(axis=(1, 2))
            assert (frame_mass >= max(mass) - 1e-6).all() and (frame_mass <= sum(mass) + 1e-6).all()
    with pytest.raises(ValueError, match="moving_digits needs a size of at least 16, not 8."):
        clips.open_clips("moving_digits", "train", 8, 4, seed=0)


def test_bad_arguments_are_one_sentence():
    with pytest.raises(ValueError, match="Split 'val' must be one of train, test."):
        clips.open_clips("synthetic", "val", 16, 4, seed=0)
    with pytest.raises(ValueError, match="Clip length frames 0 must be a positive integer."):
        clips.open_clips("synthetic", "train", 16, 0, seed=0)
    with pytest.raises(ValueError, match="Clips 'nowhere' are not 'moving_digits', 'synthetic', 'tfds:NAME'"):
        clips.open_clips("nowhere", "train", 16, 4, seed=0)


# --- video folders ------------------------------------------------------------------------------


def _video(path, count, shape=(16, 24)):
    """A video whose frame k is a flat gray of brightness 10 * k (mpeg4 keeps flat frames)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width, stream.pix_fmt = *shape, "yuv420p"
        for k in range(count):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((*shape, 3), 10 * k, np.uint8), format="rgb24")))
        container.mux(stream.encode())


def _brightness(clip):
    return np.round(clip.mean(axis=(1, 2, 3)) / 10).astype(int).tolist()


def test_video_folder_windows_take_every_stride_th_frame(tmp_path):
    _video(tmp_path / "train" / "a.mp4", 10)
    _video(tmp_path / "train" / "deep" / "b.mkv", 7)  # mkv keeps no frame count: counted by decoding.
    _video(tmp_path / "train" / "short.mp4", 3)
    (tmp_path / "train" / "broken.mp4").write_bytes(b"not a video at all")
    (tmp_path / "train" / "notes.txt").write_text("not a video")
    _video(tmp_path / "test" / "c.mp4", 5)
    train = clips.open_clips(str(tmp_path), "train", 8, 2, stride=2, seed=0)
    # Windows of 4 frames: a.mp4 0-3, 4-7; b.mkv 0-3.
    assert len(train) == 3 and train.files == [str(tmp_path / "train" / n) for n in ("a.mp4", "deep/b.mkv")]
    assert [(p.split("/")[-1], r.split(" (")[0]) for p, r in train.skipped] == [
        ("broken.mp4", "cannot be decoded as a video"), ("short.mp4", "has 3 frames, fewer than the 4 of a clip")]
    assert [_brightness(train.read(i)) for i in range(3)] == [[0, 2], [4, 6], [0, 2]]
    clip = train.read(1)
    assert clip.shape == (2, 8, 8, 3) and clip.dtype == np.uint8
    np.testing.assert_array_equal(clip, train.read(1))
    test = clips.open_clips(str(tmp_path), "test", 8, 3, seed=0)
    assert len(test) == 1 and _brightness(test.read(0)) == [0, 1, 2]
    _video(tmp_path / "train" / "a.mp4", 5)  # shorter since opening: its second window is gone.
    with pytest.raises(records.BadRecord, match=re.escape(f"Window 1 (frames 4..7) of {str(tmp_path / 'train' / 'a.mp4')!r} "
                                                          "cannot be read: the file ends after 5 frames.")):
        train.read(1)
    with pytest.raises(ValueError, match="has no test video of at least 12 frames that decodes"):
        clips.open_clips(str(tmp_path), "test", 8, 6, stride=2, seed=0)


def test_video_folder_without_splits_holds_out_files_by_seed(tmp_path):
    for name in "abcde":
        _video(tmp_path / f"{name}.mp4", 2, (8, 8))
    split = {seed: [clips.open_clips(str(tmp_path), s, 8, 2, seed=seed).files for s in labelled.SPLITS] for seed in range(4)}
    for train, test in split.values():
        assert len(test) == 1 and sorted(train + test) == [str(tmp_path / f"{n}.mp4") for n in "abcde"]
    assert split[0] == [clips.open_clips(str(tmp_path), s, 8, 2, seed=0).files for s in labelled.SPLITS]
    assert len({tuple(test) for _, test in split.values()}) > 1


# --- tfds ---------------------------------------------------------------------------------------


def _mock(examples=None):
    custom = {} if examples is None else {"as_data_source_fn": lambda builder, split, **kwargs: examples}
    return tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE, **custom)


def test_tfds_videos_read_through_mock_data():
    with _mock():  # bair's mock examples: 30 random 64x64 frames of each camera.
        for split in labelled.SPLITS:
            videos = clips.open_clips("tfds:bair_robot_pushing_small", split, 32, 8, stride=3, seed=0)
            assert len(videos) == 3 and videos.feature == "image_main"
            clip = videos.read(2)
            assert clip.shape == (8, 32, 32, 3) and clip.dtype == np.uint8
            np.testing.assert_array_equal(clip, videos.read(2))
    # Frame k of every video is a flat k; the second video is too short for a clip of 3 x 2 frames.
    video = np.arange(12, dtype=np.uint8)[:, None, None, None] * np.ones((1, 6, 10, 3), np.uint8)
    examples = [{"image_main": video}, {"image_main": video[:5]}]
    with _mock(examples):
        test = clips.open_clips("tfds:bair_robot_pushing_small", "test", 4, 3, stride=2, seed=0)
        assert test.read(0)[:, 0, 0, 0].tolist() == [0, 2, 4]  # 'test': the first window.
        starts = {int(clips.open_clips("tfds:bair_robot_pushing_small", "train", 4, 3, stride=2, seed=seed).read(0)[0, 0, 0, 0])
                  for seed in range(12)}
        assert len(starts) > 1 and starts <= set(range(7))  # 'train': any start that leaves 6 frames.
        with pytest.raises(records.BadRecord, match=re.escape("Example 1 of tfds:bair_robot_pushing_small:test has 5 "
                                                              "frames, fewer than the 6 of a clip.")):
            test.read(1)
    with pytest.raises(ValueError, match="tfds:mnist needs one Video feature .*; it has image, label."):
        clips.open_clips("tfds:mnist", "train", 8, 2, seed=0)


def test_a_dataset_with_one_video_feature_needs_no_table_entry():
    video = object.__new__(tfds.features.Video)  # Video() itself needs tensorflow, absent here.
    label = tfds.features.ClassLabel(num_classes=2)
    assert clips._video_feature("my_videos", {"clip": video, "label": label}) == "clip"
    with pytest.raises(ValueError, match="tfds:my_videos needs one Video feature .*; it has a, b, label."):
        clips._video_feature("my_videos", {"a": video, "b": video, "label": label})
