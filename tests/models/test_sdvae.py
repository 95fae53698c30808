import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lavin_jax import config as config_lib
from lavin_jax.models import sdvae
from conftest import logical_axis_names, randomized

SIZE = 32  # pixels per side: 4x4 latents.


@pytest.fixture(scope="module")
def model():
    scale = lambda shape: 0.2 if len(shape) == 1 else 1.0 / math.sqrt(math.prod(shape[:-1]))
    return randomized(lambda: sdvae.SDVAE(sdvae.tiny_config(), rngs=nnx.Rngs(0)), 0, scale)


def run(model, method, *args, **kwargs):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, *a: getattr(nnx.merge(graphdef, s), method)(*a, **kwargs))(state, *args)


def images(batch=2, frames=1, size=SIZE, seed=1):
    return jax.random.uniform(jax.random.key(seed), (batch, frames, size, size, 3), minval=-1.0, maxval=1.0)


def test_the_released_size_has_the_released_parameter_count():
    """diffusers' AutoencoderKL of sd-vae-ft-ema: 34,163,592 encoder + 49,490,179 decoder + the
    two quant convs' 72 + 20."""
    abstract = nnx.eval_shape(lambda: sdvae.SDVAE(sdvae.default_config(), rngs=nnx.Rngs(0)))
    count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
    params = nnx.state(abstract, nnx.Param).to_pure_dict()
    assert count(params) == 83_653_863
    assert count(params["encoder"]["quant"]) == 72 and count(params["decoder"]["post_quant"]) == 20


def test_frames_are_encoded_and_decoded_each_alone(model):
    x = images(batch=1, frames=3)
    posterior = run(model, "encode", x)
    assert posterior.mean.shape == posterior.logvar.shape == (1, 3, SIZE // 8, SIZE // 8, 4)
    alone = run(model, "encode", x[:, 1:2])
    np.testing.assert_allclose(posterior.mean[:, 1:2], alone.mean, atol=1e-5)
    pixels = run(model, "decode", posterior.mean)
    assert pixels.shape == x.shape
    np.testing.assert_allclose(pixels[:, 2:], run(model, "decode", posterior.mean[:, 2:]), atol=1e-5)


def test_the_mid_attention_is_one_head_over_every_position(model):
    """Against numpy: softmax(q k^T / sqrt(C)) v of the GroupNorm'd features, projected, plus x."""
    attention = model.decoder.mid.attention
    x = np.asarray(jax.random.normal(jax.random.key(2), (1, 3, 5, 32)))
    graphdef, state = nnx.split(attention)
    ours = np.asarray(jax.jit(lambda s, v: nnx.merge(graphdef, s)(v))(state, x))
    groups, eps = model.decoder.mid.attention.norm.num_groups, 1e-6
    g = x.reshape(1, 15, groups, 32 // groups)
    normed = ((g - g.mean(axis=(1, 3), keepdims=True)) / np.sqrt(g.var(axis=(1, 3), keepdims=True) + eps)).reshape(1, 15, 32)
    normed = normed * np.asarray(attention.norm.scale[...]) + np.asarray(attention.norm.bias[...])
    dense = lambda layer, v: v @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...])
    q, k, v = (dense(layer, normed) for layer in (attention.q, attention.k, attention.v))
    logits = q @ k.transpose(0, 2, 1) / np.sqrt(32)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected = x + dense(attention.out, weights @ v).reshape(x.shape)
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_tiles_that_cover_the_image_give_the_untiled_result(model):
    x = images(batch=1)
    whole = run(model, "encode", x)
    tiled = run(model, "tiled_encode", x, tile=SIZE, overlap=8)
    np.testing.assert_allclose(tiled.mean, whole.mean, atol=1e-5)
    np.testing.assert_allclose(run(model, "tiled_decode", whole.mean, tile=4, overlap=1), run(model, "decode", whole.mean), atol=1e-5)
    # Smaller tiles differ only near their seams (each tile's GroupNorm and attention see the tile).
    assert run(model, "tiled_decode", whole.mean, tile=2, overlap=1).shape == x.shape
    with pytest.raises(ValueError, match=r"tiled_encode tile=12 must be a positive multiple of 8"):
        run(model, "tiled_encode", x, tile=12, overlap=8)


def test_bfloat16_compute_keeps_float32_parameters_and_stays_close(model):
    cfg = sdvae.tiny_config()
    cfg.dtype = "bfloat16"
    graphdef, state = nnx.split(model)
    half = nnx.merge(nnx.split(nnx.eval_shape(lambda: sdvae.SDVAE(cfg, rngs=nnx.Rngs(0))))[0], state)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(half, nnx.Param)))
    x = images(batch=1)
    full, low = run(model, "encode", x).mean, run(half, "encode", x).mean
    assert low.dtype == jnp.bfloat16
    assert float(jnp.abs(low.astype(jnp.float32) - full).max()) < 0.05 * float(jnp.abs(full).max())


def test_every_parameter_has_logical_axes_the_default_rules_map():
    names = logical_axis_names(lambda: sdvae.SDVAE(sdvae.tiny_config(), rngs=nnx.Rngs(0)))
    mapped = {name for name, _ in config_lib.base("sdvae").mesh.rules}
    assert names <= mapped, names - mapped


def test_an_input_the_encoder_cannot_halve_is_named(model):
    with pytest.raises(ValueError, match=r"SD VAE input of shape \(1, 1, 20, 20, 3\) needs H and W divisible by 8"):
        run(model, "encode", images(batch=1, size=20))


@pytest.mark.parametrize("field, value, message", [
    ("groups", 5, r"config.model.groups=5 must be positive and divide every entry of channels"),
    ("layers", 0, r"config.model.layers=0 must be at least 1"),
    ("channels", (), r"config.model.channels=\(\) must be a non-empty tuple"),
    ("dtype", "float8", r"config.model.dtype='float8' must be one of"),
])
def test_bad_fields_are_named(field, value, message):
    cfg = sdvae.tiny_config()
    cfg[field] = value
    with pytest.raises(ValueError, match=message):
        sdvae.check_config(cfg)
