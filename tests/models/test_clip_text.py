import os
import re

import jax
import numpy as np
import pytest
import tokenizers

from conftest import refused_before_reading, release_factory, rewrite_weights
from lavin_jax.models import clip_text, released

TEXT = {"model_type": "clip_text_model", "vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 24, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
# A whole CLIPModel: the text's fields nested, and the vision tower, projections and logit scale beside the text's tensors.
WHOLE = {"model_type": "clip", "text_config": {**TEXT, "model_type": "clip_text_model"}, "vision_config": {"hidden_size": 16}, "projection_dim": 8}
VISION = {"vision_model.embeddings.patch_embedding.weight": (16, 3, 4, 4), "vision_model.post_layernorm.weight": (16,),
          "visual_projection.weight": (8, 16), "text_projection.weight": (8, 32), "logit_scale": (), "text_model.embeddings.position_ids": (1, 24)}
LAYOUTS = {  # name -> (config.json, clip_text.write_random's options)
    "text": (TEXT, {}),
    "gelu": ({**TEXT, "hidden_act": "gelu"}, {}),
    "bfloat16": (TEXT, {"dtype": "bfloat16"}),
    "sharded": (TEXT, {"shards": 3}),
    "whole-model": (WHOLE, {"extra": VISION}),
    "transformers-5": (TEXT, {"root": ""}),  # its CLIPTextModel's names lack "text_model."
}
CAPTIONS = ["a red cube on a wooden table", "", "three dogs running across a field of tall grass beside two green spheres"]
LENGTH = 24  # pads the first caption, cuts the last.
jit = jax.jit


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    return release_factory(clip_text, LAYOUTS, tmp_path_factory)


def our_place(name: str):
    """(our parameter, layer or None, transposed) of a released tensor, None for the ignored."""
    name = name.removeprefix("text_model.")
    layer = re.fullmatch(r"encoder\.layers\.(\d+)\.(self_attn|mlp|layer_norm1|layer_norm2)\.?(\w*)\.(weight|bias)", name)
    if layer:
        i, module, part, kind = int(layer[1]), layer[2], layer[3], layer[4]
        if module.startswith("layer_norm"):
            return f"blocks/norm{module[-1]}/{'scale' if kind == 'weight' else 'bias'}", i, False
        ours = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "out_proj": "out"}.get(part, part)
        return f"blocks/{ours}/{'kernel' if kind == 'weight' else 'bias'}", i, kind == "weight"
    return {"embeddings.token_embedding.weight": ("token_embed/embedding", None, False),
            "embeddings.position_embedding.weight": ("position_embed/embedding", None, False),
            "final_layer_norm.weight": ("final_norm/scale", None, False),
            "final_layer_norm.bias": ("final_norm/bias", None, False)}.get(name)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_released_tensor_is_one_of_our_parameters_under_the_layout_transform(releases, layout):
    directory, tensors = releases(layout)
    encoder = clip_text.load(directory)
    covered = {name: np.zeros(value.shape[0] if name.startswith("blocks/") else 1, bool) for name, value in encoder.params.items()}
    for name, tensor in tensors.items():
        place = our_place(name)
        if name in VISION:
            assert place is None
            continue
        ours, layer, transposed = place
        param = encoder.params[ours] if layer is None else encoder.params[ours][layer]
        assert param.dtype == tensor.dtype and np.array_equal(param, tensor.T if transposed else tensor), name
        covered[ours][layer or 0] = True
    assert all(c.all() for c in covered.values())
    assert clip_text.shapes(directory) == {name: value.shape for name, value in encoder.params.items()}
    assert encoder.width == 32 and encoder.max_length == 24


def reference(tensors, config, tokens):
    """CLIP's text transformer in float64 numpy from the released tensors, on one caption's valid
    tokens: (hidden states, pooled)."""
    w = lambda name: tensors[f"text_model.{name}"].astype(np.float64)
    n, heads, eps = len(tokens), config["num_attention_heads"], config["layer_norm_eps"]

    def norm(x, name):
        centred = x - x.mean(-1, keepdims=True)
        return centred / np.sqrt(np.mean(centred**2, -1, keepdims=True) + eps) * w(f"{name}.weight") + w(f"{name}.bias")

    if config["hidden_act"] == "quick_gelu":
        act = lambda x: x / (1 + np.exp(-1.702 * x))
    else:
        erf = np.vectorize(__import__("math").erf)
        act = lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2)))
    x = w("embeddings.token_embedding.weight")[tokens] + w("embeddings.position_embedding.weight")[:n]
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layers.{i}."
        linear = lambda h, name: h @ w(f"{p}{name}.weight").T + w(f"{p}{name}.bias")
        h = norm(x, p + "layer_norm1")
        q, k, v = (linear(h, f"self_attn.{m}_proj").reshape(n, heads, -1) for m in "qkv")
        logits = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(q.shape[-1])
        logits[:, np.triu_indices(n, 1)[0], np.triu_indices(n, 1)[1]] = -np.inf  # causal
        attention = np.exp(logits - logits.max(-1, keepdims=True))
        attention /= attention.sum(-1, keepdims=True)
        x = x + linear(np.einsum("hqk,khd->qhd", attention, v).reshape(n, -1), "self_attn.out_proj")
        x = x + linear(act(linear(norm(x, p + "layer_norm2"), "mlp.fc1")), "mlp.fc2")
    x = norm(x, "final_layer_norm")
    return x, x[-1]


