"""The released LaVin-DiT weights' tensor names and PyTorch layouts, written down once.

The authors released a J-DiT (`lavin_dit.safetensors`) and the ST-VAE (`stvae.pt`) as PyTorch
state dicts (github DerrickWang005/LaVin-DiT, `lib/model/{dit,blocks,vae3d}.py`, `inference.py`).
Each parameter of ours is made of one or more official tensors by a `Rule`: its official names
and a pair of exact, value-preserving transforms between the two layouts. This module only
states the correspondence; reading and writing files is the caller's (`lavin_jax.convert`).

Layouts. PyTorch stores a Linear weight as [out, in], a Conv3d weight as [out, in, t, h, w] and a
Conv2d weight as [out, in, h, w]; ours are kernels [in, out], [t, h, w, in, out] and [h, w, in,
out]. Norm weights/biases, biases and the prompt/answer embeddings are the same arrays. Our J-DiT
blocks are stacked along a leading `layers` axis: one official tensor per block makes one of
ours. The official model flattens a patch as (pH, pW, C), as `layers.patchify` does, so the patch
embeddings and the final projection need no permutation; the modulation Linears' outputs are
chunked in the same order (scale_msa, gate_msa, scale_mlp, gate_mlp) as ours.

How the released files hold these names (read from `inference.py`):
- `lavin_dit.safetensors`: flat, the names of `LaVinDiT.state_dict()` with no prefix (loaded
  with `load_file` and `LaVinDiT.load_state_dict(strict=False)`; `torch.compile` wraps the model
  only after loading). The official J-DiT has no buffers: its RoPE frequencies are plain tensor
  attributes and its non-affine RMSNorms, DropPath and Dropout hold nothing.
- `stvae.pt`: a pickled dict whose `"state_dict"` entry holds the names of
  `AutoencoderKLSTVAE.state_dict()` with no prefix (`torch.load(path)["state_dict"]`, then
  `load_state_dict(strict=False)`). GroupNorm has no buffers; `quant_conv`/`post_quant_conv`
  are not built by the released constructor (`use_quant_conv=use_post_quant_conv=False`) and
  `temb_proj` is not built (`temb_channels=0`).

The rules name tensors as the official code names them for a config of ours; the official
classes themselves can be built only for some configs: J-DiT with `mlp_hidden` 0 (its SwiGLU
width rule), ST-VAE with kernel 3, 2 mid ResNets and `decoder_layers = encoder_layers + 1`. An
ST-VAE whose decoder normalises in other than 32 groups has no official form at all (the official
SpatialNorm fixes 32 whatever `norm_num_groups` says): `stvae_rules` refuses it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

import numpy as np

# Tensors of a released file that no rule consumes, per family. The official loaders use
# `load_state_dict(strict=False)`, which drops any name the official model lacks, so ignoring
# exactly those names is the official behaviour. LaVinDiT's file is exactly what the rules
# consume. AutoencoderKLSTVAE as released has no module with weights outside its encoder and
# decoder (no quant convs): a training checkpoint's loss, LPIPS or discriminator tensors are
# dropped by the official loader too.
_IGNORED = {"jdit": None, "stvae": re.compile(r"^(?!(?:encoder|decoder)\.)")}


def ignored(name: str, family: str) -> bool:
    """Whether the released `family` file's tensor `name` is one no rule consumes."""
    pattern = _IGNORED[family]
    return bool(pattern and pattern.search(name))


def stvae_state(checkpoint: dict, path: str) -> dict:
    """The ST-VAE's official state dict from the loaded `stvae.pt` at `path`, which nests it
    under `state_dict` (the J-DiT's file is flat; neither prefixes its names)."""
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} holds no 'state_dict' entry; the released ST-VAE keeps its weights under it.")
    return dict(checkpoint["state_dict"])


@dataclasses.dataclass(frozen=True)
class _Layout:
    """One official array <-> one array of ours; both directions are pure axis permutations."""

    to_ours: Callable[[np.ndarray], np.ndarray]
    to_official: Callable[[np.ndarray], np.ndarray]


SAME = _Layout(lambda a: a, lambda a: a)
# [out, in] <-> [in, out]
LINEAR = _Layout(lambda w: w.T, lambda k: k.T)
# [out, in, t, h, w] <-> [t, h, w, in, out]
CONV3D = _Layout(lambda w: w.transpose(2, 3, 4, 1, 0), lambda k: k.transpose(4, 3, 0, 1, 2))
# [out, in, h, w] <-> [h, w, in, out]
CONV2D = _Layout(lambda w: w.transpose(2, 3, 1, 0), lambda k: k.transpose(3, 2, 0, 1))


