"""The one attention entry point: every model calls `attention`, the config picks the kernel."""

from __future__ import annotations

import jax

IMPLEMENTATIONS = {
    "auto": None,  # JAX picks cuDNN flash attention on NVIDIA GPUs when it can, else XLA.
    "xla": "xla",
    "cudnn": "cudnn",
}


def attention(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str = "auto", key_lengths: jax.Array | None = None,
              bias: jax.Array | None = None) -> jax.Array:
    """Non-causal softmax attention with grouped-query heads handled natively.

    q: (B, L, heads, head_dim); k, v: (B, S, kv_heads, head_dim) with heads a multiple of
    kv_heads, query head i reading K/V head i // (heads // kv_heads). Scale head_dim**-0.5;
    the softmax runs in float32 whatever the input dtype. `key_lengths` (B,) int, at least 1:
    each example's keys past its length are padding, never attended to (text; both kernels take
    lengths, where a mask would keep cuDNN's flash kernel away). `bias` (heads, L, S), added to
    the scaled logits of every example: DiffiT's relative position bias.
    """
    if bias is not None:
        bias = bias[None].astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, key_value_seq_lengths=key_lengths, implementation=IMPLEMENTATIONS[implementation])
