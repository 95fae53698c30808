import json
import os

import jax
import numpy as np
import pytest

from lavin_jax import config as config_lib
from lavin_jax import conditioning, latents, train
from lavin_jax.data import synthetic
from conftest import ROOT, digits_config, iterate, small_config


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """A tiny ST-VAE trained for 2 steps on 16 px frames (2x2x16 latents)."""
    workdir = str(tmp_path_factory.mktemp("stvae"))
    config = config_lib.load(str(ROOT / "configs" / "stvae_tiny.py"), {
        "data.image_size": 16, "model.mid_layers": 0, "total_steps": 2, "checkpoint_every": 2,
        "eval_every": 0,  # its evaluation is tests/objectives/test_autoencoding.py's.
        "autoencoder.disc_weight": 0.0,
    })
    train.train(config, workdir)
    return workdir


@pytest.fixture(scope="module")
def vae_with_stats(vae_run):
    """vae_run with latent statistics, computed once for the tests below that need some."""
    latents.compute_stats(vae_run, examples=8)
    return vae_run


def latent_config(vae_run, **overrides):
    fields = {"vae.name": "stvae", "vae.checkpoint": vae_run, "model.in_channels": 16, "model.patch_size": 1, "data.video_frames": 5,
              "total_steps": 2, "checkpoint_every": 2, "eval_every": 2}
    fields.update(overrides)
    return small_config(**fields)


def test_missing_statistics_are_named_with_the_command(vae_run, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"has no latent_stats.json; compute it with: .*--mode=latent_stats"):
        latents.load(vae_run)


def test_statistics_normalise_the_latents(vae_run):
    stats = latents.compute_stats(vae_run, examples=32)
    assert json.load(open(os.path.join(vae_run, latents.STATS_FILE))) == stats
    vae = latents.load(vae_run)
    frames = np.stack([synthetic.SyntheticClips(vae.config.data, 9, frames=1)[i]["video"] for i in range(32)])
    z = np.asarray(jax.jit(vae.encode)(vae.params, frames))
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1.0) < 0.1
    pixels = jax.jit(vae.decode)(vae.params, z)
    assert pixels.shape == frames.shape


