"""The released files of every family we convert, their tensor names and PyTorch layouts, written
down once: LaVin-DiT's J-DiT and ST-VAE, DiT, DiffiT, and the SD VAE DiT and DiffiT work in.

LaVin-DiT's authors released a J-DiT (`lavin_dit.safetensors`) and the ST-VAE (`stvae.pt`) as
PyTorch state dicts (github DerrickWang005/LaVin-DiT, `lib/model/{dit,blocks,vae3d}.py`,
`inference.py`); DiT's authors released DiT-XL/2 at 256 and 512 px (`DiT-XL-2-256x256.pt`,
`DiT-XL-2-512x512.pt`; github facebookresearch/DiT, `models.py`, `download.py`, `sample.py`,
`train.py`). Parameters of ours are made of official tensors by a `Rule`: their official names and
a pair of exact, value-preserving transforms between the two layouts. `FAMILIES` holds, per model
family, its rules and what else its files hold. This module only states the correspondence;
reading and writing files is the caller's (`lavin_jax.convert`).

Layouts. PyTorch stores a Linear weight as [out, in], a Conv3d weight as [out, in, t, h, w] and a
Conv2d weight as [out, in, h, w]; ours are kernels [in, out], [t, h, w, in, out] and [h, w, in,
out]. Norm weights/biases, biases and embeddings are the same arrays. Our transformer blocks are
stacked along a leading `layers` axis: one official tensor per block makes one of ours.

J-DiT. The official model flattens a patch as (pH, pW, C), as `layers.patchify` does, so the patch
embeddings and the final projection need no permutation; the modulation Linears' outputs are
chunked in the same order (scale_msa, gate_msa, scale_mlp, gate_mlp) as ours.

DiT (`models.py`, with timm's PatchEmbed, Attention and Mlp):
- `x_embedder.proj` is a Conv2d [d, C, p, p] with stride p (timm's PatchEmbed), tokens row by row:
  the Linear of a patch flattened (C, pH, pW). Ours flattens (pH, pW, C): the kernel is the conv
  weight transposed to [pH, pW, C, d], then reshaped.
- `pos_embed` [1, T, d] is a frozen Parameter (`requires_grad=False`) holding a fixed 2D sin-cos
  embedding: in the state dict, and `sample.py` loads strictly, so an export must hold it. Ours is
  no parameter (`DiT` adds `layers.posemb_sincos_2d`): a conversion checks the file's equals it,
  an export writes it. T = (input_size / p)^2, input_size = image_size / 8 (`sample.py`).
- `blocks.{i}.attn.qkv` fuses q, k, v: timm reshapes its output (B, N, 3, heads, head_dim), so
  its rows are q, k, v, each head-major, our three projections concatenated; `attn.proj` reads
  the heads back in the same order (our `out`). `mlp.fc1`/`mlp.fc2` and tanh-GELU are ours.
- `adaLN_modulation` is nn.Sequential(SiLU, Linear): the Linear is entry 1; its chunks are
  (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp) in a block and (shift, scale)
  in `final_layer`, the orders `DiTBlock` and `DiT` split ours in.
- `y_embedder.embedding_table` has num_classes + 1 rows when trained with label dropout (as
  released: the last row is the null class), as ours.
- `final_layer.linear` gives each token's patch flattened (p, q, c) (`unpatchify`), as
  `layers.unpatchify`; with learn_sigma its c runs over the noise's C channels then the
  variance's (`gaussian_diffusion.py` splits the output so), as `diffusion.py` reads ours.

DiffiT (NVlabs/DiffiT `diffit/diffit.py`, the latent model's release): DiT's embedders and names
for `x_embedder`, `t_embedder`, `y_embedder` and `pos_embed` (fixed, in the file); no adaLN. Each
block's TMSA holds `attn.qkv` (the tokens' q, k, v fused as DiT's) and `attn.qkv_temb` (the time
token's, fused alike, added before the heads are split), `attn.proj`, a learned
`attn.relative_position_bias_table` [(2w - 1)^2, heads] and its int64 `relative_position_index`
buffer [w^2, w^2] (a function of w, saved in the state dict: fixed tensors here); the LayerNorms
have no affine. `final_layer.linear` follows a non-affine LayerNorm and a SiLU.

SD VAE (diffusers' `AutoencoderKL`, as `stabilityai/sd-vae-ft-ema` and `-mse` release it): Conv2d
weights throughout (ResNets' `conv_shortcut` 1x1), the mid blocks' single-head attention as four
Linears with biases and a `group_norm`, `quant_conv` and `post_quant_conv` at the top level.

How the released files hold these names:
- `lavin_dit.safetensors`: flat, the names of `LaVinDiT.state_dict()` with no prefix (loaded
  with `load_file` and `LaVinDiT.load_state_dict(strict=False)`; `torch.compile` wraps the model
  only after loading). The official J-DiT has no buffers: its RoPE frequencies are plain tensor
  attributes and its non-affine RMSNorms, DropPath and Dropout hold nothing.
- `stvae.pt`: a pickled dict whose `"state_dict"` entry holds the names of
  `AutoencoderKLSTVAE.state_dict()` with no prefix (`torch.load(path)["state_dict"]`, then
  `load_state_dict(strict=False)`). GroupNorm has no buffers; `quant_conv`/`post_quant_conv`
  are not built by the released constructor (`use_quant_conv=use_post_quant_conv=False`) and
  `temb_proj` is not built (`temb_channels=0`).
- `DiT-XL-2-*.pt`: the plain state dict of `DiT` (the EMA weights), loaded strictly by
  `sample.py`; `train.py`'s checkpoints are dicts {"model", "ema", "opt", "args"}, of which
  `download.find_model` reads `ema`. Every DiT parameter is in a rule or is `pos_embed`.
- `diffit_256.safetensors`, `diffit_512.safetensors`: flat, the names of `Diffit.state_dict()`,
  loaded strictly by `sample.py`: every parameter in a rule, `pos_embed` and the index buffers
  fixed.
- `diffusion_pytorch_model.safetensors` (the SD VAE): flat, the names of
  `AutoencoderKL.state_dict()`, its attention under the 2022 names (query, key, value,
  proj_attn) that later diffusers renames to to_q, to_k, to_v, to_out.0 on loading; a file saved
  by a later diffusers holds those, which `sdvae_name` maps back. GroupNorm has no buffers.

The rules name tensors as the official code names them for a config of ours; the official
classes themselves can be built only for some configs: J-DiT with `mlp_hidden` 0 (its SwiGLU
width rule), ST-VAE with kernel 3, 2 mid ResNets and `decoder_layers = encoder_layers + 1`, DiT
with square images. An ST-VAE whose decoder normalises in other than 32 groups has no official
form at all (the official SpatialNorm fixes 32 whatever `norm_num_groups` says): `stvae_rules`
refuses it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable

import numpy as np

from lavin_jax.models import diffit, layers
from lavin_jax.config import frame_shape


@dataclasses.dataclass(frozen=True)
class _Layout:
    """One official array <-> one array of ours; both directions are exact (permutations and
    reshapes of the same elements)."""

    to_ours: Callable[[np.ndarray], np.ndarray]
    to_official: Callable[[np.ndarray], np.ndarray]


SAME = _Layout(lambda a: a, lambda a: a)
# [out, in] <-> [in, out]
LINEAR = _Layout(lambda w: w.T, lambda k: k.T)
# [out, in, t, h, w] <-> [t, h, w, in, out]
CONV3D = _Layout(lambda w: w.transpose(2, 3, 4, 1, 0), lambda k: k.transpose(4, 3, 0, 1, 2))
# [out, in, h, w] <-> [h, w, in, out]
CONV2D = _Layout(lambda w: w.transpose(2, 3, 1, 0), lambda k: k.transpose(3, 2, 0, 1))


def _patch_conv(patch: int, channels: int) -> _Layout:
    """A stride-`patch` Conv2d [out, C, p, p] <-> the dense kernel [p*p*C, out] of patches
    flattened (pH, pW, C), as `layers.patchify` flattens them."""
    return _Layout(
        lambda w: w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]),
        lambda k: k.reshape(patch, patch, channels, -1).transpose(3, 2, 0, 1),
    )


@dataclasses.dataclass(frozen=True)
class Rule:
    """Parameters of ours and the official tensors they are made of: the official tensor (or, when
    `stacked`, one per block along our leading `layers` axis) through `layout` is our parameters
    concatenated along `axis` in equal parts. Most rules make one parameter; DiT's fused qkv
    makes three (q, k, v)."""

    ours: tuple[str, ...]  # "/"-joined paths into our parameter pure dict
    official: tuple[str, ...]
    layout: _Layout
    stacked: bool = False
    axis: int = -1

    def _parts(self, official: np.ndarray) -> list[np.ndarray]:
        return np.split(self.layout.to_ours(official), len(self.ours), self.axis)

    def _joined(self, parts: list[np.ndarray]) -> np.ndarray:
        # One part is passed through, not copied: `official_shapes` relies on a zero-strided
        # placeholder staying one.
        return self.layout.to_official(parts[0] if len(parts) == 1 else np.concatenate(parts, self.axis))

    def to_ours(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Official arrays (PyTorch layout), in `official`'s order -> ours, in `ours`' order."""
        if self.stacked:
            return [np.stack(blocks) for blocks in zip(*(self._parts(a) for a in arrays))]
        (array,) = arrays
        return self._parts(array)

    def fill(self, outs: list[np.ndarray], get: Callable[[str], np.ndarray]) -> None:
        """`to_ours` written into `outs`, reading one official tensor at a time with `get`: a
        stacked parameter's blocks are never all held at once."""
        names = enumerate(self.official) if self.stacked else [(..., self.official[0])]
        for index, name in names:
            for out, part in zip(outs, self._parts(get(name)), strict=True):
                out[index] = part

    def to_official(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """The exact inverse of `to_ours`."""
        if self.stacked:
            return [self._joined([a[block] for a in arrays]) for block in range(len(self.official))]
        return [self._joined(arrays)]


def _one(ours: str, official: str, layout: _Layout) -> Rule:
    return Rule((ours,), (official,), layout)


def _stacked(ours: str, official: list[str], layout: _Layout) -> Rule:
    return Rule((ours,), tuple(official), layout, stacked=True)


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


# --- DiT ---------------------------------------------------------------------------------------


def _dit_inputs(c) -> list[Rule]:
    """DiT's input side, which DiffiT's release names alike: the patch conv, the class table and
    the timestep MLP (nn.Sequential(Linear, SiLU, Linear))."""
    return [
        _one("patch_embed/kernel", "x_embedder.proj.weight", _patch_conv(c.patch_size, c.in_channels)),
        _one("patch_embed/bias", "x_embedder.proj.bias", SAME),
        _one("class_embed/embedding", "y_embedder.embedding_table.weight", SAME),
        *_linear("t_embed/fc1", "t_embedder.mlp.0"),
        *_linear("t_embed/fc2", "t_embedder.mlp.2"),
    ]


def dit_rules(model_config) -> list[Rule]:
    """The rules of a DiT (`config.model` of the dit family) for `DiT-XL-2-*.pt`; the file's
    `pos_embed` is `dit_fixed`'s."""
    c = model_config
    rules = _dit_inputs(c)
    per_block = lambda name: [f"blocks.{i}.{name}" for i in range(c.depth)]
    # timm's fused projection: our q, k and v side by side.
    for ours, official, layout in (("kernel", "weight", LINEAR), ("bias", "bias", SAME)):
        qkv = tuple(f"blocks/{projection}/{ours}" for projection in "qkv")
        rules.append(Rule(qkv, tuple(per_block(f"attn.qkv.{official}")), layout, stacked=True))
    for ours, official in (("out", "attn.proj"), ("fc1", "mlp.fc1"), ("fc2", "mlp.fc2"), ("modulation", "adaLN_modulation.1")):
        rules.append(_stacked(f"blocks/{ours}/kernel", per_block(f"{official}.weight"), LINEAR))
        rules.append(_stacked(f"blocks/{ours}/bias", per_block(f"{official}.bias"), SAME))
    rules += _linear("final_modulation", "final_layer.adaLN_modulation.1") + _linear("final", "final_layer.linear")
    return rules


def dit_fixed(config) -> dict[str, np.ndarray]:
    """`pos_embed` [1, T, hidden] (float32) as our DiT adds it at the run's image size."""
    side = frame_shape(config)[0] // config.model.patch_size
    return {"pos_embed": np.asarray(layers.posemb_sincos_2d(side, side, config.model.hidden), np.float32)[None]}


def dit_fit(config, shapes: dict[str, tuple], path: str) -> None:
    """Sets `config.data.image_size` to the size the DiT in the file at `path` was built for: its
    `pos_embed` [1, T, hidden] has a row per patch of a square grid."""
    shape = shapes.get("pos_embed")
    if shape is None:
        return  # the names check lists it as missing.
    tokens = shape[1] if len(shape) == 3 and shape[0] == 1 else 0
    side = math.isqrt(tokens)
    if not tokens or side * side != tokens:
        raise ValueError(
            f"{path}'s pos_embed has shape {shape}, not (1, T, hidden) with T patches of a square grid, "
            "so the image size the model was built for cannot be read from it."
        )
    # The inverse of `frame_shape`: pixels, or latents of `vae.downsample` pixels a side.
    pixels = 1 if config.vae.name == "none" else config.vae.downsample
    config.data.image_size = side * config.model.patch_size * pixels


# --- DiffiT -----------------------------------------------------------------------------------


def diffit_rules(model_config) -> list[Rule]:
    """The rules of a latent DiffiT (`config.model` of the diffit family) for NVlabs' released
    `diffit_256.safetensors` / `diffit_512.safetensors`: DiT's embedders, then per block TMSA's
    spatial and time projections (each q, k, v fused), its bias table, output and the MLP."""
    c = model_config
    rules = _dit_inputs(c)
    per_block = lambda name: [f"blocks.{i}.{name}" for i in range(c.depth)]
    for ours, official in (("attn/qkv", "attn.qkv"), ("attn/qkv_time", "attn.qkv_temb"), ("attn/out", "attn.proj"),
                           ("fc1", "mlp.fc1"), ("fc2", "mlp.fc2")):
        rules.append(_stacked(f"blocks/{ours}/kernel", per_block(f"{official}.weight"), LINEAR))
        rules.append(_stacked(f"blocks/{ours}/bias", per_block(f"{official}.bias"), SAME))
    rules.append(_stacked("blocks/attn/bias_table", per_block("attn.relative_position_bias_table"), SAME))
    return rules + _linear("final", "final_layer.linear")


def diffit_fixed(config) -> dict[str, np.ndarray]:
    """DiT's `pos_embed`, and every block's `relative_position_index` buffer (int64, as saved)."""
    index = diffit.relative_position_index(config.model.window).astype(np.int64)
    return dit_fixed(config) | {f"blocks.{i}.attn.relative_position_index": index for i in range(config.model.depth)}


def diffit_fit(config, shapes: dict[str, tuple], path: str) -> None:
    """The image size, as for DiT, and the window: the bias table of the first block has a row
    per offset within it, (2 window - 1)^2 (the whole token grid as released)."""
    dit_fit(config, shapes, path)
    shape = shapes.get("blocks.0.attn.relative_position_bias_table")
    if shape is None:
        return  # the names check lists it as missing.
    side = math.isqrt(shape[0]) if len(shape) == 2 else 0
    if side * side != shape[0] or side % 2 == 0:
        raise ValueError(f"{path}'s blocks.0.attn.relative_position_bias_table has shape {shape}, not ((2 w - 1)^2, heads) for a window of w tokens.")
    config.model.window = (side + 1) // 2


# --- the SD VAE ------------------------------------------------------------------------------

# The released file names the mid blocks' attention as diffusers did in 2022 (query, key, value,
# proj_attn); files saved by later diffusers use to_q, to_k, to_v, to_out.0 for the same Linears.
# Reading takes either; export writes the released names.
SDVAE_RENAMED = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def sdvae_name(name: str) -> str:
    """A tensor name of either diffusers generation, as the released SD VAE file names it."""
    for new, old in SDVAE_RENAMED.items():
        name = name.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
    return name


def _sdvae_resnets(ours: str, official: str, in_ch: int, out_ch: int, count: int) -> list[Rule]:
    rules = []
    for j in range(count):
        o, f = f"{ours}/resnets/{j}", f"{official}.resnets.{j}"
        rules += _group_norm(f"{o}/norm1", f"{f}.norm1") + _group_norm(f"{o}/norm2", f"{f}.norm2")
        rules += _conv(f"{o}/conv1/conv", f"{f}.conv1", CONV2D) + _conv(f"{o}/conv2/conv", f"{f}.conv2", CONV2D)
        if (in_ch if j == 0 else out_ch) != out_ch:
            rules += _conv(f"{o}/shortcut/conv", f"{f}.conv_shortcut", CONV2D)
    return rules


def _sdvae_mid(ours: str, official: str, channels: int) -> list[Rule]:
    rules = _sdvae_resnets(f"{ours}", official, channels, channels, 2)
    attention = f"{official}.attentions.0"
    rules += _group_norm(f"{ours}/attention/norm", f"{attention}.group_norm")
    for mine, theirs in (("q", "query"), ("k", "key"), ("v", "value"), ("out", "proj_attn")):
        rules += _linear(f"{ours}/attention/{mine}", f"{attention}.{theirs}")
    return rules


def sdvae_rules(model_config) -> list[Rule]:
    """The rules of an SD VAE (`config.model` of the sdvae family) for diffusers' AutoencoderKL
    file (`diffusion_pytorch_model.safetensors`): encoder `down_blocks`, `mid_block`,
    `conv_norm_out`; `quant_conv` and `post_quant_conv` at the top level; decoder `up_blocks` over
    the reversed channels with one more ResNet each."""
    cfg, ch = model_config, tuple(model_config.channels)
    rules = _conv("encoder/conv_in/conv", "encoder.conv_in", CONV2D)
    for i, out_ch in enumerate(ch):
        ours, official = f"encoder/stages/{i}", f"encoder.down_blocks.{i}"
        rules += _sdvae_resnets(ours, official, ch[max(i - 1, 0)], out_ch, cfg.layers)
        if i < len(ch) - 1:
            rules += _conv(f"{ours}/resample/conv", f"{official}.downsamplers.0.conv", CONV2D)
    rules += _sdvae_mid("encoder/mid", "encoder.mid_block", ch[-1])
    rules += _group_norm("encoder/norm_out", "encoder.conv_norm_out")
    rules += _conv("encoder/conv_out/conv", "encoder.conv_out", CONV2D)
    rules += _conv("encoder/quant/conv", "quant_conv", CONV2D)

    rev = tuple(reversed(ch))
    rules += _conv("decoder/post_quant/conv", "post_quant_conv", CONV2D)
    rules += _conv("decoder/conv_in/conv", "decoder.conv_in", CONV2D)
    rules += _sdvae_mid("decoder/mid", "decoder.mid_block", rev[0])
    for i, out_ch in enumerate(rev):
        ours, official = f"decoder/stages/{i}", f"decoder.up_blocks.{i}"
        rules += _sdvae_resnets(ours, official, rev[max(i - 1, 0)], out_ch, cfg.layers + 1)
        if i < len(rev) - 1:
            rules += _conv(f"{ours}/resample/conv", f"{official}.upsamplers.0.conv", CONV2D)
    rules += _group_norm("decoder/norm_out", "decoder.conv_norm_out")
    rules += _conv("decoder/conv_out/conv", "decoder.conv_out", CONV2D)
    return rules


# --- what each family's files hold ----------------------------------------------------------------


def _jdit_check(config) -> None:
    if config.flow.prediction != "velocity":
        raise ValueError(
            f"config.flow.prediction={config.flow.prediction!r}: the official code reads a J-DiT's output as a "
            "velocity, so only a model predicting the velocity has the released layout."
        )


_DISPLAY = {"dit": "DiT", "diffit": "DiffiT"}


def _dit_check(config) -> None:
    if config.objective != "ddpm":
        raise ValueError(
            f"config.objective={config.objective!r}: the official code samples a {_DISPLAY[config.model.name]} by DDPM, reading its output "
            "as the noise (and variance), so only a ddpm model has the released layout."
        )
    if not config.model.num_classes:
        raise ValueError(
            f"config.model.num_classes=0: the official {_DISPLAY[config.model.name]} always has a class table, so only a "
            "class-conditional model has the released layout."
        )


# How far a file's fixed tensor may lie from ours: the official DiT computes its position embedding
# in float64 and stores it as float32, ours is computed in float32; they differ by a few 1e-6 at
# 32 x 32 patches (DiT-XL/2 at 512 px), a different embedding by order 1.
FIXED_ATOL = 1e-5


@dataclasses.dataclass(frozen=True)
class Family:
    """How one model family's released files hold it; every field but `rules` is optional."""

    rules: Callable[..., list[Rule]]  # (config.model) -> its rules
    # (config): raises ValueError unless the official code reads the model's output as the config means it.
    check: Callable[..., None] | None = None
    # (config) -> {official name: float32 array}: tensors of the released layout that are no parameter
    # of ours but fixed by the config; compared with the file's on conversion, written on export.
    fixed: Callable[..., dict[str, np.ndarray]] | None = None
    # (config, the file's shapes, its path): sets the config fields the file decides.
    fit: Callable[..., None] | None = None
    nest: str | None = None  # the key of a released .pt's dict that holds the state dict, if one does.
    training_key: str | None = None  # the key of the official trainer's checkpoints holding the EMA weights.
    # Names in a released file that no rule consumes, dropped by the official loader too.
    ignored: re.Pattern | None = None
    # A file's name -> the name the rules use, where releases of one model differ in names only.
    rename: Callable[[str], str] | None = None


FAMILIES = {
    # LaVinDiT's file is exactly what the rules consume.
    "jdit": Family(jdit_rules, check=_jdit_check),
    # The official loader uses load_state_dict(strict=False), which drops any name the official
    # model lacks; AutoencoderKLSTVAE as released has no module with weights outside its encoder
    # and decoder (no quant convs): a training checkpoint's loss, LPIPS or discriminator tensors.
    "stvae": Family(stvae_rules, nest="state_dict", ignored=re.compile(r"^(?!(?:encoder|decoder)\.)")),
    # sample.py loads strictly: nothing in a DiT file is ignored.
    "dit": Family(dit_rules, check=_dit_check, fixed=dit_fixed, fit=dit_fit, training_key="ema"),
    # sample.py loads NVlabs' safetensors strictly, index buffers and the fixed pos_embed included.
    "diffit": Family(diffit_rules, check=_dit_check, fixed=diffit_fixed, fit=diffit_fit),
    # diffusers loads an AutoencoderKL strictly, renaming the attention of either generation.
    "sdvae": Family(sdvae_rules, rename=sdvae_name),
}


def family(name: str) -> Family:
    """The released layout of the model family `name`, or a sentence saying there is none."""
    if name not in FAMILIES:
        raise ValueError(f"config.model.name={name!r} has no released layout here; families with one: {', '.join(FAMILIES)}.")
    return FAMILIES[name]


def ignored(name: str, family_name: str) -> bool:
    """Whether the released `family_name` file's tensor `name` is one no rule consumes."""
    pattern = FAMILIES[family_name].ignored
    return bool(pattern and pattern.search(name))


def state_dict(loaded, path: str, family_name: str) -> dict:
    """The official state dict in what a `family_name` .pt file at `path` holds: the file itself,
    the entry its family nests it under (the ST-VAE's `state_dict`), or a training checkpoint's
    EMA weights (DiT's `ema`)."""
    f = family(family_name)
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a dict of tensors.")
    if f.training_key and f.training_key in loaded:
        return dict(loaded[f.training_key])
    if f.nest:
        if f.nest not in loaded:
            raise ValueError(f"{path} holds no {f.nest!r} entry; the released {family_name} file keeps its weights under it.")
        return dict(loaded[f.nest])
    return dict(loaded)


# --- shapes -----------------------------------------------------------------------------------


def official_shapes(rules: list[Rule], ours: dict[str, tuple]) -> dict[str, tuple]:
    """Official name -> shape, in rule order, from our parameters' shapes (`ours`: "/"-joined
    path -> shape) through each rule's `to_official` on a zero-strided placeholder (no memory)."""
    shapes = {}
    for rule in rules:
        placeholders = [np.broadcast_to(np.zeros((), np.float32), ours[path]) for path in rule.ours]
        for name, array in zip(rule.official, rule.to_official(placeholders), strict=True):
            shapes[name] = tuple(array.shape)
    return shapes
