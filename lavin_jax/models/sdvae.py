"""The SD VAE: Stable Diffusion's KL autoencoder (Rombach et al., arXiv 2112.10752), which DiT
works in.

An RGB image in [-1, 1] becomes 4 latent channels at 1/8 of the resolution. The encoder is
conv_in, four stages of ResNets (all but the last halving space with a stride-2 conv), a mid
block (ResNet, one single-head self-attention over all positions, ResNet), GroupNorm + SiLU and
conv_out to the posterior's mean and log-variance, then the 1x1 `quant_conv`; the decoder
mirrors it from the 1x1 `post_quant_conv` with one more ResNet per stage and nearest-neighbour
upsampling. Every norm is a 32-group GroupNorm (eps 1e-6). As released (`stabilityai/sd-vae-ft-ema`
and `-mse`, diffusers' `AutoencoderKL`); DiT multiplies its latents by 0.18215, which the
converted run keeps as its latent statistics (`latents.load`).

Frames are images: (B, T, H, W, C) in, each of the T frames encoded alone (no time axis in the
network), so the SD VAE stands wherever the ST-VAE does (`latents.Autoencoder`). Channels-last.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lavin_jax.models import layers, tiling
from lavin_jax.models.attention import attention
from lavin_jax.models.stvae import NORM_AXES, DiagonalGaussian, conv, ones, per_frame, zeros

# The latent scale DiT (and Stable Diffusion) apply to this autoencoder's latents.
SCALE = 0.18215


def tiny_config() -> ml_collections.ConfigDict:
    """A CPU-sized SD VAE of the released structure (4 stages, 8x, 4 latent channels)."""
    c = default_config()
    c.channels = (16, 32, 32, 32)
    c.layers = 1
    c.groups = 8
    return c


def default_config() -> ml_collections.ConfigDict:
    """The released SD VAE (diffusers' AutoencoderKL config of `stabilityai/sd-vae-ft-ema`)."""
    c = ml_collections.ConfigDict()
    c.name = "sdvae"
    c.in_channels = 3
    c.latent_channels = 4
    c.channels = (128, 256, 512, 512)  # per stage; every stage but the last halves space.
    c.layers = 2  # ResNets per encoder stage; each decoder stage has one more.
    c.groups = 32  # GroupNorm groups; every entry of channels must divide by it.
    c.norm_eps = 1e-6
    c.attention = "xla"  # the mid blocks' attention implementation (models.attention).
    c.dtype = "float32"  # compute dtype; parameters stay float32.
    return c


def check_config(cfg) -> None:
    """Raises ValueError, one sentence naming the field, for a config the SD VAE cannot build."""
    channels = tuple(cfg.channels)
    checks = (
        (len(channels) >= 1 and all(isinstance(c, int) and c > 0 for c in channels),
         f"config.model.channels={channels} must be a non-empty tuple of positive integers."),
        (cfg.groups > 0 and all(c % cfg.groups == 0 for c in channels),
         f"config.model.groups={cfg.groups} must be positive and divide every entry of channels={channels}."),
        (cfg.layers >= 1, f"config.model.layers={cfg.layers} must be at least 1."),
        (cfg.latent_channels > 0, f"config.model.latent_channels={cfg.latent_channels} must be positive."),
        (cfg.in_channels > 0, f"config.model.in_channels={cfg.in_channels} must be positive."),
        (cfg.dtype in layers.DTYPES, f"config.model.dtype={cfg.dtype!r} must be one of {tuple(layers.DTYPES)}."),
    )
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def group_norm(features: int, cfg, rngs: nnx.Rngs) -> nnx.GroupNorm:
    return nnx.GroupNorm(
        features, cfg.groups, epsilon=cfg.norm_eps, dtype=layers.DTYPES[cfg.dtype], rngs=rngs,
        scale_init=nnx.with_partitioning(ones, NORM_AXES), bias_init=nnx.with_partitioning(zeros, NORM_AXES),
    )


class Conv(nnx.Module):
    """A 2D conv on (N, H, W, C), zero-padded by `pad` ((top, bottom), (left, right))."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, cfg, *, stride: int = 1, pad=None, rngs: nnx.Rngs):
        p = kernel // 2
        self.pad = ((p, p), (p, p)) if pad is None else pad
        self.conv = conv(in_ch, out_ch, (kernel, kernel), strides=stride, dtype=layers.DTYPES[cfg.dtype], rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(jnp.pad(x, ((0, 0), *self.pad, (0, 0))))


class ResnetBlock(nnx.Module):
    """x + conv2(silu(norm2(conv1(silu(norm1(x)))))), a 1x1 conv on the skip when widths differ."""

    def __init__(self, in_ch: int, out_ch: int, cfg, *, rngs: nnx.Rngs):
        self.norm1, self.norm2 = group_norm(in_ch, cfg, rngs), group_norm(out_ch, cfg, rngs)
        self.conv1 = Conv(in_ch, out_ch, 3, cfg, rngs=rngs)
        self.conv2 = Conv(out_ch, out_ch, 3, cfg, rngs=rngs)
        self.shortcut = Conv(in_ch, out_ch, 1, cfg, rngs=rngs) if in_ch != out_ch else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = self.conv2(nnx.silu(self.norm2(h)))  # the released dropout is 0: left out.
        return (x if self.shortcut is None else self.shortcut(x)) + h


class SelfAttention(nnx.Module):
    """x + out(attention(q, k, v)) of the GroupNorm'd features: one head as wide as the channels,
    every position attending to every other."""

    def __init__(self, channels: int, cfg, *, rngs: nnx.Rngs):
        dtype = layers.DTYPES[cfg.dtype]
        self.impl = cfg.attention
        self.norm = group_norm(channels, cfg, rngs)
        dense = lambda: layers.dense(channels, channels, ("conv_in", "conv_out"), dtype=dtype, rngs=rngs)
        self.q, self.k, self.v, self.out = dense(), dense(), dense(), dense()

    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        tokens = self.norm(x).reshape(n, h * w, 1, c)
        out = attention(self.q(tokens), self.k(tokens), self.v(tokens), self.impl)
        return x + self.out(out).reshape(n, h, w, c)


class Mid(nnx.Module):
    def __init__(self, channels: int, cfg, *, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResnetBlock(channels, channels, cfg, rngs=rngs) for _ in range(2)])
        self.attention = SelfAttention(channels, cfg, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.resnets[1](self.attention(self.resnets[0](x)))


class Stage(nnx.Module):
    """ResNets, then a stride-2 conv (padded only at the bottom and right, as released) when
    `resample` is 'down', or nearest 2x and a conv when 'up'."""

    def __init__(self, in_ch: int, out_ch: int, count: int, cfg, *, resample: str | None, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResnetBlock(in_ch if i == 0 else out_ch, out_ch, cfg, rngs=rngs) for i in range(count)])
        self.up = resample == "up"
        if resample is None:
            self.resample = None
        else:
            down = resample == "down"
            self.resample = Conv(out_ch, out_ch, 3, cfg, stride=2 if down else 1, pad=((0, 1), (0, 1)) if down else None, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x)
        if self.resample is None:
            return x
        if self.up:
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return self.resample(x)


class Encoder(nnx.Module):
    def __init__(self, cfg, *, rngs: nnx.Rngs):
        ch = tuple(cfg.channels)
        self.conv_in = Conv(cfg.in_channels, ch[0], 3, cfg, rngs=rngs)
        self.stages = nnx.List([
            Stage(ch[max(i - 1, 0)], out_ch, cfg.layers, cfg, resample="down" if i < len(ch) - 1 else None, rngs=rngs)
            for i, out_ch in enumerate(ch)
        ])
        self.mid = Mid(ch[-1], cfg, rngs=rngs)
        self.norm_out = group_norm(ch[-1], cfg, rngs)
        self.conv_out = Conv(ch[-1], 2 * cfg.latent_channels, 3, cfg, rngs=rngs)
        self.quant = Conv(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1, cfg, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv_in(x)
        for stage in self.stages:
            h = stage(h)
        return self.quant(self.conv_out(nnx.silu(self.norm_out(self.mid(h)))))


class Decoder(nnx.Module):
    def __init__(self, cfg, *, rngs: nnx.Rngs):
        ch = tuple(reversed(tuple(cfg.channels)))
        self.post_quant = Conv(cfg.latent_channels, cfg.latent_channels, 1, cfg, rngs=rngs)
        self.conv_in = Conv(cfg.latent_channels, ch[0], 3, cfg, rngs=rngs)
        self.mid = Mid(ch[0], cfg, rngs=rngs)
        self.stages = nnx.List([
            Stage(ch[max(i - 1, 0)], out_ch, cfg.layers + 1, cfg, resample="up" if i < len(ch) - 1 else None, rngs=rngs)
            for i, out_ch in enumerate(ch)
        ])
        self.norm_out = group_norm(ch[-1], cfg, rngs)
        self.conv_out = Conv(ch[-1], cfg.in_channels, 3, cfg, rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        h = self.mid(self.conv_in(self.post_quant(z)))
        for stage in self.stages:
            h = stage(h)
        return self.conv_out(nnx.silu(self.norm_out(h)))


class SDVAE(nnx.Module):
    """encode: (B, T, H, W, 3) -> posterior over (B, T, H/8, W/8, 4); decode inverts the shape."""

    objective = "autoencoding"  # the defaults of config.objective and config.conditioning.
    conditioning = "none"
    check_config = staticmethod(check_config)
    default_config = staticmethod(default_config)

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        check_config(cfg)
        self.space_factor = 2 ** (len(cfg.channels) - 1)
        self.encoder = Encoder(cfg, rngs=rngs)
        self.decoder = Decoder(cfg, rngs=rngs)

    @staticmethod
    def latent_frames(cfg, frames: int) -> int:
        """Every frame is encoded alone."""
        return frames

    def _encoder(self, x: jax.Array) -> jax.Array:
        if x.shape[2] % self.space_factor or x.shape[3] % self.space_factor:
            raise ValueError(f"SD VAE input of shape {x.shape} needs H and W divisible by {self.space_factor}.")
        return per_frame(self.encoder, x)

    def encode(self, x: jax.Array) -> DiagonalGaussian:
        return DiagonalGaussian.from_moments(self._encoder(x))

    def decode(self, z: jax.Array) -> jax.Array:
        return per_frame(self.decoder, z)

    def tiled_encode(self, x: jax.Array, *, tile: int, overlap: int) -> DiagonalGaussian:
        """`encode` on overlapping `tile` x `tile` pixel tiles sharing `overlap` pixels (multiples
        of 8), the moments blended in latent space; not exact near tile edges (the attention and
        the GroupNorm statistics see only a tile)."""
        tiling.check_tiling("tiled_encode", tile, overlap, None, space_unit=self.space_factor, time_unit=1)
        return DiagonalGaussian.from_moments(
            tiling.tiled_apply(self._encoder, x, tile=tile, overlap=overlap, frames=None, in_unit=self.space_factor, out_unit=1)
        )

    def tiled_decode(self, z: jax.Array, *, tile: int, overlap: int) -> jax.Array:
        """`decode` on overlapping `tile` x `tile` latent tiles sharing `overlap` latent pixels,
        the pixels blended with linear ramps."""
        tiling.check_tiling("tiled_decode", tile, overlap, None, space_unit=1, time_unit=1)
        return tiling.tiled_apply(self.decode, z, tile=tile, overlap=overlap, frames=None, in_unit=1, out_unit=self.space_factor)

    def __call__(self, x: jax.Array, key: jax.Array) -> tuple[jax.Array, DiagonalGaussian]:
        """Reconstruction from a posterior sample."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(key)), posterior
