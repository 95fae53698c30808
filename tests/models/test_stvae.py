import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lavin_jax import summary
from lavin_jax.models import discriminator, stvae
from conftest import randomized, logical_axis_names

SIZE = 16  # pixels per side: 2x2 latents.


def randomized_vae(cfg, seed=0):
    """kernels ~ N(0, 1/fan_in), vectors ~ N(0, 0.2^2): deep conv stacks keep their scale."""
    scale = lambda shape: 0.2 if len(shape) == 1 else 1.0 / math.sqrt(math.prod(shape[:-1]))
    return randomized(lambda: stvae.STVAE(cfg, rngs=nnx.Rngs(0)), seed, scale)


@pytest.fixture(scope="module")
def model():
    return randomized_vae(stvae.tiny_config())


@pytest.fixture(scope="module")
def encode(model):
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode(x))
    return lambda x: fn(state, x)


@pytest.fixture(scope="module")
def decode(model):
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, z: nnx.merge(graphdef, s).decode(z))
    return lambda z: fn(state, z)


def clip(frames, batch=2, seed=1):
    return jax.random.uniform(jax.random.key(seed), (batch, frames, SIZE, SIZE, 3), minval=-1.0, maxval=1.0)


@pytest.fixture(scope="module")
def clip9_posterior(encode):
    return encode(clip(9))


