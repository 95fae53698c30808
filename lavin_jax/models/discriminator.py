"""A 3D PatchGAN discriminator, the adversary for training the ST-VAE.

In the spirit of taming-transformers' `NLayerDiscriminator` (pix2pix's PatchGAN) and the 3D
variants used to train video VAEs (Open-Sora-Plan, CogVideoX): a stack of strided convolutions
whose output is not one score per clip but a grid of logits, one per overlapping patch, so the
adversarial loss judges local texture and motion and leaves global structure to the
reconstruction and perceptual losses.

Input x: (B, T, H, W, C), channels-last, in [-1, 1] (the VAE's pixel range). Output: float32
logits (B, T, H', W', 1) with H' = ceil(H / 2**layers) and W' likewise; one logit per frame and
patch. With the default 3 layers the convolutions' spatial receptive field is 70 x 70 pixels
(taming's; GroupNorm statistics, taken over each whole frame, add a weak global dependence) and
the temporal one 2 * (layers + 2) + 1 = 11 frames: the current frame and the 10 before it.

Layout (`layers` = n):
  conv (3, 4, 4), stride 2 in space, no norm                           -> channels,  LeakyReLU(0.2)
  n - 1 x [conv (3, 4, 4), stride 2 in space, GroupNorm]               -> channels * min(2**i, 8), LeakyReLU
  conv (3, 4, 4), stride 1, GroupNorm                                  -> channels * min(2**n, 8), LeakyReLU
  conv (3, 4, 4), stride 1                                             -> 1 logit
Convolutions followed by a GroupNorm have no bias (the norm's shift replaces it, as taming's
BatchNorm layers); conv kernels start as N(0, 0.02) like PatchGAN, norms as scale 1, shift 0.

Why these choices:
- Time is causal and never strided: every conv has kernel 3 in time with the first frame repeated
  twice in front (as the ST-VAE's `CausalConv3d`), and GroupNorm statistics are taken per frame.
  So a frame's logits depend on it and earlier frames only, and a single image (T = 1) is simply
  a valid 1-frame clip, judged exactly like the first frame of any clip that starts with it: one
  set of weights judges the images and the videos the ST-VAE trains on, and a logit per frame
  stays aligned with the frame it judges whatever T is (no 1 + 4k constraint).
- Space: stride-2 convs (kernel 4) are padded by 1 in front and 1 behind (2 behind for an odd
  size), so every even size is halved exactly and an odd one rounded up; stride-1 convs are padded
  (1, 2) to keep the size. Zero padding, as taming's. The smallest input side is 2**(layers + 1)
  pixels (16 for layers=3): the last stride-2 conv then still sees a full 4-pixel kernel and the
  patch grid is at least 2 x 2. Smaller inputs raise ValueError naming the shape.
- GroupNorm, not BatchNorm: BatchNorm would need mutable running statistics threaded through the
  jitted train step and batch statistics reduced across data shards (a cross-device collective,
  and statistics that change with the per-device batch); GroupNorm is per-example, stateless, and
  gives the same output however the batch is sharded.
- `dtype` is the compute dtype (float32 or bfloat16); parameters stay float32 and the logits are
  returned in float32 for the loss.

Parameters carry the ST-VAE's logical axis names (conv_t, conv_h, conv_w, conv_in, conv_out;
conv_norm for norm scale and shift), which the project's sharding rules already map.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lavin_jax.models import layers, stvae

KERNEL_T = 3  # time taps, causal.
KERNEL_S = 4  # space taps, PatchGAN's.
NORM_EPS = 1e-5  # torch GroupNorm's default.

conv_init = nnx.initializers.normal(0.02)  # PatchGAN's conv init.


def default_config() -> ml_collections.ConfigDict:
    """The taming-sized 3D PatchGAN (n_layers=3, ndf=64), with GroupNorm."""
    c = ml_collections.ConfigDict()
    c.channels = 64  # base width; stage i has channels * min(2**i, 8).
    c.layers = 3  # stride-2 stages; the smallest input side is 2**(layers + 1) pixels.
    c.groups = 32  # GroupNorm groups (not BatchNorm: no mutable or cross-shard batch statistics).
    c.dtype = "float32"  # compute dtype; parameters stay float32.
    return c


def widths(cfg) -> list[int]:
    """Output channels of the stride-2 convs then the stride-1 conv: channels * min(2**i, 8)."""
    return [cfg.channels * min(2**i, 8) for i in range(cfg.layers + 1)]


def min_size(cfg) -> int:
    """The smallest H and W the discriminator takes: 2**(layers + 1) pixels."""
    return 2 ** (cfg.layers + 1)


def check_config(cfg) -> None:
    """Raises ValueError, one sentence naming the field, for a config the discriminator cannot build."""

    def require(ok, message):
        if not ok:
            raise ValueError(message)

    def positive_int(v):
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    require(positive_int(cfg.channels), f"discriminator channels={cfg.channels!r} must be a positive integer.")
    require(positive_int(cfg.layers), f"discriminator layers={cfg.layers!r} must be an integer of at least 1.")
    require(positive_int(cfg.groups), f"discriminator groups={cfg.groups!r} must be a positive integer.")
    normed = widths(cfg)[1:]  # the first conv has no norm.
    bad = [w for w in normed if w % cfg.groups]
    require(
        not bad,
        f"discriminator groups={cfg.groups} must divide every normalised width {normed} "
        f"(from channels={cfg.channels}), but not {bad[0] if bad else ''}.",
    )
    require(
        cfg.dtype in layers.DTYPES,
        f"discriminator dtype={cfg.dtype!r} must be one of {tuple(layers.DTYPES)}.",
    )


class CausalConv(nnx.Module):
    """Conv (3, 4, 4) that never looks ahead in time (the first frame repeated twice in front),
    stride 1 in time and `stride` (1 or 2) in space, zero-padded in space: stride 2 gives
    ceil(H / 2), stride 1 keeps H. Kernel and bias carry the ST-VAE's logical axis names."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int, use_bias: bool, dtype, rngs: nnx.Rngs):
        self.stride = stride
        self.conv = nnx.Conv(
            in_ch, out_ch, (KERNEL_T, KERNEL_S, KERNEL_S), strides=(1, stride, stride), padding="VALID",
            use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
            kernel_init=nnx.with_partitioning(conv_init, stvae.CONV3D_AXES),
            bias_init=nnx.with_partitioning(stvae.zeros, stvae.CONV3D_AXES[-1:]),
            rngs=rngs,
        )

    def _space_pad(self, n: int) -> tuple[int, int]:
        # stride 2: (n + 2 + n % 2 - 4) // 2 + 1 = ceil(n / 2); stride 1: n + 3 - 4 + 1 = n.
        return (1, 1 + n % 2) if self.stride == 2 else (1, 2)

    def __call__(self, x: jax.Array) -> jax.Array:
        return stvae.causal_conv(self.conv, x, (self._space_pad(x.shape[2]), self._space_pad(x.shape[3])))


