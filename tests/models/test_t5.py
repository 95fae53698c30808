import math
import os
import re

import jax
import numpy as np
import pytest

from conftest import refused_before_reading, release_factory, rewrite_weights
from lavin_jax.models import released, t5

TINY = {"model_type": "t5", "vocab_size": 100, "d_model": 32, "d_kv": 8, "num_heads": 3, "d_ff": 48, "num_layers": 2,
        "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16, "layer_norm_epsilon": 1e-6}
RELU, GATED = {**TINY, "feed_forward_proj": "relu"}, {**TINY, "feed_forward_proj": "gated-gelu"}
# A whole T5ForConditionalGeneration: a decoder and a language-model head beside the encoder.
DECODER = {"decoder.embed_tokens.weight": (100, 32), "decoder.block.0.layer.1.EncDecAttention.q.weight": (24, 32),
           "decoder.final_layer_norm.weight": (32,), "lm_head.weight": (100, 32)}
LAYOUTS = {  # name -> (config.json, t5.write_random's options)
    "v1.0": (RELU, {}),
    "v1.1": (GATED, {}),
    "v1.1-bfloat16": (GATED, {"dtype": "bfloat16"}),
    "sharded": (GATED, {"shards": 3}),
    "whole-model": (RELU, {"extra": DECODER, "tie": True}),
    "tokenizer.json": (RELU, {"tokenizer": "tokenizer.json"}),
}
CAPTIONS = ["a red cube on a wooden table", "", "three dogs running across a field of tall grass beside two green spheres"]
LENGTH = 24  # pads the first caption, cuts the last; offsets reach past max_distance.
REL = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
jit = jax.jit


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    return release_factory(t5, LAYOUTS, tmp_path_factory)


def our_place(name: str):
    """(our parameter, layer or None, transposed) of a released tensor, None for the ignored."""
    block = re.fullmatch(r"encoder\.block\.(\d+)\.layer\.(.*)\.weight", name)
    if block and "relative_attention_bias" not in block[2]:
        i, rest = int(block[1]), block[2]
        names = {"0.layer_norm": "attention_norm/scale", "1.layer_norm": "mlp_norm/scale"}
        if rest in names:
            return f"blocks/{names[rest]}", i, False
        return f"blocks/{rest.rsplit('.', 1)[1]}/kernel", i, True
    return {"shared.weight": ("token_embed/embedding", None, False), "encoder.embed_tokens.weight": ("token_embed/embedding", None, False),
            REL: ("relative_bias/embedding", None, False), "encoder.final_layer_norm.weight": ("final_norm/scale", None, False)}.get(name)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_released_tensor_is_one_of_our_parameters_under_the_layout_transform(releases, layout):
    directory, tensors = releases(layout)
    encoder = t5.load(directory)
    covered = {name: np.zeros(value.shape[0] if name.startswith("blocks/") else 1, bool) for name, value in encoder.params.items()}
    for name, tensor in tensors.items():
        place = our_place(name)
        if name.startswith("decoder.") or name == "lm_head.weight":
            assert place is None
            continue
        ours, layer, transposed = place
        param = encoder.params[ours] if layer is None else encoder.params[ours][layer]
        assert param.dtype == tensor.dtype and np.array_equal(param, tensor.T if transposed else tensor), name
        covered[ours][layer or 0] = True
    assert all(c.all() for c in covered.values())
    assert t5.shapes(directory) == {name: value.shape for name, value in encoder.params.items()}
    assert encoder.width == 32 and encoder.max_length == 512


def test_buckets_are_t5s_on_hand_computed_offsets():
    # 32 buckets, max distance 128: 16 per direction, distances 0-7 exact, 8-127 in 8 log-spaced buckets.
    offsets = np.array([0, -1, 1, -7, -8, -16, -127, -128, -1000, 20, 128, 5])
    expected = [0, 1, 17, 7, 8, 10, 15, 15, 15, 26, 31, 21]
    assert t5.relative_position_buckets(offsets, 32, 128).tolist() == expected


def bucket(offset: int, num_buckets: int, max_distance: int) -> int:
    """transformers' _relative_position_bucket (bidirectional), one offset at a time."""
    half = num_buckets // 2
    start, distance, exact = (half if offset > 0 else 0), abs(offset), half // 2
    if distance < exact:
        return start + distance
    return start + min(half - 1, exact + int(math.log(distance / exact) / math.log(max_distance / exact) * (half - exact)))


def reference(tensors, config, tokens):
    """T5's encoder in float64 numpy from the released tensors, on one caption's valid tokens."""
    w = lambda name: tensors[name].astype(np.float64)
    n, heads, eps = len(tokens), config["num_heads"], config["layer_norm_epsilon"]
    norm = lambda x, name: x / np.sqrt(np.mean(x**2, -1, keepdims=True) + eps) * w(name)
    gelu = lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    buckets = [[bucket(k - q, config["relative_attention_num_buckets"], config["relative_attention_max_distance"]) for k in range(n)]
               for q in range(n)]
    bias = w(REL)[np.array(buckets)].transpose(2, 0, 1)  # (heads, q, k)
    x = w("shared.weight")[tokens]
    for i in range(config["num_layers"]):
        p = f"encoder.block.{i}.layer."
        h = norm(x, p + "0.layer_norm.weight")
        q, k, v = ((h @ w(p + f"0.SelfAttention.{m}.weight").T).reshape(n, heads, -1) for m in "qkv")
        logits = np.einsum("qhd,khd->hqk", q, k) + bias
        attention = np.exp(logits - logits.max(-1, keepdims=True))
        attention /= attention.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khd->qhd", attention, v).reshape(n, -1) @ w(p + "0.SelfAttention.o.weight").T
        h = norm(x, p + "1.layer_norm.weight")
        ff = p + "1.DenseReluDense."
        if config["feed_forward_proj"] == "gated-gelu":
            hidden = gelu(h @ w(ff + "wi_0.weight").T) * (h @ w(ff + "wi_1.weight").T)
        else:
            hidden = np.maximum(h @ w(ff + "wi.weight").T, 0)
        x = x + hidden @ w(ff + "wo.weight").T
    return norm(x, "encoder.final_layer_norm.weight")


@pytest.mark.parametrize("layout", ["v1.0", "v1.1", "v1.1-bfloat16"])
def test_encode_matches_a_numpy_reference_of_the_released_tensors(releases, layout):
    directory, tensors = releases(layout)
    encoder = t5.load(directory)
    tokens, lengths = encoder.tokenize(CAPTIONS, LENGTH)
    hidden, pooled = jit(encoder.encode)(encoder.params, tokens, lengths)
    assert hidden.dtype == pooled.dtype == np.float32 and hidden.shape == (3, LENGTH, 32)
    for i, n in enumerate(lengths):
        expected = reference(tensors, LAYOUTS[layout][0], tokens[i, :n])  # padding never seen
        np.testing.assert_allclose(hidden[i, :n], expected, atol=1e-5)
        np.testing.assert_array_equal(hidden[i, n:], 0)
        np.testing.assert_allclose(pooled[i], expected.mean(0), atol=1e-5)


def test_more_padding_changes_no_valid_output(releases):
    directory, _ = releases("v1.1")
    encoder = t5.load(directory)
    encode = jit(encoder.encode)
    short, long = (encode(encoder.params, *encoder.tokenize(CAPTIONS[:2], length)) for length in (LENGTH, 2 * LENGTH))  # uncut
    np.testing.assert_allclose(long[0][:, :LENGTH], short[0], atol=1e-5)
    np.testing.assert_array_equal(long[0][:, LENGTH:], 0)
    np.testing.assert_allclose(long[1], short[1], atol=1e-5)


def test_tokens_end_in_eos_kept_when_cut_and_both_tokenizer_files_agree(releases):
    spiece, json_ = (t5.load(releases(layout)[0]) for layout in ("v1.0", "tokenizer.json"))
    tokens, lengths = spiece.tokenize(CAPTIONS, LENGTH)
    assert lengths.dtype == tokens.dtype == np.int32
    assert lengths[1] == 1 and tokens[1].tolist() == [t5.EOS] + [t5.PAD] * (LENGTH - 1)  # the empty caption
    assert lengths[2] == LENGTH and tokens[2, -1] == t5.EOS  # cut, still ending in EOS
    assert all(tokens[i, n - 1] == t5.EOS and (tokens[i, n:] == t5.PAD).all() for i, n in enumerate(lengths))
    for length in (LENGTH, 60):
        for a, b in zip(spiece.tokenize(CAPTIONS, length), json_.tokenize(CAPTIONS, length)):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"token length of 513 is outside \[1, 512\]"):
        spiece.tokenize(CAPTIONS, 513)


