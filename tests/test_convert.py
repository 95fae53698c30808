"""The released weights' formats, made here at small sizes from random arrays: a J-DiT
`.safetensors`, an ST-VAE `torch.save` archive holding {"state_dict": ...} and a DiT's plain
state dict as a `torch.save` archive, or a DiT train.py checkpoint holding it as "ema"
(official.py). The archives are written by conftest's torch.save stand-in, not by ours."""

import argparse
import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from conftest import DIGITS_SMALL, ROOT, save_torch_archive, shipped_config, small_config
from lavin_jax import convert, inference, latents, official, parallel, runs, torch_files, train
from lavin_jax import state as state_lib


def released_kind(**overrides):
    """The tests' small J-DiT of the released kind (3D RoPE alone, predicting the velocity)."""
    return small_config(**{"model.pos_embed": "none", "flow.prediction": "velocity", **overrides})


def dit_config(**overrides):
    """configs/dit_digits.py made small, trained as the released DiTs are (ddpm, learned variance):
    8 px pixels in 2 x 2 patches, 16 tokens."""
    return shipped_config("dit_digits", {**DIGITS_SMALL, "objective": "ddpm", "model.learn_sigma": True}, overrides)


def official_arrays(rules, model_config, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    shapes = official.official_shapes(rules, convert._our_shapes(model_config))
    return {name: (scale * rng.standard_normal(shape)).astype(np.float32) for name, shape in shapes.items()}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """(directory, J-DiT config, ST-VAE config, official J-DiT arrays, official ST-VAE arrays)."""
    directory = tmp_path_factory.mktemp("release")
    # The tiny ST-VAE widened so its decoder normalises in the official 32 groups.
    config, vae_config = released_kind(), shipped_config("stvae_tiny", {}, {"model.channels": (32, 64, 64, 64), "model.spatial_groups": 32})
    jdit = official_arrays(official.jdit_rules(config.model), config.model, 0)
    stvae = official_arrays(official.stvae_rules(vae_config.model), vae_config.model, 1)
    safetensors.numpy.save_file(jdit, str(directory / "lavin_dit.safetensors"))
    # A training checkpoint's extra entries, which the official loader drops too.
    save_torch_archive(str(directory / "stvae.pt"), {"state_dict": {**stvae, "loss.logvar": np.zeros((), np.float32)}, "epoch": 3})
    return directory, config, vae_config, jdit, stvae


@pytest.fixture(scope="module")
def converted(release):
    directory, config, vae_config, _, _ = release
    return convert.convert(str(directory / "runs"), config, vae_config, jdit=str(directory / "lavin_dit.safetensors"), stvae=str(directory / "stvae.pt"))


@pytest.fixture(scope="module")
def dit_release(tmp_path_factory):
    """(directory, DiT config, official DiT arrays): a small DiT's state dict as the released
    DiT-XL-2-*.pt hold theirs, pos_embed the one our DiT adds."""
    directory = tmp_path_factory.mktemp("dit_release")
    config = dit_config()
    # At a trained DiT's scale, so that its samples are numbers (DDPM's learned variance is exp() of the output).
    arrays = official.dit_fixed(config) | official_arrays(official.dit_rules(config.model), config.model, 2, scale=0.05)
    save_torch_archive(str(directory / "DiT.pt"), arrays)
    return directory, config, arrays


@pytest.fixture(scope="module")
def dit_converted(dit_release):
    directory, _, _ = dit_release
    # The config says 16 px; the file's pos_embed (16 tokens of 2 x 2 pixels) says 8, and decides.
    return convert.convert(str(directory / "runs"), dit_config(**{"data.image_size": 16}), dit=str(directory / "DiT.pt"))


def sdvae_config():
    """configs/sdvae.py at a test's size: four stages (8x), 8 channels each."""
    return shipped_config("sdvae", {}, {"model.channels": (8, 8, 8, 8), "model.groups": 4, "model.layers": 1, "model.dtype": "float32"})


@pytest.fixture(scope="module")
def dit_vae_release(tmp_path_factory):
    """(directory, DiT config, SD VAE config, official DiT arrays, official SD VAE arrays, the
    runs of both converted together): a DiT on 2 x 2 x 4 latents of 16 px images."""
    directory = tmp_path_factory.mktemp("dit_vae_release")
    vae_config = sdvae_config()
    vae = official_arrays(official.sdvae_rules(vae_config.model), vae_config.model, 3, scale=0.1)
    safetensors.numpy.save_file(vae, str(directory / "diffusion_pytorch_model.safetensors"))
    config = dit_config(**{"vae.name": "sdvae", "model.in_channels": 4, "model.patch_size": 1, "data.image_size": 16})
    dit = official.dit_fixed(config) | official_arrays(official.dit_rules(config.model), config.model, 4, scale=0.05)
    save_torch_archive(str(directory / "DiT.pt"), dit)
    written = convert.convert(str(directory / "runs"), config, vae_config, dit=str(directory / "DiT.pt"),
                              sdvae=str(directory / "diffusion_pytorch_model.safetensors"))
    return directory, config, vae_config, dit, vae, written


def diffit_config(**overrides):
    """configs/diffit.py made small, in pixel space: 8 px digits in 2 x 2 patches, a 4 x 4 token grid."""
    small = {"vae.name": "none", "data.image_size": 8, "data.classes": "digits", "model.hidden": 32, "model.depth": 2, "model.num_heads": 4,
             "model.patch_size": 2, "model.window": 4, "model.in_channels": 3, "model.num_classes": 10, "model.dtype": "float32",
             "ddpm.sample_steps": 4, "eval.episodes": 2, "sample.num_examples": 2, "sample.classes": (1, 2), "compile_cache": ""}
    return shipped_config("diffit", small, overrides)


@pytest.fixture(scope="module")
def diffit_converted(tmp_path_factory):
    """(the converted run, the config the file fits, the file's arrays): a small latent DiffiT as
    NVlabs' diffit_256.safetensors holds it, its int64 index buffers and pos_embed included."""
    directory = tmp_path_factory.mktemp("diffit_release")
    config = diffit_config()
    arrays = official.diffit_fixed(config) | official_arrays(official.diffit_rules(config.model), config.model, 5, scale=0.05)
    assert arrays["blocks.1.attn.relative_position_index"].dtype == np.int64
    safetensors.numpy.save_file(arrays, str(directory / "diffit_256.safetensors"))
    # The config says 16 px and windows of 2; the file's pos_embed and bias tables say 8 px and 4, and decide.
    written = convert.convert(str(directory / "runs"), diffit_config(**{"data.image_size": 16, "model.window": 2}),
                              diffit=str(directory / "diffit_256.safetensors"))
    return written["diffit"], config, arrays


def restored(run, family):
    config, step = runs.trained_config(run, family)
    s = state_lib.setup(config, parallel.make_mesh(config))
    return config, jax.device_get(runs.restore_ema(run, step, s.abstract_state["ema"]))


@pytest.fixture(scope="module")
def families(release, converted, dit_release, dit_converted, dit_vae_release, diffit_converted):
    """family -> (converted run, the config the file fits, the file's arrays)."""
    _, config, vae_config, jdit, stvae = release
    _, dit_cfg, dit = dit_release
    _, _, sdvae_cfg, _, sdvae, written = dit_vae_release
    return {"jdit": (converted["jdit"], config, jdit), "stvae": (converted["stvae"], vae_config, stvae),
            "dit": (dit_converted["dit"], dit_cfg, dit), "sdvae": (written["sdvae"], sdvae_cfg, sdvae), "diffit": diffit_converted}


def read_export(path: str, family: str) -> dict:
    if path.endswith(".safetensors"):
        return safetensors.numpy.load_file(path)
    return official.state_dict(torch_files.load(path), path, family)  # the ST-VAE's nested as released


@pytest.mark.parametrize("family", ["jdit", "stvae", "dit", "sdvae", "diffit"])
def test_every_parameter_is_its_official_tensors_and_export_gives_them_back_bit_for_bit(families, family, tmp_path):
    run, config, arrays = families[family]
    _, params = restored(run, family)
    for rule in official.family(family).rules(config.model):
        for path, value in zip(rule.ours, rule.to_ours([arrays[name] for name in rule.official]), strict=True):
            np.testing.assert_array_equal(convert._get(params, path), value, err_msg=path)
    for extension in (".safetensors", ".pt"):
        path = str(tmp_path / f"{family}{extension}")
        assert convert.export(run, path) == len(arrays)
        back = read_export(path, family)
        assert back.keys() == arrays.keys()
        for name, array in arrays.items():
            assert back[name].dtype == array.dtype, name
            np.testing.assert_array_equal(back[name], array, err_msg=name)


def test_the_official_latent_statistics_are_applied_once(converted):
    vae = latents.load(converted["stvae"])
    assert (vae.shift, vae.scale) == (latents.OFFICIAL_SHIFT, latents.OFFICIAL_SCALE)
    frames = np.random.default_rng(2).uniform(-1, 1, (1, 1, 16, 16, 3)).astype(np.float32)
    posterior = np.asarray(vae.model(vae.params).encode(frames).mode())
    np.testing.assert_allclose(vae.encode(vae.params, frames), (posterior - latents.OFFICIAL_SHIFT) * latents.OFFICIAL_SCALE, rtol=1e-6)
    saved = json.load(open(os.path.join(converted["jdit"], "..", "stvae", latents.STATS_FILE)))
    assert saved["shift"] == latents.OFFICIAL_SHIFT


def test_mismatches_are_listed_before_any_tensor_is_read(release, tmp_path):
    directory, config, _, jdit, _ = release
    broken = {name: array for name, array in jdit.items() if name != "prompt_embed"}
    broken["blocks.0.x_mlp.gate_proj.weight"] = broken["blocks.0.x_mlp.gate_proj.weight"][:-1]
    broken["blocks.0.extra.weight"] = np.zeros(1, np.float32)
    safetensors.numpy.save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ValueError, match=r"broken.safetensors does not fit the model: 1 missing: prompt_embed; 1 unused: blocks.0.extra.weight; "
                                         r"1 misshapen: blocks.0.x_mlp.gate_proj.weight \(\d+, \d+\) \(expected"):
        convert.convert(str(tmp_path / "out"), config, jdit=str(tmp_path / "broken.safetensors"))
    bigger = released_kind(**{"model.depth": 3})
    with pytest.raises(ValueError, match=r"22 missing: blocks.2.cond_mlp.down_proj.weight, .* and 14 more"):
        convert.convert(str(tmp_path / "out"), bigger, jdit=str(directory / "lavin_dit.safetensors"))
    assert not (tmp_path / "out").exists()


