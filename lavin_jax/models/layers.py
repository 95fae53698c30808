"""Layers shared by the diffusion transformers: projections with logical axes, norms, SwiGLU,
timestep embedding, patchify, and 2D sin-cos and 3D rotary position embeddings."""

from __future__ import annotations

import math

import einops
import jax
import jax.numpy as jnp
from flax import nnx

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # config.model.dtype -> compute dtype

xavier = nnx.initializers.xavier_uniform()
zeros = nnx.initializers.zeros_init()


class Dense(nnx.Linear):
    """nnx.Linear applied to its input's leading axes flattened into one, (..., in) as (N, in).
    XLA:CPU differentiates a product over (B, L, in) by copying the output's gradient to a
    transposed layout for the weight's gradient; over (N, in) it does not: SwiGLU's forward and
    backward at (2, 768, 576) -> 1536 take 142 ms against 221 ms (BENCHMARKS.md)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return super().__call__(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


def dense(
    in_features: int,
    out_features: int,
    axes: tuple[str | None, str | None],
    *,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
    use_bias: bool = True,
    zero_init: bool = False,
) -> nnx.Linear:
    """A Linear whose kernel carries logical axis names; xavier-uniform or zero, bias zero."""
    return Dense(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nnx.with_partitioning(zeros if zero_init else xavier, axes),
        bias_init=nnx.with_partitioning(zeros, axes[1:]),
        rngs=rngs,
    )


def rms_norm(x: jax.Array, eps: float) -> jax.Array:
    """RMSNorm without a scale, computed in float32 and returned in the input dtype."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return normed.astype(x.dtype)


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
    """LayerNorm without scale or bias (adaLN supplies both), computed in float32."""
    x32 = x.astype(jnp.float32)
    centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    normed = centred * jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + eps)
    return normed.astype(x.dtype)


class RMSNorm(nnx.Module):
    """RMSNorm with a learned scale (used for QK-norm over the whole projected width)."""

    def __init__(self, features: int, axis_name: str, *, eps: float):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((features,), jnp.float32), out_sharding=(axis_name,))

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x, self.eps) * self.scale[...].astype(x.dtype)


def swiglu_hidden(hidden: int) -> int:
    """LaVin-DiT's SwiGLU width: two thirds of 4*D, rounded down to a multiple of 64."""
    return int(4 * hidden * 2 / 3 / 64) * 64


