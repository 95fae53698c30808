import jax
import numpy as np
import pytest
from PIL import Image

from lavin_jax import inference, runs
from lavin_jax.conditioning import incontext


@pytest.fixture(scope="module")
def predictor(trained_jdit):
    """The one-step run's predictor, its parameters redrawn: a model one step old answers nearly
    zero velocity whatever it is shown, which would hide what the options change."""
    predictor = inference.Predictor.from_workdir(str(trained_jdit[1]))
    rng = np.random.default_rng(0)
    redraw = lambda x: jax.device_put(0.2 * rng.standard_normal(x.shape).astype(np.float32), x.sharding)
    predictor.params = jax.tree.map(redraw, predictor.params)
    return predictor


def image(rng, height, width):
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_a_loaded_run_answers_in_the_shape_of_its_query_and_batches_change_nothing(predictor, tmp_path):
    rng = np.random.default_rng(0)
    pairs = [(image(rng, 20, 30), image(rng, 20, 30))]
    wide, square = image(rng, 24, 40), image(rng, 16, 16)
    alone = predictor.predict(pairs, wide, cfg_scale=2.0, seed=3)
    assert alone.shape == (24, 40, 3) and alone.dtype == np.uint8
    # Episode 0 of a batch draws the same noise as the episode alone; the second has other pairs.
    batched = predictor.predict_batch([(pairs, wide), ([], square)], cfg_scale=2.0, seed=3)
    assert batched[1].shape == (16, 16, 3)
    np.testing.assert_allclose(batched[0], alone, atol=1)
    # Files are read like arrays.
    paths = []
    for name, x in (("in", pairs[0][0]), ("out", pairs[0][1]), ("query", wide)):
        Image.fromarray(x).save(tmp_path / f"{name}.png")
        paths.append(str(tmp_path / f"{name}.png"))
    np.testing.assert_array_equal(predictor.predict([tuple(paths[:2])], paths[2], cfg_scale=2.0, seed=3), alone)
    # The seed, the sampler, the time grid and the step count each change the answer.
    for other in ({"seed": 4}, {"sampler": "heun"}, {"time_grid": "uniform"}, {"steps": 2}):
        assert np.abs(predictor.predict(pairs, wide, **{"cfg_scale": 2.0, "seed": 3, **other}).astype(int) - alone).max() > 8, other


def test_another_guidance_scale_reuses_the_compiled_sampler(predictor):
    rng = np.random.default_rng(1)
    pairs, query = [(image(rng, 16, 16), image(rng, 16, 16))], image(rng, 16, 16)
    predictor.predict(pairs, query, cfg_scale=1.5)
    compiled = predictor._sample._cache_size()
    answers = [predictor.predict(pairs, query, cfg_scale=s) for s in (2.5, 4.0)]
    assert predictor._sample._cache_size() == compiled
    assert not np.array_equal(*answers)


def test_the_answer_is_cut_from_the_padded_frame_and_scaled_back(predictor, monkeypatch):
    """A model that answers with its query gives the query back, whatever the query's size: the
    query is the last item of the episode, and padding and scaling are undone exactly (nearest)."""
    monkeypatch.setattr(predictor, "sample", lambda context, frames, **_: context["cond"][:, -frames:])
    rng = np.random.default_rng(2)
    tall = image(rng, 8, 4)  # to 16 px: scaled 2x, 4 px of black padding each side.
    ramp = np.linspace(0, 255, 32).astype(np.uint8)  # smooth, so scaling down and up keeps it.
    clip = np.broadcast_to(ramp[None, None, :, None], (2, 32, 32, 3))  # a 2-frame clip scaled by 1/2.
    pairs = [(image(rng, 8, 4), image(rng, 8, 4))]
    np.testing.assert_array_equal(predictor.predict(pairs, tall, resample="nearest"), tall)
    np.testing.assert_array_equal(predictor.predict(pairs, tall, fit="stretch", resample="nearest"), tall)
    restored = predictor.predict([(clip, clip)], clip)
    assert restored.shape == clip.shape
    assert np.abs(restored.astype(int) - clip).max() <= 8  # bilinear down and up again.


