import jax
import jax.numpy as jnp
import numpy as np

from lavin_jax.models import tiling


def test_tiling_geometry_is_exact_for_local_maps():
    """Blending is a partition of unity: a map with no spatial context (identity, or 8x8 average
    pooling in place of the encoder) is reproduced exactly however the plane is tiled; time chunks
    of a causal frame-picking map concatenate to the untiled frames."""
    x = jax.random.normal(jax.random.key(0), (1, 5, 48, 40, 2))
    identity = lambda v: v
    for tile, overlap in [(16, 8), (20, 12), (32, 4), (8, 0)]:
        out = tiling.tiled_apply(identity, x, tile=tile, overlap=overlap, frames=None, in_unit=1, out_unit=1)
        np.testing.assert_allclose(out, x, atol=1e-6)
    pool = lambda v: v.reshape(*v.shape[:2], v.shape[2] // 8, 8, v.shape[3] // 8, 8, v.shape[4]).mean((3, 5))
    out = tiling.tiled_apply(pool, x, tile=24, overlap=16, frames=None, in_unit=8, out_unit=1)
    np.testing.assert_allclose(out, pool(x), atol=1e-6)
    upsample = lambda v: jnp.repeat(jnp.repeat(v, 8, 2), 8, 3)
    z = x[:, :, :6, :5]
    out = tiling.tiled_apply(upsample, z, tile=4, overlap=2, frames=None, in_unit=1, out_unit=8)
    np.testing.assert_allclose(out, upsample(z), atol=1e-6)
    # 1 + 4k frames -> 1 + k (frames 0, 4, 8, ...): chunks sharing a boundary frame reassemble it.
    clip13 = jax.random.normal(jax.random.key(1), (1, 13, 8, 8, 1))
    out = tiling.tiled_apply(lambda v: v[:, ::4], clip13, tile=8, overlap=0, frames=5, in_unit=1, out_unit=1)
    np.testing.assert_array_equal(out, clip13[:, ::4])


def test_time_chunks_follow_official_semantics():
    """Official `tiled_encode`/`tiled_decode`: chunks of `frames` start every frames - 1, so each
    begins on the previous chunk's last frame; the tail chunk is shorter."""
    assert tiling.time_chunks(9, None) == [(0, 9)]
    assert tiling.time_chunks(5, 5) == [(0, 5)]
    assert tiling.time_chunks(9, 5) == [(0, 5), (4, 9)]
    assert tiling.time_chunks(13, 9) == [(0, 9), (8, 13)]
    assert tiling.time_chunks(11, 5) == [(0, 5), (4, 9), (8, 11)]  # latent frames for decode.
    assert tiling.time_chunks(257, 129) == [(0, 129), (128, 257)]  # official 129-frame tiles.
