import numpy as np
import pytest

from lavin_jax import config as config_lib
from lavin_jax.data import synthetic

SIZE = 16


def make_data_config(**fields):
    c = config_lib.base()
    c.data.image_size = SIZE
    c.data.max_pairs = 3
    c.data.cond_drop_prob = 0.25
    c.data.tasks = tuple(synthetic.TASKS)
    for key, value in fields.items():
        c.data[key] = value
    return c.data


def make_image(seed=0):
    return synthetic.base_image(np.random.default_rng(seed), SIZE)


def test_base_image_is_a_colourful_scene():
    image = make_image()
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.float32
    assert image.min() >= -1.0 and image.max() <= 1.0
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10
    assert not np.array_equal(image, make_image(seed=1))


@pytest.mark.parametrize("size", [8, 32, 256])
def test_base_image_works_at_any_size(size):
    image = synthetic.base_image(np.random.default_rng(0), size)
    assert image.shape == (size, size, 3) and image.dtype == np.float32


@pytest.mark.parametrize("name", list(synthetic.TASKS))
def test_every_task_returns_valid_images(name):
    for seed in range(4):
        task_input, target = synthetic.TASKS[name](make_image(seed), np.random.default_rng(seed))
        for frame in (task_input, target):
            assert frame.shape == (SIZE, SIZE, 3) and frame.dtype == np.float32
            assert frame.min() >= -1.0 and frame.max() <= 1.0
        assert not np.array_equal(task_input, target)


def test_colorize_input_is_gray_and_target_is_the_image():
    image = make_image()
    task_input, target = synthetic.colorize(image, np.random.default_rng(0))
    np.testing.assert_array_equal(task_input[..., 0], task_input[..., 1])
    np.testing.assert_array_equal(task_input[..., 0], task_input[..., 2])
    np.testing.assert_array_equal(target, image)


@pytest.mark.parametrize(
    "name, expected",
    [("flip", lambda x: x[:, ::-1]), ("vflip", lambda x: x[::-1]), ("invert", np.negative)],
)
def test_geometric_and_invert_targets(name, expected):
    image = np.random.default_rng(0).uniform(-1, 1, (SIZE, SIZE, 3)).astype(np.float32)
    task_input, target = synthetic.TASKS[name](image, np.random.default_rng(0))
    np.testing.assert_array_equal(task_input, image)
    np.testing.assert_array_equal(target, expected(image))


