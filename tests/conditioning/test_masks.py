import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lavin_jax import config as config_lib
from lavin_jax import flow, metrics, objectives
from lavin_jax.conditioning import masks
from lavin_jax.objectives import generative
from conftest import ROOT, vdt_config


def tiny(**overrides):
    return config_lib.load(str(ROOT / "configs" / "vdt_tiny.py"), overrides)


def draw(mode, seed=0, frames=8, tokens=8, **fields):
    m = tiny().mask
    m.update(fields)
    return masks.draw_mask(mode, np.random.default_rng(seed), frames, tokens, m)


def test_each_temporal_mode_gives_the_frames_it_says():
    given = lambda known: [int(t) for t in np.nonzero(known.all(axis=(1, 2)))[0]]
    assert given(draw("predict", given_frames=3)) == [0, 1, 2]
    assert given(draw("predict", given_frames=0)) == [0, 1, 2, 3]  # 0: half the clip.
    assert given(draw("backward", given_frames=3)) == [5, 6, 7]
    assert given(draw("interpolate", interpolation_step=3)) == [0, 3, 6]
    assert given(draw("unconditional")) == []
    for seed in range(5):
        assert len(given(draw("one_frame", seed))) == 1
        known = draw("random", seed, random_ratio=0.8)
        assert np.all(known.all(axis=(1, 2)) | ~known.any(axis=(1, 2)))  # whole frames only.
    # About 1 - 0.8 of the frames given, over many draws.
    share = np.mean([draw("random", seed, random_ratio=0.8).all(axis=(1, 2)).mean() for seed in range(200)])
    assert 0.15 < share < 0.25
    with pytest.raises(ValueError, match="Mask mode 'sideways' is unknown"):
        draw("sideways")


def test_the_spatial_mode_hides_blocks_of_about_its_ratio_and_keeps_the_edge_frames():
    for seed in range(20):
        known = draw("spatial", seed, frames=8, tokens=16, spatial_ratio=0.5, spatial_edge=3)
        partial = ~known.all(axis=(1, 2))
        hidden = (~known).sum(axis=(1, 2))
        assert partial.any() and np.all(known[~partial])
        inner = np.nonzero(partial)[0]
        assert inner[0] <= 3 and inner[-1] >= 8 - 1 - 3 and np.all(np.diff(inner) == 1)
        assert np.all(hidden[partial] == hidden[partial][0])  # one spatial mask on every frame it covers.
        assert 0.3 * 256 <= hidden[partial][0] <= 0.5 * 256 + 1e-9
    block = masks.block_mask(np.random.default_rng(0), 16, 40)
    assert 4 <= block.sum() <= 40


def test_nearest_given_copies_each_hidden_pixel_from_the_closest_frame_that_gives_it():
    clip = np.arange(5, dtype=np.float32)[:, None, None, None] * np.ones((5, 2, 2, 3), np.float32) / 10
    known = np.zeros((5, 2, 2), bool)
    known[0] = known[4] = True
    known[2, 0, 0] = True
    out = masks.nearest_given(clip, known)
    np.testing.assert_allclose(out[1, 1, 1], 0.0)  # frame 1 from frame 0
    np.testing.assert_allclose(out[3, 1, 1], 0.4)  # frame 3 from frame 4
    np.testing.assert_allclose(out[2, 1, 1], 0.0)  # a tie: the earlier frame
    np.testing.assert_allclose(out[3, 0, 0], 0.2)  # pixel (0, 0) is given by frame 2
    np.testing.assert_allclose(masks.nearest_given(clip, np.zeros_like(known)), 0.0)  # given nowhere: grey.


