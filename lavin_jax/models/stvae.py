"""ST-VAE, LaVin-DiT's spatial-temporal VAE (arXiv 2411.11505; CogVideoX-derived).

A clip of 1+4k RGB frames in [-1, 1] becomes 1+k latent frames of 16 channels at 1/8 of the
resolution (4x8x8 compression). Every temporal convolution is causal (the first frame is repeated
in front, nothing looks ahead) and every temporal halving keeps the first frame on its own, so a
single image is simply a 1-frame clip encoded by the same weights.

Read top to bottom like the official `lib/model/vae3d.py`: `CausalConv3d`, the norms,
`ResnetBlock`, the spatial/temporal `Downsample` and `Upsample`, `Encoder`, `Decoder`,
`DiagonalGaussian`, `STVAE`, and tiled encode/decode (`STVAE.tiled_encode`, `STVAE.tiled_decode`)
for inputs too large to run whole. No attention, no losses here.

Shapes are channels-last: (B, T, H, W, C).

One deliberate choice: `cfg.norm_stats`. The official GroupNorm is torch's on a 5D tensor, so its
statistics run over the whole clip (`'clip'`), which lets later frames leak into the first latent.
`'frame'` takes the statistics per frame: the encoder is then exactly causal and an image encodes
like the first frame of any clip. `official_config()` keeps `'clip'` (the released weights'
semantics); `tiny_config()` uses `'frame'`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx, struct

from lavin_jax.models import layers, tiling

NORM_STATS = ("clip", "frame")

# torch's default Conv init (kaiming_uniform with a=sqrt(5)) is uniform with variance 1/(3 fan_in).
conv_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
zeros = nnx.initializers.zeros_init()
ones = nnx.initializers.ones_init()

# Logical axis names of the ST-VAE's parameters (to be mapped in config.mesh.rules).
CONV3D_AXES = ("conv_t", "conv_h", "conv_w", "conv_in", "conv_out")
CONV2D_AXES = ("conv_h", "conv_w", "conv_in", "conv_out")
NORM_AXES = ("conv_norm",)


def tiny_config() -> ml_collections.ConfigDict:
    """A CPU-sized ST-VAE with the official structure (4 stages, 4x8x8, 16 latent channels)."""
    c = official_config()
    c.channels = (16, 32, 32, 32)
    c.encoder_layers = 1
    c.decoder_layers = 1
    c.mid_layers = 1
    c.groups = 8
    c.spatial_groups = 8  # its first stage has 16 channels: not the official decoder's 32 groups.
    c.norm_stats = "frame"
    return c


def official_config() -> ml_collections.ConfigDict:
    """The released LaVin-DiT ST-VAE (`AutoencoderKLSTVAE` defaults)."""
    c = ml_collections.ConfigDict()
    c.name = "stvae"
    c.in_channels = 3  # RGB in and out.
    c.latent_channels = 16
    c.channels = (128, 256, 256, 512)  # per stage; every stage but the last halves space.
    c.temporal_downsamples = 2  # the first stages that also halve time: 2 -> 4x.
    c.encoder_layers = 3  # ResNets per encoder stage.
    c.decoder_layers = 4  # ResNets per decoder stage (official: encoder's + 1).
    c.mid_layers = 2  # ResNets in each mid block.
    c.kernel = 3  # causal conv kernel, in time and space.
    c.groups = 32  # GroupNorm groups; every entry of channels must divide by it.
    # The decoder's SpatialNorm groups: the official code fixes 32, whatever norm_num_groups says.
    c.spatial_groups = 32
    c.norm_eps = 1e-6
    c.norm_stats = "clip"  # GroupNorm statistics over the whole clip (official) or per frame.
    c.dtype = "float32"  # compute dtype; parameters stay float32.
    return c


def check_config(cfg) -> None:
    """Raises ValueError, one sentence naming the field, for a config the ST-VAE cannot build."""

    def require(ok, message):
        if not ok:
            raise ValueError(message)

    channels = tuple(cfg.channels)
    require(
        len(channels) >= 1 and all(isinstance(c, int) and c > 0 for c in channels),
        f"config.model.channels={channels} must be a non-empty tuple of positive integers.",
    )
    require(cfg.groups > 0, f"config.model.groups={cfg.groups} must be positive.")
    require(cfg.spatial_groups > 0, f"config.model.spatial_groups={cfg.spatial_groups} must be positive.")
    for field in ("groups", "spatial_groups"):
        for c in channels:
            require(c % cfg[field] == 0, f"config.model.channels={channels} has {c}, not divisible by {field}={cfg[field]}.")
    require(
        0 <= cfg.temporal_downsamples <= len(channels) - 1,
        f"config.model.temporal_downsamples={cfg.temporal_downsamples} must be in [0, {len(channels) - 1}] "
        "(only stages that downsample can halve time).",
    )
    require(cfg.encoder_layers >= 1, f"config.model.encoder_layers={cfg.encoder_layers} must be at least 1.")
    require(cfg.decoder_layers >= 1, f"config.model.decoder_layers={cfg.decoder_layers} must be at least 1.")
    require(cfg.mid_layers >= 0, f"config.model.mid_layers={cfg.mid_layers} must not be negative.")
    require(cfg.kernel >= 1 and cfg.kernel % 2 == 1, f"config.model.kernel={cfg.kernel} must be a positive odd integer.")
    require(cfg.latent_channels > 0, f"config.model.latent_channels={cfg.latent_channels} must be positive.")
    require(cfg.in_channels > 0, f"config.model.in_channels={cfg.in_channels} must be positive.")
    require(cfg.norm_stats in NORM_STATS, f"config.model.norm_stats={cfg.norm_stats!r} must be one of {NORM_STATS}.")
    require(cfg.dtype in layers.DTYPES, f"config.model.dtype={cfg.dtype!r} must be one of {tuple(layers.DTYPES)}.")


# --- convolutions ---------------------------------------------------------------------------


def conv(in_ch: int, out_ch: int, kernel: tuple[int, ...], *, dtype, rngs: nnx.Rngs, strides=1) -> nnx.Conv:
    """An unpadded Conv whose kernel and bias carry logical axis names (3D or 2D by `kernel`)."""
    axes = CONV3D_AXES if len(kernel) == 3 else CONV2D_AXES
    return nnx.Conv(
        in_ch, out_ch, kernel, strides=strides, padding="VALID", dtype=dtype, param_dtype=jnp.float32,
        kernel_init=nnx.with_partitioning(conv_init, axes),
        bias_init=nnx.with_partitioning(zeros, axes[-1:]),
        rngs=rngs,
    )


def causal_time_pad(x: jax.Array, kernel: int) -> jax.Array:
    """(B, T, ...) -> (B, T + kernel - 1, ...): the first frame repeated in front, so a stride-1
    time kernel never looks ahead and frame 0 sees only itself."""
    return jnp.concatenate([jnp.repeat(x[:, :1], kernel - 1, axis=1), x], axis=1)


def causal_conv(conv: nnx.Conv, x: jax.Array, space_pad: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """An unpadded 3D `conv` (stride 1 in time) made causal: time padded in front by
    `causal_time_pad`, space zero-padded by `space_pad`.

    An image is a 1-frame clip: every time tap then sees the same frame, so the convolution is
    one with the kernel summed over time (the same sum, rounded differently), k times fewer
    FLOPs. Most episodes are images, and J-DiT encodes every item of them."""
    k = conv.kernel_size[0]
    if x.shape[1] > 1 or k == 1:
        if k > 1:
            x = causal_time_pad(x, k)
        return conv(jnp.pad(x, ((0, 0), (0, 0), *space_pad, (0, 0))))
    kernel = jnp.sum(conv.kernel[...], axis=0, keepdims=True)
    strides = conv.strides if isinstance(conv.strides, tuple) else (conv.strides,) * 3
    y = jax.lax.conv_general_dilated(
        x.astype(conv.dtype), kernel.astype(conv.dtype), strides, ((0, 0), *space_pad),
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), precision=conv.precision,
    )
    return y + conv.bias[...].astype(conv.dtype) if conv.use_bias else y


class CausalConv3d(nnx.Module):
    """Conv3d, stride 1, that never looks ahead (`causal_conv`), space zero-padded to keep H and W."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.kernel = kernel
        self.conv = conv(in_ch, out_ch, (kernel, kernel, kernel), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.kernel // 2
        return causal_conv(self.conv, x, ((p, p), (p, p)))


def per_frame(fn, x: jax.Array) -> jax.Array:
    """Applies a (N, H, W, C) -> (N, H', W', C') function to every frame of (B, T, H, W, C)."""
    b, t = x.shape[:2]
    y = fn(x.reshape(b * t, *x.shape[2:]))
    return y.reshape(b, t, *y.shape[1:])


# --- norms ----------------------------------------------------------------------------------


class GroupNorm(nnx.Module):
    """Affine GroupNorm with statistics over the clip (official) or over each frame (causal)."""

    def __init__(self, features: int, cfg, *, groups: int | None = None, rngs: nnx.Rngs):
        self.per_frame = cfg.norm_stats == "frame"
        self.norm = nnx.GroupNorm(
            features, groups or cfg.groups, epsilon=cfg.norm_eps, dtype=layers.DTYPES[cfg.dtype], rngs=rngs,
            scale_init=nnx.with_partitioning(ones, NORM_AXES),
            bias_init=nnx.with_partitioning(zeros, NORM_AXES),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return per_frame(self.norm, x) if self.per_frame else self.norm(x)


def resize_nearest(z: jax.Array, size: tuple[int, int, int]) -> jax.Array:
    """Nearest-neighbour resize of (B, T, H, W, C) to (B, *size, C); source index floor(i*in/out),
    as torch's F.interpolate(mode='nearest')."""
    for axis, out in zip((1, 2, 3), size):
        n = z.shape[axis]
        if n != out:
            z = jnp.take(z, (jnp.arange(out) * n) // out, axis=axis)
    return z


class SpatialNorm(nnx.Module):
    """The decoder's norm: GroupNorm(f) * conv_y(z) + conv_b(z), with the latent z resized to the
    features by nearest neighbour; `spatial_groups` groups (the official 32, apart from `groups`). The first latent frame conditions only the first output frame
    (it is resized on its own), as the first frame is kept apart everywhere else."""

    def __init__(self, features: int, z_channels: int, cfg, *, rngs: nnx.Rngs):
        dtype = layers.DTYPES[cfg.dtype]
        self.norm = GroupNorm(features, cfg, groups=cfg.spatial_groups, rngs=rngs)
        self.conv_y = CausalConv3d(z_channels, features, 1, dtype=dtype, rngs=rngs)
        self.conv_b = CausalConv3d(z_channels, features, 1, dtype=dtype, rngs=rngs)

    def __call__(self, f: jax.Array, z: jax.Array) -> jax.Array:
        t, h, w = f.shape[1:4]
        if t > 1 and t % 2 == 1:
            z = jnp.concatenate(
                [resize_nearest(z[:, :1], (1, h, w)), resize_nearest(z[:, 1:], (t - 1, h, w))], axis=1
            )
        else:
            z = resize_nearest(z, (t, h, w))
        return self.norm(f) * self.conv_y(z) + self.conv_b(z)


# --- blocks ---------------------------------------------------------------------------------


class ResnetBlock(nnx.Module):
    """x + conv2(silu(norm2(conv1(silu(norm1(x)))))); a 1x1x1 conv on the skip when widths differ.
    Norms are GroupNorm in the encoder and SpatialNorm on z (`z_channels`) in the decoder."""

    def __init__(self, in_ch: int, out_ch: int, cfg, *, z_channels: int | None = None, rngs: nnx.Rngs):
        dtype = layers.DTYPES[cfg.dtype]
        if z_channels is None:
            self.norm1, self.norm2 = GroupNorm(in_ch, cfg, rngs=rngs), GroupNorm(out_ch, cfg, rngs=rngs)
        else:
            self.norm1 = SpatialNorm(in_ch, z_channels, cfg, rngs=rngs)
            self.norm2 = SpatialNorm(out_ch, z_channels, cfg, rngs=rngs)
        self.conv1 = CausalConv3d(in_ch, out_ch, cfg.kernel, dtype=dtype, rngs=rngs)
        self.conv2 = CausalConv3d(out_ch, out_ch, cfg.kernel, dtype=dtype, rngs=rngs)
        # A 1x1x1 conv mixes channels only, so it is causal without padding.
        self.shortcut = conv(in_ch, out_ch, (1, 1, 1), dtype=dtype, rngs=rngs) if in_ch != out_ch else None

    def _norm(self, norm, x, z):
        return norm(x) if z is None else norm(x, z)

    def __call__(self, x: jax.Array, z: jax.Array | None = None) -> jax.Array:
        h = self.conv1(nnx.silu(self._norm(self.norm1, x, z)))
        h = self.conv2(nnx.silu(self._norm(self.norm2, h, z)))  # official dropout is 0: left out.
        skip = x if self.shortcut is None else self.shortcut(x)
        return skip + h


class Downsample(nnx.Module):
    """Optionally halves time by averaging frame pairs after the first (an odd count keeps the
    first frame alone; an even one pools every pair, as official), then halves space with a
    stride-2 3x3 Conv2d per frame after zero-padding one row and column at the bottom/right."""

    def __init__(self, channels: int, compress_time: bool, *, dtype, rngs: nnx.Rngs):
        self.compress_time = compress_time
        self.conv = conv(channels, channels, (3, 3), strides=2, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.compress_time and x.shape[1] > 1:
            first, rest = (x[:, :1], x[:, 1:]) if x.shape[1] % 2 == 1 else (x[:, :0], x)
            b, t, h, w, c = rest.shape
            rest = rest.reshape(b, t // 2, 2, h, w, c).mean(axis=2)
            x = jnp.concatenate([first, rest], axis=1)
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)))
        return per_frame(self.conv, x)


class Upsample(nnx.Module):
    """Nearest 2x in space and, if `compress_time`, in time for every frame but the first
    (T -> 1 + 2(T-1); a single frame stays single), then a 3x3 Conv2d per frame."""

    def __init__(self, channels: int, compress_time: bool, *, dtype, rngs: nnx.Rngs):
        self.compress_time = compress_time
        self.conv = conv(channels, channels, (3, 3), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
        if self.compress_time and x.shape[1] > 1:
            x = jnp.concatenate([x[:, :1], jnp.repeat(x[:, 1:], 2, axis=1)], axis=1)
        x = jnp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))
        return per_frame(self.conv, x)


class Stage(nnx.Module):
    """ResNets then an optional resampler: one down block of the encoder or up block of the decoder."""

    def __init__(self, in_ch, out_ch, layers, cfg, *, resample=None, z_channels=None, rngs: nnx.Rngs):
        self.resnets = nnx.List(
            [ResnetBlock(in_ch if i == 0 else out_ch, out_ch, cfg, z_channels=z_channels, rngs=rngs) for i in range(layers)]
        )
        self.resample = resample

    def __call__(self, x: jax.Array, z: jax.Array | None = None) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x, z)
        return x if self.resample is None else self.resample(x)


