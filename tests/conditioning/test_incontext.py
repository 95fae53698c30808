import jax
import numpy as np

from lavin_jax.conditioning import incontext

null = incontext.InContext(config=None).null  # it reads nothing of the config.


def test_unconditional_drops_the_pairs_and_keeps_the_query():
    cond = jax.random.normal(jax.random.key(6), (2, 5, 4, 4, 3))
    uncond = null({"cond": cond}, 1)["cond"]
    assert uncond.shape == (2, 2, 4, 4, 3)
    np.testing.assert_array_equal(uncond[:, 0], 0.0)
    np.testing.assert_array_equal(uncond[:, 1], cond[:, -1])


def test_unconditional_keeps_a_whole_video_query():
    cond = jax.random.normal(jax.random.key(6), (2, 9, 4, 4, 3))  # K=1 pair of 3-frame clips + query
    uncond = null({"cond": cond}, 3)["cond"]
    assert uncond.shape == (2, 6, 4, 4, 3)
    np.testing.assert_array_equal(uncond[:, :3], 0.0)
    np.testing.assert_array_equal(uncond[:, 3:], cond[:, -3:])
