"""lavin_jax.official against an independent statement of the official layouts.

`official_jdit`, `official_stvae` and `official_dit` list the official state dicts' names and
shapes as the official constructors build them (github DerrickWang005/LaVin-DiT, lib/model/{dit,
blocks,vae3d}.py; github facebookresearch/DiT, models.py with timm's PatchEmbed, Attention, Mlp),
written from the official structure rather than ours, so the rules are checked against it. Value
checks pin each layout to PyTorch's semantics (Linear, patch order, Conv3d and Conv2d
cross-correlation), and our J-DiT, DiT and a decoder ResNet, holding converted random weights, are
run against numpy statements of the official computations, so a wrong transpose, flip or pairing
of two same-shaped tensors fails.
"""

import itertools

import einops
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import DIGITS_SMALL, ROOT, shipped_config
from flax import nnx

from lavin_jax import config as config_lib
from lavin_jax import convert, models, official
from lavin_jax.models import layers, sdvae, stvae


def jdit_config(**fields):
    c = config_lib.base("jdit").model
    c.update(fields)
    return c


# configs/tiny.py's model (pixel space, 4x4 patches; 2 KV heads so K/V kernels are not square)
# and the released 3.4B model (configs/xl.py, LaVinDiT_3B_2: kv_group 4).
TINY_JDIT = dict(hidden=96, depth=4, num_heads=4, num_kv_heads=2, patch_size=4, in_channels=3)
RELEASED_JDIT = dict(hidden=2304, depth=22, num_heads=32, num_kv_heads=8, patch_size=2, in_channels=16)


def official_jdit(c) -> dict[str, tuple]:
    """LaVinDiT(patch_size=(p, p), in_channels, hidden_size, depth, num_heads, kv_group)'s state dict."""
    d, p, heads = c.hidden, c.patch_size, c.num_heads
    kv_group = heads // c.num_kv_heads
    head_dim = d // heads
    q_width, kv_width = heads * head_dim, heads // kv_group * head_dim
    swiglu = int((4 * d * 2 / 3) / 64) * 64
    names = {}
    for embedder in ("cond_embedder", "x_embedder"):
        names |= {f"{embedder}.0.weight": (d, p * p * c.in_channels), f"{embedder}.0.bias": (d,)}
        names |= {f"{embedder}.1.weight": (d,), f"{embedder}.1.bias": (d,)}
    names |= {"prompt_embed": (1, d), "answer_embed": (1, d)}
    names |= {"t_embedder.mlp.0.weight": (d, 256), "t_embedder.mlp.0.bias": (d,)}
    names |= {"t_embedder.mlp.2.weight": (d, d), "t_embedder.mlp.2.bias": (d,)}
    for i in range(c.depth):
        for s in ("cond", "x"):
            a = f"blocks.{i}.joint_attn.{s}"
            names |= {f"{a}_q.weight": (q_width, d), f"{a}_k.weight": (kv_width, d), f"{a}_v.weight": (kv_width, d)}
            names |= {f"{a}_qnorm.weight": (q_width,), f"{a}_knorm.weight": (kv_width,)}
            names |= {f"{a}_proj.weight": (d, q_width)}
            m = f"blocks.{i}.{s}_mlp"
            names |= {f"{m}.gate_proj.weight": (swiglu, d), f"{m}.up_proj.weight": (swiglu, d)}
            names |= {f"{m}.down_proj.weight": (d, swiglu)}
            mod = f"blocks.{i}.{s}_modulation.1"
            names |= {f"{mod}.weight": (4 * d, d), f"{mod}.bias": (4 * d,)}
    patch = p * p * c.in_channels
    names |= {"final_layer.linear.weight": (patch, d), "final_layer.linear.bias": (patch,)}
    names |= {"final_layer.adaLN_modulation.1.weight": (d, d), "final_layer.adaLN_modulation.1.bias": (d,)}
    return names


def official_dit(c) -> dict[str, tuple]:
    """DiT(patch_size, in_channels, hidden_size, depth, num_heads, num_classes, learn_sigma)'s state
    dict with class dropout (as trained and released: a null-class row), less `pos_embed` [1, T, d],
    whose T the model config does not fix (`test_a_dit_file_is_its_rules_and_pos_embed`)."""
    d, p, channels = c.hidden, c.patch_size, c.in_channels
    out_channels = channels * (2 if c.learn_sigma else 1)
    mlp = int(d * c.mlp_ratio)
    names = {"x_embedder.proj.weight": (d, channels, p, p), "x_embedder.proj.bias": (d,)}
    names |= {"t_embedder.mlp.0.weight": (d, 256), "t_embedder.mlp.0.bias": (d,)}
    names |= {"t_embedder.mlp.2.weight": (d, d), "t_embedder.mlp.2.bias": (d,)}
    names |= {"y_embedder.embedding_table.weight": (c.num_classes + 1, d)}
    for i in range(c.depth):
        b = f"blocks.{i}"
        names |= {f"{b}.attn.qkv.weight": (3 * d, d), f"{b}.attn.qkv.bias": (3 * d,)}
        names |= {f"{b}.attn.proj.weight": (d, d), f"{b}.attn.proj.bias": (d,)}
        names |= {f"{b}.mlp.fc1.weight": (mlp, d), f"{b}.mlp.fc1.bias": (mlp,)}
        names |= {f"{b}.mlp.fc2.weight": (d, mlp), f"{b}.mlp.fc2.bias": (d,)}
        names |= {f"{b}.adaLN_modulation.1.weight": (6 * d, d), f"{b}.adaLN_modulation.1.bias": (6 * d,)}
    names |= {"final_layer.linear.weight": (p * p * out_channels, d), "final_layer.linear.bias": (p * p * out_channels,)}
    names |= {"final_layer.adaLN_modulation.1.weight": (2 * d, d), "final_layer.adaLN_modulation.1.bias": (2 * d,)}
    return names