# --- encoder and decoder --------------------------------------------------------------------


class Encoder(nnx.Module):
    """conv_in, stages (all but the last halve space, the first `temporal_downsamples` also time),
    mid ResNets, GroupNorm + SiLU, conv_out to 2 * latent channels (mean, logvar)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        dtype, ch = layers.DTYPES[cfg.dtype], tuple(cfg.channels)
        self.conv_in = CausalConv3d(cfg.in_channels, ch[0], cfg.kernel, dtype=dtype, rngs=rngs)
        stages = []
        for i, out_ch in enumerate(ch):
            down = None
            if i < len(ch) - 1:
                down = Downsample(out_ch, i < cfg.temporal_downsamples, dtype=dtype, rngs=rngs)
            stages.append(Stage(ch[max(i - 1, 0)], out_ch, cfg.encoder_layers, cfg, resample=down, rngs=rngs))
        self.stages = nnx.List(stages)
        self.mid = Stage(ch[-1], ch[-1], cfg.mid_layers, cfg, rngs=rngs)
        self.norm_out = GroupNorm(ch[-1], cfg, rngs=rngs)
        self.conv_out = CausalConv3d(ch[-1], 2 * cfg.latent_channels, cfg.kernel, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv_in(x)
        for stage in self.stages:
            h = stage(h)
        h = self.mid(h)
        return self.conv_out(nnx.silu(self.norm_out(h)))


class Decoder(nnx.Module):
    """conv_in from z, mid ResNets, stages over the reversed channels (all but the last double
    space, the first `temporal_downsamples` - the coarsest, as official - also time), SpatialNorm +
    SiLU, conv_out to RGB. Every norm is a SpatialNorm conditioned on z."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        dtype, zc = layers.DTYPES[cfg.dtype], cfg.latent_channels
        ch = tuple(reversed(tuple(cfg.channels)))
        self.conv_in = CausalConv3d(zc, ch[0], cfg.kernel, dtype=dtype, rngs=rngs)
        self.mid = Stage(ch[0], ch[0], cfg.mid_layers, cfg, z_channels=zc, rngs=rngs)
        stages = []
        for i, out_ch in enumerate(ch):
            up = None
            if i < len(ch) - 1:
                up = Upsample(out_ch, i < cfg.temporal_downsamples, dtype=dtype, rngs=rngs)
            stages.append(
                Stage(ch[max(i - 1, 0)], out_ch, cfg.decoder_layers, cfg, resample=up, z_channels=zc, rngs=rngs)
            )
        self.stages = nnx.List(stages)
        self.norm_out = SpatialNorm(ch[-1], zc, cfg, rngs=rngs)
        self.conv_out = CausalConv3d(ch[-1], cfg.in_channels, cfg.kernel, dtype=dtype, rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        h = self.mid(self.conv_in(z), z)
        for stage in self.stages:
            h = stage(h, z)
        return self.conv_out(nnx.silu(self.norm_out(h, z)))


# --- posterior and the autoencoder ----------------------------------------------------------


@struct.dataclass
class DiagonalGaussian:
    """The posterior N(mean, exp(logvar)) over latents (B, T, h, w, C); a pytree, so jit can return it."""

    mean: jax.Array
    logvar: jax.Array  # already clamped to [-30, 20].

    @classmethod
    def from_moments(cls, moments: jax.Array) -> "DiagonalGaussian":
        """Splits the encoder's channels into mean (first half) and logvar, clamped as official."""
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return cls(mean, jnp.clip(logvar, -30.0, 20.0))

    def sample(self, key: jax.Array) -> jax.Array:
        noise = jax.random.normal(key, self.mean.shape, self.mean.dtype)
        return self.mean + jnp.exp(0.5 * self.logvar) * noise

    def mode(self) -> jax.Array:
        return self.mean

    def kl(self) -> jax.Array:
        """KL to N(0, I) per example, (B,): summed over every latent dim (T, h, w, C); a loss
        takes its mean over the batch."""
        m, lv = self.mean.astype(jnp.float32), self.logvar.astype(jnp.float32)
        return 0.5 * jnp.sum(jnp.square(m) + jnp.exp(lv) - 1.0 - lv, axis=tuple(range(1, m.ndim)))


class STVAE(nnx.Module):
    """encode: (B, 1+4k, H, W, 3) -> posterior over (B, 1+k, H/8, W/8, 16); decode inverts the shape."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        check_config(cfg)
        self.time_factor = 2 ** cfg.temporal_downsamples
        self.space_factor = 2 ** (len(cfg.channels) - 1)
        self.encoder = Encoder(cfg, rngs=rngs)
        self.decoder = Decoder(cfg, rngs=rngs)

    check_config = staticmethod(check_config)
    default_config = staticmethod(official_config)
    objective = "autoencoding"  # the defaults of config.objective and config.conditioning.
    conditioning = "none"

    @staticmethod
    def latent_frames(cfg, frames: int) -> int:
        """Latent frames of a clip of `frames` (1+4k): the first frame is encoded alone, every
        2**temporal_downsamples after it make one."""
        return (frames - 1) // 2 ** int(cfg.temporal_downsamples) + 1

    def _check_input(self, x: jax.Array) -> None:
        b, t, h, w, c = x.shape
        if t % self.time_factor != 1 % self.time_factor or h % self.space_factor or w % self.space_factor:
            raise ValueError(
                f"ST-VAE input of shape {x.shape} needs 1 + {self.time_factor}k frames and H, W "
                f"divisible by {self.space_factor}."
            )

    def encode(self, x: jax.Array) -> DiagonalGaussian:
        self._check_input(x)
        return DiagonalGaussian.from_moments(self.encoder(x))

    def decode(self, z: jax.Array) -> jax.Array:
        return self.decoder(z)

    def tiled_encode(self, x: jax.Array, *, tile: int, overlap: int, frames: int | None = None) -> DiagonalGaussian:
        """`encode` run on overlapping `tile` x `tile` pixel tiles (`overlap` pixels shared by
        neighbours, both multiples of the spatial factor 8) and, if `frames` is given, on chunks of
        `frames` = 1 + 4k frames that share one boundary frame (official LaVin-DiT semantics; see
        `tiled_apply`). The raw moments are blended in latent space before the logvar clamp.
        Not exact: the encoder's receptive field (and per-frame GroupNorm statistics) reach
        past the overlap, so tiles see zero padding and local statistics near their edges."""
        self._check_input(x)
        tiling.check_tiling(
            "tiled_encode", tile, overlap, frames, space_unit=self.space_factor, time_unit=self.time_factor
        )
        moments = tiling.tiled_apply(
            self.encoder, x, tile=tile, overlap=overlap, frames=frames, in_unit=self.space_factor, out_unit=1
        )
        return DiagonalGaussian.from_moments(moments)

    def tiled_decode(self, z: jax.Array, *, tile: int, overlap: int, frames: int | None = None) -> jax.Array:
        """`decode` run on overlapping `tile` x `tile` latent-pixel tiles (`overlap` latent pixels
        shared) and, if `frames` is given, on chunks of `frames` latent frames sharing one
        boundary latent frame, whose first decoded frame is dropped after the first chunk
        (official semantics; see `tiled_apply`). Output pixels are blended with linear ramps."""
        tiling.check_tiling("tiled_decode", tile, overlap, frames, space_unit=1, time_unit=1)
        return tiling.tiled_apply(
            self.decoder, z, tile=tile, overlap=overlap, frames=frames, in_unit=1, out_unit=self.space_factor
        )

    def __call__(self, x: jax.Array, key: jax.Array) -> tuple[jax.Array, DiagonalGaussian]:
        """Reconstruction from a posterior sample (official forward with sample_posterior=True)."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(key)), posterior
