import numpy as np
import pytest

from lavin_jax.data import episodes as episodes_lib
from lavin_jax.data import records, synthetic
from conftest import data_config, write_inverted_pairs

SIZE = 16
FRAMES = 3


def make_data_config(**fields):
    defaults = dict(image_size=SIZE, max_pairs=3, cond_drop_prob=0.25, video_frames=FRAMES, tasks=tuple(synthetic.TASKS))
    return data_config(**{**defaults, **fields})


def make_episodes(seed=0, global_batch_size=4, **fields):
    return episodes_lib.Episodes(make_data_config(**fields), seed=seed, global_batch_size=global_batch_size)


IMAGE_TASKS = tuple(name for name, task in synthetic.TASKS.items() if not task.video)
VIDEO_TASKS = tuple(name for name, task in synthetic.TASKS.items() if task.video)


def test_episodes_are_deterministic():
    episodes, same, other_seed = make_episodes(3), make_episodes(3), make_episodes(4)
    first, again = episodes.episode(10, 2), same.episode(10, 2)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["cond"], episodes.episode(11, 2)["cond"])
    assert not np.array_equal(first["cond"], other_seed.episode(10, 2)["cond"])


@pytest.mark.parametrize("video", [False, True])
@pytest.mark.parametrize("k", [0, 1, 3])
def test_episode_layout(k, video):
    episodes = make_episodes()
    example = episodes.episode(5, k, video)
    t = FRAMES if video else 1
    assert example["cond"].shape == ((2 * k + 1) * t if k else 2 * t, SIZE, SIZE, 3)
    if not k:  # dropped context: a zero item where the pairs were, as guidance samples it.
        np.testing.assert_array_equal(example["cond"][:t], 0.0)
    assert example["target"].shape == (t, SIZE, SIZE, 3)
    assert example["cond"].dtype == example["target"].dtype == np.float32
    assert example["task"].shape == () and example["task"].dtype == np.int32
    assert episodes.components[example["task"]].video == video
    assert example["skipped"] == 0
    for frames in (example["cond"], example["target"]):
        assert frames.min() >= -1.0 and frames.max() <= 1.0


def test_task_and_query_do_not_depend_on_num_pairs():
    episodes = make_episodes()
    for video, t in ((False, 1), (True, FRAMES)):
        without, with_pairs = episodes.episode(7, 0, video), episodes.episode(7, 3, video)
        assert without["task"] == with_pairs["task"]
        np.testing.assert_array_equal(without["cond"][-t:], with_pairs["cond"][-t:])
        np.testing.assert_array_equal(without["target"], with_pairs["target"])


def test_all_pairs_of_an_episode_share_its_task():
    relations = {"flip": lambda x: x[:, :, ::-1], "invert": np.negative}
    episodes = make_episodes(tasks=tuple(relations))
    seen = set()
    for index in range(12):
        example = episodes.episode(index, 3)
        name = episodes.task_names[example["task"]]
        seen.add(name)
        inputs = example["cond"][0::2]
        targets = np.concatenate([example["cond"][1::2], example["target"]])
        np.testing.assert_array_equal(targets, relations[name](inputs))
    assert seen == set(relations)


def test_every_configured_task_is_drawn():
    episodes = make_episodes()
    drawn = {int(episodes.episode(i, 0, video)["task"]) for i in range(200) for video in (False, True)}
    assert {episodes.task_names[i] for i in drawn} == set(synthetic.TASKS)


def test_a_global_batch_shares_its_number_of_pairs_and_frames():
    batch_size = 4
    episodes = make_episodes(global_batch_size=batch_size)
    kinds = set()
    for batch_index in range(24):
        k, video = episodes.batch_kind(batch_index)
        assert k == episodes_lib.num_pairs(0, batch_index, 3, 0.25)
        kinds.add((k, video))
        t = FRAMES if video else 1
        for index in range(batch_index * batch_size, (batch_index + 1) * batch_size):
            example = episodes[index]
            assert example["cond"].shape[0] == ((2 * k + 1) * t if k else 2 * t)
            np.testing.assert_array_equal(example["cond"], episodes.episode(index, k, video)["cond"])
    assert {video for _, video in kinds} == {False, True} and len(kinds) >= 5


def test_video_batches_follow_the_video_tasks_share_of_the_weight():
    # 2 image tasks of weight 1, 1 video task of weight 2: half the batches are video.
    episodes = make_episodes(tasks=("flip", "invert", "frame_prediction"), task_weights=("frame_prediction=2",))
    assert episodes.video_share == 0.5
    share = np.mean([episodes.batch_kind(b)[1] for b in range(2000)])
    assert abs(share - 0.5) < 0.04
    only_images = make_episodes(tasks=IMAGE_TASKS)
    assert not any(only_images.batch_kind(b)[1] for b in range(200))