def test_edges_marks_only_the_boundary_of_a_two_colour_image():
    image = np.full((SIZE, SIZE, 3), -1.0, np.float32)
    image[:, SIZE // 2 :] = 1.0
    _, target = synthetic.edges(image, np.random.default_rng(0))
    bright = target[..., 0] > 0
    np.testing.assert_array_equal(target[..., 0], target[..., 1])
    assert set(np.unique(target)) == {-1.0, 1.0}
    assert bright[:, SIZE // 2 - 1 : SIZE // 2 + 1].all()
    assert bright.sum() == 2 * SIZE  # the two columns either side of the step, nothing else


def test_edges_of_a_scene_are_sparse_but_present():
    for seed in range(4):
        _, target = synthetic.edges(make_image(seed), np.random.default_rng(0))
        bright_share = (target[..., 0] > 0).mean()
        assert 0.0 < bright_share < 0.6


def test_inpaint_changes_only_a_constant_box():
    image = np.random.default_rng(0).uniform(0.1, 1.0, (SIZE, SIZE, 3)).astype(np.float32)
    for seed in range(5):
        task_input, target = synthetic.inpaint(image, np.random.default_rng(seed))
        np.testing.assert_array_equal(target, image)
        changed = (task_input != image).any(axis=-1)
        rows, cols = changed.any(axis=1), changed.any(axis=0)
        assert changed.any()
        np.testing.assert_array_equal(changed, np.outer(rows, cols))
        assert len(np.unique(task_input[changed])) == 1


def test_denoise_input_is_noisy_target_is_clean():
    image = make_image()
    task_input, target = synthetic.denoise(image, np.random.default_rng(0))
    np.testing.assert_array_equal(target, image)
    assert np.abs(task_input - image).mean() > 0.05


def test_episodes_are_deterministic():
    episodes = synthetic.SyntheticEpisodes(make_data_config(), seed=3, global_batch_size=4)
    same = synthetic.SyntheticEpisodes(make_data_config(), seed=3, global_batch_size=4)
    other_seed = synthetic.SyntheticEpisodes(make_data_config(), seed=4, global_batch_size=4)
    first, again = episodes.episode(10, 2), same.episode(10, 2)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["cond"], episodes.episode(11, 2)["cond"])
    assert not np.array_equal(first["cond"], other_seed.episode(10, 2)["cond"])


@pytest.mark.parametrize("k", [0, 1, 3])
def test_episode_layout(k):
    episodes = synthetic.SyntheticEpisodes(make_data_config(), seed=0, global_batch_size=4)
    example = episodes.episode(5, k)
    assert example["cond"].shape == (2 * k + 1 if k else 2, SIZE, SIZE, 3)
    if not k:  # dropped context: a zero frame where the pairs were, as guidance samples it.
        np.testing.assert_array_equal(example["cond"][0], 0.0)
    assert example["target"].shape == (1, SIZE, SIZE, 3)
    assert example["cond"].dtype == example["target"].dtype == np.float32
    assert example["task"].shape == () and example["task"].dtype == np.int32
    assert 0 <= example["task"] < len(synthetic.TASKS)
    for frames in (example["cond"], example["target"]):
        assert frames.min() >= -1.0 and frames.max() <= 1.0


def test_task_and_query_do_not_depend_on_num_pairs():
    episodes = synthetic.SyntheticEpisodes(make_data_config(), seed=0, global_batch_size=4)
    without, with_pairs = episodes.episode(7, 0), episodes.episode(7, 3)
    assert without["task"] == with_pairs["task"]
    np.testing.assert_array_equal(without["cond"][-1], with_pairs["cond"][-1])
    np.testing.assert_array_equal(without["target"], with_pairs["target"])


def test_all_pairs_of_an_episode_share_its_task():
    relations = {"flip": lambda x: x[:, ::-1], "invert": np.negative}
    episodes = synthetic.SyntheticEpisodes(
        make_data_config(tasks=tuple(relations)), seed=0, global_batch_size=4
    )
    seen = set()
    for index in range(12):
        example = episodes.episode(index, 3)
        name = episodes.task_names[example["task"]]
        seen.add(name)
        inputs = example["cond"][0::2]
        targets = np.concatenate([example["cond"][1::2], example["target"]])
        for task_input, target in zip(inputs, targets):
            np.testing.assert_array_equal(target, relations[name](task_input))
    assert seen == set(relations)


def test_every_configured_task_is_drawn():
    episodes = synthetic.SyntheticEpisodes(make_data_config(), seed=0, global_batch_size=4)
    tasks = {int(episodes.episode(index, 0)["task"]) for index in range(100)}
    assert tasks == set(range(len(synthetic.TASKS)))


def test_num_pairs_is_shared_by_a_global_batch():
    batch_size = 4
    episodes = synthetic.SyntheticEpisodes(make_data_config(), seed=0, global_batch_size=batch_size)
    counts = set()
    for batch_index in range(12):
        k = synthetic.num_pairs(0, batch_index, 3, 0.25)
        counts.add(k)
        for index in range(batch_index * batch_size, (batch_index + 1) * batch_size):
            example = episodes[index]
            assert example["cond"].shape[0] == (2 * k + 1 if k else 2)
            np.testing.assert_array_equal(example["cond"], episodes.episode(index, k)["cond"])
    assert len(counts) >= 3


def test_num_pairs_distribution():
    draws = np.array([synthetic.num_pairs(1, b, 4, 0.25) for b in range(4000)])
    assert set(draws) == {0, 1, 2, 3, 4}
    assert abs((draws == 0).mean() - 0.25) < 0.04
    nonzero_shares = np.bincount(draws[draws > 0])[1:] / (draws > 0).sum()
    np.testing.assert_allclose(nonzero_shares, 0.25, atol=0.04)
    assert synthetic.num_pairs(1, 0, 4, 0.25) == draws[0]
    assert min(synthetic.num_pairs(1, b, 4, 0.0) for b in range(500)) >= 1


def test_unknown_task_is_rejected_at_construction():
    with pytest.raises(ValueError, match=r"config\.data\.tasks.*'sharpen'.*colorize"):
        synthetic.SyntheticEpisodes(
            make_data_config(tasks=("flip", "sharpen")), seed=0, global_batch_size=4
        )


def test_empty_task_list_is_rejected():
    with pytest.raises(ValueError, match=r"config\.data\.tasks is empty"):
        synthetic.SyntheticEpisodes(make_data_config(tasks=()), seed=0, global_batch_size=4)


def make_clips(seed=0, frames=5):
    return synthetic.SyntheticClips(make_data_config(), seed, frames=frames)


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_clips_are_videos_in_range(frames):
    clips = make_clips(frames=frames)
    assert len(clips) == synthetic.NUM_EXAMPLES
    example = clips[3]
    assert set(example) == {"video"}
    video = example["video"]
    assert video.shape == (frames, SIZE, SIZE, 3) and video.dtype == np.float32
    assert video.min() >= -1.0 and video.max() <= 1.0
    assert len(np.unique(video[-1].reshape(-1, 3), axis=0)) > 10


def test_clips_are_deterministic_in_seed_and_index():
    clips = make_clips(seed=3)
    np.testing.assert_array_equal(clips[10]["video"], make_clips(seed=3)[10]["video"])
    assert not np.array_equal(clips[10]["video"], clips[11]["video"])
    assert not np.array_equal(clips[10]["video"], make_clips(seed=4)[10]["video"])
    # Their own seed stream: a clip never replays an episode's or a K draw's randomness.
    streams = {synthetic._EPISODE_STREAM, synthetic._NUM_PAIRS_STREAM, synthetic._CLIP_STREAM}
    assert len(streams) == 3


def test_clips_work_as_a_grain_source():
    grain = pytest.importorskip("grain")
    clips = make_clips()
    dataset = grain.MapDataset.source(clips).batch(2)
    assert dataset[1]["video"].shape == (2, 5, SIZE, SIZE, 3)
    np.testing.assert_array_equal(dataset[1]["video"][0], clips[2]["video"])


def test_clip_frames_change_smoothly():
    for seed in range(8):
        clip = synthetic.base_clip(np.random.default_rng(seed), SIZE, 9)
        steps = np.abs(np.diff(clip, axis=0)).mean(axis=(1, 2, 3))
        assert (steps > 0).all()  # every frame moves on ...
        # ... but by little: far less than across the clip.
        assert steps.mean() < 0.5 * np.abs(clip[-1] - clip[0]).mean()


def test_clip_frame_t_renders_the_scene_at_time_t():
    for seed in range(4):
        clip = synthetic.base_clip(np.random.default_rng(seed), SIZE, 5)
        # Motion is drawn after the still scene, so frame 0 is the still from the same state.
        np.testing.assert_array_equal(clip[0], make_image(seed))
        scene = synthetic.draw_scene(np.random.default_rng(seed), moving=True)
        for t in (0, 4):
            np.testing.assert_array_equal(clip[t], synthetic.render_scene(scene, SIZE, t))
        still = synthetic.draw_scene(np.random.default_rng(seed))
        np.testing.assert_array_equal(
            synthetic.render_scene(still, SIZE, 0), synthetic.render_scene(still, SIZE, 3)
        )


@pytest.mark.parametrize("frames", [0, 2, 4, 6, 16])
def test_clip_length_must_be_one_plus_four_k(frames):
    with pytest.raises(ValueError, match=r"frames=.*1 \+ 4k"):
        make_clips(frames=frames)


def test_base_clip_needs_a_frame():
    with pytest.raises(ValueError, match=r"frames=0"):
        synthetic.base_clip(np.random.default_rng(0), SIZE, 0)