def test_the_converted_model_is_prompted_and_fine_tuned_from(converted, tmp_path):
    predictor = inference.Predictor.from_workdir(converted["jdit"])
    assert predictor.predict([], np.zeros((20, 12, 3), np.uint8), steps=2).shape == (20, 12, 3)
    config = released_kind(**{"init_from": converted["jdit"]})
    step, grown = train.check_init_from(config)
    assert grown == []
    s = state_lib.setup(config, parallel.make_mesh(config))
    state = state_lib.init_state(config, s, runs.restore_ema(config.init_from, step, s.abstract_state["ema"]))
    _, params = restored(converted["jdit"], "jdit")
    for ours, loaded in zip(jax.tree.leaves(jax.device_get(state["params"]["model"])), jax.tree.leaves(params)):
        np.testing.assert_array_equal(ours, loaded)
    np.testing.assert_array_equal(jax.device_get(state["ema"]["answer_embed"]), params["answer_embed"])
    assert not np.any(jax.device_get(state["opt"]["model"][1][0].mu["answer_embed"]))  # Adam starts fresh.
    with pytest.raises(ValueError, match=r"holds a model with model.depth=2 but the config has model.depth=3"):
        train.check_init_from(released_kind(**{"init_from": converted["jdit"], "model.depth": 3}))
    with pytest.raises(FileNotFoundError, match=r"config.init_from=.* holds no checkpoint"):
        train.check_init_from(released_kind(**{"init_from": str(tmp_path)}))


