import jax
import numpy as np
import pytest

from lavin_jax import conditioning, inference, main, train, validation
from lavin_jax.data import captions
from lavin_jax.models import text
from conftest import GENTRON_FAST, gentron_config


def test_examples_are_captioned_scenes_with_dropped_captions_and_motion_free_clips():
    source = conditioning.get(gentron_config(**{"data.cond_drop_prob": 0.25})).source(seed=3)
    examples = [source[i] for i in range(200)]
    first = examples[0]
    assert first["target"].shape == (1, 32, 32, 3) and first["text"].shape == (72,) and "motion_free" not in first
    np.testing.assert_array_equal(source[0]["target"], first["target"])  # a pure function of (seed, index)
    empty = [e for e in examples if e["text_length"] == 2]
    assert 30 < len(empty) < 70  # a quarter dropped to the empty caption
    told = next(e for e in examples if e["text_length"] > 2)
    words = bytes(int(b) - 3 for b in told["text"][1 : told["text_length"] - 1]).decode()
    assert words.startswith("a ") and any(colour in words for colour in captions.COLOURS)

    video = conditioning.get(gentron_config(**{"model.temporal": True, "data.video_frames": 4, "data.motion_free_prob": 0.5})).source(seed=3)
    clips = [video[i] for i in range(100)]
    assert clips[0]["target"].shape == (4, 32, 32, 3)
    assert 30 < sum(bool(c["motion_free"]) for c in clips) < 70


def test_config_mistakes_are_named():
    for fields, message in (
        ({"data.image_size": 16}, r"config.data.image_size=16 must be at least 32"),
        ({"data.captions": "coco"}, r"config.data.captions='coco' is unknown"),
        ({"model.temporal": True, "data.video_frames": 1}, r"config.data.video_frames=1 must be at least 2"),
        ({"data.motion_free_prob": 1.5}, r"config.data.motion_free_prob=1.5 must be in \[0, 1\]"),
    ):
        with pytest.raises(ValueError, match=message):
            validation.validate(gentron_config(**fields), num_devices=8, num_processes=1)


def test_a_trained_run_draws_captions_and_is_judged_beside_itself_told_nothing(trained_gentron, tmp_path):
    predictor = inference.Predictor.from_workdir(str(trained_gentron))
    pictures = predictor.predict_batch(["a small red circle", "a large blue square left of a small green triangle"])
    assert [p.shape for p in pictures] == [(32, 32, 3)] * 2 and pictures[0].dtype == np.uint8
    np.testing.assert_array_equal(predictor.predict("a small red circle"), pictures[0])  # noise from (seed, i)
    assert not np.array_equal(predictor.predict("a large yellow square"), pictures[0])  # the caption is read
    with pytest.raises(ValueError, match=r"prompts\[0\]=3 is not a caption"):
        predictor.predict(3)
    tokens, lengths = text.tokenize(["a"], 72)
    with pytest.raises(ValueError, match=r"tokens \(N, 72\)"):
        predictor.sample({"text": tokens[:, :10], "text_length": lengths}, 1)
    config = gentron_config()
    report = main.evaluate_run(config, str(trained_gentron), "eval", output_dir=str(tmp_path))
    for answer in ("model", "text_blind"):
        assert set(report["scores"][answer]) >= {"colour", "shape", "size", "all"}
        assert all(0.0 <= v <= 1.0 for v in report["scores"][answer].values())
    assert (tmp_path / "eval" / "metrics.json").exists()


def test_a_video_model_grows_from_an_image_run_and_samples_with_motion_free_guidance(trained_gentron, tmp_path, capsys):
    from lavin_jax import parallel, runs
    from lavin_jax import state as state_lib

    image = gentron_config()
    # Large steps kept whole by the EMA move the video run's temporal attention off the identity.
    fields = {"model.temporal": True, "data.video_frames": 3, "init_from": str(trained_gentron), "total_steps": 1,
              "checkpoint_every": 1, "eval_every": 0, **GENTRON_FAST}
    video = gentron_config(**fields)
    step, grown = train.check_init_from(video)
    assert grown == ["model.temporal"]
    s = state_lib.setup(video, parallel.make_mesh(video))
    restored, new = runs.restore_shared(video.init_from, step, s.abstract_state["ema"], runs.trained_config(video.init_from)[0].model)
    assert new == ["blocks/temporal"]
    state = jax.device_get(state_lib.init_state(video, s, restored))
    _, abstract = runs.abstract_model(image.model, s.mesh, image.mesh.rules)
    saved = jax.device_get(runs.restore_ema(video.init_from, step, abstract))
    for name in ("patch_embed", "blocks", "text_encoder"):  # every image parameter, as the image run left it
        jax.tree.map(np.testing.assert_array_equal, {k: v for k, v in state["ema"][name].items() if k != "temporal"}, saved[name])
    assert not np.any(state["params"]["model"]["blocks"]["temporal"]["fc"]["kernel"])  # the identity over time
    with pytest.raises(ValueError, match=r"holds a model with model.depth=1 but the config has model.depth=2"):
        train.check_init_from(gentron_config(**{**fields, "model.depth": 2}))

    train.train(video, str(tmp_path / "t2v"))
    assert "(step 2) grown by model.temporal; new parameters: blocks/temporal." in capsys.readouterr().out
    predictor = inference.Predictor.from_workdir(str(tmp_path / "t2v"))
    plain, guided = (predictor.predict("a small red circle moving left", motion_scale=scale) for scale in (1.0, 2.0))
    assert plain.shape == (3, 32, 32, 3) and not np.array_equal(plain, guided)
    with pytest.raises(ValueError, match=r"A motion_scale other than 1 needs a model trained with motion-free clips"):
        inference.Predictor.from_workdir(str(trained_gentron)).predict("a small red circle", motion_scale=2.0)