def stage_names(resnet, conv, prefix: str, channels, count: int, kernel) -> None:
    """The names of a diffusers-style stack of stages (`{prefix}.down_blocks` of an encoder,
    `{prefix}.up_blocks` of a decoder, by prefix): `count` ResNets per stage, the first widening
    from the last stage's width, and a resampler after all but the last stage."""
    kind, sampler = ("down_blocks", "downsamplers") if prefix == "encoder" else ("up_blocks", "upsamplers")
    out_ch = channels[0]
    for i in range(len(channels)):
        in_ch, out_ch = out_ch, channels[i]
        for j in range(count):
            resnet(f"{prefix}.{kind}.{i}.resnets.{j}", in_ch if j == 0 else out_ch, out_ch)
        if i < len(channels) - 1:
            conv(f"{prefix}.{kind}.{i}.{sampler}.0.conv", out_ch, out_ch, kernel)


def official_stvae(c) -> dict[str, tuple]:
    """AutoencoderKLSTVAE(in_channels, block_out_channels, latent_channels, layers_per_block)'s
    state dict. The official class fixes the mid blocks at 2 ResNets and the up blocks at
    layers_per_block + 1; the counts are taken from `c` so small configs are covered too."""
    names = {}

    def conv(name, out_ch, in_ch, kernel):
        names.update({f"{name}.weight": (out_ch, in_ch, *kernel), f"{name}.bias": (out_ch,)})

    def group_norm(name, ch):
        names.update({f"{name}.weight": (ch,), f"{name}.bias": (ch,)})

    def spatial_norm(name, ch, zq):
        group_norm(f"{name}.norm_layer", ch)
        conv(f"{name}.conv_y.conv", ch, zq, (1, 1, 1))
        conv(f"{name}.conv_b.conv", ch, zq, (1, 1, 1))

    def resnet(name, in_ch, out_ch, zq=None):
        for norm, ch in (("norm1", in_ch), ("norm2", out_ch)):
            if zq:
                spatial_norm(f"{name}.{norm}", ch, zq)
            else:
                group_norm(f"{name}.{norm}", ch)
        conv(f"{name}.conv1.conv", out_ch, in_ch, (3, 3, 3))
        conv(f"{name}.conv2.conv", out_ch, out_ch, (3, 3, 3))
        if in_ch != out_ch:
            conv(f"{name}.conv_shortcut", out_ch, in_ch, (1, 1, 1))

    block_out, latent = tuple(c.channels), c.latent_channels
    conv("encoder.conv_in.conv", block_out[0], c.in_channels, (3, 3, 3))
    stage_names(resnet, conv, "encoder", block_out, c.encoder_layers, (3, 3))
    for j in range(c.mid_layers):
        resnet(f"encoder.mid_block.resnets.{j}", block_out[-1], block_out[-1])
    group_norm("encoder.norm_out", block_out[-1])
    conv("encoder.conv_out.conv", 2 * latent, block_out[-1], (3, 3, 3))

    rev = list(reversed(block_out))
    conv("decoder.conv_in.conv", rev[0], latent, (3, 3, 3))
    for j in range(c.mid_layers):
        resnet(f"decoder.mid_block.resnets.{j}", rev[0], rev[0], zq=latent)
    stage_names(lambda *args: resnet(*args, zq=latent), conv, "decoder", rev, c.decoder_layers, (3, 3))
    spatial_norm("decoder.norm_out", rev[-1], latent)
    conv("decoder.conv_out.conv", c.in_channels, rev[-1], (3, 3, 3))
    return names


def stvae_official_tiny():
    """tiny_config() widened so its decoder can normalise in the official 32 groups (the only
    count the official SpatialNorm has), keeping 8 in the encoder (norm_num_groups)."""
    c = stvae.tiny_config()
    c.channels, c.spatial_groups = (32, 64, 64, 64), 32
    return c


def stvae_two_resnets():
    """stvae_official_tiny() with 2 ResNets everywhere (released: 3 per encoder stage, 4 per
    decoder stage, 2 per mid block), so names past index 0 and same-width ResNets after a widening
    one are covered; the released model itself would only cost seconds to build abstractly."""
    c = stvae_official_tiny()
    c.encoder_layers = c.decoder_layers = c.mid_layers = 2
    return c


def dit_config(variant: str = "S/8", **overrides):
    """A DiT run config of the released kind (ddpm, learned variance): configs/dit.py's variant, or
    configs/dit_digits.py's small model (pixels, 8 px, 4 heads, 2 blocks) with `overrides`."""
    if variant == "digits":
        return shipped_config("dit_digits", {**DIGITS_SMALL, "objective": "ddpm", "model.learn_sigma": True}, overrides)
    return config_lib.load(f"{ROOT}/configs/dit.py:{variant}", overrides)


def official_sdvae(c) -> dict[str, tuple]:
    """diffusers' AutoencoderKL(in_channels, block_out_channels, layers_per_block, latent_channels)
    state dict, with the mid attentions under the names of the released file (query, key, value,
    proj_attn; Linear weights)."""
    names = {}

    def conv(name, out_ch, in_ch, kernel):
        names.update({f"{name}.weight": (out_ch, in_ch, kernel, kernel), f"{name}.bias": (out_ch,)})

    def group_norm(name, ch):
        names.update({f"{name}.weight": (ch,), f"{name}.bias": (ch,)})

    def resnet(name, in_ch, out_ch):
        group_norm(f"{name}.norm1", in_ch)
        conv(f"{name}.conv1", out_ch, in_ch, 3)
        group_norm(f"{name}.norm2", out_ch)
        conv(f"{name}.conv2", out_ch, out_ch, 3)
        if in_ch != out_ch:
            conv(f"{name}.conv_shortcut", out_ch, in_ch, 1)

    def mid(name, ch):
        resnet(f"{name}.resnets.0", ch, ch)
        resnet(f"{name}.resnets.1", ch, ch)
        group_norm(f"{name}.attentions.0.group_norm", ch)
        for linear in ("query", "key", "value", "proj_attn"):
            names.update({f"{name}.attentions.0.{linear}.weight": (ch, ch), f"{name}.attentions.0.{linear}.bias": (ch,)})

    block_out, latent = tuple(c.channels), c.latent_channels
    conv("encoder.conv_in", block_out[0], c.in_channels, 3)
    stage_names(resnet, conv, "encoder", block_out, c.layers, 3)
    mid("encoder.mid_block", block_out[-1])
    group_norm("encoder.conv_norm_out", block_out[-1])
    conv("encoder.conv_out", 2 * latent, block_out[-1], 3)
    conv("quant_conv", 2 * latent, 2 * latent, 1)
    conv("post_quant_conv", latent, latent, 1)
    rev = list(reversed(block_out))
    conv("decoder.conv_in", rev[0], latent, 3)
    mid("decoder.mid_block", rev[0])
    stage_names(resnet, conv, "decoder", rev, c.layers + 1, 3)
    group_norm("decoder.conv_norm_out", rev[-1])
    conv("decoder.conv_out", c.in_channels, rev[-1], 3)
    return names