def test_a_conversion_is_refused_as_a_run_to_resume(converted):
    with pytest.raises(ValueError, match=r"is a conversion, which holds EMA weights only: start a run from it with --config.init_from="):
        train.train(released_kind(), converted["jdit"])



def test_only_a_model_of_the_released_kind_is_given_the_official_layout(converted, tmp_path, monkeypatch):
    config, step = runs.trained_config(converted["jdit"])
    # A 2D position embedding is not in the released model, which would read the weights as another model.
    config.model.pos_embed = "sincos"
    with pytest.raises(ValueError, match=r"config.model.pos_embed='sincos': the released J-DiT has 3D RoPE alone"):
        official.jdit_rules(config.model)
    # The official code reads the output as a velocity: a data-predicting run is refused, nothing written.
    config.model.pos_embed, config.flow.prediction = "none", "data"
    monkeypatch.setattr(runs, "trained_config", lambda run: (config, step))
    out = tmp_path / "mine.safetensors"
    with pytest.raises(ValueError, match=r"config.flow.prediction='data': the official code reads a J-DiT's output as a velocity"):
        convert.export(converted["jdit"], str(out))
    assert not out.exists()


def test_a_converted_dit_has_the_files_image_size_and_samples(dit_converted):
    predictor = inference.Predictor.from_workdir(dit_converted["dit"])
    assert predictor.config.data.image_size == 8
    options = {"steps": 3, "cfg_scale": 4.0}  # guided against the null class
    assert np.isfinite(predictor.sample({"label": np.array([3, 7], np.int32)}, 1, **options)).all()
    images = predictor.predict_batch([3, "7"], **options)
    assert [(image.shape, image.dtype) for image in images] == [((8, 8, 3), np.uint8)] * 2