@pytest.mark.parametrize("layout", ["text", "gelu", "bfloat16"])
def test_encode_matches_a_numpy_reference_of_the_released_tensors(releases, layout):
    directory, tensors = releases(layout)
    encoder = clip_text.load(directory)
    tokens, lengths = encoder.tokenize(CAPTIONS, LENGTH)
    hidden, pooled = jit(encoder.encode)(encoder.params, tokens, lengths)
    assert hidden.dtype == pooled.dtype == np.float32 and hidden.shape == (3, LENGTH, 32)
    for i, n in enumerate(lengths):
        expected, expected_pooled = reference(tensors, LAYOUTS[layout][0], tokens[i, :n])  # padding never seen
        np.testing.assert_allclose(hidden[i, :n], expected, atol=1e-5)
        np.testing.assert_array_equal(hidden[i, n:], 0)
        np.testing.assert_allclose(pooled[i], expected_pooled, atol=1e-5)


def test_a_token_changes_no_output_before_it_and_padding_changes_none(releases):
    directory, _ = releases("text")
    encoder = clip_text.load(directory)
    encode = jit(encoder.encode)
    tokens, lengths = encoder.tokenize(CAPTIONS, LENGTH)
    hidden, _ = encode(encoder.params, tokens, lengths)
    changed = tokens.copy()
    changed[:, 5] = (changed[:, 5] + 1) % 300
    hidden_changed, _ = encode(encoder.params, changed, lengths)
    np.testing.assert_array_equal(hidden_changed[0, :5], hidden[0, :5])
    assert np.abs(hidden_changed[0, 5] - hidden[0, 5]).max() > 1e-3
    least = lengths[:2].max()  # the same tokens, less padding
    assert least < LENGTH
    short, short_pooled = encode(encoder.params, *encoder.tokenize(CAPTIONS[:2], least))
    np.testing.assert_allclose(hidden[:2, :least], short, atol=1e-5)
    np.testing.assert_allclose(encode(encoder.params, tokens, lengths)[1][:2], short_pooled, atol=1e-5)


def test_tokens_are_bos_text_eos_as_the_post_processor_adds_them_with_eos_kept_when_cut(releases):
    directory, _ = releases("text")
    encoder = clip_text.load(directory)
    tokenizer = tokenizers.Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    bos, eos = (tokenizer.token_to_id(token) for token in (clip_text.BOS, clip_text.EOS))
    tokens, lengths = encoder.tokenize(CAPTIONS, LENGTH)
    assert lengths.dtype == tokens.dtype == np.int32
    for i in range(2):  # uncut: what the tokenizer file's post-processor makes
        assert tokens[i, : lengths[i]].tolist() == tokenizer.encode(CAPTIONS[i]).ids and (tokens[i, lengths[i]:] == eos).all()
    assert lengths[1] == 2 and tokens[1, :2].tolist() == [bos, eos]  # the empty caption
    assert lengths[2] == LENGTH and tokens[2].tolist() == tokenizer.encode(CAPTIONS[2]).ids[: LENGTH - 1] + [eos]
    with pytest.raises(ValueError, match=r"token length of 25 is outside \[2, 24\]"):
        encoder.tokenize(CAPTIONS, 25)


FC1 = "text_model.encoder.layers.1.mlp.fc1.weight"
BROKEN = {  # what is wrong -> (layout, how to break its directory, the message)
    "no directory": ("text", lambda d: os.rename(d, d + ".moved"), r"The CLIP text encoder directory .* does not exist"),
    "no config.json": ("text", lambda d: os.remove(os.path.join(d, "config.json")), r"has no config.json"),
    "a nested field missing": ("whole-model", lambda d: released.write_random(
        d, clip_text.release(clip_text.parse_config(TEXT, "")), {**WHOLE, "text_config": {k: v for k, v in TEXT.items() if k != "hidden_size"}}),
        r"config.json's text_config lacks 'hidden_size', which the CLIP text encoder needs"),
    "no tokenizer": ("text", lambda d: os.remove(os.path.join(d, "tokenizer.json")), r"has no CLIP text encoder tokenizer \(tokenizer.json\)"),
    "a tensor missing": ("text", lambda d: rewrite_weights(d, lambda t: {k: v for k, v in t.items() if k != FC1}),
                         rf"model.safetensors lacks the CLIP text encoder tensor '{FC1}'"),
    "a misshapen tensor": ("text", lambda d: rewrite_weights(d, lambda t: {**t, FC1: np.zeros((64, 31), np.float32)}),
                           rf"has tensor '{FC1}' of shape \(64, 31\), where the CLIP text encoder of its config.json has \(64, 32\)"),
    "an unknown tensor": ("whole-model", lambda d: rewrite_weights(d, lambda t: {**t, "text_model.pooler.weight": np.ones(3, np.float32)}),
                          r"has 1 tensors the CLIP text encoder does not know, e.g. 'text_model.pooler.weight'"),
    "a shard missing": ("sharded", lambda d: os.remove(os.path.join(d, "model-00003-of-00003.safetensors")),
                        r"model.safetensors.index.json lists the shard 'model-00003-of-00003.safetensors', which .* lacks \(1 of 3"),
    "not CLIP": ("text", lambda d: released.write_random(d, clip_text.release(clip_text.parse_config(TEXT, "")), {**TEXT, "model_type": "bert"}),
                 r"config.json describes a 'bert' model, not CLIP"),
}


@pytest.mark.parametrize("broken", BROKEN)
def test_whatever_is_wrong_is_named_before_any_tensor_is_read(tmp_path, monkeypatch, broken):
    layout, break_, message = BROKEN[broken]
    refused_before_reading(clip_text, LAYOUTS[layout], break_, str(tmp_path / "clip"), monkeypatch, message)
