import grain
import numpy as np
import pytest

from lavin_jax.data import scoring, synthetic
from conftest import data_config

SIZE = 16


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


# ---------------------------------------------------------------------------------------------
# Tasks

TASK_SIZE = 32
VIDEO_FRAMES = 3
IMAGE_TASKS = (
    "semantic_segmentation", "panoptic_segmentation", "foreground_segmentation", "depth",
    "surface_normals", "edges", "keypoints", "detection", "colorization", "inpainting", "denoising",
    "deblurring", "deraining", "super_resolution", "low_light", "depth_to_image",
    "segmentation_to_image", "flip", "vflip", "invert",
)
VIDEO_TASKS = (
    "frame_prediction", "frame_prediction_backward", "frame_interpolation", "video_segmentation",
    "video_depth", "optical_flow", "video_inpainting",
)
# Each metric's values on a perfect prediction, and +1 where higher is better, -1 where lower is.
PERFECT = {
    "image": {"psnr": (100.0, 1), "ssim": (1.0, 1)},
    "segmentation": {"miou": (1.0, 1)},
    "panoptic": {"pq": (1.0, 1)},
    "depth": {"absrel": (0.0, -1), "delta1": (1.0, 1)},
    "normals": {"mean_angle": (0.0, -1), "within_11_25": (1.0, 1)},
    "edges": {"f1": (1.0, 1)},
    "keypoints": {"pck": (1.0, 1)},
    "boxes": {"box_iou": (1.0, 1)},
    "flow": {"epe": (0.0, -1)},
}


def make_pair(name, seed=0, size=TASK_SIZE, frames=VIDEO_FRAMES):
    task = synthetic.TASKS[name]
    return task.make(np.random.default_rng(seed), size, frames if task.video else 1)


def test_the_suite_has_its_tasks_in_a_stable_order():
    assert tuple(synthetic.TASKS) == IMAGE_TASKS + VIDEO_TASKS
    assert set(PERFECT) == set(scoring.METRICS)
    for name, task in synthetic.TASKS.items():
        assert task.name == name and task.video == (name in VIDEO_TASKS)
        assert task.metric in scoring.METRICS


@pytest.mark.parametrize("name", list(synthetic.TASKS))
def test_every_task_makes_deterministic_pairs_in_range(name):
    frames = VIDEO_FRAMES if synthetic.TASKS[name].video else 1
    for seed in range(3):
        pair = make_pair(name, seed)
        for frame in pair:
            assert frame.shape == (frames, TASK_SIZE, TASK_SIZE, 3) and frame.dtype == np.float32
            assert frame.min() >= -1.0 and frame.max() <= 1.0
        assert not np.array_equal(*pair)
        for frame, again in zip(pair, make_pair(name, seed)):
            np.testing.assert_array_equal(frame, again)
    # One generator, two calls (as an episode makes its pairs): two different pairs.
    rng = np.random.default_rng(0)
    first, second = (synthetic.TASKS[name].make(rng, TASK_SIZE, frames) for _ in range(2))
    assert not np.array_equal(first[1], second[1])


@pytest.mark.parametrize("name", list(synthetic.TASKS))
def test_a_perfect_prediction_scores_perfectly_and_baselines_clearly_worse(name):
    task = synthetic.TASKS[name]
    inputs, targets = map(np.stack, zip(*(make_pair(name, seed) for seed in range(3))))
    score = scoring.METRICS[task.metric]
    perfect = score(targets, targets)
    assert set(perfect) == set(PERFECT[task.metric])
    for key, (value, _) in PERFECT[task.metric].items():
        assert perfect[key] == pytest.approx(value, abs=1e-4), key
    # The primary (first) value, with a margin: 10 dB of PSNR, 0.05 of a share, 5 degrees, ...
    key, (value, better) = next(iter(PERFECT[task.metric].items()))
    margin = {"psnr": 10.0, "mean_angle": 5.0}.get(key, 0.05)
    for baseline in (inputs, np.zeros_like(targets)):
        assert better * (value - score(baseline, targets)[key]) > margin


@pytest.mark.parametrize("name, frames", [("depth", 2), ("optical_flow", 1), ("frame_prediction", 0)])
def test_tasks_refuse_a_wrong_frame_count(name, frames):
    with pytest.raises(ValueError, match=rf"frames={frames} .*task '{name}'"):
        synthetic.TASKS[name].make(np.random.default_rng(0), TASK_SIZE, frames)