def test_a_converted_diffit_has_the_files_size_and_window_and_samples_as_released(diffit_converted):
    run, _, _ = diffit_converted
    config, _ = runs.trained_config(run, "diffit")
    assert (config.data.image_size, config.model.window) == (8, 4)
    assert (config.ddpm.guidance_schedule, config.ddpm.cfg_scale, config.ddpm.guided_channels) == ("power_cosine", 4.4, 3)
    images = inference.Predictor.from_workdir(run).sample({"label": np.array([3, 7], np.int32)}, 1, seed=0)
    assert images.shape == (2, 1, 8, 8, 3) and np.all(np.isfinite(images))


def test_an_unconditional_diffit_has_no_released_layout(diffit_converted, tmp_path):
    path = os.path.join(os.path.dirname(os.path.dirname(diffit_converted[0])), "diffit_256.safetensors")
    with pytest.raises(ValueError, match=r"config.model.num_classes=0: the official DiffiT always has a class table"):
        convert.convert(str(tmp_path / "out"), diffit_config(**{"model.num_classes": 0}), diffit=path)
    assert not (tmp_path / "out").exists()


def test_a_train_py_checkpoint_gives_its_ema_weights(dit_release, tmp_path):
    _, config, arrays = dit_release
    raw = {name: array + 1 for name, array in arrays.items()}
    optimizer = {"state": {0: {"step": np.array(3.0, np.float32), "exp_avg": np.zeros(3, np.float32)}}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0]}]}
    # train.py saves its arguments as an argparse.Namespace, read as inert attributes.
    args = argparse.Namespace(model="DiT-S/8", image_size=256, global_batch_size=256)
    save_torch_archive(str(tmp_path / "0400000.pt"), {"model": raw, "ema": arrays, "opt": optimizer, "args": args})
    assert torch_files.load(str(tmp_path / "0400000.pt"))["args"].model == "DiT-S/8"
    run = convert.convert(str(tmp_path / "out"), config, dit=str(tmp_path / "0400000.pt"))["dit"]
    _, params = restored(run, "dit")
    np.testing.assert_array_equal(params["class_embed"]["embedding"], arrays["y_embedder.embedding_table.weight"])