@dataclasses.dataclass(frozen=True)
class Rule:
    """One parameter of ours and the official tensors it is made of: one, or, when `stacked`,
    one per block along our leading `layers` axis, each through `layout`."""

    ours: str  # "/"-joined path into our parameter pure dict
    official: tuple[str, ...]
    layout: _Layout
    stacked: bool = False

    def to_ours(self, arrays: list[np.ndarray]) -> np.ndarray:
        """Official arrays (PyTorch layout), in `official`'s order -> ours."""
        if self.stacked:
            return np.stack([self.layout.to_ours(a) for a in arrays])
        (array,) = arrays
        return self.layout.to_ours(array)

    def fill(self, out: np.ndarray, get: Callable[[str], np.ndarray]) -> None:
        """`to_ours` written into `out`, reading one official tensor at a time with `get`: a
        stacked parameter's blocks are never all held at once."""
        if self.stacked:
            for index, name in enumerate(self.official):
                out[index] = self.layout.to_ours(get(name))
        else:
            out[...] = self.layout.to_ours(get(self.official[0]))

    def to_official(self, array: np.ndarray) -> list[np.ndarray]:
        """The exact inverse of `to_ours`."""
        return [self.layout.to_official(a) for a in array] if self.stacked else [self.layout.to_official(array)]


def _one(ours: str, official: str, layout: _Layout) -> Rule:
    return Rule(ours, (official,), layout)


def _stacked(ours: str, official: list[str], layout: _Layout) -> Rule:
    return Rule(ours, tuple(official), layout, stacked=True)


def _linear(ours: str, official: str) -> list[Rule]:
    """A Linear with a bias: our `kernel` and `bias` from the official `weight` and `bias`."""
    return [_one(f"{ours}/kernel", f"{official}.weight", LINEAR), _one(f"{ours}/bias", f"{official}.bias", SAME)]


# --- J-DiT ------------------------------------------------------------------------------------

# Our stream names -> the official prefixes of that stream's tensors.
_STREAMS = {"cond": "cond", "target": "x"}


def _jdit_block(stream: str) -> list[tuple[str, str, _Layout]]:
    """(our path under blocks/, official name under blocks.{i}., layout) for one stream."""
    o = _STREAMS[stream]
    return [
        (f"{stream}/q/kernel", f"joint_attn.{o}_q.weight", LINEAR),
        (f"{stream}/k/kernel", f"joint_attn.{o}_k.weight", LINEAR),
        (f"{stream}/v/kernel", f"joint_attn.{o}_v.weight", LINEAR),
        (f"{stream}/q_norm/scale", f"joint_attn.{o}_qnorm.weight", SAME),
        (f"{stream}/k_norm/scale", f"joint_attn.{o}_knorm.weight", SAME),
        (f"{stream}/out/kernel", f"joint_attn.{o}_proj.weight", LINEAR),
        (f"{stream}/mlp/gate/kernel", f"{o}_mlp.gate_proj.weight", LINEAR),
        (f"{stream}/mlp/up/kernel", f"{o}_mlp.up_proj.weight", LINEAR),
        (f"{stream}/mlp/down/kernel", f"{o}_mlp.down_proj.weight", LINEAR),
        # nn.Sequential(SiLU, Linear): the Linear is entry 1.
        (f"{stream}/modulation/kernel", f"{o}_modulation.1.weight", LINEAR),
        (f"{stream}/modulation/bias", f"{o}_modulation.1.bias", SAME),
    ]


def jdit_rules(model_config) -> list[Rule]:
    """The rules of a J-DiT (`config.model` of the jdit family) for `lavin_dit.safetensors`."""
    if model_config.pos_embed != "none":
        raise ValueError(
            f"config.model.pos_embed={model_config.pos_embed!r}: the released J-DiT has 3D RoPE alone, "
            "so only a model with pos_embed='none' has its layout."
        )
    rules = []
    # Each patch embedding is nn.Sequential(Linear, LayerNorm).
    for ours, official in (("cond_embed", "cond_embedder"), ("target_embed", "x_embedder")):
        rules += _linear(f"{ours}/proj", f"{official}.0")
        rules.append(_one(f"{ours}/norm/scale", f"{official}.1.weight", SAME))
        rules.append(_one(f"{ours}/norm/bias", f"{official}.1.bias", SAME))
    rules += [_one("prompt_embed", "prompt_embed", SAME), _one("answer_embed", "answer_embed", SAME)]
    # t_embedder.mlp is nn.Sequential(Linear, SiLU, Linear).
    rules += _linear("t_embed/fc1", "t_embedder.mlp.0") + _linear("t_embed/fc2", "t_embedder.mlp.2")
    for stream in _STREAMS:
        for ours, official, layout in _jdit_block(stream):
            per_block = [f"blocks.{i}.{official}" for i in range(model_config.depth)]
            rules.append(_stacked(f"blocks/{ours}", per_block, layout))
    rules += _linear("final/modulation", "final_layer.adaLN_modulation.1") + _linear("final/proj", "final_layer.linear")
    return rules


# --- ST-VAE -----------------------------------------------------------------------------------


def _conv(ours: str, official: str, layout: _Layout = CONV3D) -> list[Rule]:
    return [_one(f"{ours}/kernel", f"{official}.weight", layout), _one(f"{ours}/bias", f"{official}.bias", SAME)]