def test_prompt_masks_in_pixels_reach_the_model_grid_only_where_whole_cells_are_given():
    c = tiny(**{"data.image_size": 32})
    cond = masks.FrameMasks(c)
    known = masks.known_pixels(2, 32, given_frames=[0], hole=(0, 0, 5, 32))
    cells = cond.model_known(known)
    assert cells.shape == (2, 32, 32)  # pixels: the model's grid is the frame.
    c = tiny(**{"data.image_size": 32, "vae.name": "sdvae", "model.in_channels": 4})
    cells = masks.FrameMasks(c).model_known(known)
    assert cells.shape == (2, 4, 4)
    assert cells[0].all() and not cells[1, :1].any() and cells[1, 1:].all()  # rows 0-4: cell row 0 touched.


def test_given_puts_the_clean_values_where_known_and_the_loss_counts_only_the_rest():
    seen = {}

    def model(x, t, context):
        seen["x"] = x
        return x * 0.0

    target = jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 3))
    known = jnp.zeros((2, 3, 4, 4)).at[:, 0].set(1.0)
    batch = {"target": target, "known": known}
    cfg = tiny().flow
    weight = 1.0 - known[..., None]
    loss, _ = flow.loss(generative.given(model, target), batch, jax.random.key(1), cfg, weight)
    np.testing.assert_array_equal(seen["x"][:, 0], target[:, 0])
    assert not np.allclose(seen["x"][:, 1], target[:, 1])  # the hidden frames are noisy.
    # The known frame's error is not counted: changing the target there moves nothing but what the
    # model sees, which this model ignores.
    other = {"target": target.at[:, 0].add(5.0), "known": known}
    again, _ = flow.loss(generative.given(model, other["target"]), other, jax.random.key(1), cfg, weight)
    np.testing.assert_allclose(again, loss, rtol=1e-6)


def test_config_mistakes_are_named():
    from lavin_jax import validation

    for overrides, match in (
        ({"mask.weights.predict": -1.0}, r"config.mask.weights.predict=-1.0 must not be negative"),
        ({**{f"mask.weights.{m}": 0.0 for m in masks.MODES}}, r"config.mask.weights are all 0"),
        ({"mask.given_frames": 8}, r"config.mask.given_frames=8 must be in \[0, config.data.video_frames=8\)"),
        ({"data.clips": ""}, r"config.conditioning='mask' needs config.data.clips"),
        ({"data.source": "latents"}, r"config.data.source='latents' needs an autoencoder"),
    ):
        with pytest.raises(ValueError, match=match):
            validation.validate(tiny(**overrides), num_devices=8)
    assert isinstance(objectives.get(tiny()).conditioning, masks.FrameMasks)


def test_a_trained_run_completes_prompts_keeping_what_was_given(trained_vdt):
    from lavin_jax import inference

    predictor = inference.Predictor.from_workdir(str(trained_vdt))
    clip = predictor.conditioning.dataset("test").read(0)
    frames, size = clip.shape[:2]
    by_mask, hole = predictor.predict_batch(
        [(clip, masks.known_pixels(frames, size, given_frames=[0, 3])), (clip, masks.known_pixels(frames, size, hole=(4, 4, 8, 8)))], steps=2)
    assert by_mask.shape == clip.shape and by_mask.dtype == np.uint8
    np.testing.assert_array_equal(by_mask[[0, 3]], clip[[0, 3]])
    # Frame indices are that mask; prompt 0 of a call draws the same noise: the same answer.
    np.testing.assert_array_equal(predictor.predict(clip, [0, 3], steps=2), by_mask)
    assert not np.array_equal(by_mask[1:3], clip[1:3])
    outside = masks.known_pixels(frames, size, hole=(4, 4, 8, 8))
    np.testing.assert_array_equal(hole[outside], clip[outside])
    # A clip of another size is fitted to the model and answered at its own size.
    big = np.repeat(np.repeat(clip, 2, axis=1), 2, axis=2)
    assert predictor.predict(big, [0], steps=2).shape == big.shape
    with pytest.raises(ValueError, match=r"prompts\[0\] gives frames \[9\], not all within the clip's 4"):
        predictor.predict(clip, [9])


