"""The one attention entry point: every model calls `attention`, the config picks the kernel.

- `xla`: `jax.nn.dot_product_attention`'s XLA path; its gradient is JAX's differentiation of the
  softmax, which keeps the (B, heads, L, S) probabilities for the backward pass.
- `cudnn`: cuDNN's flash attention (NVIDIA GPUs).
- `recompute`: the same softmax attention written out with the heads before the tokens, its
  backward flash attention's (untiled): the probabilities recomputed from the saved log-sum-exp,
  no L x S probabilities kept between the passes. On XLA:CPU the forward and backward of one layer
  take 0.21-0.23 s where `xla` takes 0.30-0.34 s (batch 2, 1,024 tokens, 8 heads over 2 K/V heads of 72),
  and 17-19 ms against 30-31 ms at 256 tokens (BENCHMARKS.md).
- `auto`: `recompute` on CPU; elsewhere JAX's choice (cuDNN on NVIDIA GPUs when it can, else XLA).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "recompute")


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
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"Attention implementation {implementation!r} must be one of {IMPLEMENTATIONS}.")
    if implementation == "recompute" or (implementation == "auto" and jax.default_backend() == "cpu"):
        return _recompute(q, k, v, key_lengths, bias)
    if bias is not None:
        bias = bias[None].astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, key_value_seq_lengths=key_lengths,
                                        implementation=None if implementation == "auto" else implementation)


# The recompute kernel works on queries (B, kv_heads, group, L, D) against keys and values
# (B, kv_heads, S, D), so each product is one batched matmul with no K/V head repeated.
def _group(x, kv_heads):
    """Queries (or their gradient) (B, L, heads, D) -> (B, kv_heads, group, L, D)."""
    b, length, heads, dim = x.shape
    return x.reshape(b, length, kv_heads, heads // kv_heads, dim).transpose(0, 2, 3, 1, 4)


def _ungroup(x):
    """(B, kv_heads, group, L, D) -> (B, L, heads, D)."""
    b, kv_heads, group, length, dim = x.shape
    return x.transpose(0, 3, 1, 2, 4).reshape(b, length, kv_heads * group, dim)


def _probabilities(qg, kg, lengths, bias, lse=None):
    """Softmax probabilities (B, kv_heads, group, L, S) in float32 of the scaled, grouped queries
    against keys (B, kv_heads, S, D), and their log-sum-exp (the normaliser the backward pass
    divides by, given as `lse` there)."""
    logits = jnp.einsum("bkgld,bksd->bkgls", qg, kg, preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32).reshape(qg.shape[1:3] + logits.shape[-2:])
    if lengths is not None:
        padding = jnp.arange(kg.shape[2])[None, :] >= lengths[:, None]  # (B, S)
        logits = jnp.where(padding[:, None, None, None, :], -jnp.inf, logits)
    if lse is None:
        lse = jax.nn.logsumexp(logits, axis=-1)
    return jnp.exp(logits - lse[..., None]), lse


@jax.custom_vjp
def _recompute(q, k, v, lengths, bias):
    return _forward(q, k, v, lengths, bias)[0]


def _forward(q, k, v, lengths, bias):
    # Grouped once here; the backward reads them as saved.
    qg = _group(q * q.shape[-1] ** -0.5, k.shape[2])
    kg, vg = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    p, lse = _probabilities(qg, kg, lengths, bias)
    out = jnp.einsum("bkgls,bksd->bkgld", p.astype(v.dtype), vg, preferred_element_type=jnp.float32)
    return _ungroup(out).astype(q.dtype), (qg, kg, vg, lengths, bias, out, lse)


def _backward(saved, d_out):
    qg, kg, vg, lengths, bias, out, lse = saved
    dg = _group(d_out, kg.shape[1]).astype(jnp.float32)
    p, _ = _probabilities(qg, kg, lengths, bias, lse)
    # dv and dk come out transposed, (B, kv_heads, D, S): the L x S matrices are then the right
    # operands of their products as they lie, where (B, kv_heads, S, D) outputs made XLA:CPU copy
    # each of them to a transposed layout first (BENCHMARKS.md).
    dv = jnp.einsum("bkgld,bkgls->bkds", dg, p)
    dp = jnp.einsum("bkgld,bksd->bkgls", dg, vg, preferred_element_type=jnp.float32)
    # The softmax's backward: dlogits = p * (dp - sum_s p dp), and sum_s p dp = dout . out.
    dlogits = p * (dp - jnp.sum(dg * out, axis=-1)[..., None])
    dq = jnp.einsum("bkgls,bksd->bkgld", dlogits, kg) * qg.shape[-1] ** -0.5
    dk = jnp.einsum("bkgld,bkgls->bkds", qg, dlogits)
    d_bias = None if bias is None else jnp.sum(dlogits, axis=0).reshape(bias.shape).astype(bias.dtype)
    unkv = lambda x: x.transpose(0, 3, 1, 2)  # (B, kv_heads, D, S) -> (B, S, kv_heads, D)
    return (_ungroup(dq).astype(qg.dtype), unkv(dk).astype(kg.dtype), unkv(dv).astype(vg.dtype), None, d_bias)


_recompute.defvjp(_forward, _backward)