class PatchDiscriminator3D(nnx.Module):
    """(B, T, H, W, in_channels) in [-1, 1] -> float32 patch logits (B, T, ceil(H / 2**layers),
    ceil(W / 2**layers), 1); causal in time, so images (T = 1) and clips share the weights."""

    def __init__(self, cfg, *, in_channels: int = 3, rngs: nnx.Rngs):
        check_config(cfg)
        if not isinstance(in_channels, int) or in_channels <= 0:
            raise ValueError(f"discriminator in_channels={in_channels!r} must be a positive integer.")
        dtype = layers.DTYPES[cfg.dtype]
        self.in_channels = in_channels
        self.min_size = min_size(cfg)
        # stvae.GroupNorm reads groups, norm_eps, norm_stats and dtype; 'frame' keeps time causal.
        norm_cfg = ml_collections.ConfigDict(
            dict(groups=cfg.groups, norm_eps=NORM_EPS, norm_stats="frame", dtype=cfg.dtype)
        )
        w = widths(cfg)
        self.conv_in = CausalConv(in_channels, w[0], stride=2, use_bias=True, dtype=dtype, rngs=rngs)
        self.convs = nnx.List(
            [CausalConv(w[i - 1], w[i], stride=2, use_bias=False, dtype=dtype, rngs=rngs) for i in range(1, cfg.layers)]
            + [CausalConv(w[-2], w[-1], stride=1, use_bias=False, dtype=dtype, rngs=rngs)]
        )
        self.norms = nnx.List([stvae.GroupNorm(c, norm_cfg, rngs=rngs) for c in w[1:]])
        self.conv_out = CausalConv(w[-1], 1, stride=1, use_bias=True, dtype=dtype, rngs=rngs)

    check_config = staticmethod(check_config)

    def _check_input(self, x: jax.Array) -> None:
        if x.ndim != 5 or x.shape[1] < 1 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"discriminator input of shape {x.shape} must be (B, T, H, W, {self.in_channels}) with T >= 1."
            )
        if min(x.shape[2:4]) < self.min_size:
            raise ValueError(
                f"discriminator input of shape {x.shape} is too small: H and W must be at least "
                f"{self.min_size} pixels (2**(layers + 1))."
            )

    def __call__(self, x: jax.Array) -> jax.Array:
        self._check_input(x)
        h = nnx.leaky_relu(self.conv_in(x), 0.2)
        for conv, norm in zip(self.convs, self.norms):
            h = nnx.leaky_relu(norm(conv(h)), 0.2)
        return self.conv_out(h).astype(jnp.float32)
