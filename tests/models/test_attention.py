import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lavin_jax.models.attention import attention


def reference(q, k, v):
    """Plain multi-head softmax attention, scale head_dim**-0.5."""
    scores = jnp.einsum("blhd,bshd->bhls", q, k) / np.sqrt(q.shape[-1])
    return jnp.einsum("bhls,bshd->blhd", jax.nn.softmax(scores, axis=-1), v)


def test_grouped_query_equals_multi_head_with_repeated_kv():
    heads, kv_heads = 8, 2
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(kq, (2, 10, heads, 12))
    k = jax.random.normal(kk, (2, 7, kv_heads, 12))
    v = jax.random.normal(kv, (2, 7, kv_heads, 12))
    grouped = attention(q, k, v, "xla")
    # Query head i reads K/V head i // (heads // kv_heads): each K/V head repeated in place.
    repeat = lambda x: jnp.repeat(x, heads // kv_heads, axis=2)
    np.testing.assert_allclose(grouped, reference(q, repeat(k), repeat(v)), atol=1e-5)
    # Tiling instead of repeating is a different model: the test can tell them apart.
    tile = lambda x: jnp.tile(x, (1, 1, heads // kv_heads, 1))
    assert not np.allclose(grouped, reference(q, tile(k), tile(v)), atol=1e-3)


def _inputs(dtype=jnp.float32):
    kq, kk, kv, kb = jax.random.split(jax.random.key(1), 4)
    q = jax.random.normal(kq, (3, 10, 8, 12), dtype)
    k = jax.random.normal(kk, (3, 7, 2, 12), dtype)
    v = jax.random.normal(kv, (3, 7, 2, 12), dtype)
    bias = jax.random.normal(kb, (8, 10, 7))
    return q, k, v, bias


def test_recompute_matches_xla_in_values_and_gradients():
    """The hand-written backward (probabilities recomputed from the log-sum-exp) against JAX's
    differentiation of the XLA path, with grouped K/V heads, padded keys and a bias."""
    q, k, v, bias = _inputs()
    lengths = jnp.array([7, 3, 1])
    cotangent = jax.random.normal(jax.random.key(2), q.shape)

    def run(implementation):
        loss = lambda q, k, v, bias: jnp.sum(attention(q, k, v, implementation, lengths, bias) * cotangent)
        return attention(q, k, v, implementation, lengths, bias), jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, bias)

    (out, grads), (want, want_grads) = run("recompute"), run("xla")
    np.testing.assert_allclose(out, want, atol=1e-5)
    for name, got, expected in zip(("q", "k", "v", "bias"), grads, want_grads):
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=name)
    # The padded keys are never read: nothing of them reaches the output, nor any gradient back.
    assert float(jnp.abs(grads[1][1, 3:]).max()) == 0.0 and float(jnp.abs(grads[2][2, 1:]).max()) == 0.0


def test_recompute_keeps_the_input_dtype_and_a_float32_softmax():
    q, k, v, _ = _inputs(jnp.bfloat16)
    out = attention(q, k, v, "recompute")
    assert out.dtype == jnp.bfloat16
    want = attention(*(x.astype(jnp.float32) for x in (q, k, v)), "xla")
    np.testing.assert_allclose(out.astype(jnp.float32), want, atol=3e-2)
    grads = jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v, "recompute").astype(jnp.float32)), argnums=(0, 1, 2))(q, k, v)
    assert [g.dtype for g in grads] == [jnp.bfloat16] * 3


def test_auto_takes_the_recompute_kernel_on_cpu_and_a_wrong_name_is_refused():
    q, k, v, _ = _inputs()
    assert jax.default_backend() == "cpu"
    traced = lambda implementation: str(jax.make_jaxpr(lambda q, k, v: attention(q, k, v, implementation))(q, k, v))
    assert "custom_vjp_call" in traced("auto") and "custom_vjp_call" not in traced("xla")
    with pytest.raises(ValueError, match="'flash' must be one of"):
        attention(q, k, v, "flash")
