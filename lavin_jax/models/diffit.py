"""DiffiT, diffusion vision transformers whose attention depends on the time (Hatamizadeh et al.,
arXiv 2312.02139).

Time-dependent multi-head self-attention (TMSA): the queries, keys and values of the tokens x are
linear in both x and the time token c, q = x W_qs + c W_qt (and so k, v), one projection of each
summed before the heads are split, and the scores get a learned relative position bias over the
window (Swin's table). Attention runs within non-overlapping windows; a window as large as the
token grid is global attention. A DiffiT block is pre-LayerNorm TMSA then an MLP, each a
residual, with no adaLN: the time (and class) reach the block only through TMSA.

Two models use it:
- `DiffiT`, the latent model (the released ImageNet 256/512 px checkpoints): DiT's patches and
  fixed 2D sin-cos embedding, c = timestep embedding + class embedding (a null row for guidance),
  blocks over the whole token grid, a final LayerNorm, SiLU and projection to the patches
  (noise and, with `learn_sigma`, the variance interpolation, as DiT's ddpm).
- `DiffiTImage`, the U-shaped image-space model (CIFAR-10, 64 px): a convolution to the first
  width, then per resolution `blocks` DiffiT ResBlocks (x + DiffiT-block(Conv3x3(SiLU(GN(x))))),
  a strided convolution down; back up by nearest 2x and a convolution, the encoder's features of
  each resolution concatenated on the way up; GroupNorm, SiLU and a zero-initialised convolution
  out. Windowed TMSA at every resolution. Either model is unconditional with `num_classes` 0:
  no class table, c the timestep's embedding alone. The paper leaves heads, the MLP's width, GroupNorm's
  groups and how skips merge unstated: these are config fields, with the choices above.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from lavin_jax.models import dit, layers, sdvae, transformer
from lavin_jax.models.attention import IMPLEMENTATIONS, attention
from lavin_jax.parallel import constrain

# DiT's sizes, (hidden, depth, heads); XL is the release: depth 28 (the paper's text says 30, its
# 561M parameters are 28 blocks').
SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
PATCHES = (2, 4, 8)


def variant(name: str) -> dict:
    """{'hidden', 'depth', 'num_heads', 'patch_size'} of a variant string such as 'XL/2'."""
    return transformer.variant("DiffiT", name, SIZES, PATCHES)


@functools.lru_cache(maxsize=None)
def relative_position_index(window: int) -> np.ndarray:
    """(window^2, window^2): for tokens i, j of a window (row by row), the row of the bias table
    holding their offset, (dy + window - 1) * (2 window - 1) + (dx + window - 1)."""
    rows, cols = np.meshgrid(np.arange(window), np.arange(window), indexing="ij")
    coords = np.stack([rows.ravel(), cols.ravel()])
    offset = coords[:, :, None] - coords[:, None, :] + window - 1
    return offset[0] * (2 * window - 1) + offset[1]


class TMSA(nnx.Module):
    """Time-dependent multi-head self-attention within `window` x `window` windows of a token grid."""

    def __init__(self, hidden: int, num_heads: int, window: int, time_width: int, attention_impl: str, *, dtype, rngs: nnx.Rngs):
        self.head_dim = hidden // num_heads
        self.window = window
        self.attention_impl = attention_impl
        self.qkv = layers.dense(hidden, 3 * hidden, ("embed", "heads"), dtype=dtype, rngs=rngs)
        self.qkv_time = layers.dense(time_width, 3 * hidden, ("embed", "heads"), dtype=dtype, rngs=rngs)
        self.out = layers.dense(hidden, hidden, ("heads", "embed"), dtype=dtype, rngs=rngs)
        table = nnx.initializers.truncated_normal(0.02)(rngs.params(), ((2 * window - 1) ** 2, num_heads))
        self.bias_table = nnx.Param(table, out_sharding=(None, None))

    def __call__(self, x: jax.Array, c: jax.Array, grid: tuple[int, int]) -> jax.Array:
        """x: (B, H*W, D) tokens of an H x W grid (row by row), c: (B, time_width)."""
        b, _, d = x.shape
        (height, width), w = grid, self.window
        qkv = self.qkv(x) + self.qkv_time(c)[:, None, :].astype(x.dtype)
        # Windows become examples: (B * windows, w*w, 3D).
        qkv = qkv.reshape(b, height // w, w, width // w, w, 3 * d).transpose(0, 1, 3, 2, 4, 5).reshape(-1, w * w, 3 * d)
        heads = lambda t: constrain(t.reshape(*t.shape[:2], -1, self.head_dim), "batch", "length", "act_heads", None)
        q, k, v = (heads(part) for part in jnp.split(qkv, 3, axis=-1))
        bias = self.bias_table[...][relative_position_index(w)].transpose(2, 0, 1)  # (heads, w*w, w*w)
        out = attention(q, k, v, self.attention_impl, bias=bias)
        out = out.reshape(b, height // w, width // w, w, w, d).transpose(0, 1, 3, 2, 4, 5).reshape(b, height * width, d)
        return self.out(out)


class DiffiTBlock(nnx.Module):
    """x + TMSA(LN(x), c), then x + MLP(LN(x)); LayerNorms without affine, GELU (tanh) MLP."""

    def __init__(self, hidden: int, num_heads: int, window: int, time_width: int, cfg, *, dtype, rngs: nnx.Rngs):
        self.eps = cfg.norm_eps
        self.attn = TMSA(hidden, num_heads, window, time_width, cfg.attention, dtype=dtype, rngs=rngs)
        mlp = int(hidden * cfg.mlp_ratio)
        self.fc1 = layers.dense(hidden, mlp, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.fc2 = layers.dense(mlp, hidden, ("mlp", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, c: jax.Array, grid: tuple[int, int]) -> jax.Array:
        x = x + self.attn(layers.layer_norm(x, self.eps), c, grid)
        x = x + self.fc2(nnx.gelu(self.fc1(layers.layer_norm(x, self.eps)), approximate=True))
        return constrain(x, "batch", "length", "act_embed")


def check_windows(cfg, side: int, sides: tuple[int, ...]) -> None:
    """Raises ValueError unless `config.model.window` tiles each grid side of `sides` (a model
    input of side `side`)."""
    bad = [s for s in sides if s % cfg.window]
    if bad:
        raise ValueError(
            f"config.model.window={cfg.window} does not tile the {bad[0]} x {bad[0]} token grid of {side} px model inputs: "
            f"every grid side ({', '.join(map(str, sides))}) must be a multiple of it."
        )


def class_embedding(cfg, width: int, rngs: nnx.Rngs) -> nnx.Embed | None:
    """The class table, one more row than classes: the null class guidance samples against. None
    for an unconditional model (`num_classes` 0, the paper's CIFAR-10 model): its labels are all
    the null class, and a table of that one row would only add a constant."""
    if not cfg.num_classes:
        return None
    return nnx.Embed(
        cfg.num_classes + 1, width, rngs=rngs,
        embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), (None, "embed")),
    )


def condition(t_embedded: jax.Array, class_embed: nnx.Embed | None, context: dict) -> jax.Array:
    """c, the time token: the timestep's embedding plus, for a class-conditional model, the label's."""
    return t_embedded if class_embed is None else t_embedded + class_embed(context["label"])


def check_classes(cfg) -> None:
    if not isinstance(cfg.num_classes, int) or cfg.num_classes < 0:
        raise ValueError(f"config.model.num_classes={cfg.num_classes!r} must be a count of classes, or 0 for an unconditional model.")


class DiffiT(nnx.Module):
    """The latent DiffiT: images (B, 1, H, W, C) -> (B, 1, H, W, out_channels), float32."""

    objective = "ddpm"  # the defaults of config.objective and config.conditioning.
    conditioning = "class"

    @staticmethod
    def default_config() -> ml_collections.ConfigDict:
        """The released DiffiT (XL/2) on 4-channel latents of ImageNet 256 px's 1000 classes."""
        c = ml_collections.ConfigDict()
        c.name = "diffit"
        c.update(variant("XL/2"))
        c.window = 16  # tokens a side of a window: the whole 16 x 16 grid of 256 px latents, as released.
        c.in_channels = 4
        c.num_classes = 1000
        c.learn_sigma = True
        c.mlp_ratio = 4.0
        return transformer.compute_fields(c)

    @staticmethod
    def check_config(cfg) -> None:
        dit.check_fields(cfg, positive=("window",))
        check_classes(cfg)

    @staticmethod
    def check_input(cfg, side: int) -> None:
        check_windows(cfg, side, (side // cfg.patch_size,))

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        dtype = dit.add_embedders(self, cfg, rngs=rngs)
        cfg = self.cfg
        d, p = cfg.hidden, cfg.patch_size
        self.class_embed = class_embedding(cfg, d, rngs)
        self.blocks = transformer.stack(lambda rngs: DiffiTBlock(d, cfg.num_heads, cfg.window, d, cfg, dtype=dtype, rngs=rngs), cfg.depth, rngs)
        self.out_channels = cfg.in_channels * (2 if cfg.learn_sigma else 1)
        self.final = layers.dense(d, p * p * self.out_channels, ("embed", "patch"), zero_init=True, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, t: jax.Array, context: dict) -> jax.Array:
        """x: noisy latents (B, 1, H, W, C); t: (B,) the objective's time; context['label']: (B,)
        int classes, `num_classes` the null class."""
        cfg = self.cfg
        height, width = dit.image_grid("DiffiT", cfg, x)
        dtype = layers.DTYPES[cfg.dtype]
        h = self.patch_embed(layers.patchify(x.astype(dtype), cfg.patch_size))
        h = h + layers.posemb_sincos_2d(height, width, cfg.hidden).astype(dtype)
        h = constrain(h, "batch", "length", "act_embed")
        c = condition(self.t_embed(t), self.class_embed, context)
        h = transformer.run_stack(self.blocks, h, c, (height, width), cfg=cfg)
        out = self.final(nnx.silu(layers.layer_norm(h, cfg.norm_eps)))
        return layers.unpatchify(out.astype(jnp.float32), cfg.patch_size, 1, height, width)


class ResBlock(nnx.Module):
    """DiffiT's ResBlock: h = Conv3x3(SiLU(GN(x))), then DiffiT-block(h) + x (x through a 1x1
    convolution where the widths differ)."""

    def __init__(self, in_ch: int, out_ch: int, cfg, *, dtype, rngs: nnx.Rngs):
        self.norm = sdvae.group_norm(in_ch, cfg, rngs)
        self.conv = sdvae.Conv(in_ch, out_ch, 3, cfg, rngs=rngs)
        self.block = DiffiTBlock(out_ch, cfg.num_heads, cfg.window, cfg.time_width, cfg, dtype=dtype, rngs=rngs)
        self.shortcut = sdvae.Conv(in_ch, out_ch, 1, cfg, rngs=rngs) if in_ch != out_ch else None

    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        h = self.conv(nnx.silu(self.norm(x)))
        b, height, width, d = h.shape
        h = self.block(h.reshape(b, height * width, d), c, (height, width)).reshape(h.shape)
        return h + (x if self.shortcut is None else self.shortcut(x))


class DiffiTImage(nnx.Module):
    """The U-shaped image-space DiffiT: images (B, 1, H, W, 3) -> (B, 1, H, W, 3), float32."""

    objective = "edm"
    conditioning = "class"

    @staticmethod
    def default_config() -> ml_collections.ConfigDict:
        """CIFAR-10's: three resolutions (32, 16, 8 px) of widths 128, 256, 256, two ResBlocks each,
        4 x 4 windows, a 512-wide time token (the paper's best)."""
        c = ml_collections.ConfigDict()
        c.name = "diffit_image"
        c.channels = (128, 256, 256)  # per resolution; each after the first halves the side.
        c.blocks = 2  # DiffiT ResBlocks per resolution, on the way down and again on the way up.
        c.window = 4
        c.num_heads = 4
        c.time_width = 512
        c.mlp_ratio = 4.0
        c.groups = 32  # GroupNorm groups; every entry of channels must divide by it.
        c.in_channels = 3
        c.num_classes = 10
        c.learn_sigma = False
        c.norm_eps = 1e-6
        c.dtype = "float32"
        c.attention = "auto"
        return c

    @staticmethod
    def check_config(cfg) -> None:
        channels = tuple(cfg.channels)
        checks = (
            (len(channels) >= 1 and all(isinstance(w, int) and w > 0 for w in channels),
             f"config.model.channels={channels} must be a non-empty tuple of positive integers."),
            (cfg.groups > 0 and all(w % cfg.groups == 0 for w in channels),
             f"config.model.groups={cfg.groups} must be positive and divide every entry of channels={channels}."),
            (cfg.num_heads > 0 and all(w % cfg.num_heads == 0 for w in channels),
             f"config.model.num_heads={cfg.num_heads} must be positive and divide every entry of channels={channels}."),
            (not cfg.learn_sigma, "config.model.learn_sigma=True: the image-space DiffiT predicts no variance."),
            (cfg.dtype in layers.DTYPES, f"config.model.dtype={cfg.dtype!r} must be one of {tuple(layers.DTYPES)}."),
            (cfg.attention in IMPLEMENTATIONS, f"config.model.attention={cfg.attention!r} must be one of {IMPLEMENTATIONS}."),
            (cfg.mlp_ratio > 0, f"config.model.mlp_ratio={cfg.mlp_ratio} must be positive."),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        for field in ("blocks", "window", "time_width", "in_channels"):
            if int(cfg[field]) <= 0:
                raise ValueError(f"config.model.{field}={cfg[field]} must be positive.")
        check_classes(cfg)

    @staticmethod
    def check_input(cfg, side: int) -> None:
        levels = len(cfg.channels)
        if side % 2 ** (levels - 1):
            raise ValueError(f"{side} px images cannot be halved {levels - 1} times for config.model.channels={tuple(cfg.channels)}.")
        check_windows(cfg, side, tuple(side >> i for i in range(levels)))

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.cfg = cfg = ml_collections.FrozenConfigDict(cfg)
        dtype = layers.DTYPES[cfg.dtype]
        widths = tuple(cfg.channels)
        self.t_embed = layers.TimestepEmbedder(cfg.time_width, rngs=rngs)
        self.class_embed = class_embedding(cfg, cfg.time_width, rngs)
        self.stem = sdvae.Conv(cfg.in_channels, widths[0], 3, cfg, rngs=rngs)
        blocks = lambda first, width: nnx.List([ResBlock(first if i == 0 else width, width, cfg, dtype=dtype, rngs=rngs) for i in range(cfg.blocks)])
        self.down = nnx.List([blocks(widths[max(i - 1, 0)], width) for i, width in enumerate(widths)])
        self.downsample = nnx.List([sdvae.Conv(width, width, 3, cfg, stride=2, rngs=rngs) for width in widths[:-1]])
        self.upsample = nnx.List([sdvae.Conv(widths[i + 1], widths[i + 1], 3, cfg, rngs=rngs) for i in range(len(widths) - 1)])
        self.up = nnx.List([blocks(widths[i + 1] + widths[i], widths[i]) for i in range(len(widths) - 1)])
        self.norm_out = sdvae.group_norm(widths[0], cfg, rngs)
        self.head = sdvae.Conv(widths[0], cfg.in_channels, 3, cfg, rngs=rngs)
        self.head.conv.kernel[...] = jnp.zeros_like(self.head.conv.kernel[...])  # the first output is zero.

    def __call__(self, x: jax.Array, t: jax.Array, context: dict) -> jax.Array:
        """x: noisy images (B, 1, H, W, C); t: (B,) the objective's time; context['label']: (B,),
        read by a class-conditional model alone."""
        cfg = self.cfg
        if x.ndim != 5 or x.shape[1] != 1 or x.shape[-1] != cfg.in_channels:
            raise ValueError(f"DiffiT (image space) takes images (B, 1, H, W, {cfg.in_channels}); got {x.shape}.")
        c = condition(self.t_embed(t), self.class_embed, context)
        h = self.stem(x[:, 0].astype(layers.DTYPES[cfg.dtype]))
        skips = []
        for level, resblocks in enumerate(self.down):
            for block in resblocks:
                h = block(h, c)
            if level < len(self.downsample):
                skips.append(h)
                h = self.downsample[level](h)
        for level in reversed(range(len(self.up))):
            h = self.upsample[level](jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2))
            h = jnp.concatenate([h, skips[level]], axis=-1)
            for block in self.up[level]:
                h = block(h, c)
        out = self.head(nnx.silu(self.norm_out(h)))
        return out[:, None].astype(jnp.float32)