def test_the_cache_holds_what_encoding_in_the_step_sees(vae_with_stats, tmp_path):
    """For image and video episodes alike (a video item is one 5-frame clip: 2 latent frames)."""
    vae_run = vae_with_stats
    # Batches of 2 (nothing here is sharded): the 4 compared batches, kinds (K, video) (2, no),
    # (2, no), (1, no), (2, yes), are the cache's 8 episodes, video and fewer pairs than cached
    # included.
    fields = {"global_batch_size": 2, "data.tasks": ("flip", "frame_prediction")}
    config = latent_config(vae_run, **fields)
    written = latents.write_cache(config, str(tmp_path / "cache"), examples=8)
    assert written["examples"] == 8 and 0 < len(written["video"]) < 8
    cached = latent_config(vae_run, **fields, **{"data.source": "latents", "data.latent_dir": str(tmp_path / "cache")})
    vae = latents.load(vae_run)
    encode = jax.jit(vae.encode_frames, static_argnums=2)
    kinds = set()
    for from_cache, pixels in zip(take(iterate(cached), 4), take(iterate(config), 4)):
        frames = pixels["target"].shape[1]
        kinds.add(frames)
        assert from_cache["target"].shape[1] == (frames - 1) // 4 + 1
        for name in ("cond", "target"):
            encoded = np.asarray(encode(vae.params, pixels[name], frames))
            if name == "cond" and pixels["cond"].shape[1] == 2 * frames and not pixels["cond"][:, :frames].any():
                encoded[:, : encoded.shape[1] // 2] = 0.0  # no pairs: the zero item stays zero in latent space.
            np.testing.assert_allclose(from_cache[name], encoded, atol=1e-4)
        np.testing.assert_array_equal(from_cache["task"], pixels["task"])
    assert kinds == {1, 5}

    other = latent_config(vae_run, **{"data.source": "latents", "data.latent_dir": str(tmp_path / "cache"), "seed": 5})
    with pytest.raises(ValueError, match=r"was written with seed=0 but the config has 5"):
        iterate(other)


@pytest.fixture(scope="module")
def jdit_run(vae_with_stats, tmp_path_factory):
    """A J-DiT trained for 2 steps on latents of vae_run encoded in the step: (config, workdir, state)."""
    config = latent_config(vae_with_stats)
    workdir = tmp_path_factory.mktemp("jdit")
    return config, workdir, train.train(config, str(workdir))


def test_jdit_trains_on_latents_encoded_in_the_step_and_samples_pixels(jdit_run):
    """(The cache source feeds the same step the same arrays: see the test above.)"""
    config, workdir, state = jdit_run
    assert int(state["step"]) == 2
    logged = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert np.isfinite([line for line in logged if "loss" in line][-1]["loss"])
    from PIL import Image
    grid = np.asarray(Image.open(workdir / "samples" / "samples_colorization_0000002.png"))
    # 16 px pixel frames, not 2 px latents: enlarged 8x to 128 px cells.
    assert grid.shape[0] > 128 * config.sample.num_examples


def test_a_run_that_is_not_an_stvae_is_refused(jdit_run):
    """The J-DiT run above: a real run, whose checkpoint holds a J-DiT (training one costs seconds)."""
    with pytest.raises(ValueError, match=r"trained model 'jdit', not 'stvae'"):
        latents.load(str(jdit_run[1]))


def test_a_missing_stvae_run_is_named_before_the_workdir_is_touched(tmp_path):
    config = small_config(**{"vae.name": "stvae", "vae.checkpoint": str(tmp_path / "nowhere"), "model.in_channels": 16, "model.patch_size": 1, "data.video_frames": 5})
    with pytest.raises(FileNotFoundError, match=r"config.vae.checkpoint=.*nowhere.* has no checkpoints directory"):
        train.train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_the_benchmark_measures_the_stvae_a_config_names(vae_with_stats):
    """(lavin_jax.bench's `vae` part, and the ST-VAE's share of a pixel-source train step.)"""
    from lavin_jax import bench

    report = bench.run(latent_config(vae_with_stats), ["train", "vae"], steps=1, vae_batch=2)
    vae = report["vae"]
    # 16 px frames, 8x smaller latents of 16 channels; a 5-frame clip makes 2 latent frames.
    assert vae["image"]["latents"] == [2, 1, 2, 2, 16] and vae["clip"]["latents"] == [2, 2, 2, 2, 16]
    assert all(vae[kind][f"{op}_frames_per_sec"] > 0 for kind in ("image", "clip") for op in ("encode", "decode"))
    # The step encodes the episode's 2 pairs, its query and its answer: 6 images.
    train = report["train"]
    assert train["vae_encode_flops_per_example"] == 6 * vae["image"]["encode_flops_per_frame"] > 0
    assert train["vae_share_of_flops"] == train["vae_encode_flops_per_example"] / (
        train["vae_encode_flops_per_example"] + train["model_flops_per_example"])


def latent_digits(vae_run, **overrides):
    """DiT by DDPM on the ST-VAE's 2x2x16 latents of 16 px digits."""
    return digits_config(**{"objective": "ddpm", "model.learn_sigma": True, "vae.name": "stvae", "vae.checkpoint": vae_run,
                            "model.in_channels": 16, "model.patch_size": 1, "data.image_size": 16, "ddpm.sample_steps": 2,
                            "total_steps": 2, "checkpoint_every": 2, "eval_every": 2, "eval.episodes": 1, **overrides})


def test_a_class_conditional_dit_trains_on_latents_and_samples_pixels(vae_with_stats, tmp_path):
    """Encoded in the step; its samples are decoded to pixels for the classifier and the grid."""
    config = latent_digits(vae_with_stats)
    state = train.train(config, str(tmp_path))
    assert int(state["step"]) == 2
    logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert np.isfinite([line for line in logged if "loss" in line][-1]["vb"])
    assert "eval/accuracy" in logged[-1]
    from PIL import Image
    grid = np.asarray(Image.open(tmp_path / "samples" / "samples_classes_0000002.png"))
    assert grid.shape[0] == 10 * (16 * 8 + 2) + 2  # 10 classes of 16 px images enlarged 8x, not 2 px latents.


def test_the_class_cache_holds_what_encoding_in_the_step_sees_and_a_dit_trains_from_it(vae_with_stats, tmp_path):
    config = latent_digits(vae_with_stats, **{"data.flip_prob": 0.5})
    cache = str(tmp_path / "cache")
    written = latents.write_cache(config, cache, 20)
    assert written["examples"] == 20 and written["class_names"] == [str(k) for k in range(10)]
    # Not evaluated: the test above samples and decodes a run encoded in the step.
    from_cache = latent_digits(vae_with_stats, **{"data.flip_prob": 0.5, "data.source": "latents", "data.latent_dir": cache, "eval_every": 0})
    cached = latents.LatentImages(from_cache)
    # Each image and its mirror image, as the step would encode them (a flip of the latents is not).
    vae = latents.load(vae_with_stats)
    dataset = conditioning.get(config).dataset("train")
    image, label = dataset.read(3)
    z, cached_label = cached.read(3)
    assert cached_label == label and z.shape == (2, 1, 2, 2, 16)
    for flip in (False, True):
        encoded = vae.encode_frames(vae.params, dataset.target(image, flip)[None])[0]
        np.testing.assert_allclose(cached.target(z, flip), encoded, atol=1e-5)
    # The trainer reads it through the same labelled source as pixels, shuffled and labels dropped alike.
    state = train.train(from_cache, str(tmp_path / "run"))
    assert int(state["step"]) == 2
    # A cache of other data is named before anything is read.
    unmirrored = latent_digits(vae_with_stats, **{"data.flip_prob": 0.0, "data.source": "latents", "data.latent_dir": cache})
    with pytest.raises(ValueError, match=r"Latent cache .* was written with mirrored=True but the config has False"):
        conditioning.get(unmirrored).check_files()


@pytest.fixture(scope="module")
def sdvae_run(tmp_path_factory):
    """A small SD VAE run of random weights, as the converter writes one (the released latent
    statistics: no shift, scale 0.18215)."""
    import math
    from flax import nnx
    from lavin_jax import convert, runs
    from lavin_jax.models import sdvae
    from conftest import randomized

    config = runs.data_parallel(config_lib.base("sdvae"))
    config.model.update({**sdvae.tiny_config(), "channels": (8, 8, 8, 8), "groups": 4})
    scale = lambda shape: 0.2 if len(shape) == 1 else 1.0 / math.sqrt(math.prod(shape[:-1]))
    model = randomized(lambda: sdvae.SDVAE(config.model, rngs=nnx.Rngs(0)), 0, scale)
    workdir = str(tmp_path_factory.mktemp("sdvae"))
    convert.write_run(workdir, config, jax.device_get(nnx.state(model, nnx.Param).to_pure_dict()))
    shift, scale = latents.RELEASED["sdvae"]
    latents.write_stats(workdir, {"shift": shift, "scale": scale, "examples": 0, "source": "released"})
    return workdir


def test_a_dit_trains_on_sd_vae_latents_from_the_step_and_from_a_cache(sdvae_run, tmp_path):
    """The same labelled images, encoded frame by frame into 2x2x4 latents in the step or once
    into the cache; samples are decoded to pixels."""
    config = latent_digits(sdvae_run, **{"vae.name": "sdvae", "model.in_channels": 4, "data.flip_prob": 0.5})
    vae = latents.load(sdvae_run, "sdvae")
    assert (vae.shift, vae.scale) == (0.0, 0.18215) and vae.latent_frames(5) == 5
    cache = str(tmp_path / "cache")
    latents.write_cache(config, cache, 12)
    dataset = conditioning.get(config).dataset("train")
    image, _ = dataset.read(2)
    z, _ = latents.LatentImages(latent_digits(sdvae_run, **{"vae.name": "sdvae", "model.in_channels": 4, "data.flip_prob": 0.5,
                                                             "data.source": "latents", "data.latent_dir": cache})).read(2)
    np.testing.assert_allclose(z[0], vae.encode_frames(vae.params, dataset.target(image, False)[None])[0], atol=1e-5)
    state = train.train(config, str(tmp_path / "run"))
    assert int(state["step"]) == 2
    from PIL import Image
    grid = np.asarray(Image.open(tmp_path / "run" / "samples" / "samples_classes_0000002.png"))
    assert grid.shape[0] == 10 * (16 * 8 + 2) + 2  # 16 px images, not 2 px latents.


def test_an_autoencoder_run_of_the_other_family_is_refused(sdvae_run, vae_run):
    with pytest.raises(ValueError, match=r"trained model 'sdvae', not 'stvae'"):
        latents.load(sdvae_run, "stvae")
    with pytest.raises(ValueError, match=r"trained model 'stvae', not 'sdvae'"):
        latents.load(vae_run, "sdvae", need_stats=False)


def test_sd_vae_latent_statistics_are_computed_like_the_st_vae_s(sdvae_run, tmp_path):
    import shutil
    copy = str(tmp_path / "copy")
    shutil.copytree(sdvae_run, copy)
    stats = latents.compute_stats(copy, "sdvae", examples=8)
    assert stats["examples"] == 8 and stats["scale"] > 0 and latents.load(copy, "sdvae").scale == stats["scale"]


def test_a_vdt_trains_on_per_frame_latents_from_the_step_and_from_a_cache(sdvae_run, tmp_path):
    """VDT's clips encoded frame by frame (4 frames -> 4 latent frames of 2x2x4), in the step or
    once into the cache, whose clip i is the training clip i encoded; the masks are laid on the
    2x2 latent grid and the samples are decoded to 16 px frames."""
    from conftest import vdt_config

    from lavin_jax.conditioning import masks

    # Prediction alone is trained and so evaluated: the other modes are the pixel runs' tests.
    only_predict = {f"mask.weights.{mode}": float(mode == "predict") for mode in masks.MODES}
    fields = {"vae.name": "sdvae", "vae.checkpoint": sdvae_run, "model.in_channels": 4, "model.patch_size": 1,
              "total_steps": 2, "checkpoint_every": 2, "eval_every": 2, **only_predict}
    config = vdt_config(**fields)
    cache = str(tmp_path / "cache")
    assert latents.write_cache(config, cache, 6)["examples"] == 6
    # The cached run's samples are the step's: it is not evaluated again.
    cached = vdt_config(**{**fields, "eval_every": 0}, **{"data.source": "latents", "data.latent_dir": cache})
    vae = latents.load(sdvae_run, "sdvae")
    clip = conditioning.get(config).dataset("train").read(3)
    np.testing.assert_allclose(latents.LatentClips(cached).read(3), vae.encode_frames(vae.params, (clip[None] / 127.5 - 1).astype(np.float32))[0], atol=1e-5)
    example = conditioning.get(cached).source(0)[0]
    assert example["target"].shape == (4, 2, 2, 4) and example["known"].shape == (4, 2, 2)
    for run, c in (("step", config), ("cache", cached)):
        assert int(train.train(c, str(tmp_path / run))["step"]) == 2
    from PIL import Image
    grid = np.asarray(Image.open(tmp_path / "step" / "samples" / "samples_predict_0000002.png"))
    assert grid.shape[1] == 4 * (16 * 8 + 2) + 2  # 4 frames of 16 px, not 2 px latents.


def test_a_gentron_trains_from_a_cache_of_latents_and_frozen_caption_embeddings(sdvae_run, tmp_path):
    """GenTron's cache: each frame's SD VAE latents and, the encoder being frozen, the caption's
    embeddings as the step computes them, the empty caption's beside them for dropped captions."""
    from conftest import gentron_config
    from lavin_jax.models import t5, text

    release = str(tmp_path / "t5")
    t5.write_random(release, {"vocab_size": 100, "d_model": 16, "d_kv": 8, "num_heads": 2, "d_ff": 32, "num_layers": 1})
    fields = {"vae.name": "sdvae", "vae.checkpoint": sdvae_run, "model.in_channels": 4, "model.patch_size": 1, "model.text_encoder": "t5",
              "model.text_encoder_path": release, "model.text_width": 16, "model.text_length": 24, "data.cond_drop_prob": 0.5,
              "total_steps": 2, "checkpoint_every": 2, "eval_every": 0}
    config = gentron_config(**fields)
    cache = str(tmp_path / "cache")
    assert latents.write_cache(config, cache, 6)["examples"] == 6
    cached = gentron_config(**fields, **{"data.source": "latents", "data.latent_dir": cache})
    captions = conditioning.get(config)
    pictures, words = captions.dataset("train").read(3)
    z, read = latents.LatentCaptions(cached).read(3)
    vae = latents.load(sdvae_run, "sdvae")
    np.testing.assert_allclose(z, vae.encode_frames(vae.params, (pictures[None] / 127.5 - 1).astype(np.float32))[0], atol=1e-5)
    tokens, lengths = text.tokenizer(config.model)([words], 24)
    step = captions.encoded({"text": tokens, "text_length": lengths}, captions.constants())
    assert set(read) == {"text_hidden", "text_pooled", "text_length"} and read["text_length"] == lengths[0]
    np.testing.assert_allclose(read["text_pooled"], step["text_pooled"][0], atol=1e-5)
    np.testing.assert_allclose(read["text_hidden"], step["text_hidden"][0], rtol=2e-3, atol=1e-3)  # kept in float16
    assert read["text_hidden"].shape == (24, 16) and not np.any(read["text_hidden"][lengths[0]:])
    source = conditioning.get(cached).source(0)
    examples = [source[i] for i in range(12)]
    null = latents.LatentCaptions(cached).null
    dropped = [e for e in examples if np.array_equal(e["text_hidden"], null["text_hidden"])]
    assert 0 < len(dropped) < 12 and examples[0]["target"].shape == (1, 4, 4, 4)
    assert int(train.train(cached, str(tmp_path / "run"))["step"]) == 2