def sdvae_two_stages():
    """A small SD VAE: two stages of different widths (a widening ResNet with a shortcut, a
    downsampler and an upsampler), 2 ResNets per encoder stage as released."""
    c = sdvae.tiny_config()
    c.channels, c.layers, c.groups = (8, 16), 2, 4
    return c



CASES = {
    "jdit-tiny": (lambda: jdit_config(**TINY_JDIT), official.jdit_rules, official_jdit),
    "jdit-released": (lambda: jdit_config(**RELEASED_JDIT), official.jdit_rules, official_jdit),
    "stvae-tiny": (stvae_official_tiny, official.stvae_rules, official_stvae),
    "stvae-two-resnets": (stvae_two_resnets, official.stvae_rules, official_stvae),
    "dit-digits": (lambda: dit_config("digits").model, official.dit_rules, official_dit),
    "dit-released": (lambda: dit_config("XL/2").model, official.dit_rules, official_dit),
    "sdvae-two-stages": (sdvae_two_stages, official.sdvae_rules, official_sdvae),
    "sdvae-released": (sdvae.default_config, official.sdvae_rules, official_sdvae),
}
SMALL_CASES = ("jdit-tiny", "stvae-tiny", "dit-digits", "sdvae-two-stages")


_SETUPS = {}


def setup(case: str):
    """(model config, rules, our shapes, the official names and shapes) of a case, built once."""
    if case not in _SETUPS:
        make_config, make_rules, official_names = CASES[case]
        model_config = make_config()
        _SETUPS[case] = (model_config, make_rules(model_config), convert._our_shapes(model_config), official_names(model_config))
    return _SETUPS[case]


def rule_for(rules, ours: str) -> official.Rule:
    """The rule making our parameter `ours`."""
    (rule,) = [r for r in rules if ours in r.ours]
    return rule


def made(rules, ours: str, weights: dict) -> np.ndarray:
    """Our parameter `ours` as its rule makes it from the official `weights`."""
    rule = rule_for(rules, ours)
    return rule.to_ours([weights[name] for name in rule.official])[rule.ours.index(ours)]


@pytest.mark.parametrize("case", CASES)
def test_rules_cover_both_sides_once(case):
    _, rules, ours, expected = setup(case)
    ours_paths = [path for rule in rules for path in rule.ours]
    assert len(ours_paths) == len(set(ours_paths)) and set(ours_paths) == set(ours)
    names = [name for rule in rules for name in rule.official]
    assert len(names) == len(set(names))
    assert set(names) == set(expected)
    assert official.official_shapes(rules, ours) == expected
    family = case.split("-")[0]
    assert not any(official.ignored(name, family) for name in names)


def test_released_jdit_size():
    """The released J-DiT holds 3.40B parameters (paper and REFERENCES: 3.4B)."""
    _, _, _, expected = setup("jdit-released")
    assert round(sum(int(np.prod(s)) for s in expected.values()) / 1e9, 2) == 3.40


def test_released_dit_size():
    """DiT-XL/2 at 256 px holds 675M parameters, pos_embed among them (train.py logs the sum of
    its parameters' sizes)."""
    config = dit_config("XL/2")
    _, _, _, expected = setup("dit-released")
    total = sum(int(np.prod(s)) for s in expected.values()) + official.dit_fixed(config)["pos_embed"].size
    assert total == 675_129_632


@pytest.mark.parametrize("case", SMALL_CASES)
def test_round_trip_is_bit_exact(case):
    _, rules, ours, expected = setup(case)
    rng = np.random.default_rng(0)
    for rule in rules:
        values = [rng.standard_normal(ours[path]).astype(np.float32) for path in rule.ours]
        arrays = rule.to_official(values)
        assert [tuple(a.shape) for a in arrays] == [expected[name] for name in rule.official]
        back = rule.to_ours([np.array(a) for a in arrays])  # copies: nothing rides on views
        for value, array in zip(values, back, strict=True):
            assert array.dtype == value.dtype and np.array_equal(array, value), rule.ours
        filled = [np.full_like(value, np.nan) for value in values]
        rule.fill(filled, dict(zip(rule.official, arrays)).__getitem__)
        for value, array in zip(values, filled, strict=True):
            assert np.array_equal(array, value), rule.ours


def test_ignored_and_nesting():
    assert official.ignored("loss.discriminator.main.0.weight", "stvae")
    assert not official.ignored("encoder.conv_in.conv.weight", "stvae")
    assert not official.ignored("loss.discriminator.main.0.weight", "jdit")  # a J-DiT file is all rules.
    assert not official.ignored("pos_embed", "dit")  # sample.py loads strictly.
    weight = np.zeros(3)
    state = {"decoder.conv_out.conv.bias": weight}
    assert official.state_dict({"state_dict": state, "epoch": 3}, "stvae.pt", "stvae") == state
    with pytest.raises(ValueError, match="stvae.pt holds no 'state_dict' entry; the released stvae file keeps its weights under it"):
        official.state_dict(state, "stvae.pt", "stvae")
    # DiT: the released files are the state dict itself; train.py's checkpoints hold it as `ema`.
    assert official.state_dict(state, "DiT-XL-2-256x256.pt", "dit") == state
    assert official.state_dict({"model": {}, "ema": state, "opt": {}, "args": {}}, "0400000.pt", "dit") == state
    with pytest.raises(ValueError, match=r"x.pt holds a list, not a dict of tensors"):
        official.state_dict([weight], "x.pt", "dit")
    with pytest.raises(ValueError, match=r"config.model.name='lpips' has no released layout here; families with one: jdit, stvae, dit"):
        official.family("lpips")