def test_task_weights_set_the_mixture():
    episodes = make_episodes(tasks=("flip", "invert", "edges"), task_weights=("flip=3", "edges=0"))
    names = [episodes.task_names[episodes.episode(i, 0)["task"]] for i in range(1000)]
    assert "edges" not in names
    assert abs(names.count("flip") / len(names) - 0.75) < 0.05


@pytest.mark.parametrize("entry, message", [
    ("sharpen=2", r"'sharpen=2' names no task in the mixture \(flip, invert\)"),
    ("flip", r"'flip' is not 'task=weight'"),
    ("flip=-1", r"'flip=-1' is not 'task=weight' with a weight >= 0"),
    ("flip=x", r"'flip=x' is not 'task=weight'"),
])
def test_bad_task_weights_are_named(entry, message):
    with pytest.raises(ValueError, match=r"config\.data\.task_weights entry " + message):
        make_episodes(tasks=("flip", "invert"), task_weights=(entry,))


def test_all_zero_weights_are_rejected():
    with pytest.raises(ValueError, match=r"config\.data\.task_weights gives every task weight 0"):
        make_episodes(tasks=("flip",), task_weights=("flip=0",))


def test_num_pairs_distribution():
    draws = np.array([episodes_lib.num_pairs(1, b, 4, 0.25) for b in range(4000)])
    assert set(draws) == {0, 1, 2, 3, 4}
    assert abs((draws == 0).mean() - 0.25) < 0.04
    nonzero_shares = np.bincount(draws[draws > 0])[1:] / (draws > 0).sum()
    np.testing.assert_allclose(nonzero_shares, 0.25, atol=0.04)
    assert min(episodes_lib.num_pairs(1, b, 4, 0.0) for b in range(500)) >= 1


def test_unknown_task_is_rejected_at_construction():
    with pytest.raises(ValueError, match=r"config\.data\.tasks.*'sharpen'.*colorization"):
        make_episodes(tasks=("flip", "sharpen"))


def test_nothing_to_train_on_is_rejected():
    with pytest.raises(ValueError, match=r"config\.data\.tasks and config\.data\.records are both empty"):
        make_episodes(tasks=())


# --- real pairs from record directories ------------------------------------------------------


def test_record_tasks_join_the_mixture_and_are_mirrored_alike(tmp_path):
    directory = write_inverted_pairs(tmp_path / "mine")
    episodes = make_episodes(tasks=("flip",), records=(directory,), task_weights=("flip=0",), flip_prob=0.5)
    assert episodes.task_names == ("flip", "mine/negate")
    source = records.RecordSource(directory)
    stored = [source.read("negate", i)[0] for i in range(6)]
    mirrored = 0
    for index in range(16):
        example = episodes.episode(index, 2)
        assert episodes.task_names[example["task"]] == "mine/negate"
        inputs, targets = example["cond"][0::2], np.concatenate([example["cond"][1::2], example["target"]])
        np.testing.assert_allclose(targets, -inputs, atol=1e-6)  # the flip kept every pair a pair.
        for frame in inputs:
            pixels = np.round((frame + 1.0) * 127.5).astype(np.uint8)
            plain = [i for i, s in enumerate(stored) if np.array_equal(pixels, s[0])]
            flipped = [i for i, s in enumerate(stored) if np.array_equal(pixels, s[0][:, ::-1])]
            assert plain or flipped
            mirrored += bool(flipped)
    assert 0 < mirrored < 16 * 3


def test_bad_records_are_skipped_counted_and_named(tmp_path, caplog):
    directory = write_inverted_pairs(tmp_path / "mine", count=4, bad=(1, 2))
    episodes = make_episodes(tasks=(), records=(directory,), flip_prob=0.0)
    skipped = 0
    for index in range(12):
        example = episodes.episode(index, 3)
        skipped += int(example["skipped"])
        targets = np.concatenate([example["cond"][1::2], example["target"]])
        np.testing.assert_allclose(targets, -example["cond"][0::2], atol=1e-6)  # no garbage trained on.
    assert skipped > 0
    assert "negate-00000.array_record" in caplog.text and "'pair1.png'" in caplog.text


def test_a_task_of_only_bad_records_stops_with_its_name(tmp_path):
    directory = write_inverted_pairs(tmp_path / "mine", count=2, bad=(0, 1))
    episodes = make_episodes(tasks=(), records=(directory,))
    with pytest.raises(RuntimeError, match=r"Task 'mine/negate' gave 32 bad records in a row"):
        episodes.episode(0, 1)


def test_record_clips_shorter_than_video_frames_are_refused(tmp_path):
    directory = write_inverted_pairs(tmp_path / "clips", count=2, frames=2, task="frame_prediction")
    with pytest.raises(ValueError, match=r"'frame_prediction' of .*clips.* has 2-frame clips, fewer than config\.data\.video_frames=3"):
        make_episodes(records=(directory,))