@pytest.mark.parametrize("size", [8, 18])
def test_tasks_refuse_a_size_that_is_not_a_multiple_of_4_from_16(size):
    message = rf"size={size} must be a multiple of 4 of at least 16 \(task 'edges'\)"
    with pytest.raises(ValueError, match=message):
        synthetic.TASKS["edges"].make(np.random.default_rng(0), size, 1)


def visible(scene, size, t):
    """The ground truth of a layered scene, from each shape's mask alone: per pixel, the index in
    scene.shapes of the nearest shape covering it (-1: none) and its depth, nearer meaning lower
    in the image (its centre of mass), the background at the maximum depth."""
    y, x = synthetic._grid(size)
    masks = np.stack([synthetic._shape_mask(shape, y, x, float(t)) for shape in scene.shapes])
    centres = [y[mask].mean() if mask.any() else 0.0 for mask in masks]
    depths = np.array([synthetic._FAR - (synthetic._FAR - synthetic._NEAR) * c for c in centres])
    masked = np.where(masks, depths[:, None, None], np.inf)
    shape = np.where(masks.any(0), masked.argmin(0), -1)
    depth = np.where(shape >= 0, masked.min(0), synthetic._MAX_DEPTH)
    return shape, depth


def video_scene(name, seed):
    return synthetic.draw_scene(np.random.default_rng(seed), moving=synthetic.TASKS[name].video)


@pytest.mark.parametrize("name", ["depth", "video_depth"])
def test_depth_shows_the_nearest_shape_at_every_pixel(name):
    for seed in range(4):
        scene = video_scene(name, seed)
        task_input, target = make_pair(name, seed)
        for t, (image, depth_image) in enumerate(zip(task_input, target)):
            shape, depth = visible(scene, TASK_SIZE, t)
            colours = np.array([s.colour for s in scene.shapes], np.float32)
            covered = shape >= 0
            np.testing.assert_array_equal(image[covered], colours[shape[covered]])
            decoded = scoring.image_to_depth(depth_image, synthetic._MAX_DEPTH)
            np.testing.assert_allclose(decoded, depth, rtol=1e-5)
            assert (depth[covered] < synthetic._MAX_DEPTH).all()  # the background is farthest


def test_depth_of_a_hand_built_scene_follows_the_ground_plane():
    # Depth runs from 9 at the image's top to 2 at its bottom with a shape's centre of mass (in
    # unit rows), and nearer shapes cover farther ones; the background lies at 10. Two squares of
    # 8 x 8 pixels: `low` spans rows 6-13 (centre 0.625, depth 9 - 7 * 0.625 = 4.625) and is listed
    # first, `high` rows 2-9 (centre 0.375, depth 6.375) and columns overlapping low's.
    size = 16
    low = synthetic.Shape(synthetic._RECTANGLE, (0.375, 0.125, 0.5, 0.5), (0.5, 0.0, 0.0))
    high = synthetic.Shape(synthetic._RECTANGLE, (0.125, 0.375, 0.5, 0.5), (0.0, 0.5, 0.0))
    scene = synthetic.Scene(0.0, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (low, high))
    layers = synthetic._layers(scene, size, 0)
    expected = np.full((size, size), 10.0)
    expected[2:10, 6:14] = 6.375
    expected[6:14, 2:10] = 4.625  # over high where they overlap
    np.testing.assert_array_equal(synthetic._depth(layers), scoring.depth_to_image(expected, 10.0))
    np.testing.assert_array_equal(layers.image[expected == 4.625], np.broadcast_to(low.colour, (64, 3)))
    np.testing.assert_array_equal(layers.image[expected == 6.375], np.broadcast_to(high.colour, (48, 3)))


def test_segmentations_decode_to_the_visible_shapes_kinds_and_instances():
    for seed in range(4):
        scene = video_scene("semantic_segmentation", seed)
        shape, _ = visible(scene, TASK_SIZE, 0)
        kinds = np.array([0] + [s.kind + 1 for s in scene.shapes])[shape + 1]
        semantic = scoring.image_to_labels(make_pair("semantic_segmentation", seed)[1][0])
        np.testing.assert_array_equal(semantic, kinds)
        foreground = scoring.image_to_labels(make_pair("foreground_segmentation", seed)[1][0])
        np.testing.assert_array_equal(foreground, shape >= 0)
        panoptic = scoring.image_to_labels(make_pair("panoptic_segmentation", seed)[1][0])
        np.testing.assert_array_equal(panoptic % scoring.PANOPTIC_CLASSES, kinds)
        # One segment per visible shape: the same label over it, and a label no other shape has.
        segment_of = {i: np.unique(panoptic[shape == i]) for i in np.unique(shape[shape >= 0])}
        assert all(len(labels) == 1 for labels in segment_of.values())
        assert len({int(labels[0]) for labels in segment_of.values()}) == len(segment_of)


