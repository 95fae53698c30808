"""The transformer kit the diffusion transformers share: adaLN modulation (shift, scale, gate from
the conditioning vector) and the stack of identical blocks, scanned over a leading `layers` axis
and rematerialised by config.

A family's block is an nnx.Module called as `block(carry, *args) -> carry`; `stack` builds
`depth` of them with stacked parameters and `run_stack` applies them in order. With
`cfg.scan_layers` the stack is one `jax.lax.scan` (one block compiled, whatever the depth);
`cfg.remat` picks what the backward pass recomputes.
"""

from __future__ import annotations

import re
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from lavin_jax.models import layers
from lavin_jax.models.attention import IMPLEMENTATIONS, attention
from lavin_jax.parallel import constrain

REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole block in the backward pass.
    # keep the projections' and MLP's products, recompute attention (its products are batched).
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def compute_fields(c):
    """Adds to a family's config section the fields that say how its transformer computes."""
    c.norm_eps = 1e-6
    c.dtype = "bfloat16"  # compute dtype; parameters stay float32.
    c.attention = "auto"  # of attention.IMPLEMENTATIONS
    c.scan_layers = True
    c.remat = "none"  # none | full | dots (save matmul outputs only)
    return c


def check_fields(cfg, positive: tuple[str, ...], choices: tuple = ()) -> None:
    """Raises ValueError, one sentence naming the field, for compute fields or `choices`
    ((field, allowed), ...) outside what they allow, `positive` fields that are not, or a width
    the heads do not divide."""
    compute = (("dtype", tuple(layers.DTYPES)), ("attention", IMPLEMENTATIONS), ("remat", ("none", *REMAT_POLICIES)))
    for field, allowed in (*compute, *choices):
        if cfg[field] not in allowed:
            raise ValueError(f"config.model.{field}={cfg[field]!r} must be one of {allowed}.")
    for field in ("hidden", "depth", "num_heads", *positive):
        if int(cfg[field]) <= 0:
            raise ValueError(f"config.model.{field}={cfg[field]} must be positive.")
    if cfg.hidden % cfg.num_heads:
        raise ValueError(f"config.model.hidden={cfg.hidden} is not divisible by config.model.num_heads={cfg.num_heads}.")


def variant(family: str, name: str, sizes: dict[str, tuple[int, int, int]], patches: tuple[int, ...]) -> dict:
    """{'hidden', 'depth', 'num_heads', 'patch_size'} of a variant string such as 'XL/2': a size
    of `sizes` ((hidden, depth, heads) by name) and a patch of `patches`."""
    match = re.fullmatch(r"([A-Za-z]+)/(\d+)", name)
    if not match or match[1] not in sizes or int(match[2]) not in patches:
        known = ", ".join(f"{size}/{patch}" for size in sizes for patch in patches)
        raise ValueError(f"{family} variant {name!r} is unknown; known variants: {known}.")
    hidden, depth, heads = sizes[match[1]]
    return {"hidden": hidden, "depth": depth, "num_heads": heads, "patch_size": int(match[2])}


def self_attention(layer: nnx.Module, h: jax.Array, context: jax.Array | None = None, lengths: jax.Array | None = None) -> jax.Array:
    """Multi-head attention of the tokens of h, (B, L, D), over themselves or over `context`
    (B, S, D) (cross-attention), by `layer`'s q, k, v and out projections (its `head_dim` and
    `attention_impl` say how); `lengths` (B,): the keys past them are padding."""
    heads = lambda x: constrain(x.reshape(*x.shape[:2], -1, layer.head_dim), "batch", "length", "act_heads", None)
    keys = h if context is None else context
    out = attention(heads(layer.q(h)), heads(layer.k(keys)), heads(layer.v(keys)), layer.attention_impl, lengths)
    return layer.out(out.reshape(*out.shape[:2], -1))