def test_image_and_clip_episodes_of_one_shape_are_sampled_apart(predictor, monkeypatch):
    """With 3-frame clips, 4 image pairs and 1 clip pair both make 9 frames of condition."""
    monkeypatch.setitem(predictor.config.data, "video_frames", 3)
    monkeypatch.setattr(predictor, "sample", lambda context, frames, **_: context["cond"][:, -frames:])
    rng = np.random.default_rng(3)
    query = image(rng, 16, 16)
    clip = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    answers = predictor.predict_batch([([(clip, clip)], clip), ([(query, query)] * 4, query)])
    np.testing.assert_array_equal(answers[0], clip)
    np.testing.assert_array_equal(answers[1], query)


@pytest.mark.parametrize(
    "pairs, query, message",
    [
        ([(np.zeros((16, 16, 3), np.uint8),)], np.zeros((16, 16, 3), np.uint8), r"episodes\[0\] pairs\[0\] must be an \(input, target\) pair"),
        ([], np.zeros((16, 16), np.uint8), r"The episodes\[0\] query is uint8 \(16, 16\); a uint8 image"),
        ([], np.zeros((16, 16, 3), np.float32), r"query is float32"),
        ([(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))], np.zeros((8, 8, 3), np.uint8),
         r"episodes\[0\] pairs\[0\] input has 2 frames; every item must have as many as the query"),
        ([], np.zeros((3, 8, 8, 3), np.uint8), r"query has 3 frames; .*config.data.video_frames=2"),
        ([], "missing.png", r"The episodes\[0\] query, 'missing.png', cannot be read as an image"),
    ],
)
def test_bad_items_are_named(predictor, pairs, query, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict(pairs, query)


def test_a_missing_run_and_bad_settings_are_named_before_any_weight_is_read(trained_jdit, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="has no checkpoints directory"):
        inference.Predictor.from_workdir(str(tmp_path))
    monkeypatch.setattr(runs, "restore_ema", lambda *_: pytest.fail("weights read before the settings were checked"))
    with pytest.raises(ValueError, match=r"config.flow.time_grid='cosine' must be one of lavin, uniform, official"):
        inference.Predictor.from_workdir(str(trained_jdit[1]), overrides={"flow.time_grid": "cosine"})


def test_prompting_a_run_needs_none_of_what_only_its_evaluation_reads(trained_jdit, tmp_path):
    """Record directories and FID/FVD files of the training machine need not exist where a run is
    prompted (--mode=eval checks them: test_evaluation)."""
    gone = {"eval.fid_weights": str(tmp_path / "inception.safetensors"), "eval.records": (str(tmp_path / "records"),)}
    predictor = inference.Predictor.from_workdir(str(trained_jdit[1]), overrides=gone)
    assert predictor.config.eval.fid_weights == gone["eval.fid_weights"]


def test_episodes_of_the_wrong_layout_are_named(predictor):
    with pytest.raises(ValueError, match=r"Episodes \(1, 4, 16, 16, 3\): 1-frame items are needed, K pairs then the query"):
        predictor.sample({"cond": np.zeros((1, 4, 16, 16, 3), np.float32)}, 1)
    with pytest.raises(ValueError, match="sampler='rk4' must be one of euler, heun"):
        predictor.sample({"cond": np.zeros((1, 3, 16, 16, 3), np.float32)}, 1, sampler="rk4")


def test_the_official_recipe_draws_template_pairs_and_runs(predictor, tmp_path):
    rng = np.random.default_rng(4)
    for name in ("a", "b", "c"):
        for role in ("input", "target"):
            Image.fromarray(image(rng, 20, 24)).save(tmp_path / f"{name}_{role}.png")
    pairs = incontext.template_pairs(str(tmp_path), 4, seed=1)
    assert len(pairs) == 4 and all(target == source.replace("_input", "_target") for source, target in pairs)
    assert pairs == incontext.template_pairs(str(tmp_path), 4, seed=1) != incontext.template_pairs(str(tmp_path), 4, seed=2)
    answer = predictor.predict(pairs, image(rng, 30, 20), **incontext.OFFICIAL)
    assert answer.shape == (30, 20, 3)
    (tmp_path / "c_target.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"has 3 <id>_input.png files and lacks .*c_target.png"):
        incontext.template_pairs(str(tmp_path))