def test_video_variants_of_dense_tasks_start_with_their_image_task():
    for image_name, video_name in [("semantic_segmentation", "video_segmentation"), ("depth", "video_depth")]:
        for still, moving in zip(make_pair(image_name, 5), make_pair(video_name, 5)):
            np.testing.assert_array_equal(still[0], moving[0])


def test_edges_are_exactly_the_boundaries_of_the_visible_shapes():
    for seed in range(4):
        shape, _ = visible(video_scene("edges", seed), TASK_SIZE, 0)
        padded = np.pad(shape, 1, mode="edge")
        neighbours = [padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
        boundary = np.any([neighbour != shape for neighbour in neighbours], axis=0)
        target = make_pair("edges", seed)[1][0]
        assert set(np.unique(target)) == {-1.0, 1.0}
        np.testing.assert_array_equal(target[..., 0] > 0, boundary)
        np.testing.assert_array_equal(target[..., 0], target[..., 2])


def test_surface_normals_are_the_unit_normals_of_the_height_field():
    eps = 1e-4
    for seed in range(4):
        bumps = synthetic._draw_bumps(np.random.default_rng(seed))

        def height(y, x):
            return sum(a * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * s**2)) for cy, cx, s, a in bumps)

        y, x = (c.astype(np.float64) for c in synthetic._grid(TASK_SIZE))
        dh_dx = (height(y, x + eps) - height(y, x - eps)) / (2 * eps)
        dh_dy = (height(y + eps, x) - height(y - eps, x)) / (2 * eps)
        expected = np.stack([-dh_dx, -dh_dy, np.ones_like(dh_dx)], axis=-1)
        expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
        shading, normals = (frame[0] for frame in make_pair("surface_normals", seed))
        np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(normals, expected, atol=1e-4)
        # The input is a Lambertian shading of these normals: per channel, a constant albedo times
        # ambient plus diffuse light.
        lit = 0.25 + 0.75 * np.clip(normals @ np.array(synthetic._LIGHT), 0.0, 1.0)
        albedo = (shading + 1.0) / lit[..., None]
        np.testing.assert_allclose(albedo, np.broadcast_to(albedo[:1, :1], albedo.shape), rtol=1e-4)


def window(shape, y, x, t):
    """Where a shape's pattern can show: a stripes shape's moving window (its stripes scroll
    through it), everywhere for the other kinds."""
    if shape.kind != synthetic._STRIPES:
        return np.ones(y.shape, bool)
    dy, dx = shape.velocity[0] * t, shape.velocity[1] * t
    return synthetic._rectangle_mask(shape.geometry[2:], y, x, dy, dx, 0.0)


def test_optical_flow_moves_each_shape_onto_itself_in_the_next_frame():
    size, frames = 64, 3
    y, x = (c.astype(np.float64) for c in synthetic._grid(size))
    missed_standing_still = 0
    for seed in range(4):
        scene = video_scene("optical_flow", seed)
        flow = scoring.image_to_flow(make_pair("optical_flow", seed, size, frames)[1])
        for t in range(frames):  # the last frame's flow too: towards the frame after the clip
            shape, _ = visible(scene, size, t)
            np.testing.assert_allclose(flow[t][shape < 0], 0.0, atol=1e-5)
            for i in np.unique(shape[shape >= 0]):
                shown = flow[t][shape == i]
                np.testing.assert_allclose(shown, np.broadcast_to(shown[0], shown.shape), atol=1e-5)
                u, v = shown[0]
                s = scene.shapes[i]
                before = synthetic._shape_mask(s, y, x, float(t))
                after = synthetic._shape_mask(s, y + v / size, x + u / size, float(t + 1))
                staying = synthetic._shape_mask(s, y, x, float(t + 1))
                # Stripes pass in and out of their window's edges; away from them, and for the
                # other kinds everywhere, the shape lands exactly on itself (up to a pixel on a
                # rounding boundary), where standing still is far off.
                kept = window(s, y, x, t) & window(s, y + v / size, x + u / size, t + 1)
                assert (after != before)[kept].sum() <= 1
                missed_standing_still += (staying != before).sum()
    assert missed_standing_still > 100


