"""VDT, the video diffusion transformer (Lu et al., arXiv 2305.13311), trained by mask modelling.

A clip (B, T, H, W, C) of per-frame latents (or pixels) is cut into p x p patches per frame, each
projected to a token, with DiT's fixed 2D sin-cos embedding over the frame and MAE's 1D sin-cos
embedding over time. Every block first lets each spatial token attend over the frames (a
temporal attention outside adaLN: LN, attention, a projection, added to the tokens), then is a
DiT block whose attention runs within each frame, its modulations from the timestep alone.

VDT is told what to make by which tokens it is given: the conditioning (`mask`) replaces the
known part of the noisy input by the clean clip, so one model predicts forward and backward,
interpolates, animates one frame, completes regions and generates unconditionally. The official
model embeds a class that is always 0; that adds a learned constant to the timestep's embedding,
which its last bias already is, so ours has no class table.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lavin_jax.models import dit, layers, transformer
from lavin_jax.parallel import constrain

# The released sizes, (hidden, depth, heads): VDT-L/2 and VDT-S/2.
SIZES = {"S": (384, 12, 6), "L": (1152, 28, 16)}
PATCHES = (1, 2, 4)


def variant(name: str) -> dict:
    """{'hidden', 'depth', 'num_heads', 'patch_size'} of a variant string such as 'L/2'."""
    return transformer.variant("VDT", name, SIZES, PATCHES)


class VDTBlock(nnx.Module):
    """Temporal attention over each token's frames, then DiT's adaLN-Zero block within frames."""

    def __init__(self, cfg, *, dtype, rngs: nnx.Rngs):
        self.temporal = transformer.TemporalAttention(cfg.hidden, cfg.num_heads, cfg.attention, zero_fc=False, dtype=dtype, rngs=rngs)
        self.spatial = dit.DiTBlock(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        """x: (B, T, N, D) tokens of T frames; c: (B, D)."""
        b, t, n, d = x.shape
        x = self.temporal(x)
        return self.spatial(x.reshape(b, t * n, d), c, frames=t).reshape(b, t, n, d)


class VDT(nnx.Module):
    objective = "ddpm"  # the defaults of config.objective and config.conditioning.
    conditioning = "mask"

    @staticmethod
    def default_config() -> ml_collections.ConfigDict:
        """VDT-L/2 on 4-channel per-frame latents; `configs/vdt.py:<variant>` sets the size."""
        c = ml_collections.ConfigDict()
        c.name = "vdt"
        c.update(variant("L/2"))
        c.in_channels = 4
        c.learn_sigma = True  # ddpm: also predict the variance (2x output channels); flow: False.
        c.mlp_ratio = 4.0
        return transformer.compute_fields(c)

    @staticmethod
    def check_config(cfg) -> None:
        dit.check_fields(cfg)

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        dtype = dit.add_embedders(self, cfg, rngs=rngs)
        cfg = self.cfg
        self.blocks = transformer.stack(lambda rngs: VDTBlock(cfg, dtype=dtype, rngs=rngs), cfg.depth, rngs)
        dit.add_final_layer(self, cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, t: jax.Array, context: dict) -> jax.Array:
        """x: noisy clips (B, T, H, W, C), their known part already clean (the conditioning's
        doing); t: (B,) diffusion timesteps (0..999 for ddpm, [0, 1] for flow). `context` is not
        read. Returns (B, T, H, W, out_channels), float32."""
        p, channels = self.cfg.patch_size, self.cfg.in_channels
        if x.ndim != 5 or x.shape[-1] != channels or x.shape[2] % p or x.shape[3] % p:
            raise ValueError(f"VDT takes clips (B, T, H, W, {channels}) with H and W divisible by patch_size={p}; got {x.shape}.")
        b, frames = x.shape[:2]
        height, width = x.shape[2] // p, x.shape[3] // p
        dtype = layers.DTYPES[self.cfg.dtype]
        h = self.patch_embed(layers.patchify(x.astype(dtype), p)).reshape(b, frames, height * width, -1)
        space = layers.posemb_sincos_2d(height, width, self.cfg.hidden)
        time = layers.posemb_sincos_1d(jnp.arange(frames), self.cfg.hidden)
        h = constrain(h + (space[None, None] + time[None, :, None]).astype(dtype), "batch", None, "length", "act_embed")
        c = self.t_embed(t)

        h = transformer.run_stack(self.blocks, h, c, cfg=self.cfg).reshape(b, frames * height * width, -1)
        return dit.final_layer(self, h, c, frames, height, width)
