import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lavin_jax.models import layers


def test_rope_3d_is_relative():
    """Scores depend only on position differences: shifting both tokens by the same (t, h, w)
    offset leaves q.k unchanged, while a different offset changes it."""
    grid, head_dim = (5, 4, 6), 24
    cos, sin = layers.rope_3d(grid, head_dim, base=10_000.0)
    index = lambda t, h, w: (t * grid[1] + h) * grid[2] + w
    q, k = jax.random.normal(jax.random.key(0), (2, 1, 1, 1, head_dim))

    def score(pos_q, pos_k):
        rq = layers.apply_rope(q, cos[index(*pos_q)][None], sin[index(*pos_q)][None])
        rk = layers.apply_rope(k, cos[index(*pos_k)][None], sin[index(*pos_k)][None])
        return float(jnp.sum(rq * rk))

    base = score((0, 1, 2), (2, 0, 4))
    np.testing.assert_allclose(score((2, 3, 3), (4, 2, 5)), base, rtol=1e-5)  # shift (2, 2, 1)
    np.testing.assert_allclose(score((1, 1, 0), (3, 0, 2)), base, rtol=1e-5)  # shift (1, 0, -2)
    assert abs(score((0, 1, 2), (3, 0, 4)) - base) > 1e-3


def test_rope_uses_the_rotate_half_layout():
    """Within each axis' part, element i pairs with element i + part/2 (not with its neighbour)."""
    head_dim, part = 12, 4
    cos, sin = layers.rope_3d((3, 1, 1), head_dim, base=10_000.0)
    x = jax.random.normal(jax.random.key(3), (1, 1, 1, head_dim))
    moved = np.asarray(layers.apply_rope(x, cos[2:3], sin[2:3]))[0, 0, 0]
    x = np.asarray(x)[0, 0, 0]
    for i in range(part // 2):  # the t part: position 2, frequency 10000**(-2i/part)
        angle = 2 * 10_000.0 ** (-2 * i / part)
        a, b = x[i], x[i + part // 2]
        np.testing.assert_allclose(moved[i], a * np.cos(angle) - b * np.sin(angle), rtol=1e-5, atol=1e-7)  # float32
        np.testing.assert_allclose(moved[i + part // 2], b * np.cos(angle) + a * np.sin(angle), rtol=1e-5, atol=1e-7)


def test_rope_rotates_each_axis_part_separately():
    """A move along w only rotates the last third of the head dimension."""
    cos, sin = layers.rope_3d((1, 1, 3), 12, base=10_000.0)
    x = jnp.ones((1, 1, 1, 12))
    moved = layers.apply_rope(x, cos[2:3], sin[2:3])
    np.testing.assert_allclose(moved[..., :8], x[..., :8])
    assert not np.allclose(moved[..., 8:], x[..., 8:])


def test_patchify_round_trip_and_token_order():
    x = jax.random.normal(jax.random.key(1), (2, 3, 8, 12, 5))
    tokens = layers.patchify(x, 2)
    assert tokens.shape == (2, 3 * 4 * 6, 2 * 2 * 5)
    np.testing.assert_array_equal(layers.unpatchify(tokens, 2, 3, 4, 6), x)
    # The second token is frame 0, patch row 0, patch column 1; features run rows, columns, channels.
    np.testing.assert_array_equal(tokens[0, 1], x[0, 0, 0:2, 2:4, :].reshape(-1))


def test_timestep_frequencies_cos_first_over_raw_t():
    """LaVin-DiT feeds t in [0, 1] unscaled: frequencies 10000**(-i/half), cosines first."""
    t = 0.37
    emb = layers.timestep_frequencies(jnp.array([t]), dim=8)
    freqs = 10_000.0 ** (-np.arange(4) / 4)
    np.testing.assert_allclose(emb[0], np.concatenate([np.cos(t * freqs), np.sin(t * freqs)]), rtol=1e-6)


@pytest.mark.parametrize("hidden,expected", [(2304, 6144), (1152, 3072), (96, 256)])
def test_swiglu_width(hidden, expected):
    assert layers.swiglu_hidden(hidden) == expected


def test_rms_norm_unit_rms():
    x = jax.random.normal(jax.random.key(2), (4, 16)) * 7.0
    y = layers.rms_norm(x, 1e-6)
    np.testing.assert_allclose(jnp.sqrt(jnp.mean(y**2, axis=-1)), 1.0, rtol=1e-4)


def test_the_sincos_table_is_dit_s_column_first_and_swaps_halves_on_request():
    """DiT's (MAE's) table: the first half of the features from the column, the second from the
    row; J-DiT's tiny recipe keeps the row's half first (`column_first=False`)."""
    table = np.asarray(layers.posemb_sincos_2d(3, 4, 8))
    column = np.tile(np.arange(4.0), 3)[:, None] / 10_000 ** (np.arange(2) / 2)
    np.testing.assert_allclose(table[:, :4], np.concatenate([np.sin(column), np.cos(column)], 1), atol=1e-6)
    swapped = np.asarray(layers.posemb_sincos_2d(3, 4, 8, column_first=False))
    np.testing.assert_array_equal(swapped, np.concatenate([table[:, 4:], table[:, :4]], 1))
