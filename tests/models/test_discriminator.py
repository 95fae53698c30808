import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lavin_jax.models import discriminator
from conftest import randomized, logical_axis_names

SIZE = 32  # pixels per side: 4x4 patch logits with layers=3.


def tiny_config(**overrides):
    cfg = discriminator.default_config()
    cfg.channels, cfg.groups = 8, 4
    cfg.update(overrides)
    return cfg


def randomized_disc(cfg, seed=0):
    """kernels ~ N(0, 1/fan_in), vectors ~ N(0, 0.2^2) (norm scales about 0, biases nonzero)."""
    scale = lambda shape: 0.2 if len(shape) == 1 else 1.0 / math.sqrt(math.prod(shape[:-1]))
    return randomized(lambda: discriminator.PatchDiscriminator3D(cfg, rngs=nnx.Rngs(0)), seed, scale)


@pytest.fixture(scope="module")
def model():
    return randomized_disc(tiny_config())


@pytest.fixture(scope="module")
def judge(model):
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    return lambda x: fn(state, x)


def clip(frames, batch=2, size=SIZE, seed=1):
    return jax.random.uniform(jax.random.key(seed), (batch, frames, size, size, 3), minval=-1.0, maxval=1.0)


def test_shapes_of_images_and_clips(judge):
    image, video = judge(clip(1)), judge(clip(5))
    assert image.shape == (2, 1, SIZE // 8, SIZE // 8, 1) and image.dtype == jnp.float32
    assert video.shape == (2, 5, SIZE // 8, SIZE // 8, 1)
    # any side from the minimum up: ceil(H / 2**layers); non-square and odd sizes too.
    assert judge(jnp.zeros((1, 2, 16, 21, 3))).shape == (1, 2, 2, 3, 1)


def test_is_causal_in_time(judge):
    """A frame's logits depend on it and earlier frames only; so an image is judged exactly like
    the first frame of any clip starting with it (same weights for images and videos)."""
    x = clip(5)
    full = judge(x)
    np.testing.assert_allclose(judge(x[:, :1]), full[:, :1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(judge(x[:, :3]), full[:, :3], rtol=1e-5, atol=1e-5)
    later = judge(x.at[:, 3:].set(clip(2, seed=7)))
    np.testing.assert_allclose(later[:, :3], full[:, :3], rtol=1e-5, atol=1e-5)
    # and the logits do depend on the frames they cover (a constant model would pass the above).
    assert not np.allclose(later[:, 3:], full[:, 3:], atol=1e-3)


def test_too_small_or_malformed_input_names_the_shape(model):
    with pytest.raises(ValueError, match=r"\(1, 1, 16, 8, 3\).*at least 16"):
        model(jnp.zeros((1, 1, 16, 8, 3)))
    with pytest.raises(ValueError, match=r"\(1, 1, 32, 32, 4\)"):
        model(jnp.zeros((1, 1, 32, 32, 4)))
    # fewer layers take smaller inputs.
    small = discriminator.PatchDiscriminator3D(tiny_config(layers=1), rngs=nnx.Rngs(0))
    assert small(jnp.zeros((1, 1, 4, 4, 3))).shape == (1, 1, 2, 2, 1)


@pytest.mark.parametrize(
    "field,value",
    [("groups", 5), ("channels", 3), ("channels", 0), ("layers", 0), ("dtype", "float16")],
)
def test_bad_config_names_the_field(field, value):
    cfg = tiny_config(**{field: value})
    with pytest.raises(ValueError, match=rf"^discriminator .*\b{field}={value!r}"):
        discriminator.PatchDiscriminator3D.check_config(cfg)
    with pytest.raises(ValueError, match=rf"^discriminator .*\b{field}={value!r}"):
        discriminator.PatchDiscriminator3D(cfg, rngs=nnx.Rngs(0))


def test_default_config_is_valid():
    discriminator.check_config(discriminator.default_config())
    assert discriminator.widths(discriminator.default_config()) == [64, 128, 256, 512]
    assert discriminator.min_size(discriminator.default_config()) == 16


def test_bfloat16_is_finite_and_close_to_float32(model):
    """The same float32 parameters computed in bfloat16 give finite float32 logits near float32's."""
    graphdef, state = nnx.split(model)
    bf16 = randomized_disc(tiny_config(dtype="bfloat16"))
    nnx.update(bf16, state)
    x = clip(3)
    out = nnx.jit(lambda m, x: m(x))(bf16, x)
    ref = nnx.jit(lambda m, x: m(x))(model, x)
    assert out.dtype == jnp.float32 and out.shape == ref.shape
    assert bool(jnp.all(jnp.isfinite(out)))
    assert float(jnp.max(jnp.abs(out - ref))) < 0.1 * float(jnp.max(jnp.abs(ref)))


def test_every_parameter_names_each_axis():
    names = logical_axis_names(lambda: discriminator.PatchDiscriminator3D(tiny_config(), rngs=nnx.Rngs(0)))
    assert names == {"conv_t", "conv_h", "conv_w", "conv_in", "conv_out", "conv_norm"}


def test_init_and_layout():
    """PatchGAN's init (conv kernels N(0, 0.02)), widths channels * min(2**i, 8), bias only on the
    convs without a norm after them."""
    cfg = tiny_config(layers=4, channels=4)
    model = discriminator.PatchDiscriminator3D(cfg, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param).to_pure_dict()
    kernels = [model.conv_in.conv.kernel[...]] + [c.conv.kernel[...] for c in model.convs]
    kernels.append(model.conv_out.conv.kernel[...])
    assert [k.shape[-1] for k in kernels] == [4, 8, 16, 32, 32, 1]
    assert all(k.shape[:3] == (3, 4, 4) for k in kernels)
    big = jnp.concatenate([k.ravel() for k in kernels[1:-1]])
    assert abs(float(jnp.std(big)) - 0.02) < 0.002 and abs(float(jnp.mean(big))) < 0.002
    assert model.conv_in.conv.bias is not None and model.conv_out.conv.bias is not None
    assert all(c.conv.bias is None for c in model.convs)
    assert len(params["norms"]) == len(model.convs) == cfg.layers


def test_gradients_reach_every_parameter(model):
    x = clip(3)

    def loss(m):
        logits = m(x)
        return jnp.mean(jax.nn.softplus(-logits)) + jnp.mean(logits**2)

    grads = nnx.jit(nnx.grad(loss))(model)
    flat = jax.tree_util.tree_leaves_with_path(nnx.state(grads, nnx.Param).to_pure_dict())
    assert len(flat) == len(jax.tree.leaves(nnx.state(model, nnx.Param).to_pure_dict()))
    for path, g in flat:
        assert bool(jnp.all(jnp.isfinite(g))), path
        assert float(jnp.max(jnp.abs(g))) > 0.0, jax.tree_util.keystr(path)
