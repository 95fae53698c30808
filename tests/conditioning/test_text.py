import jax
import numpy as np
import pytest

from lavin_jax import conditioning, inference, main, objectives, train, validation
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

    # Joint image-video training: stills are one picture over the frames, without motion, motion-free.
    joint = conditioning.get(gentron_config(**{"model.temporal": True, "data.video_frames": 4, "data.motion_free_prob": 0.0,
                                               "data.image_share": 0.5})).source(seed=3)
    mixed = [joint[i] for i in range(60)]
    stills = [i for i, c in enumerate(mixed) if bool(c["motion_free"])]
    assert 15 < len(stills) < 45
    for i, c in enumerate(mixed):
        words = bytes(int(b) - 3 for b in c["text"][1 : c["text_length"] - 1]).decode()
        same = all(np.array_equal(c["target"][0], frame) for frame in c["target"])
        assert same == (i in stills) and ("moving" in words) == (i not in stills and c["text_length"] > 2)


def test_config_mistakes_are_named():
    for fields, message in (
        ({"data.image_size": 16}, r"config.data.image_size=16 must be at least 32"),
        ({"data.captions": ""}, r"config.data.captions is empty"),
        ({"model.temporal": True, "data.video_frames": 1}, r"config.data.video_frames=1 must be at least 2"),
        ({"model.temporal": True, "data.video_frames": 6}, r"config.data.video_frames=6: the moving scenes have at most 4 frames"),
        ({"data.motion_free_prob": 1.5}, r"config.data.motion_free_prob=1.5 must be in \[0, 1\]"),
        ({"data.image_share": -0.1}, r"config.data.image_share=-0.1 must be in \[0, 1\]"),
    ):
        with pytest.raises(ValueError, match=message):
            validation.validate(gentron_config(**fields), num_devices=8, num_processes=1)


CLIP = {"vocab_size": 300, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "max_position_embeddings": 77}


def test_a_folder_of_captions_trains_through_a_frozen_released_encoder_and_is_drawn_beside_its_pictures(tmp_path):
    """Real captioned data (folder images with a .txt beside each, a bad one passed over and
    counted) read by the paper's kind of encoder: a random CLIP text release in the Hugging Face
    layout, tokenised by its own tokenizer, run by the step and the sampler and never trained;
    evaluated by a grid real | model | told nothing. (T5 trains from the latent cache in
    test_latents.py.)"""
    from PIL import Image
    from lavin_jax.models import clip_text, released

    words = released.CAPTIONS  # what the random release's tokenizer knows

    folder, release = tmp_path / "captioned", str(tmp_path / "clip")
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(words[i % len(words)] + "\n")
    (folder / "3.png").write_bytes(b"not a picture")
    clip_text.write_random(release, CLIP)
    fields = {"data.captions": str(folder), "data.image_size": 16, "model.text_encoder": "clip", "model.text_encoder_path": release,
              "model.text_width": 16, "model.text_length": 24, "total_steps": 2, "checkpoint_every": 2, "eval_every": 2,
              "eval.episodes": 2, **GENTRON_FAST}
    for wrong, error, message in (
        ({"data.captions": str(tmp_path / "nowhere")}, FileNotFoundError, r"Folder '.*nowhere' of captioned files does not exist"),
        ({"model.text_width": 32}, ValueError, r"config.model.text_width=32 but the clip encoder in config.model.text_encoder_path="),
    ):
        with pytest.raises(error, match=message):
            objectives.get(gentron_config(**{**fields, **wrong})).check_files()
    with pytest.raises(ValueError, match=r"config.model.text_encoder='t5' needs config.model.text_encoder_path"):
        validation.validate(gentron_config(**{"model.text_encoder": "t5"}), num_devices=8, num_processes=1)

    config = gentron_config(**fields)
    source = conditioning.get(config).source(seed=0)
    examples = [source[i] for i in range(16)]
    assert examples[0]["target"].shape == (1, 16, 16, 3) and sum(int(e["skipped"]) for e in examples) >= 1
    known = text.tokenizer(config.model)([*words, ""], 24)[0]
    assert all(any(np.array_equal(e["text"], row) for row in known) for e in examples)
    assert len({e["text"].tobytes() for e in examples}) > 3
    train.train(config, str(tmp_path / "run"))
    assert (tmp_path / "run" / "samples" / "samples_captions_0000002.png").exists()
    predictor = inference.Predictor.from_workdir(str(tmp_path / "run"))
    assert "text_encoder" not in predictor.params  # frozen: a constant of the step, not a parameter.
    first, second = predictor.predict_batch(list(words[:2]))
    assert first.shape == (16, 16, 3) and not np.array_equal(first, second)


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