def test_shapes_of_images_and_clips(encode, clip9_posterior):
    image = encode(clip(1))
    assert image.mean.shape == image.logvar.shape == (2, 1, SIZE // 8, SIZE // 8, 16)
    assert clip9_posterior.mean.shape == (2, 3, SIZE // 8, SIZE // 8, 16)
    assert encode(clip(5)).mean.shape == (2, 2, SIZE // 8, SIZE // 8, 16)


def test_encoder_is_causal(encode, clip9_posterior):
    """The first 1+4j frames alone give the whole clip's first 1+j latent frames; this also checks
    that an image (j=0) is encoded by the same weights as a clip's first frame."""
    x = clip(9)
    for j in (0, 1):
        prefix = encode(x[:, : 1 + 4 * j])
        np.testing.assert_allclose(prefix.mean, clip9_posterior.mean[:, : 1 + j], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(prefix.logvar, clip9_posterior.logvar[:, : 1 + j], rtol=1e-4, atol=1e-4)
    # and the latents do depend on the frames they cover (a constant model would pass the above).
    later = encode(x.at[:, 5:].add(0.5))
    np.testing.assert_allclose(later.mean[:, :2], clip9_posterior.mean[:, :2], rtol=1e-4, atol=1e-4)
    assert not np.allclose(later.mean[:, 2], clip9_posterior.mean[:, 2], atol=1e-3)


def test_clip_statistics_norm_is_not_causal():
    """The official GroupNorm (statistics over the clip) lets later frames reach the first latent."""
    cfg = stvae.tiny_config()
    cfg.norm_stats = "clip"
    model = randomized_vae(cfg)
    x = clip(5, batch=1)
    encode = nnx.jit(lambda m, x: m.encode(x).mean)
    assert not np.allclose(encode(model, x[:, :1]), encode(model, x)[:, :1], atol=1e-4)


def test_decode_inverts_the_encoder_shapes(decode, clip9_posterior):
    assert decode(clip9_posterior.mean).shape == (2, 9, SIZE, SIZE, 3)
    assert decode(clip9_posterior.mean[:, :1]).shape == (2, 1, SIZE, SIZE, 3)


def test_decoder_is_causal(decode, clip9_posterior):
    z = clip9_posterior.mean
    full, prefix = decode(z), decode(z[:, :2])
    np.testing.assert_allclose(prefix, full[:, :5], rtol=1e-4, atol=1e-4)


def test_call_samples_the_posterior(model):
    x = clip(1, batch=1)
    call = nnx.jit(lambda m, x, key: m(x, key))
    out, posterior = call(model, x, jax.random.key(0))
    again, _ = call(model, x, jax.random.key(0))
    other, _ = call(model, x, jax.random.key(1))
    assert out.shape == x.shape
    np.testing.assert_array_equal(out, again)
    assert not np.allclose(out, other)
    assert isinstance(posterior, stvae.DiagonalGaussian)


def test_logvar_is_clamped_and_kl():
    moments = jnp.concatenate([jnp.zeros((2, 1, 2, 2, 16)), jnp.full((2, 1, 2, 2, 16), 50.0)], -1)
    moments = moments.at[1, ..., 16:].set(-50.0)
    posterior = stvae.DiagonalGaussian.from_moments(moments)
    assert float(posterior.logvar[0].min()) == 20.0 and float(posterior.logvar[1].max()) == -30.0
    zero = stvae.DiagonalGaussian(jnp.zeros((3, 2, 2, 2, 16)), jnp.zeros((3, 2, 2, 2, 16)))
    np.testing.assert_array_equal(zero.kl(), np.zeros(3))
    # per example, summed over latent dims: mean 1 everywhere gives 0.5 * 128 per example.
    shifted = stvae.DiagonalGaussian(jnp.ones((3, 2, 2, 2, 16)), jnp.zeros((3, 2, 2, 2, 16)))
    np.testing.assert_allclose(shifted.kl(), np.full(3, 64.0))
    samples = zero.sample(jax.random.key(0))
    assert samples.shape == zero.mean.shape and float(jnp.std(samples)) > 0.5
    np.testing.assert_array_equal(zero.mode(), zero.mean)


def test_every_parameter_names_each_axis():
    names = logical_axis_names(lambda: stvae.STVAE(stvae.tiny_config(), rngs=nnx.Rngs(0)))
    assert names == {"conv_t", "conv_h", "conv_w", "conv_in", "conv_out", "conv_norm"}


def official_count(ch=(128, 256, 256, 512), enc_layers=3, dec_layers=4, z=16, rgb=3):
    """The parameters of the official `AutoencoderKLSTVAE`, counted from its module structure."""
    conv3 = lambda i, o, k=3: k**3 * i * o + o
    conv2 = lambda i, o: 9 * i * o + o
    gn = lambda c: 2 * c
    spatial = lambda c: gn(c) + 2 * conv3(z, c, 1)
    skip = lambda i, o: (i * o + o) if i != o else 0
    res_enc = lambda i, o: gn(i) + conv3(i, o) + gn(o) + conv3(o, o) + skip(i, o)
    res_dec = lambda i, o: spatial(i) + conv3(i, o) + spatial(o) + conv3(o, o) + skip(i, o)
    n = conv3(rgb, ch[0])
    for i, o in enumerate(ch):
        n += sum(res_enc(ch[max(i - 1, 0)] if k == 0 else o, o) for k in range(enc_layers))
        n += conv2(o, o) if i < len(ch) - 1 else 0
    n += 2 * res_enc(ch[-1], ch[-1]) + gn(ch[-1]) + conv3(ch[-1], 2 * z)
    rev = ch[::-1]
    n += conv3(z, rev[0]) + 2 * res_dec(rev[0], rev[0])
    for i, o in enumerate(rev):
        n += sum(res_dec(rev[max(i - 1, 0)] if k == 0 else o, o) for k in range(dec_layers))
        n += conv2(o, o) if i < len(rev) - 1 else 0
    return n + spatial(rev[-1]) + conv3(rev[-1], rgb)


def test_official_parameter_count():
    assert official_count() == 215_583_907  # CogVideoX's VAE size, about 215.6M.
    abstract = nnx.eval_shape(lambda: stvae.STVAE(stvae.official_config(), rngs=nnx.Rngs(0)))
    table = summary.parameter_table(nnx.state(abstract, nnx.Param).to_pure_dict())
    assert sum(table.values()) == official_count()


@pytest.mark.parametrize(
    "field,value",
    [("groups", 5), ("spatial_groups", 3), ("spatial_groups", 0), ("channels", (16, 32, 30, 32)), ("temporal_downsamples", 4), ("kernel", 2),
     ("norm_stats", "batch"), ("encoder_layers", 0), ("dtype", "float16")],
)
def test_bad_config_names_the_field(field, value):
    cfg = stvae.tiny_config()
    setattr(cfg, field, value)
    with pytest.raises(ValueError, match=field):
        stvae.STVAE.check_config(cfg)


def test_wrong_frame_count_is_refused(model):
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        model.encode(jnp.zeros((1, 4, SIZE, SIZE, 3)))


def identity_tap(resampler, row, col):
    """Sets the resampler's 3x3 conv to copy the pixel at kernel tap (row, col), bias 0."""
    c = resampler.conv.kernel.shape[-1]
    resampler.conv.kernel[...] = jnp.zeros_like(resampler.conv.kernel[...]).at[row, col].set(jnp.eye(c))
    return resampler


def test_resamplers_keep_the_first_frame_apart():
    x = jax.random.normal(jax.random.key(0), (1, 5, 4, 4, 2))
    down = identity_tap(stvae.Downsample(2, True, dtype=jnp.float32, rngs=nnx.Rngs(0)), 0, 0)
    # frames [0, mean(1, 2), mean(3, 4)]; the stride-2 conv's (0, 0) tap picks even rows/cols.
    pooled = jnp.concatenate([x[:, :1], (x[:, 1::2] + x[:, 2::2]) / 2], axis=1)
    np.testing.assert_allclose(down(x), pooled[:, :, ::2, ::2], atol=1e-6)
    up = identity_tap(stvae.Upsample(2, True, dtype=jnp.float32, rngs=nnx.Rngs(0)), 1, 1)
    # T -> 1 + 2(T - 1): [0, 1, 1, 2, 2, ...], each pixel repeated 2x2.
    expected = jnp.repeat(jnp.repeat(x[:, jnp.array([0, 1, 1, 2, 2, 3, 3, 4, 4])], 2, 2), 2, 3)
    np.testing.assert_allclose(up(x), expected, atol=1e-6)
    spatial_only = identity_tap(stvae.Upsample(2, False, dtype=jnp.float32, rngs=nnx.Rngs(0)), 1, 1)
    assert spatial_only(x).shape == (1, 5, 8, 8, 2)


# --- tiled encode and decode ----------------------------------------------------------------

TILED = 48  # pixels per side for tiling tests: 6x6 latents.


@pytest.mark.parametrize("frames", [1, 5])
def test_tiled_matches_untiled(model, frames):
    """2x2 overlapping tiles (encode: 40 px tiles at 0 and 8 of 48 px, 32 px overlap; decode: 5
    latent tiles at 0 and 1 of 6, 4 latent px overlap). Not exact: the encoder's and decoder's
    receptive fields are wider than the overlap, tiles see zero padding at their cut edges, and
    per-frame GroupNorm takes statistics over the tile instead of the whole frame. Measured with
    random parameters: encode ~0.09, decode ~0.03 of the output's max |value|; bounds 0.15, 0.06.
    A tile covering the whole input is the untiled model exactly."""
    graphdef, state = nnx.split(model)
    run = lambda f: jax.jit(lambda s, v: f(nnx.merge(graphdef, s), v))
    x = jax.random.uniform(jax.random.key(2), (1, frames, TILED, TILED, 3), minval=-1.0, maxval=1.0)
    # one jit for the untiled call and the whole-input tile (the same graph, so compiled once).
    full, whole = run(lambda m, v: (m.encode(v), m.tiled_encode(v, tile=64, overlap=8, frames=9)))(state, x)
    tiled = run(lambda m, v: m.tiled_encode(v, tile=40, overlap=32))(state, x)
    scale = max(float(jnp.max(jnp.abs(full.mean))), float(jnp.max(jnp.abs(full.logvar))))
    for name in ("mean", "logvar"):
        err = float(jnp.max(jnp.abs(getattr(tiled, name) - getattr(full, name))))
        assert err < 0.15 * scale, (name, err, scale)
        np.testing.assert_allclose(getattr(whole, name), getattr(full, name), atol=1e-6)
    z = full.mean
    out, whole = run(lambda m, v: (m.decode(v), m.tiled_decode(v, tile=6, overlap=0)))(state, z)
    tiled_out = run(lambda m, v: m.tiled_decode(v, tile=5, overlap=4))(state, z)
    assert tiled_out.shape == out.shape == x.shape
    err = float(jnp.max(jnp.abs(tiled_out - out)))
    assert err < 0.06 * float(jnp.max(jnp.abs(out))), err
    np.testing.assert_allclose(whole, out, atol=1e-6)


def test_time_chunks_restart_the_causal_model(model, encode, decode, clip9_posterior):
    """With `frames`, chunks stay causal as official: the 9-frame clip in 5-frame chunks is
    encode(frames 0-4) then encode(frames 4-8) without its first latent; 3 latents in 2-latent
    chunks decode to decode(latents 0-1) then decode(latents 1-2) without its first frame. The
    first chunk equals the untiled output (causality); later ones lose history before the chunk."""
    x = clip(9)
    tiled = nnx.jit(lambda m, v: m.tiled_encode(v, tile=SIZE, overlap=0, frames=5))(model, x)
    expected = jnp.concatenate([encode(x[:, :5]).mean, encode(x[:, 4:]).mean[:, 1:]], axis=1)
    np.testing.assert_allclose(tiled.mean, expected, atol=1e-5)
    np.testing.assert_allclose(tiled.mean[:, :2], clip9_posterior.mean[:, :2], rtol=1e-4, atol=1e-4)
    z = clip9_posterior.mean
    out = nnx.jit(lambda m, v: m.tiled_decode(v, tile=2, overlap=0, frames=2))(model, z)
    expected = jnp.concatenate([decode(z[:, :2]), decode(z[:, 1:])[:, 1:]], axis=1)
    assert out.shape == (2, 9, SIZE, SIZE, 3)
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize(
    "method,kwargs,name",
    [("tiled_encode", dict(tile=12, overlap=0), "tile"),
     ("tiled_encode", dict(tile=16, overlap=16), "overlap"),
     ("tiled_encode", dict(tile=16, overlap=4), "overlap"),
     ("tiled_encode", dict(tile=16, overlap=8, frames=4), "frames"),
     ("tiled_decode", dict(tile=0, overlap=0), "tile"),
     ("tiled_decode", dict(tile=2, overlap=-1), "overlap"),
     ("tiled_decode", dict(tile=2, overlap=1, frames=1), "frames")],
)
def test_bad_tiling_arguments_name_the_argument(model, method, kwargs, name):
    with pytest.raises(ValueError, match=f"{method} {name}="):
        getattr(model, method)(jnp.zeros((1, 1, SIZE, SIZE, 3 if method == "tiled_encode" else 16)), **kwargs)


@pytest.mark.parametrize("make", [
    lambda: stvae.CausalConv3d(4, 6, rngs=nnx.Rngs(0)),
    lambda: discriminator.CausalConv(4, 6, stride=2, use_bias=False, dtype=jnp.float32, rngs=nnx.Rngs(0)),
])
def test_an_image_takes_one_time_tap_of_a_causal_conv_with_a_ninth_of_a_3_frame_clips_flops(make):
    conv = make()
    if conv.conv.use_bias:
        conv.conv.bias.value = jax.random.normal(jax.random.key(1), (6,))
    clip = jax.random.normal(jax.random.key(2), (2, 3, 5, 5, 4))
    # A clip's first frame sees only itself, so it must come out as that frame alone does.
    np.testing.assert_allclose(conv(clip[:, :1]), conv(clip)[:, :1], rtol=1e-5, atol=1e-5)
    flops = lambda x: summary.jaxpr_flops(jax.make_jaxpr(conv)(x).jaxpr)
    assert flops(clip) == 9 * flops(clip[:, :1])  # 3 output frames of 3 taps against 1 of 1.


def test_the_decoder_normalises_in_its_own_group_count():
    """As the official code: the decoder's SpatialNorm has `spatial_groups` (32 there), whatever
    the encoder's GroupNorms have (`groups`, norm_num_groups)."""
    cfg = stvae.tiny_config()
    cfg.channels, cfg.groups, cfg.spatial_groups = (32, 32, 32, 32), 8, 32
    vae = nnx.eval_shape(lambda: stvae.STVAE(cfg, rngs=nnx.Rngs(0)))
    assert vae.encoder.norm_out.norm.num_groups == 8
    assert vae.decoder.norm_out.norm.norm.num_groups == 32
    assert {block.norm1.norm.norm.num_groups for block in vae.decoder.mid.resnets} == {32}