def drop(name):
    return lambda arrays: {k: v for k, v in arrays.items() if k != name}


@pytest.mark.parametrize("change, message", [
    (drop("blocks.1.attn.qkv.bias"), r"DiT.pt does not fit the model: 1 missing: blocks.1.attn.qkv.bias\."),
    (lambda a: a | {"blocks.0.attn.q_norm.weight": np.ones(16, np.float32)}, r"DiT.pt does not fit the model: 1 unused: blocks.0.attn.q_norm.weight\."),
    # A DiT trained without label dropout has no null class: nothing to guide against.
    (lambda a: a | {"y_embedder.embedding_table.weight": a["y_embedder.embedding_table.weight"][:-1]},
     r"1 misshapen: y_embedder.embedding_table.weight \(10, 64\) \(expected \(11, 64\)\)"),
    (lambda a: a | {"pos_embed": a["pos_embed"][:, :15]}, r"DiT.pt's pos_embed has shape \(1, 15, 64\), not \(1, T, hidden\) with T patches of a square grid"),
    (lambda a: a | {"pos_embed": a["pos_embed"][:, ::-1]}, r"DiT.pt's pos_embed differs from the pos_embed our model computes for this config by up to"),
])
def test_a_dit_file_that_does_not_fit_is_named_before_anything_is_written(dit_release, tmp_path, change, message):
    _, config, arrays = dit_release
    save_torch_archive(str(tmp_path / "DiT.pt"), change(arrays))
    with pytest.raises(ValueError, match=message):
        convert.convert(str(tmp_path / "out"), config, dit=str(tmp_path / "DiT.pt"))
    assert not (tmp_path / "out").exists()


