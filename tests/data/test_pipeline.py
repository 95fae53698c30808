import itertools
import pathlib

import numpy as np
import pytest

from lavin_jax import config as config_lib
from conftest import iterate
from lavin_jax import validation
from lavin_jax.data import pipeline
from lavin_jax.data.episodes import Episodes

TINY = pathlib.Path(__file__).parents[2] / "configs" / "tiny.py"
GLOBAL_BATCH = 8
SIZE = 16


def make_config(**overrides):
    defaults = {
        "global_batch_size": GLOBAL_BATCH,
        "data.image_size": SIZE,
        "data.max_pairs": 2,
        "data.cond_drop_prob": 0.3,
        "data.num_threads": 2,
    }
    return config_lib.load(str(TINY), {**defaults, **overrides})


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def assert_batches_equal(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_batches_have_the_documented_layout():
    config = make_config(**{"data.tasks": ("flip", "frame_prediction"), "data.video_frames": 3})
    frames = set()
    for batch in take(iterate(config), 8):
        t = batch["target"].shape[1]
        frames.add(t)
        k = (batch["cond"].shape[1] // t - 1) // 2
        assert batch["cond"].shape == (GLOBAL_BATCH, (2 * k + 1 if k else 2) * t, SIZE, SIZE, 3)
        assert batch["target"].shape == (GLOBAL_BATCH, t, SIZE, SIZE, 3)
        assert batch["cond"].dtype == batch["target"].dtype == np.float32
        for name in ("task", "skipped"):
            assert batch[name].shape == (GLOBAL_BATCH,) and batch[name].dtype == np.int32
    assert frames == {1, 3}


def test_batch_s_is_global_examples_s_times_g_onwards():
    config = make_config()
    episodes = Episodes(config.data, config.seed, GLOBAL_BATCH)
    for step, batch in enumerate(take(iterate(config), 3)):
        for row in range(GLOBAL_BATCH):
            example = episodes[step * GLOBAL_BATCH + row]
            np.testing.assert_array_equal(batch["cond"][row], example["cond"])
            np.testing.assert_array_equal(batch["target"][row], example["target"])


def test_pairs_vary_between_batches():
    config = make_config(**{"data.num_threads": 0, "data.tasks": ("flip",)})
    counts = {batch["cond"].shape[1] for batch in take(iterate(config), 20)}
    assert counts == {2, 3, 5}  # K = 0 (dropped: zero frame + query), 1 and 2.


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_concatenate_to_the_global_batch(process_count):
    config = make_config()
    global_batches = take(iterate(config), 3)
    shards = [
        take(iterate(config, process, process_count), 3)
        for process in range(process_count)
    ]
    for step, global_batch in enumerate(global_batches):
        for key in global_batch:
            rows = [shard[step][key] for shard in shards]
            assert all(len(r) == GLOBAL_BATCH // process_count for r in rows)
            np.testing.assert_array_equal(np.concatenate(rows), global_batch[key])


def test_a_resumed_iterator_starts_at_its_step_in_any_process_count():
    """The data position is the step: the shards of 2 processes started at step 3 are global
    batches 3 and 4 of one process."""
    config = make_config()
    expected = take(iterate(config), 5)[3:]
    for process_count in (1, 2):
        shards = [take(iterate(config, p, process_count, start_step=3), 2) for p in range(process_count)]
        for step, global_batch in enumerate(expected):
            for key in global_batch:
                np.testing.assert_array_equal(np.concatenate([shard[step][key] for shard in shards]), global_batch[key])


def test_worker_processes_deliver_the_same_batches_from_any_step():
    config = make_config(**{"data.num_threads": 1})
    expected = take(iterate(config), 4)
    with_workers = make_config(**{"data.num_threads": 1, "data.num_workers": 2})
    assert_batches_equal(take(iterate(with_workers), 2), expected[:2])
    assert_batches_equal(take(iterate(with_workers, start_step=2), 2), expected[2:])


def test_seed_changes_the_data():
    first = take(iterate(make_config()), 1)[0]
    other = take(iterate(make_config(seed=1)), 1)[0]
    assert not np.array_equal(first["target"], other["target"])


def test_batch_not_divisible_by_processes_is_rejected():
    with pytest.raises(ValueError, match=r"config\.global_batch_size=8"):
        pipeline.make_dataset(make_config(), [], 0, 3)


def test_unknown_source_is_rejected():
    with pytest.raises(ValueError, match=r"config\.data\.source='imagenet'"):
        validation.validate(make_config(**{"data.source": "imagenet"}), None)


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match=r"config\.data\.tasks.*'sharpen'"):
        iterate(make_config(**{"data.tasks": ("sharpen",)}))