def _group_norm(ours: str, official: str) -> list[Rule]:
    return [_one(f"{ours}/scale", f"{official}.weight", SAME), _one(f"{ours}/bias", f"{official}.bias", SAME)]


def _spatial_norm(ours: str, official: str) -> list[Rule]:
    """Our SpatialNorm: GroupNorm wrapper (.norm.norm) and two 1x1x1 causal convs on z."""
    return (
        _group_norm(f"{ours}/norm/norm", f"{official}.norm_layer")
        + _conv(f"{ours}/conv_y/conv", f"{official}.conv_y.conv")
        + _conv(f"{ours}/conv_b/conv", f"{official}.conv_b.conv")
    )


def _resnet(ours: str, official: str, in_ch: int, out_ch: int, decoder: bool) -> list[Rule]:
    rules = []
    for norm in ("norm1", "norm2"):
        if decoder:
            rules += _spatial_norm(f"{ours}/{norm}", f"{official}.{norm}")
        else:  # our GroupNorm wraps nnx.GroupNorm as .norm
            rules += _group_norm(f"{ours}/{norm}/norm", f"{official}.{norm}")
    for conv in ("conv1", "conv2"):
        rules += _conv(f"{ours}/{conv}/conv", f"{official}.{conv}.conv")
    if in_ch != out_ch:
        # A bare nn.Conv3d (1x1x1), not a causal-conv wrapper: no `.conv` in its name.
        rules += _conv(f"{ours}/shortcut", f"{official}.conv_shortcut")
    return rules


def _resnets(ours: str, official: str, in_ch: int, out_ch: int, count: int, decoder: bool) -> list[Rule]:
    """`count` ResNets; the first takes `in_ch`, the rest `out_ch`."""
    rules = []
    for j in range(count):
        rules += _resnet(f"{ours}/resnets/{j}", f"{official}.resnets.{j}", in_ch if j == 0 else out_ch, out_ch, decoder)
    return rules


OFFICIAL_SPATIAL_GROUPS = 32


def stvae_rules(model_config) -> list[Rule]:
    """The rules of an ST-VAE (`config.model` of the stvae family) for `stvae.pt`'s state dict.
    Our encoder `stages`/`mid` are the official `down_blocks`/`mid_block`, the decoder's `stages`
    its `up_blocks` (over the reversed channels); resamplers are per-frame Conv2d."""
    cfg = model_config
    if cfg.spatial_groups != OFFICIAL_SPATIAL_GROUPS:
        raise ValueError(
            f"config.model.spatial_groups={cfg.spatial_groups}: the official ST-VAE decoder's SpatialNorm has "
            f"{OFFICIAL_SPATIAL_GROUPS} groups whatever norm_num_groups says, so this model has no official form."
        )
    ch = tuple(cfg.channels)
    rules = _conv("encoder/conv_in/conv", "encoder.conv_in.conv")
    for i, out_ch in enumerate(ch):
        ours, official = f"encoder/stages/{i}", f"encoder.down_blocks.{i}"
        rules += _resnets(ours, official, ch[max(i - 1, 0)], out_ch, cfg.encoder_layers, decoder=False)
        if i < len(ch) - 1:
            rules += _conv(f"{ours}/resample/conv", f"{official}.downsamplers.0.conv", CONV2D)
    rules += _resnets("encoder/mid", "encoder.mid_block", ch[-1], ch[-1], cfg.mid_layers, decoder=False)
    rules += _group_norm("encoder/norm_out/norm", "encoder.norm_out")
    rules += _conv("encoder/conv_out/conv", "encoder.conv_out.conv")

    rev = tuple(reversed(ch))
    rules += _conv("decoder/conv_in/conv", "decoder.conv_in.conv")
    rules += _resnets("decoder/mid", "decoder.mid_block", rev[0], rev[0], cfg.mid_layers, decoder=True)
    for i, out_ch in enumerate(rev):
        ours, official = f"decoder/stages/{i}", f"decoder.up_blocks.{i}"
        rules += _resnets(ours, official, rev[max(i - 1, 0)], out_ch, cfg.decoder_layers, decoder=True)
        if i < len(rev) - 1:
            rules += _conv(f"{ours}/resample/conv", f"{official}.upsamplers.0.conv", CONV2D)
    rules += _spatial_norm("decoder/norm_out", "decoder.norm_out")
    rules += _conv("decoder/conv_out/conv", "decoder.conv_out.conv")
    return rules


# --- shapes -----------------------------------------------------------------------------------


def official_shapes(rules: list[Rule], ours: dict[str, tuple]) -> dict[str, tuple]:
    """Official name -> shape, in rule order, from our parameters' shapes (`ours`: "/"-joined
    path -> shape) through each rule's `to_official` on a zero-strided placeholder (no memory)."""
    shapes = {}
    for rule in rules:
        placeholder = np.broadcast_to(np.zeros((), np.float32), ours[rule.ours])
        for name, array in zip(rule.official, rule.to_official(placeholder), strict=True):
            shapes[name] = tuple(array.shape)
    return shapes
