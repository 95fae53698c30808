import jax
import jax.numpy as jnp
import numpy as np

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