class SwiGLU(nnx.Module):
    def __init__(self, features: int, hidden: int, *, dtype, rngs: nnx.Rngs):
        self.gate = dense(features, hidden, ("embed", "mlp"), use_bias=False, dtype=dtype, rngs=rngs)
        self.up = dense(features, hidden, ("embed", "mlp"), use_bias=False, dtype=dtype, rngs=rngs)
        self.down = dense(hidden, features, ("mlp", "embed"), use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(nnx.silu(self.gate(x)) * self.up(x))


def timestep_frequencies(t: jax.Array, dim: int = 256, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal features of t in [0, 1] (not scaled to 1000, as in LaVin-DiT), cos first."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = t.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class TimestepEmbedder(nnx.Module):
    def __init__(self, hidden: int, *, rngs: nnx.Rngs, freq_dim: int = 256):
        self.freq_dim = freq_dim
        init = nnx.initializers.normal(0.02)
        self.fc1 = nnx.Linear(
            freq_dim, hidden, rngs=rngs,
            kernel_init=nnx.with_partitioning(init, (None, "embed")),
            bias_init=nnx.with_partitioning(zeros, ("embed",)),
        )
        self.fc2 = nnx.Linear(
            hidden, hidden, rngs=rngs,
            kernel_init=nnx.with_partitioning(init, (None, "embed")),
            bias_init=nnx.with_partitioning(zeros, ("embed",)),
        )

    def __call__(self, t: jax.Array) -> jax.Array:
        return self.fc2(nnx.silu(self.fc1(timestep_frequencies(t, self.freq_dim))))


def patchify(x: jax.Array, p: int) -> jax.Array:
    """(B, T, H, W, C) -> (B, T*h*w, p*p*C); a token's features run over rows, columns, channels."""
    return einops.rearrange(x, "b t (h p) (w q) c -> b (t h w) (p q c)", p=p, q=p)


def unpatchify(tokens: jax.Array, p: int, t: int, h: int, w: int) -> jax.Array:
    """The inverse of `patchify`, for a grid of t x h x w patches."""
    return einops.rearrange(tokens, "b (t h w) (p q c) -> b t (h p) (w q) c", t=t, h=h, w=w, p=p, q=p)


class PatchEmbed(nnx.Module):
    """Patchify, Linear to the model width, LayerNorm (affine, eps 1e-5) as in LaVin-DiT."""

    def __init__(self, patch: int, channels: int, hidden: int, *, dtype, rngs: nnx.Rngs):
        self.patch = patch
        self.proj = dense(patch * patch * channels, hidden, ("patch", "embed"), dtype=dtype, rngs=rngs)
        self.norm = nnx.LayerNorm(
            hidden, epsilon=1e-5, dtype=dtype, rngs=rngs,
            scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("embed",)),
            bias_init=nnx.with_partitioning(zeros, ("embed",)),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(self.proj(patchify(x, self.patch)))


def posemb_sincos_1d(positions: jax.Array, dim: int, base: float = 10_000.0) -> jax.Array:
    """Fixed sin-cos embedding of `positions` (N,), (N, dim): sines then cosines of
    positions * base**(-i/(dim/2)), MAE's 1D table (VDT's frames use it as it is)."""
    if dim % 2:
        raise ValueError(f"A sin-cos embedding needs an even width, not {dim}.")
    omega = 1.0 / base ** (jnp.arange(dim // 2, dtype=jnp.float32) / (dim // 2))
    angles = positions.astype(jnp.float32).reshape(-1)[:, None] * omega[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)


def posemb_sincos_2d(height: int, width: int, dim: int, base: float = 10_000.0, *, column_first: bool = True) -> jax.Array:
    """Fixed 2D sin-cos position embedding, (height*width, dim), tokens row by row: the first
    half of the features is the 1D table of the column, the second of the row (as DiT's, from
    MAE, whose meshgrid lists the column first, and big_vision's); `column_first=False` swaps the
    halves. The released DiT files hold the column-first table (`pos_embed`); the converter
    checks theirs against it."""
    if dim % 4:
        raise ValueError(f"A 2D sin-cos embedding needs a width divisible by 4, not {dim}.")
    y, x = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij")
    return jnp.concatenate([posemb_sincos_1d(pos, dim // 2, base) for pos in ((x, y) if column_first else (y, x))], axis=1)


def rope_3d(grid: tuple[int, int, int], head_dim: int, base: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin tables, (T*H*W, head_dim), for 3D rotary embedding over a (T, H, W) token grid.

    The head dimension is cut into three equal parts rotated by the t, h and w positions; each part
    uses the rotate-half layout with frequencies base**(-2i/part).
    """
    part = head_dim // 3
    inv_freq = 1.0 / base ** (jnp.arange(0, part, 2, dtype=jnp.float32) / part)
    positions = jnp.stack(
        jnp.meshgrid(*(jnp.arange(n, dtype=jnp.float32) for n in grid), indexing="ij"), axis=-1
    ).reshape(-1, 3)
    angles = positions[:, :, None] * inv_freq  # (L, 3, part/2)
    angles = jnp.concatenate([angles, angles], axis=-1).reshape(positions.shape[0], 3 * part)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates x, (B, L, heads, head_dim), by the (L, head_dim) tables of `rope_3d`."""
    parts = x.reshape(*x.shape[:-1], 3, 2, x.shape[-1] // 6)
    rotated = jnp.stack([-parts[..., 1, :], parts[..., 0, :]], axis=-2).reshape(x.shape)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)