def test_evaluation_and_sampling_cover_every_trained_mode(trained_vdt, tmp_path):
    from lavin_jax import main

    config = vdt_config()
    report = main.evaluate_run(config, str(trained_vdt), "eval", output_dir=str(tmp_path / "eval"))
    assert set(report["modes"]) == set(masks.MODES)
    for mode, scores in report["modes"].items():
        if mode in ("unconditional", "random"):  # nothing given (random may hide every frame of 4).
            assert mode == "random" or scores["model"] == {}
            if not scores["model"]:
                continue
        for answer in ("model", "nearest_given"):
            assert 0 < scores[answer]["psnr"] <= 100 and -1 <= scores[answer]["ssim"] <= 1
        assert set(scores["model"]["psnr_per_frame"]) <= set(range(4))
    assert set(report["modes"]["predict"]["model"]["psnr_per_frame"]) == {2, 3}  # 2 of 4 frames given.
    # Each clip's rows: given | model | copy | real; the copy's frames 2 and 3 are the real frame 1.
    size = config.data.image_size
    scale = metrics.display_scale(size)
    grid = report["grids"]["sampled_predict"]
    start = lambda index: metrics.BORDER + index * (size * scale + metrics.BORDER)
    cell = lambda row, frame: grid[start(row):start(row + 1) - metrics.BORDER, start(frame):start(frame + 1) - metrics.BORDER]
    assert grid.shape[0] == start(4 * config.sample.num_examples)
    for frame in (2, 3):
        np.testing.assert_array_equal(cell(2, frame), cell(3, 1))
    assert not np.array_equal(cell(2, 3), cell(3, 3))  # the digits moved: the copy is not the clip.
    main.evaluate_run(config, str(trained_vdt), "sample", output_dir=str(tmp_path / "sample"))
    written = sorted(p.name.rsplit("_", 1)[0] for p in (tmp_path / "sample" / "samples").glob("*.gif"))
    assert written == sorted(f"sampled_{mode}" for mode in masks.MODES)


def test_gaussian_diffusion_trains_and_samples_vdt_keeping_what_was_given(tmp_path):
    """VDT's own objective: ddpm with a learned variance, its evaluation sampled by DDPM steps."""
    from lavin_jax import inference, train

    config = vdt_config(**{"objective": "ddpm", "model.learn_sigma": True, "total_steps": 1, "checkpoint_every": 1,
                           "eval_every": 1, "mask.weights.spatial": 0.0})
    train.train(config, str(tmp_path))
    gifs = sorted(p.name.rsplit("_", 1)[0] for p in (tmp_path / "samples").glob("*.gif"))
    assert gifs == [f"samples_{mode}" for mode in sorted(set(masks.MODES) - {"spatial"})]  # the modes trained on.
    predictor = inference.Predictor.from_workdir(str(tmp_path))
    clip = predictor.conditioning.dataset("test").read(1)
    answer = predictor.predict(clip, [1, 2], steps=2, sampler="ddim")
    np.testing.assert_array_equal(answer[[1, 2]], clip[[1, 2]])
    assert not np.array_equal(answer[0], clip[0])


def test_evaluation_files_are_checked_before_anything_runs():
    from lavin_jax import objectives as objectives_lib

    for overrides, error, match in (
        ({"eval.fvd_weights": "/no/i3d.safetensors"}, FileNotFoundError, r"config.eval.fvd_weights='/no/i3d.safetensors' does not exist"),
        ({"eval.fvd_weights": __file__}, ValueError, r"I3D needs clips of at least 9 frames"),
        ({"data.clips": "/no/videos"}, ValueError, r"Clips '/no/videos' are not 'moving_digits', 'synthetic', 'tfds:NAME' or a directory"),
    ):
        with pytest.raises(error, match=match):
            objectives_lib.get(vdt_config(**overrides)).check_eval_files()