def without(name):
    return lambda tensors: {k: v for k, v in tensors.items() if k != name}


BLOCK1_Q = "encoder.block.1.layer.0.SelfAttention.q.weight"
BROKEN = {  # what is wrong -> (layout, how to break its directory, the message)
    "no directory": ("v1.0", lambda d: os.rename(d, d + ".moved"), r"The T5 encoder directory .* does not exist"),
    "no config.json": ("v1.0", lambda d: os.remove(os.path.join(d, "config.json")), r"has no config.json"),
    "a field missing": ("v1.0", lambda d: released.write_random(d, t5.release(t5.parse_config(RELU, "")),
                                                                {k: v for k, v in RELU.items() if k != "d_kv"}),
                        r"config.json lacks 'd_kv', which the T5 encoder needs"),
    "no tokenizer": ("v1.0", lambda d: os.remove(os.path.join(d, "spiece.model")),
                     r"has no T5 encoder tokenizer \(spiece.model or tokenizer.json\)"),
    "no weights": ("v1.0", lambda d: os.remove(os.path.join(d, released.WEIGHTS)), r"has neither model.safetensors nor"),
    "a tensor missing": ("v1.0", lambda d: rewrite_weights(d, without(BLOCK1_Q)), rf"model.safetensors lacks the T5 encoder tensor '{BLOCK1_Q}'"),
    "no embedding": ("v1.0", lambda d: rewrite_weights(d, without("shared.weight")),
                     r"lacks the T5 encoder tensor 'shared.weight' or 'encoder.embed_tokens.weight'"),
    "a misshapen tensor": ("v1.0", lambda d: rewrite_weights(d, lambda t: {**t, BLOCK1_Q: np.zeros((24, 31), np.float32)}),
                           rf"has tensor '{BLOCK1_Q}' of shape \(24, 31\), where the T5 encoder of its config.json has \(24, 32\)"),
    "an unknown tensor": ("v1.0", lambda d: rewrite_weights(d, lambda t: {**t, "encoder.block.2.layer.0.layer_norm.weight": np.ones(32, np.float32)}),
                          r"has 1 tensors the T5 encoder does not know, e.g. 'encoder.block.2.layer.0.layer_norm.weight'"),
    "a v1.0 file, v1.1 config": ("v1.0", lambda d: released.write_random(d, t5.release(t5.parse_config(RELU, "")), GATED),
                                 r"lacks the T5 encoder tensor 'encoder.block.0.layer.1.DenseReluDense.wi_0.weight' \(and 3 more\)"),
    "a shard missing": ("sharded", lambda d: os.remove(os.path.join(d, "model-00002-of-00003.safetensors")),
                        r"model.safetensors.index.json lists the shard 'model-00002-of-00003.safetensors', which .* lacks \(1 of 3"),
    "an unknown activation": ("v1.0", lambda d: released.write_random(d, t5.release(t5.parse_config(RELU, "")), {**RELU, "feed_forward_proj": "gated-swish"}),
                              r"has feed_forward_proj 'gated-swish'; the T5 encoder takes one of"),
}


@pytest.mark.parametrize("broken", BROKEN)
def test_whatever_is_wrong_is_named_before_any_tensor_is_read(tmp_path, monkeypatch, broken):
    layout, break_, message = BROKEN[broken]
    refused_before_reading(t5, LAYOUTS[layout], break_, str(tmp_path / "t5"), monkeypatch, message)


def test_tied_copies_that_differ_are_refused(tmp_path):
    directory = str(tmp_path / "t5")
    t5.write_random(directory, RELU, extra={"encoder.embed_tokens.weight": (100, 32)})
    with pytest.raises(ValueError, match=r"holds 'shared.weight' and 'encoder.embed_tokens.weight', one tensor tied under two names, but they differ"):
        t5.load(directory)