@pytest.mark.parametrize(
    "name, input_times, target_times",
    [
        ("frame_prediction", [0, 1, 2], [3, 4, 5]),
        ("frame_prediction_backward", [5, 4, 3], [2, 1, 0]),
        ("frame_interpolation", [0, 2, 4], [1, 3, 5]),
    ],
)
def test_video_timing_tasks_render_the_scene_at_their_times(name, input_times, target_times):
    for seed in range(3):
        scene = video_scene(name, seed)
        for frames, times in zip(make_pair(name, seed), (input_times, target_times)):
            for frame, t in zip(frames, times, strict=True):
                np.testing.assert_array_equal(frame, synthetic.render_scene(scene, TASK_SIZE, t))


@pytest.mark.parametrize(
    "name, expected", [("flip", lambda x: x[:, ::-1]), ("vflip", lambda x: x[::-1]), ("invert", np.negative)]
)
def test_geometric_and_invert_targets(name, expected):
    task_input, target = make_pair(name)
    np.testing.assert_array_equal(task_input[0], synthetic.base_image(np.random.default_rng(0), TASK_SIZE))
    np.testing.assert_array_equal(target[0], expected(task_input[0]))


RESTORATIONS = [
    "colorization", "inpainting", "denoising", "deblurring", "deraining", "super_resolution", "low_light",
    "video_inpainting",
]


@pytest.mark.parametrize("name", RESTORATIONS)
def test_restorations_restore_the_rendered_scene(name):
    times = range(VIDEO_FRAMES if synthetic.TASKS[name].video else 1)
    for seed in range(3):
        clean = synthetic._render_times(video_scene(name, seed), TASK_SIZE, times)
        np.testing.assert_array_equal(make_pair(name, seed)[1], clean)


def test_colorization_input_is_the_gray_luma_of_the_target():
    task_input, target = make_pair("colorization")
    for channel in range(3):
        np.testing.assert_allclose(task_input[..., channel], target @ [0.299, 0.587, 0.114], atol=1e-6)


@pytest.mark.parametrize("name", ["inpainting", "video_inpainting"])
def test_inpainting_fills_one_box_with_a_constant_in_every_frame(name):
    for seed in range(5):
        task_input, target = make_pair(name, seed)
        changed = task_input != target
        hole = (task_input == 0.0).all(axis=(0, -1))
        rows, cols = hole.any(axis=1), hole.any(axis=0)
        np.testing.assert_array_equal(hole, np.outer(rows, cols))
        for extent in (rows.sum(), cols.sum()):
            assert TASK_SIZE // 4 <= extent <= TASK_SIZE // 2
        assert not changed[:, ~hole].any()


def test_denoising_and_low_light_inputs_are_noisy_and_dark():
    noisy, clean = make_pair("denoising")
    assert 0.05 < np.abs(noisy - clean).mean() < 0.4
    dark, clean = make_pair("low_light")
    assert (dark + 1).mean() < 0.4 * (clean + 1).mean()


def gradient_energy(frames):
    return (np.diff(frames, axis=1) ** 2).sum() + (np.diff(frames, axis=2) ** 2).sum()


def test_deblurring_input_is_a_smoothed_target():
    for seed in range(3):
        blurred, sharp = make_pair("deblurring", seed, size=64)
        assert gradient_energy(blurred) < 0.7 * gradient_energy(sharp)
        np.testing.assert_allclose(blurred.mean(), sharp.mean(), atol=0.02)


def test_rain_only_brightens_along_sparse_streaks():
    for seed in range(3):
        rainy, clean = make_pair("deraining", seed, size=64)
        assert (rainy >= clean).all()
        assert 0.0 < (rainy != clean).any(-1).mean() < 0.3


def test_super_resolution_input_holds_the_target_block_means():
    factors = set()
    for seed in range(6):
        low, high = make_pair("super_resolution", seed)
        for factor in (4, 2):
            side = TASK_SIZE // factor
            blocks = lambda frames: frames.reshape(1, side, factor, side, factor, 3)
            if np.allclose(blocks(low), blocks(high).mean((2, 4), keepdims=True), atol=1e-6):
                factors.add(factor)
                break
        else:
            pytest.fail(f"seed {seed}: the input is not the target's 2x2 or 4x4 block means")
    assert factors == {2, 4}


