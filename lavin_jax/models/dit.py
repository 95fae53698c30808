"""DiT, the class-conditional diffusion transformer (Peebles & Xie, arXiv 2212.09748).

An image (B, 1, H, W, C) is cut into p x p patches, each projected to a token, with a fixed 2D
sin-cos position embedding. The conditioning vector c is the timestep's embedding (256 sinusoidal
frequencies through an MLP) plus the class's (a table with one extra row, the null class that
classifier-free guidance samples against). Every block is adaLN-Zero: from c it regresses shift,
scale and gate for the attention and the MLP, the gates zero at the start so each block is the
identity; the final layer (adaLN, then a zero-initialised projection) turns the tokens back into
patches. The output is the noise and, with `learn_sigma`, the log-variance interpolation
(2C channels, for `ddpm`), or the velocity (C channels, for `flow`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lavin_jax.models import layers, transformer
from lavin_jax.parallel import constrain

# The paper's four sizes, (hidden, depth, heads); a variant is a size and a patch, e.g. "XL/2".
SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
PATCHES = (2, 4, 8)
VARIANTS = tuple(f"{size}/{patch}" for size in SIZES for patch in PATCHES)


def variant(name: str) -> dict:
    """{'hidden', 'depth', 'num_heads', 'patch_size'} of a variant string such as 'XL/2'."""
    return transformer.variant("DiT", name, SIZES, PATCHES)


class DiTBlock(nnx.Module):
    """x + gate * attention(modulate(LN(x))), then x + gate * MLP(modulate(LN(x))), from c."""

    def __init__(self, cfg, *, dtype, rngs: nnx.Rngs):
        d = cfg.hidden
        self.eps = cfg.norm_eps
        self.head_dim = d // cfg.num_heads
        self.attention_impl = cfg.attention
        self.modulation = transformer.adaln(d, 6, dtype=dtype, rngs=rngs)
        self.q = layers.dense(d, d, ("embed", "heads"), dtype=dtype, rngs=rngs)
        self.k = layers.dense(d, d, ("embed", "heads"), dtype=dtype, rngs=rngs)
        self.v = layers.dense(d, d, ("embed", "heads"), dtype=dtype, rngs=rngs)
        self.out = layers.dense(d, d, ("heads", "embed"), dtype=dtype, rngs=rngs)
        mlp = int(d * cfg.mlp_ratio)
        self.fc1 = layers.dense(d, mlp, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.fc2 = layers.dense(mlp, d, ("mlp", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, c: jax.Array, frames: int = 1, between=None) -> jax.Array:
        """x: (B, L, D) tokens, c: (B, D). With `frames` > 1 the L tokens are that many frames'
        and attention runs within each frame (VDT's spatial attention); the modulations are the
        example's for all of them. `between` (tokens -> tokens) runs after the attention and
        before the MLP: GenTron's cross-attention to text and temporal attention."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = transformer.modulations(self.modulation, c, 6)
        h = transformer.modulate(layers.layer_norm(x, self.eps), scale_msa, shift_msa)
        b, length, d = h.shape
        attended = transformer.self_attention(self, h.reshape(b * frames, length // frames, d)).reshape(b, length, d)
        x = x + gate_msa[:, None] * attended
        if between is not None:
            x = between(x)
        h = transformer.modulate(layers.layer_norm(x, self.eps), scale_mlp, shift_mlp)
        x = x + gate_mlp[:, None] * self.fc2(nnx.gelu(self.fc1(h), approximate=True))
        return constrain(x, "batch", "length", "act_embed")


def check_fields(cfg, positive: tuple[str, ...] = ()) -> None:
    """The checks of the fields DiT's patches, blocks and sin-cos table read (VDT's too), and of
    `positive` fields besides."""
    transformer.check_fields(cfg, positive=("patch_size", "in_channels", *positive))
    if cfg.mlp_ratio <= 0:
        raise ValueError(f"config.model.mlp_ratio={cfg.mlp_ratio} must be positive.")
    if cfg.hidden % 4:
        raise ValueError(f"config.model.hidden={cfg.hidden} must be divisible by 4 for the 2D sin-cos position embedding.")


def image_grid(family: str, cfg, x: jax.Array) -> tuple[int, int]:
    """The patch grid (rows, columns) of images x, (B, 1, H, W, C), checked against `cfg`."""
    p, channels = cfg.patch_size, cfg.in_channels
    if x.ndim != 5 or x.shape[1] != 1 or x.shape[-1] != channels or x.shape[2] % p or x.shape[3] % p:
        raise ValueError(f"{family} takes images (B, 1, H, W, {channels}) with H and W divisible by patch_size={p}; got {x.shape}.")
    return x.shape[2] // p, x.shape[3] // p


def add_embedders(model: nnx.Module, cfg, *, rngs: nnx.Rngs):
    """Gives `model` its config (frozen: hashable static graph data) and DiT's input side: the
    patch projection and the timestep embedder. Returns the compute dtype."""
    model.cfg = ml_collections.FrozenConfigDict(cfg)
    dtype = layers.DTYPES[cfg.dtype]
    d, p = cfg.hidden, cfg.patch_size
    model.patch_embed = layers.dense(p * p * cfg.in_channels, d, ("patch", "embed"), dtype=dtype, rngs=rngs)
    model.t_embed = layers.TimestepEmbedder(d, rngs=rngs)
    return dtype


def add_final_layer(model: nnx.Module, cfg, *, dtype, rngs: nnx.Rngs) -> None:
    """Gives `model` DiT's final layer: an adaLN (shift, scale) of the last tokens, then a
    zero-initialised projection to the patches of `out_channels` channels."""
    d, p = cfg.hidden, cfg.patch_size
    model.out_channels = cfg.in_channels * (2 if cfg.learn_sigma else 1)
    model.final_modulation = transformer.adaln(d, 2, dtype=dtype, rngs=rngs)
    model.final = layers.dense(d, p * p * model.out_channels, ("embed", "patch"), zero_init=True, dtype=dtype, rngs=rngs)


def final_layer(model: nnx.Module, h: jax.Array, c: jax.Array, frames: int, height: int, width: int) -> jax.Array:
    """Tokens (B, frames*height*width, D) through `add_final_layer`'s layers, as frames (B,
    frames, H, W, out_channels) in float32."""
    shift, scale = transformer.modulations(model.final_modulation, c, 2)
    out = model.final(transformer.modulate(layers.layer_norm(h, model.cfg.norm_eps), scale, shift))
    return layers.unpatchify(out.astype(jnp.float32), model.cfg.patch_size, frames, height, width)


class DiT(nnx.Module):
    objective = "ddpm"  # the defaults of config.objective and config.conditioning.
    conditioning = "class"

    @staticmethod
    def default_config() -> ml_collections.ConfigDict:
        """DiT-XL/2 on 4-channel latents of ImageNet's 1000 classes; `configs/dit.py:<variant>`
        sets the size."""
        c = ml_collections.ConfigDict()
        c.name = "dit"
        c.update(variant("XL/2"))
        c.in_channels = 4
        c.num_classes = 1000
        c.learn_sigma = True  # ddpm: also predict the variance (2x output channels); flow: False.
        c.mlp_ratio = 4.0
        return transformer.compute_fields(c)

    @staticmethod
    def check_config(cfg) -> None:
        check_fields(cfg, positive=("num_classes",))

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        dtype = add_embedders(self, cfg, rngs=rngs)
        cfg = self.cfg
        self.class_embed = nnx.Embed(
            cfg.num_classes + 1, cfg.hidden, rngs=rngs,
            embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), (None, "embed")),
        )
        self.blocks = transformer.stack(lambda rngs: DiTBlock(cfg, dtype=dtype, rngs=rngs), cfg.depth, rngs)
        add_final_layer(self, cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, t: jax.Array, context: dict) -> jax.Array:
        """x: noisy images (B, 1, H, W, C); t: (B,) diffusion timesteps (0..999 for ddpm, [0, 1]
        for flow); context['label']: (B,) int classes, `num_classes` the null class. Returns
        (B, 1, H, W, out_channels), float32."""
        height, width = image_grid("DiT", self.cfg, x)
        dtype = layers.DTYPES[self.cfg.dtype]
        h = self.patch_embed(layers.patchify(x.astype(dtype), self.cfg.patch_size))
        h = h + layers.posemb_sincos_2d(height, width, self.cfg.hidden).astype(dtype)
        h = constrain(h, "batch", "length", "act_embed")
        c = self.t_embed(t) + self.class_embed(context["label"])

        h = transformer.run_stack(self.blocks, h, c, cfg=self.cfg)
        return final_layer(self, h, c, 1, height, width)
