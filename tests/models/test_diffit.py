import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lavin_jax import models
from lavin_jax.models import diffit
from conftest import randomized
from test_dit import gelu, lin, ln, reference_inputs, reference_outputs, silu


def small(**fields):
    cfg = models.default_config("diffit")
    cfg.update(hidden=32, depth=2, num_heads=4, patch_size=2, window=4, in_channels=3, num_classes=5, dtype="float32")
    cfg.update(fields)
    return cfg


def small_image(**fields):
    cfg = models.default_config("diffit_image")
    cfg.update(channels=(16, 32, 32), blocks=1, num_heads=2, time_width=24, groups=4, num_classes=5)
    cfg.update(fields)
    return cfg


def inputs(batch=2, size=8, seed=1):
    kx, kt = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (batch, 1, size, size, 3))
    t = jax.random.randint(kt, (batch,), 0, 1000).astype(jnp.float32)
    return x, t, {"label": jnp.arange(batch, dtype=jnp.int32) % 6}  # 5: the null class.


def compiled(module, *static):
    """module(*args, *static), compiled; `static` (a TMSA's grid) is not traced."""
    graphdef, state = nnx.split(module)
    run = jax.jit(lambda state, *args: nnx.merge(graphdef, state)(*args, *static))
    return lambda *args: run(state, *args)


def scaled(shape):
    return 0.3 / max(1, shape[-2] if len(shape) > 1 else 1) ** 0.5


def test_the_released_variant_has_its_parameter_count_and_a_wrong_one_is_named():
    model = nnx.eval_shape(lambda: models.build(models.default_config("diffit"), nnx.Rngs(0)))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count == 561_035_232  # the released 256 px model (its fixed pos_embed is not a parameter here).
    assert diffit.variant("XL/2") == {"hidden": 1152, "depth": 28, "num_heads": 16, "patch_size": 2}
    with pytest.raises(ValueError, match="DiffiT variant 'XL/3' is unknown"):
        diffit.variant("XL/3")


def test_the_relative_position_index_is_swins():
    index = diffit.relative_position_index(16)
    assert index.shape == (256, 256) and index.min() == 0 and index.max() == 31**2 - 1
    assert (index[0, 0], index[0, 1], index[0, 16]) == (480, 479, 449)
    assert np.all(np.diag(index) == 480)


def softmax(logits):
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)