def test_inverse_tasks_swap_their_forward_pair():
    for inverse, forward in [("depth_to_image", "depth"), ("segmentation_to_image", "semantic_segmentation")]:
        swapped = make_pair(inverse, 4)
        for a, b in zip(swapped, make_pair(forward, 4)[::-1]):
            np.testing.assert_array_equal(a, b)


def test_figures_keep_their_joints_apart_and_their_sides_in_place():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        joints = synthetic._draw_figure(rng)
        assert joints.min() > 0.0 and joints.max() < 1.0
        distances = np.linalg.norm(joints[:, None] - joints[None], axis=-1)
        assert distances[np.triu_indices(len(joints), 1)].min() >= 0.099 - 1e-9
        left_hand, right_hand, left_foot, right_foot = joints[3:, 1]
        assert left_hand < right_hand and left_foot < right_foot


def test_keypoints_mark_the_figures_joints():
    # Every joint shows, its pixels' centroid within a pixel of where the figure has the joint.
    for size in (16, 32):
        for seed in range(50):
            rng = np.random.default_rng(seed)
            synthetic.base_image(rng, size)  # the task draws its scene, then its figure
            joints = synthetic._draw_figure(rng) * size - 0.5  # in pixel rows and columns
            labels = scoring.image_to_labels(make_pair("keypoints", seed, size)[1][0])
            np.testing.assert_array_equal(np.unique(labels), np.arange(len(synthetic._JOINTS) + 1))
            for joint, position in enumerate(joints, start=1):
                centroid = np.argwhere(labels == joint).mean(0)
                assert np.linalg.norm(centroid - position) < 1.0, (size, seed, joint)
    size = 64
    for seed in range(4):
        figure, target = (frame[0] for frame in make_pair("keypoints", seed, size))
        labels = scoring.image_to_labels(target)
        np.testing.assert_array_equal(np.unique(labels), np.arange(len(synthetic._JOINTS) + 1))
        joints = range(1, len(synthetic._JOINTS) + 1)
        centres = np.array([np.argwhere(labels == joint).mean(0) for joint in joints])
        # Every joint lies on a (white) limb of the figure drawn into the input ...
        for row, col in np.round(centres).astype(int):
            np.testing.assert_array_equal(figure[row, col], 1.0)
        # ... which covers only a part of the scene, and left is the image's left.
        scene = synthetic.base_image(np.random.default_rng(seed), size)
        assert 0.0 < (figure != scene).any(-1).mean() < 0.3
        left_hand, right_hand, left_foot, right_foot = centres[3:, 1]
        assert left_hand <= right_hand and left_foot <= right_foot


def test_detection_boxes_the_one_circle_on_top():
    for seed in range(6):
        scene_image, target = (frame[0] for frame in make_pair("detection", seed))
        top, left, bottom, right = scoring.image_to_box(target)
        colour = scene_image[(top + bottom) // 2, (left + right) // 2]
        disc = (scene_image == colour).all(-1)
        rows, cols = np.flatnonzero(disc.any(1)), np.flatnonzero(disc.any(0))
        assert (rows[0], cols[0], rows[-1], cols[-1]) == (top, left, bottom, right)
        off_the_box = np.ones((TASK_SIZE, TASK_SIZE), bool)
        off_the_box[top : bottom + 1, left : right + 1] = False
        np.testing.assert_array_equal(target[off_the_box], scoring.BOX_CONTRAST * scene_image[off_the_box])


def make_clips(seed=0, frames=5):
    return synthetic.SyntheticClips(data_config(image_size=SIZE), seed, frames=frames)


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
    # Their own seed stream: a clip is drawn from (seed, CLIP_STREAM, index), never replaying the
    # randomness of the episode (or any other draw) of the same seed and index.
    streams = [
        synthetic.EPISODE_STREAM, synthetic.NUM_PAIRS_STREAM, synthetic.CLIP_STREAM,
        synthetic.CLIP_LENGTH_STREAM, synthetic.VIDEO_STREAM,
    ]
    assert len(set(streams)) == len(streams)
    drawn_from = lambda stream: synthetic.base_clip(np.random.default_rng((3, stream, 10)), SIZE, 5)
    np.testing.assert_array_equal(clips[10]["video"], drawn_from(synthetic.CLIP_STREAM))
    assert not np.array_equal(clips[10]["video"], drawn_from(synthetic.EPISODE_STREAM))


def test_clips_work_as_a_grain_source():
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