class TemporalAttention(nnx.Module):
    """Self-attention over the frames of each spatial token, outside adaLN (VDT's, after
    TimeSformer): x + fc(attention(LN(x))) for tokens (B, T, N, D). The LayerNorm is affine
    (eps 1e-5) and the attention has its own output projection before `fc`, as VDT's code has
    them. `zero_fc` starts `fc` at zero, so the block starts as the identity over time (GenTron
    grows a text-to-image model into a video one so); VDT initialises it like any projection.
    `alone` (B,) bool marks examples whose frames each attend to themselves only (GenTron's
    motion-free mask, the identity): a softmax over one key is 1, so their attention is the
    projected values. `positions` (T, D), added to the normalised tokens, tells the attention
    which frame is which without touching the residual stream (GenTron's, whose image model
    must stay as it was at the start)."""

    def __init__(self, hidden: int, num_heads: int, attention_impl: str, *, zero_fc: bool, dtype, rngs: nnx.Rngs):
        self.head_dim = hidden // num_heads
        self.attention_impl = attention_impl
        self.norm = nnx.LayerNorm(
            hidden, epsilon=1e-5, dtype=dtype, rngs=rngs,
            scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("embed",)),
            bias_init=nnx.with_partitioning(layers.zeros, ("embed",)),
        )
        self.q, self.k, self.v = (layers.dense(hidden, hidden, ("embed", "heads"), dtype=dtype, rngs=rngs) for _ in range(3))
        self.out = layers.dense(hidden, hidden, ("heads", "embed"), dtype=dtype, rngs=rngs)
        self.fc = layers.dense(hidden, hidden, ("embed", "mlp"), zero_init=zero_fc, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, alone: jax.Array | None = None, positions: jax.Array | None = None) -> jax.Array:
        b, t, n, d = x.shape
        over_time = self.norm(x.transpose(0, 2, 1, 3).reshape(b * n, t, d))
        if positions is not None:
            over_time = over_time + positions.astype(over_time.dtype)
        h = self_attention(self, over_time)
        if alone is not None:
            h = jnp.where(jnp.repeat(alone, n)[:, None, None], self.out(self.v(over_time)), h)
        return x + self.fc(h.reshape(b, n, t, d).transpose(0, 2, 1, 3))


def adaln(hidden: int, parts: int, *, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """The projection from the conditioning vector to `parts` modulations of width `hidden`,
    zero-initialised (adaLN-Zero): every gate starts at zero, so every block starts as the
    identity and the model's first output is the final layer's zero."""
    return layers.dense(hidden, parts * hidden, ("embed", "mlp"), zero_init=True, dtype=dtype, rngs=rngs)


def modulations(projection: nnx.Linear, c: jax.Array, parts: int) -> list[jax.Array]:
    """The `parts` modulations (each (B, D)) of the conditioning vector c, (B, D)."""
    return jnp.split(projection(nnx.silu(c)), parts, axis=-1)


def modulate(x: jax.Array, scale: jax.Array, shift: jax.Array | None = None) -> jax.Array:
    """x * (1 + scale) + shift per example; tokens x are (B, L, D), scale and shift (B, D).
    LaVin-DiT's AdaRN modulates by scale alone."""
    x = x * (1 + scale[:, None, :])
    return x if shift is None else x + shift[:, None, :]


def stack(make_block: Callable[[nnx.Rngs], nnx.Module], depth: int, rngs: nnx.Rngs) -> nnx.Module:
    """`depth` blocks from `make_block`, their parameters stacked on a leading `layers` axis."""

    @nnx.split_rngs(splits=depth)
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def build(rngs):
        return make_block(rngs)

    return build(rngs)


def run_stack(blocks: nnx.Module, carry, *args, cfg):
    """Applies the stacked `blocks` to `carry` in order, each also given `args`; `cfg` (the model
    config) gives depth, scan_layers and remat."""
    graphdef, params = nnx.split(blocks)

    def block(carry, layer_params):
        return nnx.merge(graphdef, layer_params)(carry, *args), None

    if cfg.remat != "none":
        block = jax.checkpoint(block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
        return jax.lax.scan(block, carry, params)[0]
    for i in range(cfg.depth):
        carry, _ = block(carry, jax.tree.map(lambda a: a[i], params))
    return carry
