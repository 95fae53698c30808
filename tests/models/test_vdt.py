import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lavin_jax import models
from lavin_jax.models import transformer, vdt
from conftest import randomized


def small(**fields):
    cfg = models.default_config("vdt")
    cfg.update(hidden=48, depth=2, num_heads=4, patch_size=2, in_channels=3, dtype="float32", attention="xla")
    cfg.update(fields)
    return cfg


def clip(batch=2, frames=4, size=8, seed=1):
    return jax.random.normal(jax.random.key(seed), (batch, frames, size, size, 3))


def compiled(model):
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda state, x, t: nnx.merge(graphdef, state)(x, t, {}))
    return lambda x, t: run(state, x, t)


def test_the_released_variants_have_the_official_parameter_counts():
    """VDT-L/2 and S/2 as RERV/VDT's models.py builds them (859,704,224 and 41,361,056 trainable
    parameters, counted with the official code) less its always-zero class's embedding table
    (2 x hidden), which ours folds into the timestep embedder's last bias."""
    for name, official in (("L/2", 859_704_224), ("S/2", 41_361_056)):
        cfg = models.default_config("vdt")
        cfg.update(vdt.variant(name))
        params = nnx.state(nnx.eval_shape(lambda: models.build(cfg, nnx.Rngs(0))), nnx.Param)
        assert sum(x.size for x in jax.tree.leaves(params)) == official - 2 * cfg.hidden
    with pytest.raises(ValueError, match=r"VDT variant 'XL/2' is unknown; known variants: S/1, S/2"):
        vdt.variant("XL/2")


def test_a_new_model_outputs_zero_and_learn_sigma_doubles_the_channels():
    x, t = clip(), jnp.array([3.0, 700.0])
    out = compiled(models.build(small(), nnx.Rngs(0)))(x, t)
    assert out.shape == (2, 4, 8, 8, 6) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, 0.0)
    assert compiled(models.build(small(learn_sigma=False), nnx.Rngs(0)))(x, t).shape == x.shape


def test_time_mixes_frames_only_through_the_temporal_attention():
    """Changing frame 0 changes every frame's output through the temporal attention; with its
    output projection at zero, attention runs within frames and the other frames do not move."""
    model = randomized(lambda: models.build(small(), nnx.Rngs(0)))
    x, t = clip(), jnp.array([3.0, 700.0])
    changed = x.at[:, 0].add(1.0)
    run = compiled(model)
    moved = jnp.abs(run(changed, t) - run(x, t)).max(axis=(0, 2, 3, 4))
    assert np.all(moved > 1e-3), moved
    blocks = model.blocks.temporal.fc
    blocks.kernel[...] = jnp.zeros_like(blocks.kernel[...])
    blocks.bias[...] = jnp.zeros_like(blocks.bias[...])
    run = compiled(model)
    moved = jnp.abs(run(changed, t) - run(x, t)).max(axis=(0, 2, 3, 4))
    assert moved[0] > 1e-3 and np.all(moved[1:] < 1e-6), moved


def test_the_output_does_not_depend_on_the_batch_or_on_scanning():
    model = randomized(lambda: models.build(small(), nnx.Rngs(0)))
    x, t = clip(batch=3), jnp.array([1.0, 500.0, 999.0])
    together = compiled(model)(x, t)
    alone = compiled(model)(x[1:2], t[1:2])
    np.testing.assert_allclose(alone, together[1:2], atol=1e-5)
    unrolled = randomized(lambda: models.build(small(scan_layers=False), nnx.Rngs(0)))
    np.testing.assert_allclose(compiled(unrolled)(x, t), together, atol=1e-5)


def test_a_zero_fc_temporal_attention_starts_as_the_identity():
    """GenTron grows an image model into a video one through this zero start."""
    layer = transformer.TemporalAttention(16, 2, "xla", zero_fc=True, dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 3, 5, 16))
    np.testing.assert_array_equal(layer(x), x)


def test_clips_of_the_wrong_shape_are_named():
    run = compiled(models.build(small(), nnx.Rngs(0)))
    for shape in ((2, 4, 9, 8, 3), (2, 4, 8, 8, 4), (2, 8, 8, 3)):
        with pytest.raises(ValueError, match=r"VDT takes clips \(B, T, H, W, 3\) with H and W divisible by patch_size=2"):
            run(jnp.zeros(shape), jnp.zeros((2,)))
