import json

import numpy as np
import pytest
from PIL import Image

from lavin_jax.metrics import BORDER, GAP, MetricWriter, episode_grid


def random_episodes(n, num_cond, h, w, seed=0):
    rng = np.random.default_rng(seed)
    cond = rng.uniform(-1, 1, size=(n, num_cond, h, w, 3)).astype(np.float32)
    prediction = rng.uniform(-1, 1, size=(n, 1, h, w, 3)).astype(np.float32)
    target = rng.uniform(-1, 1, size=(n, 1, h, w, 3)).astype(np.float32)
    return cond, prediction, target


def to_uint8(x):
    return np.rint((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8)


def test_scalars_append_one_json_line_per_call_across_writers(tmp_path):
    first = MetricWriter(str(tmp_path))
    first.write_scalars(10, {"loss": np.float32(0.5), "lr": 1e-3})
    first.write_scalars(20, {"loss": 0.25, "lr": 2e-3})
    first.close()
    resumed = MetricWriter(str(tmp_path))
    resumed.write_scalars(30, {"loss": 0.125})
    resumed.close()

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 10, "loss": 0.5, "lr": 1e-3},
        {"step": 20, "loss": 0.25, "lr": 2e-3},
        {"step": 30, "loss": 0.125},
    ]
    assert any((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_resumed_writer_drops_steps_logged_after_its_checkpoint(tmp_path):
    first = MetricWriter(str(tmp_path))
    for step in (10, 20, 30):
        first.write_scalars(step, {"loss": step / 100})
    first.close()
    resumed = MetricWriter(str(tmp_path), resume_step=20)  # the run died after logging 30.
    resumed.write_scalars(30, {"loss": 0.75})
    resumed.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 10, "loss": 0.1}, {"step": 20, "loss": 0.2}, {"step": 30, "loss": 0.75}]


def test_lines_a_killed_write_left_are_dropped_and_named_and_the_rest_kept(tmp_path, caplog):
    first = MetricWriter(str(tmp_path))
    first.write_scalars(10, {"loss": 0.1})
    first.close()
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as f:  # a crash that left zeros, a good line, then a kill -9 mid-line.
        f.write("\0\0\0\n" + json.dumps({"step": 20, "loss": 0.2}) + '\n{"step": 30, "lo')
    resumed = MetricWriter(str(tmp_path), resume_step=30)
    resumed.write_scalars(40, {"loss": 0.4})
    resumed.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"step": 10, "loss": 0.1}, {"step": 20, "loss": 0.2}, {"step": 40, "loss": 0.4}]
    assert f"{path}: dropped unreadable lines 2, 4 (a write cut short); kept the rest." in caplog.text


def test_a_last_line_without_its_newline_is_kept_whole(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 10, "loss": 0.1}))  # killed just before the newline.
    writer = MetricWriter(str(tmp_path))
    writer.write_scalars(20, {"loss": 0.2})
    writer.close()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"step": 10, "loss": 0.1}, {"step": 20, "loss": 0.2}]
    assert "dropped" not in caplog.text


def test_disabled_writer_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    writer = MetricWriter(str(workdir), enabled=False)
    writer.write_scalars(1, {"loss": 1.0})
    writer.write_image(1, "samples", np.zeros((4, 4, 3), np.uint8))
    writer.close()
    assert not workdir.exists()


def test_write_image_saves_the_grid_as_png(tmp_path):
    grid = episode_grid(*random_episodes(2, 5, 8, 6), scale=2)
    writer = MetricWriter(str(tmp_path))
    writer.write_image(42, "episodes", grid)
    writer.close()
    png = np.asarray(Image.open(tmp_path / "samples" / "episodes_0000042.png"))
    assert png.shape == grid.shape
    np.testing.assert_array_equal(png, grid)


def test_write_image_rejects_float_images(tmp_path):
    writer = MetricWriter(str(tmp_path))
    with pytest.raises(ValueError, match="'episodes'"):
        writer.write_image(1, "episodes", np.zeros((4, 4, 3), np.float32))
    writer.close()


@pytest.mark.parametrize(
    "n, num_cond, h, w, scale", [(1, 3, 4, 4, 1), (3, 5, 8, 6, 2), (2, 1, 5, 7, 3)]
)
def test_grid_size_follows_episodes_frames_and_scale(n, num_cond, h, w, scale):
    grid = episode_grid(*random_episodes(n, num_cond, h, w), scale=scale)
    frame_h, frame_w = h * scale, w * scale
    assert grid.dtype == np.uint8
    assert grid.shape == (
        BORDER + n * (frame_h + BORDER),
        BORDER + (num_cond + 2) * (frame_w + BORDER) + (GAP - BORDER),
        3,
    )


def test_frames_land_in_their_cells():
    n, num_cond, h, w, scale = 3, 5, 4, 6, 2
    cond, prediction, target = random_episodes(n, num_cond, h, w)
    grid = episode_grid(cond, prediction, target, scale=scale)
    frame_h, frame_w = h * scale, w * scale

    def cell(row, x):
        y = BORDER + row * (frame_h + BORDER)
        return grid[y : y + frame_h, x : x + frame_w]

    def upscaled(frame):
        return to_uint8(frame).repeat(scale, axis=0).repeat(scale, axis=1)

    prediction_x = BORDER + num_cond * (frame_w + BORDER) + (GAP - BORDER)
    for row in range(n):
        for col in range(num_cond):
            np.testing.assert_array_equal(
                cell(row, BORDER + col * (frame_w + BORDER)), upscaled(cond[row, col])
            )
        np.testing.assert_array_equal(cell(row, prediction_x), upscaled(prediction[row, 0]))
        np.testing.assert_array_equal(
            cell(row, prediction_x + frame_w + BORDER), upscaled(target[row, 0])
        )


def test_single_prediction_pixel_lands_where_expected():
    n, num_cond, h, w, scale = 2, 3, 4, 4, 3
    cond, prediction, target = random_episodes(n, num_cond, h, w)
    baseline = episode_grid(cond, prediction, target, scale=scale)
    prediction[1, 0, 2, 3] = (1.0, 0.0, -1.0)
    grid = episode_grid(cond, prediction, target, scale=scale)

    y = BORDER + 1 * (h * scale + BORDER) + 2 * scale
    x = BORDER + num_cond * (w * scale + BORDER) + (GAP - BORDER) + 3 * scale
    expected_changed = np.zeros(grid.shape[:2], bool)
    expected_changed[y : y + scale, x : x + scale] = True
    np.testing.assert_array_equal(np.any(grid != baseline, axis=-1), expected_changed)
    np.testing.assert_array_equal(
        grid[y : y + scale, x : x + scale], np.broadcast_to([255, 128, 0], (scale, scale, 3))
    )


def test_values_outside_range_are_clipped():
    cond, prediction, target = random_episodes(1, 3, 2, 2)
    clipped = [np.clip(x * 5, -1, 1) for x in (cond, prediction, target)]
    np.testing.assert_array_equal(
        episode_grid(cond * 5, prediction * 5, target * 5), episode_grid(*clipped)
    )


def test_mismatched_prediction_shape_names_it():
    cond, prediction, target = random_episodes(2, 3, 4, 4)
    with pytest.raises(ValueError, match="prediction"):
        episode_grid(cond, prediction[:1], target)
