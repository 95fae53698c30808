import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lavin_jax import models
from lavin_jax.models import dit
from conftest import randomized


def small(**fields):
    cfg = models.default_config("dit")
    cfg.update(hidden=48, depth=2, num_heads=4, patch_size=2, in_channels=3, num_classes=5, dtype="float32")
    cfg.update(fields)
    return cfg


def inputs(batch=2, size=8, channels=3, seed=1):
    kx, kt = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (batch, 1, size, size, channels))
    t = jax.random.randint(kt, (batch,), 0, 1000).astype(jnp.float32)
    return x, t, {"label": jnp.arange(batch, dtype=jnp.int32) % 6}  # 5: the null class.


def compiled(model):
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda state, *args: nnx.merge(graphdef, state)(*args))
    return lambda *args: run(state, *args)


def test_variants_parse_and_a_wrong_one_is_named():
    assert dit.variant("XL/2") == {"hidden": 1152, "depth": 28, "num_heads": 16, "patch_size": 2}
    assert dit.variant("S/8") == {"hidden": 384, "depth": 12, "num_heads": 6, "patch_size": 8}
    assert len(dit.VARIANTS) == 12
    for bad in ("XL/3", "M/2", "XL2"):
        with pytest.raises(ValueError, match=rf"DiT variant '{bad}' is unknown"):
            dit.variant(bad)


def test_adaln_zero_starts_every_block_as_the_identity_and_the_output_at_zero():
    """adaLN-Zero: zero modulations and a zero final projection, so a new model outputs zeros,
    with learn_sigma twice the channels (noise and variance)."""
    model = models.build(small(), nnx.Rngs(0))
    x, t, context = inputs()
    out = compiled(model)(x, t, context)
    assert out.shape == (2, 1, 8, 8, 6) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, 0.0)
    assert compiled(models.build(small(learn_sigma=False), nnx.Rngs(0)))(x, t, context).shape == x.shape


def test_images_of_the_wrong_shape_are_named():
    model = compiled(models.build(small(), nnx.Rngs(0)))
    for shape in ((2, 1, 9, 8, 3), (2, 2, 8, 8, 3), (2, 1, 8, 8, 4)):
        with pytest.raises(ValueError, match=r"DiT takes images \(B, 1, H, W, 3\) with H and W divisible by patch_size=2"):
            model(jnp.zeros(shape), jnp.zeros((2,)), {"label": jnp.zeros((2,), jnp.int32)})


def lin(h, q):
    return h @ np.asarray(q["kernel"], np.float64) + np.asarray(q["bias"], np.float64)


def silu(v):
    return v / (1 + np.exp(-v))


def ln(v):
    return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-6)


def gelu(v):
    return 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3)))


def reference_inputs(p, cfg, x, t, label):
    """DiT's input side in numpy from the paper: (patch tokens + 2D sin-cos (the column's half
    first, as DiT from MAE), c = t-embedding + class embedding, the patch grid)."""
    x, t, label = (np.asarray(a, np.float64) for a in (x, t, label))
    d, ph = cfg.hidden, cfg.patch_size
    b, _, hh, ww, ch = x.shape
    gh, gw = hh // ph, ww // ph
    tokens = x[:, 0].reshape(b, gh, ph, gw, ph, ch).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, ph * ph * ch)
    omega = 1.0 / 10_000 ** (np.arange(d // 4) / (d // 4))
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    h = lin(tokens, p["patch_embed"]) + np.concatenate([f(v.reshape(-1, 1) * omega) for v in (cols, rows) for f in (np.sin, np.cos)], 1)
    freqs = np.exp(-np.log(10_000) * np.arange(128) / 128)
    temb = np.concatenate([np.cos(t[:, None] * freqs), np.sin(t[:, None] * freqs)], 1)
    c = lin(silu(lin(temb, p["t_embed"]["fc1"])), p["t_embed"]["fc2"]) + np.asarray(p["class_embed"]["embedding"])[label.astype(int)]
    return h, c, (gh, gw)


def reference_outputs(out, cfg, grid):
    """Tokens' patches (B, N, p*p*C) back to images (B, 1, H, W, C)."""
    (gh, gw), ph = grid, cfg.patch_size
    co = out.shape[-1] // (ph * ph)
    return out.reshape(-1, gh, gw, ph, ph, co).transpose(0, 1, 3, 2, 4, 5).reshape(-1, 1, gh * ph, gw * ph, co)


def reference_dit(p, cfg, x, t, label):
    """DiT's forward written out in numpy from the paper: `reference_inputs`, then blocks
    x += g * f(LN(x) * (1 + s) + b), final adaLN and projection."""
    d, heads = cfg.hidden, cfg.num_heads
    h, c, grid = reference_inputs(p, cfg, x, t, label)
    b = h.shape[0]
    for i in range(cfg.depth):
        q = jax.tree.map(lambda a: np.asarray(a[i], np.float64), p["blocks"])
        mods = np.split(lin(silu(c), q["modulation"]), 6, axis=-1)
        shift1, scale1, gate1, shift2, scale2, gate2 = (m[:, None] for m in mods)
        a = ln(h) * (1 + scale1) + shift1
        split = lambda v: v.reshape(b, -1, heads, d // heads).transpose(0, 2, 1, 3)
        qh, kh, vh = (split(lin(a, q[n])) for n in ("q", "k", "v"))
        logits = qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(d // heads)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        attended = (weights @ vh).transpose(0, 2, 1, 3).reshape(b, -1, d)
        h = h + gate1 * lin(attended, q["out"])
        h = h + gate2 * lin(gelu(lin(ln(h) * (1 + scale2) + shift2, q["fc1"])), q["fc2"])
    shift, scale = np.split(lin(silu(c), p["final_modulation"]), 2, axis=-1)
    return reference_outputs(lin(ln(h) * (1 + scale[:, None]) + shift[:, None], p["final"]), cfg, grid)


def test_matches_an_independent_reference():
    cfg = small()
    model = randomized(lambda: models.build(cfg, nnx.Rngs(0)), scale=lambda shape: 0.3 / max(1, shape[-2] if len(shape) > 1 else 1) ** 0.5)
    x, t, context = inputs()
    params = nnx.split(model, nnx.Param)[1].to_pure_dict()
    expected = reference_dit(params, cfg, x, t, context["label"])
    got = compiled(model)(x, t, context)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