# --- the official computations in numpy, from the official code's semantics ----------------------
# The functional tests below run our modules with converted random weights against these: a
# tensor paired with the wrong one of the same shape (gate/up, q/out, the two streams, norm1/norm2,
# conv_y/conv_b, ...) changes the outputs, which the name and shape checks cannot see.


def silu(x):
    return x / (1 + np.exp(-x))


def rms_norm(x, weight=None, eps=1e-6):
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return y if weight is None else y * weight


def linear(w, name, x, bias=True):
    y = x @ w[f"{name}.weight"].T
    return y + w[f"{name}.bias"] if bias else y


def rope_official(x, grid, base=10_000.0):
    """3D RoPE on (B, L, heads, head_dim): head_dim cut into [head_dim/3]*3 (t, h, w) parts, each
    rotated in the rotate-half layout by its axis' position on the (T, H, W) grid."""
    part = x.shape[-1] // 3
    coords = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in grid), indexing="ij"), -1).reshape(-1, 3)
    inv_freq = 1.0 / base ** (np.arange(0, part, 2)[: part // 2] / part)
    parts = []
    for axis in range(3):
        angles = coords[:, axis, None] * inv_freq
        cos = np.concatenate([np.cos(angles)] * 2, -1)[None, :, None]
        sin = np.concatenate([np.sin(angles)] * 2, -1)[None, :, None]
        xp = x[..., axis * part : (axis + 1) * part]
        rotated = np.concatenate([-xp[..., part // 2 :], xp[..., : part // 2]], -1)
        parts.append(xp * cos + rotated * sin)
    return np.concatenate(parts, -1)


def attention_official(q, k, v):
    """flash_attn_func semantics: grouped KV (query head h reads KV head h // group), scale
    head_dim**-0.5, not causal."""
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    logits = np.einsum("blhd,bmhd->bhlm", q, k) * q.shape[-1] ** -0.5
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bhlm,bmhd->blhd", probs, v)


def jdit_official(w, c, x, t, cond):
    """LaVinDiT.forward on channels-first frames x (B, C, Tx, H, W), cond (B, C, Tc, H, W)."""
    p, d, batch = c.patch_size, c.hidden, x.shape[0]
    head_dim = d // c.num_heads
    heads = lambda a, n: a.reshape(batch, -1, n, head_dim)  # "b n (nh hd) -> b n nh hd"

    def embed(name, frames):
        tokens = einops.rearrange(frames, "B C F (H pH) (W pW) -> B (F H W) (pH pW C)", pH=p, pW=p)
        h = linear(w, f"{name}.0", tokens)
        mean, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
        return (h - mean) / np.sqrt(var + 1e-5) * w[f"{name}.1.weight"] + w[f"{name}.1.bias"]

    streams = {"cond": embed("cond_embedder", cond), "x": embed("x_embedder", x)}
    freqs = np.exp(-np.log(10_000.0) * np.arange(128) / 128)
    t_freq = np.concatenate([np.cos(t[:, None] * freqs), np.sin(t[:, None] * freqs)], -1)
    t_emb = linear(w, "t_embedder.mlp.2", silu(linear(w, "t_embedder.mlp.0", t_freq)))
    temb = {"cond": t_emb + w["prompt_embed"], "x": t_emb + w["answer_embed"]}
    grid = (cond.shape[2] + x.shape[2], cond.shape[3] // p, cond.shape[4] // p)
    n_cond = streams["cond"].shape[1]

    for i in range(c.depth):
        b = f"blocks.{i}."
        # Per stream: scale_msa, gate_msa, scale_mlp, gate_mlp, each (B, 1, D).
        mods = {s: linear(w, f"{b}{s}_modulation.1", silu(temb[s])) for s in streams}
        mods = {s: m.reshape(batch, 4, 1, d).swapaxes(0, 1) for s, m in mods.items()}
        q, k, v = [], [], []
        for s, h in streams.items():
            a, attn = rms_norm(h) * (1 + mods[s][0]), f"{b}joint_attn.{s}"
            q.append(heads(rms_norm(linear(w, f"{attn}_q", a, False), w[f"{attn}_qnorm.weight"]), c.num_heads))
            k.append(heads(rms_norm(linear(w, f"{attn}_k", a, False), w[f"{attn}_knorm.weight"]), c.num_kv_heads))
            v.append(heads(linear(w, f"{attn}_v", a, False), c.num_kv_heads))
        q, k, v = (np.concatenate(parts, axis=1) for parts in (q, k, v))
        out = attention_official(rope_official(q, grid), rope_official(k, grid), v).reshape(batch, -1, d)
        for s, o in (("cond", out[:, :n_cond]), ("x", out[:, n_cond:])):
            streams[s] = streams[s] + np.tanh(mods[s][1]) * rms_norm(linear(w, f"{b}joint_attn.{s}_proj", o, False))
        for s, h in streams.items():
            a, mlp = rms_norm(h) * (1 + mods[s][2]), f"{b}{s}_mlp"
            hidden = silu(linear(w, f"{mlp}.gate_proj", a, False)) * linear(w, f"{mlp}.up_proj", a, False)
            streams[s] = h + np.tanh(mods[s][3]) * rms_norm(linear(w, f"{mlp}.down_proj", hidden, False))

    scale = linear(w, "final_layer.adaLN_modulation.1", silu(temb["x"]))[:, None]
    out = linear(w, "final_layer.linear", rms_norm(streams["x"]) * (1 + scale))
    t_x, h, wd = x.shape[2], x.shape[3] // p, x.shape[4] // p
    return einops.rearrange(out, "B (T H W) (ph pw c) -> B c T (H ph) (W pw)", T=t_x, H=h, W=wd, ph=p, pw=p)


def load_official(module, rules, prefix: str, weights: dict):
    """Sets the parameters of `module`, our (abstractly built) sub-module at `prefix` ("" for the
    whole model), from official arrays through the rules."""
    state = nnx.state(module, nnx.Param)
    pure = {}
    for rule in rules:
        if prefix and not rule.ours[0].startswith(prefix + "/"):
            continue
        values = rule.to_ours([np.asarray(weights[name], np.float32) for name in rule.official])
        for path, value in zip(rule.ours, values, strict=True):
            convert.put(pure, path[len(prefix) + 1 if prefix else 0 :], jnp.asarray(value))
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(module, state)
    return module


def random_weights(expected: dict, scale: float, seed: int) -> dict:
    """Random official tensors (float64, for the numpy references)."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape) * scale for name, shape in expected.items()}


def run_quick(module, *args):
    """module(*args), compiled without XLA's backend optimisation (one call: it would not pay)."""
    graphdef, state = nnx.split(module)
    call = jax.jit(lambda state, *args: nnx.merge(graphdef, state)(*args))
    return call(state, *args)


def causal_conv3d(w, name, x):
    """STVAECausalConv3d (or, for a 1x1x1 kernel, a plain nn.Conv3d) on x (C, T, H, W): the first
    frame repeated k-1 times in front, space zero-padded by k//2, then cross-correlation."""
    weight, bias = w[f"{name}.weight"], w[f"{name}.bias"]
    k = weight.shape[2]
    t, h, wd = x.shape[1:]
    padded = np.concatenate([x[:, :1]] * (k - 1) + [x], axis=1)
    padded = np.pad(padded, ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
    out = np.zeros((weight.shape[0], t, h, wd)) + bias[:, None, None, None]
    for dt, dy, dx in itertools.product(range(k), repeat=3):
        out += np.einsum("oi,ithw->othw", weight[:, :, dt, dy, dx], padded[:, dt : dt + t, dy : dy + h, dx : dx + wd])
    return out


def group_norm(x, weight, bias, groups, eps=1e-6):
    """torch GroupNorm on one example (C, T, H, W): statistics per group over the whole clip."""
    g = x.reshape(groups, -1)
    g = (g - g.mean(1, keepdims=True)) / np.sqrt(g.var(1, keepdims=True) + eps)
    return g.reshape(x.shape) * weight[:, None, None, None] + bias[:, None, None, None]


def test_linear_and_norm_layouts():
    """Stacked Linear: x @ ours[l] is torch's x @ W_l.T; a norm weight is the same vector."""
    _, rules, _, expected = setup("jdit-tiny")
    w = random_weights(expected, 1.0, seed=0)
    rule = rule_for(rules, "blocks/target/k/kernel")  # (depth, hidden, kv width): not square
    assert rule.official[2] == "blocks.2.joint_attn.x_k.weight"
    kernel = made(rules, "blocks/target/k/kernel", w)
    x = np.random.default_rng(1).standard_normal((5, kernel.shape[1]))
    for layer, name in enumerate(rule.official):
        np.testing.assert_allclose(x @ kernel[layer], np.einsum("bi,oi->bo", x, w[name]), rtol=1e-10, atol=1e-10)

    scales = made(rules, "blocks/cond/k_norm/scale", w)
    assert np.array_equal(scales[3], w["blocks.3.joint_attn.cond_knorm.weight"])


def test_patch_embedding_and_final_layer_order():
    """Official tokens are `B C F (H pH) (W pW) -> B F H W (pH pW C)` and its output
    `B (T H W) (ph pw c) -> B c T (H ph) (W pw)`: ours (layers.patchify/unpatchify) match with
    the kernels as converted, no permutation."""
    c, rules, _, expected = setup("jdit-tiny")
    w = random_weights(expected, 1.0, seed=3)
    p = c.patch_size
    rng = np.random.default_rng(2)
    frames = rng.standard_normal((1, 2, 2 * p, 3 * p, c.in_channels))  # (B, T, H, W, C)
    channels_first = frames.transpose(0, 4, 1, 2, 3)
    official_tokens = linear(
        w, "x_embedder.0", einops.rearrange(channels_first, "B C F (H pH) (W pW) -> B (F H W) (pH pW C)", pH=p, pW=p)
    )
    kernel = made(rules, "target_embed/proj/kernel", w)
    ours = np.asarray(layers.patchify(jnp.asarray(frames), p)) @ kernel + w["x_embedder.0.bias"]
    np.testing.assert_allclose(ours, official_tokens, rtol=1e-6, atol=1e-6)

    hidden = rng.standard_normal((1, 2 * 2 * 3, c.hidden))
    official_out = einops.rearrange(
        linear(w, "final_layer.linear", hidden), "B (T H W) (ph pw c) -> B T (H ph) (W pw) c", T=2, H=2, W=3, ph=p, pw=p
    )  # the official "-> B c T (H ph) (W pw)", channels last
    kernel = made(rules, "final/proj/kernel", w)
    ours = layers.unpatchify(jnp.asarray(hidden @ kernel + w["final_layer.linear.bias"]), p, 2, 2, 3)
    np.testing.assert_allclose(np.asarray(ours), official_out, rtol=1e-6, atol=1e-6)


def test_conv3d_layout():
    """Our causal conv with a converted kernel computes torch's Conv3d (cross-correlation, no
    flip, time in order) over the official padding."""
    _, rules, _, expected = setup("stvae-tiny")
    name = "encoder.conv_in.conv"
    w = random_weights({n: expected[n] for n in (f"{name}.weight", f"{name}.bias")}, 1.0, seed=5)
    out_ch, in_ch = expected[f"{name}.weight"][:2]
    conv = nnx.eval_shape(lambda: stvae.CausalConv3d(in_ch, out_ch, 3, rngs=nnx.Rngs(0)))
    load_official(conv, rules, "encoder/conv_in", w)
    x = np.random.default_rng(6).standard_normal((1, 3, 4, 5, in_ch))  # (B, T, H, W, C)
    reference = causal_conv3d(w, name, x[0].transpose(3, 0, 1, 2)).transpose(1, 2, 3, 0)
    ours = np.asarray(run_quick(conv, jnp.asarray(x, jnp.float32)))[0]
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4)


def test_conv2d_layout():
    """Our downsampler with a converted kernel computes the official per-frame Conv2d, stride 2,
    after padding one zero row and column at the bottom and right."""
    _, rules, _, expected = setup("stvae-tiny")
    name = "encoder.down_blocks.0.downsamplers.0.conv"
    w = random_weights({n: expected[n] for n in (f"{name}.weight", f"{name}.bias")}, 1.0, seed=7)
    weight, bias = w[f"{name}.weight"], w[f"{name}.bias"]
    ch = weight.shape[0]
    down = nnx.eval_shape(lambda: stvae.Downsample(ch, compress_time=False, dtype=jnp.float32, rngs=nnx.Rngs(0)))
    load_official(down, rules, "encoder/stages/0/resample", w)
    x = np.random.default_rng(8).standard_normal((1, 1, 6, 8, ch))

    frame = np.pad(x[0, 0].transpose(2, 0, 1), ((0, 0), (0, 1), (0, 1)))  # (C, H + 1, W + 1)
    h, wd = x.shape[2] // 2, x.shape[3] // 2
    reference = np.zeros((ch, h, wd)) + bias[:, None, None]
    for dy, dx in itertools.product(range(3), repeat=2):
        window = frame[:, dy : dy + 2 * h : 2, dx : dx + 2 * wd : 2]
        reference += np.einsum("oi,ihw->ohw", weight[:, :, dy, dx], window)
    ours = np.asarray(run_quick(down, jnp.asarray(x, jnp.float32)))[0, 0]
    np.testing.assert_allclose(ours, reference.transpose(1, 2, 0), rtol=1e-4, atol=1e-4)


def test_decoder_resnet_matches_the_official_forward():
    """A widening decoder ResNet (SpatialNorms, 1x1x1 shortcut) with converted random weights
    computes STVAEResnetBlock3D: norm1/norm2, conv1/conv2, conv_y/conv_b paired by role. Clip
    statistics as torch's GroupNorm, in the official SpatialNorm's 32 groups (the encoder's are 8)."""
    _, rules, _, expected = setup("stvae-tiny")
    cfg = stvae_official_tiny()
    cfg.norm_stats = "clip"
    prefix, name = "decoder/stages/3/resnets/0", "decoder.up_blocks.3.resnets.0"
    w = random_weights({n: s for n, s in expected.items() if n.startswith(name + ".")}, 0.3, seed=11)
    (out_ch, in_ch, *_), zc = expected[f"{name}.conv1.conv.weight"], cfg.latent_channels
    assert in_ch != out_ch  # so the shortcut is exercised
    block = nnx.eval_shape(lambda: stvae.ResnetBlock(in_ch, out_ch, cfg, z_channels=zc, rngs=nnx.Rngs(0)))
    load_official(block, rules, prefix, w)
    rng = np.random.default_rng(12)
    x, z = rng.standard_normal((1, 3, 4, 4, in_ch)), rng.standard_normal((1, 3, 4, 4, zc))  # z already at x's size

    def spatial_norm(norm, f, zq):
        normed = group_norm(f, w[f"{norm}.norm_layer.weight"], w[f"{norm}.norm_layer.bias"], 32)
        return normed * causal_conv3d(w, f"{norm}.conv_y.conv", zq) + causal_conv3d(w, f"{norm}.conv_b.conv", zq)

    xc, zq = x[0].transpose(3, 0, 1, 2), z[0].transpose(3, 0, 1, 2)
    h = causal_conv3d(w, f"{name}.conv1.conv", silu(spatial_norm(f"{name}.norm1", xc, zq)))
    h = causal_conv3d(w, f"{name}.conv2.conv", silu(spatial_norm(f"{name}.norm2", h, zq)))
    reference = (causal_conv3d(w, f"{name}.conv_shortcut", xc) + h).transpose(1, 2, 3, 0)
    ours = np.asarray(run_quick(block, jnp.asarray(x, jnp.float32), jnp.asarray(z, jnp.float32)))[0]
    np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-3)


def test_jdit_matches_the_official_forward():
    """Our J-DiT with converted random weights computes the official LaVinDiT.forward: pairs every
    tensor by its role (streams, q/k/v/out, gate/up/down, modulation chunks, embeddings)."""
    _, rules, _, expected = setup("jdit-tiny")
    c = jdit_config(**TINY_JDIT, dtype="float32")
    weights = random_weights(expected, 0.2, seed=9)
    model = load_official(nnx.eval_shape(lambda: models.build(c, nnx.Rngs(0))), rules, "", weights)
    rng = np.random.default_rng(10)
    p = c.patch_size
    x = rng.standard_normal((2, 1, 2 * p, 2 * p, c.in_channels)).astype(np.float32)  # (B, T, H, W, C)
    cond = rng.standard_normal((2, 3, 2 * p, 2 * p, c.in_channels)).astype(np.float32)
    t = rng.uniform(size=2).astype(np.float32)

    ours = run_quick(model, jnp.asarray(x), jnp.asarray(t), {"cond": jnp.asarray(cond)})
    channels_first = lambda f: f.transpose(0, 4, 1, 2, 3).astype(np.float64)
    reference = jdit_official(weights, c, channels_first(x), t.astype(np.float64), channels_first(cond))
    np.testing.assert_allclose(np.asarray(ours), reference.transpose(0, 2, 3, 4, 1), rtol=1e-3, atol=1e-3)


def test_an_stvae_whose_decoder_norms_are_not_in_32_groups_has_no_official_form():
    with pytest.raises(ValueError, match=r"config.model.spatial_groups=8: the official ST-VAE decoder's SpatialNorm has 32 groups"):
        official.stvae_rules(stvae.tiny_config())


# --- DiT -------------------------------------------------------------------------------------------


def layer_norm(x, eps=1e-6):
    """nn.LayerNorm(elementwise_affine=False, eps=1e-6)."""
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def dit_official(w, c, x, t, y):
    """DiT.forward on channels-first images x (B, C, H, W), timesteps t (B,) and labels y (B,),
    with timm's PatchEmbed (a stride-p Conv2d, tokens row by row), Attention (the fused qkv's
    output read as (B, N, 3, heads, head_dim)) and Mlp (tanh GELU); `pos_embed` is the file's."""
    p, d, heads = c.patch_size, c.hidden, c.num_heads
    batch, channels, height, width = x.shape
    h, wd = height // p, width // p
    patches = x.reshape(batch, channels, h, p, wd, p)  # [b, c, i, pH, j, pW] = x[b, c, i*p + pH, j*p + pW]
    conv = np.einsum("bcipjq,dcpq->bijd", patches, w["x_embedder.proj.weight"]) + w["x_embedder.proj.bias"]
    tokens = conv.reshape(batch, h * wd, d) + w["pos_embed"]
    freqs = np.exp(-np.log(10_000.0) * np.arange(128) / 128)
    t_freq = np.concatenate([np.cos(t[:, None] * freqs), np.sin(t[:, None] * freqs)], -1)
    cond = linear(w, "t_embedder.mlp.2", silu(linear(w, "t_embedder.mlp.0", t_freq))) + w["y_embedder.embedding_table.weight"][y]
    modulate = lambda v, shift, scale: v * (1 + scale[:, None]) + shift[:, None]

    for i in range(c.depth):
        b = f"blocks.{i}"
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = np.split(linear(w, f"{b}.adaLN_modulation.1", silu(cond)), 6, -1)
        a = modulate(layer_norm(tokens), shift_msa, scale_msa)
        q, k, v = linear(w, f"{b}.attn.qkv", a).reshape(batch, h * wd, 3, heads, d // heads).transpose(2, 0, 3, 1, 4)
        logits = q @ k.swapaxes(-1, -2) * (d // heads) ** -0.5
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attended = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, h * wd, d)
        tokens = tokens + gate_msa[:, None] * linear(w, f"{b}.attn.proj", attended)
        hidden = gelu_tanh(linear(w, f"{b}.mlp.fc1", modulate(layer_norm(tokens), shift_mlp, scale_mlp)))
        tokens = tokens + gate_mlp[:, None] * linear(w, f"{b}.mlp.fc2", hidden)

    shift, scale = np.split(linear(w, "final_layer.adaLN_modulation.1", silu(cond)), 2, -1)
    out = linear(w, "final_layer.linear", modulate(layer_norm(tokens), shift, scale))
    out_channels = out.shape[-1] // (p * p)
    out = np.einsum("nhwpqc->nchpwq", out.reshape(batch, h, wd, p, p, out_channels))  # DiT.unpatchify
    return out.reshape(batch, out_channels, height, width)


def test_dit_matches_the_official_forward():
    """Our DiT with converted random weights computes the official DiT.forward: the patch conv's
    (C, pH, pW) order, q, k and v out of the fused qkv head by head, the six modulation chunks, the
    null class's row, the final layer's (p, q, c) order with the noise's channels first."""
    config = dit_config("digits", **{"model.dtype": "float32"})
    c = config.model
    _, rules, _, expected = setup("dit-digits")
    weights = random_weights(expected, 0.2, seed=13)
    weights["pos_embed"] = official.dit_fixed(config)["pos_embed"].astype(np.float64)  # as a conversion requires
    model = load_official(nnx.eval_shape(lambda: models.build(c, nnx.Rngs(0))), rules, "", weights)
    rng = np.random.default_rng(14)
    size = config.data.image_size
    x = rng.standard_normal((3, 1, size, size, c.in_channels)).astype(np.float32)  # (B, 1, H, W, C)
    t, y = np.array([0, 420, 999]), np.array([2, 7, c.num_classes])  # the last: the null class

    ours = run_quick(model, jnp.asarray(x), jnp.asarray(t, jnp.int32), {"label": jnp.asarray(y, jnp.int32)})
    reference = dit_official(weights, c, x[:, 0].transpose(0, 3, 1, 2).astype(np.float64), t.astype(np.float64), y)
    assert reference.shape[1] == 2 * c.in_channels  # learn_sigma
    np.testing.assert_allclose(np.asarray(ours)[:, 0], reference.transpose(0, 2, 3, 1), rtol=1e-3, atol=1e-3)


def test_a_dit_file_is_its_rules_and_pos_embed():
    """DiT-XL/2's whole state dict at 256 and 512 px (T = (size / 8 / 2)^2 patches) is the rules'
    tensors and pos_embed, and the image size is read back from pos_embed's length."""
    _, rules, ours, _ = setup("dit-released")
    for size in (256, 512):
        config = dit_config("XL/2", **{"data.image_size": size})
        released = official_dit(config.model) | {"pos_embed": (1, (size // 8 // 2) ** 2, 1152)}
        fixed = {name: value.shape for name, value in official.dit_fixed(config).items()}
        assert fixed | official.official_shapes(rules, ours) == released
        fitted = dit_config("XL/2", **{"data.image_size": 64})
        official.dit_fit(fitted, released, "DiT.pt")
        assert fitted.data.image_size == size
    with pytest.raises(ValueError, match=r"DiT.pt's pos_embed has shape \(1, 255, 1152\), not \(1, T, hidden\) with T patches of a square grid"):
        official.dit_fit(dit_config("XL/2"), {"pos_embed": (1, 255, 1152)}, "DiT.pt")


def sincos_official(dim: int, grid: int) -> np.ndarray:
    """models.get_2d_sincos_pos_embed(dim, grid) (MAE's), [1, grid^2, dim]: np.meshgrid(grid_w,
    grid_h) lists the column coordinate first, and the first half of the features is computed from
    it, the second from the row; each half is sines then cosines of the position times
    10000**(-k / (dim / 4)), in float64, stored in the float32 parameter."""
    column, row = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))

    def half(position):
        angles = position.reshape(-1)[:, None] / 10_000 ** (np.arange(dim // 4) / (dim / 4))
        return np.concatenate([np.sin(angles), np.cos(angles)], 1)

    return np.concatenate([half(column), half(row)], 1).astype(np.float32)[None]


@pytest.mark.parametrize("size", [256, 512])
def test_the_released_position_embedding_is_ours(size):
    config = dit_config("XL/2", **{"data.image_size": size})
    ours = official.dit_fixed(config)["pos_embed"]
    np.testing.assert_allclose(ours, sincos_official(1152, size // 16), rtol=0, atol=official.FIXED_ATOL)


# --- the SD VAE in numpy, from diffusers' AutoencoderKL (NCHW, PyTorch layouts) ---------------


def conv2d_official(w, name, x, stride=1, pad=None):
    weight = w[f"{name}.weight"]
    p = weight.shape[-1] // 2
    pad = ((p, p), (p, p)) if pad is None else pad
    y = jax.lax.conv_general_dilated(x, weight, (stride, stride), pad, dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                     precision=jax.lax.Precision.HIGHEST)
    return np.asarray(y) + w[f"{name}.bias"][None, :, None, None]


def group_norm_nchw(w, name, x, groups, eps=1e-6):
    n, c = x.shape[:2]
    g = x.reshape(n, groups, -1)
    g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)
    return g.reshape(x.shape) * w[f"{name}.weight"][None, :, None, None] + w[f"{name}.bias"][None, :, None, None]


def sdvae_official(w, c, x, direction):
    """diffusers' AutoencoderKL: `direction` 'encode' (NCHW pixels -> moments after quant_conv)
    or 'decode' (latents -> pixels), the released modules' order and semantics."""
    gn = lambda name, h: group_norm_nchw(w, name, h, c.groups)

    def resnet(name, h):
        out = conv2d_official(w, f"{name}.conv1", silu(gn(f"{name}.norm1", h)))
        out = conv2d_official(w, f"{name}.conv2", silu(gn(f"{name}.norm2", out)))
        skip = conv2d_official(w, f"{name}.conv_shortcut", h) if f"{name}.conv_shortcut.weight" in w else h
        return skip + out

    def attention(name, h):
        n, ch, height, width = h.shape
        tokens = gn(f"{name}.group_norm", h).reshape(n, ch, -1).transpose(0, 2, 1)
        q, k, v = (linear(w, f"{name}.{part}", tokens) for part in ("query", "key", "value"))
        logits = q @ k.transpose(0, 2, 1) / np.sqrt(ch)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        out = linear(w, f"{name}.proj_attn", weights @ v)
        return h + out.transpose(0, 2, 1).reshape(h.shape)

    def mid(name, h):
        return resnet(f"{name}.resnets.1", attention(f"{name}.attentions.0", resnet(f"{name}.resnets.0", h)))

    stages = len(c.channels)
    if direction == "encode":
        h = conv2d_official(w, "encoder.conv_in", x)
        for i in range(stages):
            for j in range(c.layers):
                h = resnet(f"encoder.down_blocks.{i}.resnets.{j}", h)
            if i < stages - 1:  # the released Downsample2D pads only the bottom and the right.
                h = conv2d_official(w, f"encoder.down_blocks.{i}.downsamplers.0.conv", h, stride=2, pad=((0, 1), (0, 1)))
        h = silu(gn("encoder.conv_norm_out", mid("encoder.mid_block", h)))
        return conv2d_official(w, "quant_conv", conv2d_official(w, "encoder.conv_out", h))
    h = conv2d_official(w, "decoder.conv_in", conv2d_official(w, "post_quant_conv", x))
    h = mid("decoder.mid_block", h)
    for i in range(stages):
        for j in range(c.layers + 1):
            h = resnet(f"decoder.up_blocks.{i}.resnets.{j}", h)
        if i < stages - 1:
            h = conv2d_official(w, f"decoder.up_blocks.{i}.upsamplers.0.conv", h.repeat(2, axis=2).repeat(2, axis=3))
    return conv2d_official(w, "decoder.conv_out", silu(gn("decoder.conv_norm_out", h)))


def test_the_sd_vae_encodes_and_decodes_as_diffusers_autoencoder_kl():
    """Converted random weights against `sdvae_official`: a tensor paired with the wrong one of its
    shape (norm1/norm2, query/key, quant/post_quant) or a wrong padding changes the outputs."""
    cfg, rules, _, expected = setup("sdvae-two-stages")
    rng = np.random.default_rng(5)
    # Kernels ~ N(0, 1/fan_in) keep a deep conv stack's scale; vectors ~ N(0, 0.2^2).
    scale = lambda shape: 0.2 if len(shape) == 1 else 1.0 / np.sqrt(np.prod(shape[1:]))
    w = {name: rng.standard_normal(shape) * scale(shape) for name, shape in expected.items()}
    model = load_official(nnx.eval_shape(lambda: sdvae.SDVAE(cfg, rngs=nnx.Rngs(0))), rules, "", w)
    graphdef, state = nnx.split(model)
    x = rng.uniform(-1, 1, (2, 1, 16, 16, 3))
    posterior = jax.jit(lambda s, v: nnx.merge(graphdef, s).encode(v))(state, jnp.asarray(x, jnp.float32))
    moments = sdvae_official(w, cfg, x[:, 0].transpose(0, 3, 1, 2), "encode").transpose(0, 2, 3, 1)
    np.testing.assert_allclose(posterior.mean[:, 0], moments[..., :4], atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(posterior.logvar[:, 0], moments[..., 4:], atol=2e-4, rtol=1e-4)
    z = rng.standard_normal((2, 1, 8, 8, 4))
    pixels = jax.jit(lambda s, v: nnx.merge(graphdef, s).decode(v))(state, jnp.asarray(z, jnp.float32))
    expected_pixels = sdvae_official(w, cfg, z[:, 0].transpose(0, 3, 1, 2), "decode").transpose(0, 2, 3, 1)
    np.testing.assert_allclose(pixels[:, 0], expected_pixels, atol=2e-4, rtol=1e-4)


def test_the_released_sd_vae_size_and_either_attention_naming():
    _, _, _, expected = setup("sdvae-released")
    assert sum(int(np.prod(shape)) for shape in expected.values()) == 83_653_863
    assert official.sdvae_name("decoder.mid_block.attentions.0.to_out.0.weight") == "decoder.mid_block.attentions.0.proj_attn.weight"
    assert official.sdvae_name("encoder.mid_block.attentions.0.to_q.bias") == "encoder.mid_block.attentions.0.query.bias"
    assert official.sdvae_name("encoder.conv_in.weight") == "encoder.conv_in.weight"
