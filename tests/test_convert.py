"""The released weights' formats, made here at small sizes from random arrays: a J-DiT
`.safetensors` and an ST-VAE `torch.save` archive holding {"state_dict": ...} (official.py)."""

import json
import os

import jax
import numpy as np
import pytest
import safetensors.numpy

from conftest import save_torch_archive, shipped_config, small_config
from lavin_jax import convert, inference, latents, official, parallel, train
from lavin_jax import state as state_lib
from lavin_jax import runs



def released_kind(**overrides):
    """The tests' small J-DiT of the released kind (3D RoPE alone, predicting the velocity)."""
    return small_config(**{"model.pos_embed": "none", "flow.prediction": "velocity", **overrides})


def official_arrays(rules, model_config, seed):
    rng = np.random.default_rng(seed)
    shapes = official.official_shapes(rules, convert._our_shapes(model_config))
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


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
    return convert.convert(str(directory / "lavin_dit.safetensors"), str(directory / "stvae.pt"), str(directory / "runs"), config, vae_config)


def restored(run, family):
    config, step = runs.trained_config(run, family)
    s = state_lib.setup(config, parallel.make_mesh(config))
    return config, jax.device_get(runs.restore_ema(run, step, s.abstract_state["ema"]))


@pytest.mark.parametrize("family", ["jdit", "stvae"])
def test_every_parameter_is_its_official_tensors_and_export_gives_them_back_bit_for_bit(release, converted, family, tmp_path):
    directory, config, vae_config, jdit, stvae = release
    arrays, model = (jdit, config.model) if family == "jdit" else (stvae, vae_config.model)
    rules = official.jdit_rules(model) if family == "jdit" else official.stvae_rules(model)
    _, params = restored(converted[family], family)
    for rule in rules:
        np.testing.assert_array_equal(convert._get(params, rule.ours), rule.to_ours([arrays[name] for name in rule.official]), err_msg=rule.ours)
    path = str(tmp_path / f"{family}.safetensors")
    assert convert.export(converted[family], path) == len(arrays)
    back = safetensors.numpy.load_file(path)
    assert back.keys() == arrays.keys()
    for name, array in arrays.items():
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
    directory, config, vae_config, jdit, _ = release
    broken = {name: array for name, array in jdit.items() if name != "prompt_embed"}
    broken["blocks.0.x_mlp.gate_proj.weight"] = broken["blocks.0.x_mlp.gate_proj.weight"][:-1]
    broken["blocks.0.extra.weight"] = np.zeros(1, np.float32)
    safetensors.numpy.save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ValueError, match=r"broken.safetensors does not fit the model: 1 missing: prompt_embed; 1 unused: blocks.0.extra.weight; "
                                         r"1 misshapen: blocks.0.x_mlp.gate_proj.weight \(\d+, \d+\) \(expected"):
        convert.convert(str(tmp_path / "broken.safetensors"), None, str(tmp_path / "out"), config, vae_config)
    bigger = released_kind(**{"model.depth": 3})
    with pytest.raises(ValueError, match=r"22 missing: blocks.2.cond_mlp.down_proj.weight, .* and 14 more"):
        convert.convert(str(directory / "lavin_dit.safetensors"), None, str(tmp_path / "out"), bigger, vae_config)


def test_the_converted_model_is_prompted_and_fine_tuned_from(converted, tmp_path):
    predictor = inference.Predictor.from_workdir(converted["jdit"])
    assert predictor.predict([], np.zeros((20, 12, 3), np.uint8), steps=2).shape == (20, 12, 3)
    config = released_kind(**{"init_from": converted["jdit"]})
    step = train.check_init_from(config)
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
    with pytest.raises(ValueError, match=r"predicts 'data' \(config.flow.prediction\).*only a velocity model can be exported"):
        convert.export(converted["jdit"], str(out))
    assert not out.exists()