def reference_tmsa(p, x, c, grid, window, heads):
    """TMSA in numpy from the paper: q, k, v = x W_s + c W_t, attention with the relative position
    bias within each window."""
    x, c = np.asarray(x, np.float64), np.asarray(c, np.float64)
    b, n, d = x.shape
    height, width = grid
    qkv = lin(x, p["qkv"]) + lin(c, p["qkv_time"])[:, None]
    out = np.zeros((b, n, d))
    bias = np.asarray(p["bias_table"], np.float64)[diffit.relative_position_index(window)].transpose(2, 0, 1)
    cells = np.arange(n).reshape(height, width)
    for top in range(0, height, window):
        for left in range(0, width, window):
            members = cells[top:top + window, left:left + window].ravel()
            q, k, v = (qkv[:, members, i * d:(i + 1) * d].reshape(b, -1, heads, d // heads).transpose(0, 2, 1, 3) for i in range(3))
            weights = softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // heads) + bias)
            out[:, members] = (weights @ v).transpose(0, 2, 1, 3).reshape(b, -1, d)
    return lin(out, p["out"])


@pytest.mark.parametrize("window", [2, 4])
def test_tmsa_attends_within_windows_with_the_time_in_q_k_v_and_is_plain_attention_without_time(window):
    build = lambda: diffit.TMSA(16, 2, window, 8, "xla", dtype=jnp.float32, rngs=nnx.Rngs(0))
    tmsa = randomized(build, scale=scaled)
    params = nnx.split(tmsa, nnx.Param)[1].to_pure_dict()
    kx, kc = jax.random.split(jax.random.key(2))
    x, c = jax.random.normal(kx, (2, 16, 16)), jax.random.normal(kc, (2, 8))
    run = compiled(tmsa, (4, 4))
    np.testing.assert_allclose(run(x, c), reference_tmsa(params, x, c, (4, 4), window, 2), atol=2e-5)
    # With the time projection and the bias table zero, TMSA is plain multi-head self-attention.
    for variable in (tmsa.qkv_time.kernel, tmsa.qkv_time.bias, tmsa.bias_table):
        variable[...] = jnp.zeros_like(variable[...])
    plain = jax.tree.map(np.zeros_like, params)
    plain.update(qkv=params["qkv"], out=params["out"])
    np.testing.assert_allclose(compiled(tmsa, (4, 4))(x, c), reference_tmsa(plain, x, c * 0, (4, 4), window, 2), atol=2e-5)


def test_time_changes_the_attention_pattern():
    """With time only in the queries and keys (its values' part zero), outputs for two times can
    differ only if the attention weights do."""
    tmsa = randomized(lambda: diffit.TMSA(16, 2, 4, 8, "xla", dtype=jnp.float32, rngs=nnx.Rngs(0)), scale=scaled)
    kernel, bias = tmsa.qkv_time.kernel[...], tmsa.qkv_time.bias[...]
    tmsa.qkv_time.kernel[...] = kernel.at[:, 32:].set(0.0)
    tmsa.qkv_time.bias[...] = bias.at[32:].set(0.0)
    x = jnp.tile(jax.random.normal(jax.random.key(3), (1, 16, 16)), (2, 1, 1))
    c = jax.random.normal(jax.random.key(4), (2, 8)) * 3
    out = compiled(tmsa, (4, 4))(x, c)
    assert float(jnp.abs(out[0] - out[1]).max()) > 1e-2
    # ... and without it in the queries and keys either, they are the same.
    tmsa.qkv_time.kernel[...] = jnp.zeros_like(kernel)
    tmsa.qkv_time.bias[...] = jnp.zeros_like(bias)
    out = compiled(tmsa, (4, 4))(x, c)
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)


def reference_diffit(p, cfg, x, t, label):
    """The latent DiffiT in numpy: DiT's inputs, blocks x += TMSA(LN(x), c); x += MLP(LN(x)),
    then Linear(SiLU(LN(x)))."""
    h, c, grid = reference_inputs(p, cfg, x, t, label)
    for i in range(cfg.depth):
        q = jax.tree.map(lambda a: np.asarray(a[i], np.float64), p["blocks"])
        h = h + reference_tmsa(q["attn"], ln(h), c, grid, cfg.window, cfg.num_heads)
        h = h + lin(gelu(lin(ln(h), q["fc1"])), q["fc2"])
    return reference_outputs(lin(silu(ln(h)), p["final"]), cfg, grid)


@pytest.mark.parametrize("window", [4, 2])
def test_the_latent_model_matches_an_independent_reference(window):
    cfg = small(window=window)
    model = randomized(lambda: models.build(cfg, nnx.Rngs(0)), scale=scaled)
    x, t, context = inputs()
    params = nnx.split(model, nnx.Param)[1].to_pure_dict()
    expected = reference_diffit(params, cfg, x, t, context["label"])
    got = compiled(model)(x, t, context)
    assert got.shape == (2, 1, 8, 8, 6)  # learn_sigma: noise and variance.
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_windows_that_do_not_tile_the_grid_are_named():
    with pytest.raises(ValueError, match=r"config.model.window=3 does not tile the 8 x 8 token grid of 16 px"):
        diffit.DiffiT.check_input(small(window=3), 16)
    with pytest.raises(ValueError, match=r"config.model.window=4 does not tile the 2 x 2 token grid of 8 px"):
        diffit.DiffiTImage.check_input(small_image(), 8)  # 8, 4, 2 px: the last is smaller than a window.
    with pytest.raises(ValueError, match=r"12 px images cannot be halved 3 times"):
        diffit.DiffiTImage.check_input(small_image(channels=(16, 16, 16, 16)), 12)


def test_the_u_net_goes_down_and_back_up_with_the_encoders_features_beside():
    cfg = small_image()
    model = nnx.eval_shape(lambda: models.build(cfg, nnx.Rngs(0)))
    widths = lambda resblocks: [(block.conv.conv.in_features, block.conv.conv.out_features) for block in resblocks]
    assert [widths(level) for level in model.down] == [[(16, 16)], [(16, 32)], [(32, 32)]]
    # On the way up each resolution's first block reads the upsampled features and the skip, concatenated.
    assert [widths(level) for level in model.up] == [[(32 + 16, 16)], [(32 + 32, 32)]]
    x, t, context = inputs(size=16)
    model = randomized(lambda: models.build(cfg, nnx.Rngs(0)), scale=scaled)
    run = compiled(model)
    out = run(x, t, context)
    assert out.shape == (2, 1, 16, 16, 3) and out.dtype == jnp.float32
    # The skip at full resolution carries fine detail: one input pixel moves its own output pixel
    # more than a distant one.
    moved = np.abs(np.asarray(run(x.at[:, 0, 5, 5].add(1.0), t, context) - out))[0, 0].sum(-1)
    assert moved[5, 5] > 3 * moved[12, 12]
    # Time and class both reach the output.
    assert float(jnp.abs(run(x, t + 100, context) - out).max()) > 1e-3
    assert float(jnp.abs(run(x, t, {"label": context["label"] + 1}) - out).max()) > 1e-3


@pytest.mark.parametrize("build", [small, small_image])
def test_an_unconditional_model_has_no_class_table_and_ignores_the_label(build):
    cfg = build(num_classes=0)
    model = randomized(lambda: models.build(cfg, nnx.Rngs(0)), scale=scaled)
    assert "class_embed" not in nnx.state(model, nnx.Param)
    x, t, _ = inputs(size=16)
    run = compiled(model)
    np.testing.assert_array_equal(run(x, t, {"label": jnp.zeros(2, jnp.int32)}), run(x, t, {"label": jnp.ones(2, jnp.int32)}))
    with pytest.raises(ValueError, match=r"config.model.num_classes=-1 must be a count of classes, or 0 for an unconditional model"):
        type(model).check_config(build(num_classes=-1))