def test_a_dit_is_converted_only_into_a_dit_sampled_as_released(dit_release, tmp_path):
    directory, _, _ = dit_release
    path = str(directory / "DiT.pt")
    with pytest.raises(ValueError, match=r"The config's model is a 'jdit' \(config.model.name\), not the 'dit' that .*DiT.pt holds"):
        convert.convert(str(tmp_path / "out"), released_kind(), dit=path)
    with pytest.raises(ValueError, match=r"config.objective='flow': the official code samples a DiT by DDPM"):
        convert.convert(str(tmp_path / "out"), dit_config(objective="flow", **{"model.learn_sigma": False}), dit=path)
    with pytest.raises(ValueError, match=r"--out='.*DiT.st' must end in .safetensors or .pt"):
        convert.export(str(directory / "runs" / "dit"), str(tmp_path / "DiT.st"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_random_weights_are_in_the_released_format(tmp_path, dtype):
    """For measuring without the release: random weights as DiT-XL-2-*.pt holds them, for any DiT
    config (here the digits demo's), pos_embed ours and float32 whatever the type."""
    config_path = f"{ROOT}/configs/dit_digits.py"
    path = str(tmp_path / "DiT.pt")
    config = shipped_config("dit_digits", {}, {})
    rules, fixed = official.dit_rules(config.model), official.dit_fixed(config)
    assert convert.write_random(config_path, path, dtype) == len(official.official_shapes(rules, convert._our_shapes(config.model))) + 1
    reader = convert.read_release(path, "dit")
    convert.check_names(rules, convert._our_shapes(config.model), reader, "dit", fixed)
    convert.check_fixed(fixed, reader)
    assert reader.get("pos_embed").dtype == np.float32 and reader.get("blocks.0.attn.qkv.weight").dtype == dtype
    assert 0.015 < reader.get("blocks.0.attn.qkv.weight").astype(np.float32).std() < 0.025


def test_a_dit_converted_with_its_sd_vae_samples_pixels_through_it(dit_vae_release):
    directory, _, _, _, _, written = dit_vae_release
    vae = latents.load(written["sdvae"], "sdvae")
    assert (vae.shift, vae.scale) == (0.0, 0.18215)  # DiT's latent scale, as sample.py divides by it.
    predictor = inference.Predictor.from_workdir(written["dit"])
    assert (predictor.config.vae.name, predictor.config.vae.checkpoint) == ("sdvae", written["sdvae"])
    assert predictor.config.data.image_size == 16  # 2 x 2 latent patches of 8 px.
    images = predictor.sample({"label": np.array([1, 4], np.int32)}, 1, steps=2, cfg_scale=1.5)
    assert images.shape == (2, 1, 16, 16, 3) and np.isfinite(images).all()


def test_an_sd_vae_saved_by_a_later_diffusers_converts_alike(dit_vae_release, tmp_path):
    """Later diffusers save the mid attention as to_q, to_k, to_v, to_out.0: the same tensors."""
    directory, _, vae_config, _, vae, written = dit_vae_release
    def later_name(name):
        for new, old in official.SDVAE_RENAMED.items():
            name = name.replace(f".attentions.0.{old}.", f".attentions.0.{new}.")
        return name

    later = {later_name(name): array for name, array in vae.items()}
    assert any(".to_out.0." in name for name in later) and not any(".proj_attn." in name for name in later)
    safetensors.numpy.save_file(later, str(tmp_path / "later.safetensors"))
    run = convert.convert(str(tmp_path / "out"), None, vae_config, sdvae=str(tmp_path / "later.safetensors"))["sdvae"]
    _, ours = restored(run, "sdvae")
    _, released = restored(written["sdvae"], "sdvae")
    jax.tree.map(np.testing.assert_array_equal, ours, released)


def test_an_sd_vae_file_that_does_not_fit_is_named_before_anything_is_written(dit_vae_release, tmp_path):
    directory, _, vae_config, _, vae, _ = dit_vae_release
    broken = {name: array for name, array in vae.items() if name != "decoder.mid_block.attentions.0.key.bias"}
    safetensors.numpy.save_file(broken, str(tmp_path / "vae.safetensors"))
    with pytest.raises(ValueError, match=r"vae.safetensors does not fit the model: 1 missing: decoder.mid_block.attentions.0.key.bias\."):
        convert.convert(str(tmp_path / "out"), None, vae_config, sdvae=str(tmp_path / "vae.safetensors"))
    assert not (tmp_path / "out").exists()


def test_a_converted_dit_draws_its_grid_and_npz_without_its_training_data(dit_vae_release, tmp_path):
    """--mode=sample reads only the model and its autoencoder: an ImageNet DiT draws without ImageNet."""
    from lavin_jax import main

    directory, config, vae_config, _, _, _ = dit_vae_release
    elsewhere = config.copy_and_resolve_references()
    elsewhere.data.classes = "tfds:a_dataset_not_prepared_here"
    run = convert.convert(str(tmp_path / "runs"), elsewhere, vae_config, dit=str(directory / "DiT.pt"),
                          sdvae=str(directory / "diffusion_pytorch_model.safetensors"))["dit"]
    asked = dit_config(**{"sample.classes": (1, 4), "sample.num_examples": 2, "sample.num": 6, "ddpm.sample_steps": 2})
    main.evaluate_run(asked, run, "sample")
    drawn = np.load(os.path.join(run, "samples", "0.npz"))
    assert drawn["arr_0"].shape == (6, 16, 16, 3) and drawn["arr_0"].dtype == np.uint8
    np.testing.assert_array_equal(drawn["labels"], np.arange(6) % 10)
    from PIL import Image
    grid = np.asarray(Image.open(os.path.join(run, "samples", "sampled_classes_0000000.png")))
    assert grid.shape[0] == 2 * (16 * 8 + 2) + 2  # a row for each of the two classes asked for.
    with pytest.raises(ValueError, match=r"tfds:a_dataset_not_prepared_here"):
        main.evaluate_run(asked, run, "eval")  # judging reads the held-out images.


def test_the_command_names_a_mistake_in_one_line(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "lavin_jax.convert", f"--dit={tmp_path}/DiT-XL-2-256x256.pt", f"--out={tmp_path}/out"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == f"error: {tmp_path}/DiT-XL-2-256x256.pt does not exist."
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
