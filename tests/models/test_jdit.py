import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lavin_jax import models
from lavin_jax.config import DEFAULT_RULES
from conftest import randomized, small_config


def inputs(pairs=2, batch=2, size=16, seed=1):
    kx, kc, kt = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (batch, 1, size, size, 3))
    cond = jax.random.normal(kc, (batch, 2 * pairs + 1, size, size, 3))
    return x, jax.random.uniform(kt, (batch,)), {"cond": cond}


def compiled(model):
    """model(x, t, context) as one compiled call: eager, every op dispatches and compiles on its
    own, seconds for a first call."""
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda state, *args: nnx.merge(graphdef, state)(*args))
    return lambda *args: run(state, *args)


def test_zero_initialised_output_and_shape(make_config):
    model = compiled(models.build(make_config().model, nnx.Rngs(0)))
    x, t, context = inputs()
    out = model(x, t, context)
    assert out.shape == x.shape and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, 0.0)  # zero final layer: a new model predicts no motion.


@pytest.mark.parametrize(
    "x_shape,cond_shape",
    [((2, 1, 16, 16, 3), (2, 3, 8, 8, 3)), ((2, 1, 16, 16, 4), (2, 3, 16, 16, 4)), ((2, 1, 18, 18, 3), (2, 3, 18, 18, 3))],
)
def test_frames_of_the_wrong_shape_are_named(make_config, x_shape, cond_shape):
    model = models.build(make_config().model, nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"got target \(2, 1, .* and condition \(2, 3, "):
        model(jnp.zeros(x_shape), jnp.zeros((2,)), {"cond": jnp.zeros(cond_shape)})


def test_prediction_uses_context_time_and_frame_order(make_config):
    model = compiled(randomized(lambda: models.build(make_config().model, nnx.Rngs(0))))
    x, t, context = inputs()
    out = model(x, t, context)
    changed_pair = context["cond"].at[:, 0].add(1.0)
    assert not np.allclose(model(x, t, {"cond": changed_pair}), out, atol=1e-4)
    assert not np.allclose(model(x, t + 0.3, context), out, atol=1e-4)
    # Every frame is a step along RoPE's time axis, so swapping two pairs changes the answer.
    swapped = jnp.concatenate([context["cond"][:, 2:4], context["cond"][:, 0:2], context["cond"][:, 4:]], 1)
    assert not np.allclose(model(x, t, {"cond": swapped}), out, atol=1e-4)
    # Examples are independent: the first example's answer ignores the second's context.
    other = context["cond"].at[1].add(1.0)
    np.testing.assert_allclose(model(x, t, {"cond": other})[0], out[0], atol=1e-5)


def output_and_grads(cfg, params, x, t, context):
    """The model's output and the gradient of sum(output**2), from one compiled forward and
    backward (eager, every op of both passes would dispatch and compile on its own)."""
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: models.build(cfg, nnx.Rngs(0))))

    def run(p):
        out, pull_back = jax.vjp(lambda q: nnx.merge(graphdef, q)(x, t, context), p)
        return out, pull_back(2 * out)[0]  # d/dp sum(out**2)

    return jax.jit(run)(params)


@pytest.fixture(scope="module")
def unrolled_reference():
    """Inputs, randomized parameters, and the plain unrolled model's output and gradients: every
    scan and remat variant is compared with this one reference."""
    cfg = small_config(**{"model.scan_layers": False, "model.remat": "none"}).model
    params = nnx.split(randomized(lambda: models.build(cfg, nnx.Rngs(0))), nnx.Param)[1]
    inputs_ = inputs()
    return params, inputs_, output_and_grads(cfg, params, *inputs_)


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scan_unrolled_and_remat_agree(unrolled_reference, remat):
    params, inputs_, (want_out, want_grads) = unrolled_reference
    variants = [True] if remat == "none" else [True, False]  # unrolled without remat is the reference.
    for scan in variants:
        cfg = small_config(**{"model.scan_layers": scan, "model.remat": remat}).model
        out, grads = output_and_grads(cfg, params, *inputs_)  # the same parameters: scan or not, blocks are stacked.
        np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
        for a, b in zip(jax.tree.leaves(want_grads), jax.tree.leaves(grads), strict=True):
            np.testing.assert_allclose(b, a, atol=1e-4 * float(jnp.max(jnp.abs(a))))


def test_bfloat16_compute_keeps_float32_params(make_config):
    build = lambda: models.build(make_config(**{"model.dtype": "bfloat16"}).model, nnx.Rngs(0))
    params = nnx.state(build(), nnx.Param)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype("float32")}
    out = compiled(randomized(build))(*inputs())
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))


def test_every_parameter_has_logical_axes_with_rules(make_config):
    abstract = nnx.eval_shape(lambda: models.build(make_config().model, nnx.Rngs(0)))
    params = nnx.state(abstract, nnx.Param)
    specs = jax.tree.leaves(
        nnx.get_partition_spec(params).to_pure_dict(), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
    )
    shapes = jax.tree.leaves(params.to_pure_dict())
    names = {name for name, _ in DEFAULT_RULES}
    assert len(specs) == len(shapes)
    for spec, shape in zip(specs, shapes):
        assert len(spec) == len(shape.shape)
        assert set(spec) - {None} <= names
    # Block weights are stacked along a leading `layers` axis for the scan.
    q_spec = nnx.get_partition_spec(params)["blocks"]["cond"]["q"]["kernel"].get_value()
    assert tuple(q_spec) == ("layers", "embed", "heads")


def reference_jdit(p, cfg, x, t, cond):
    """J-DiT written again from the paper's description in float64 numpy, sharing no code with
    the model: patch embeddings + LayerNorm, cos-first timestep MLP with prompt/answer vectors,
    per-stream scale-only AdaRN with tanh gates and sandwich RMSNorms, QK-RMSNorm over the whole
    projected width, one joint GQA attention with 3D rotate-half RoPE, SwiGLU, final layer."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    x, t, cond = (np.asarray(a, np.float64) for a in (x, t, cond))
    d, heads, kv_heads, patch = cfg.hidden, cfg.num_heads, cfg.num_kv_heads, cfg.patch_size
    head_dim, eps = d // heads, 1e-6
    linear = lambda h, w: h @ w["kernel"] + w.get("bias", 0.0)
    silu = lambda h: h / (1 + np.exp(-h))
    rms = lambda h: h / np.sqrt(np.mean(h**2, -1, keepdims=True) + eps)

    def embed(frames, e):
        b, n, height, width, c = frames.shape
        tokens = frames.reshape(b, n, height // patch, patch, width // patch, patch, c)
        tokens = tokens.transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, -1, patch * patch * c)
        y = linear(tokens, e["proj"])
        y = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + 1e-5)
        return y * e["norm"]["scale"] + e["norm"]["bias"]

    freqs = np.exp(-np.log(10_000.0) * np.arange(128) / 128)
    t_emb = np.concatenate([np.cos(t[:, None] * freqs), np.sin(t[:, None] * freqs)], -1)
    t_emb = linear(silu(linear(t_emb, p["t_embed"]["fc1"])), p["t_embed"]["fc2"])
    t_streams = (t_emb + p["prompt_embed"], t_emb + p["answer_embed"])
    streams = [embed(cond, p["cond_embed"]), embed(x, p["target_embed"])]

    n_frames = cond.shape[1] + x.shape[1]
    grid_h, grid_w = x.shape[2] // patch, x.shape[3] // patch
    positions = np.stack(np.meshgrid(np.arange(n_frames), np.arange(grid_h), np.arange(grid_w), indexing="ij"), -1).reshape(-1, 3)
    part = head_dim // 3

    def rope(v):  # v: (B, L, heads, head_dim)
        out = v.copy()
        for axis in range(3):
            for j in range(part // 2):
                angle = positions[:, axis] * cfg.rope_base ** (-2 * j / part)
                cos, sin = np.cos(angle)[None, :, None], np.sin(angle)[None, :, None]
                a, b = v[..., axis * part + j], v[..., axis * part + j + part // 2]
                out[..., axis * part + j] = a * cos - b * sin
                out[..., axis * part + j + part // 2] = b * cos + a * sin
        return out

    for layer in range(cfg.depth):
        block = jax.tree.map(lambda a: a[layer], p["blocks"])
        weights = (block["cond"], block["target"])
        mods = [np.split(linear(silu(ts), w["modulation"]), 4, -1) for ts, w in zip(t_streams, weights)]
        qs, ks, vs = [], [], []
        for h, w, m in zip(streams, weights, mods):
            hm = rms(h) * (1 + m[0][:, None])
            qs.append(rms(linear(hm, w["q"])) * w["q_norm"]["scale"])
            ks.append(rms(linear(hm, w["k"])) * w["k_norm"]["scale"])
            vs.append(linear(hm, w["v"]))
        b, length = x.shape[0], sum(h.shape[1] for h in streams)
        q = rope(np.concatenate(qs, 1).reshape(b, length, heads, head_dim))
        k = rope(np.concatenate(ks, 1).reshape(b, length, kv_heads, head_dim))
        v = np.concatenate(vs, 1).reshape(b, length, kv_heads, head_dim)
        out = np.empty_like(q)
        for i in range(heads):
            kv = i // (heads // kv_heads)
            scores = q[:, :, i] @ k[:, :, kv].transpose(0, 2, 1) / np.sqrt(head_dim)
            weights_ = np.exp(scores - scores.max(-1, keepdims=True))
            out[:, :, i] = (weights_ / weights_.sum(-1, keepdims=True)) @ v[:, :, kv]
        out = out.reshape(b, length, d)
        split = streams[0].shape[1]
        attended = (out[:, :split], out[:, split:])
        new = []
        for h, a, w, m in zip(streams, attended, weights, mods):
            h = h + np.tanh(m[1])[:, None] * rms(linear(a, w["out"]))
            hm = rms(h) * (1 + m[2][:, None])
            mlp = linear(silu(linear(hm, w["mlp"]["gate"])) * linear(hm, w["mlp"]["up"]), w["mlp"]["down"])
            new.append(h + np.tanh(m[3])[:, None] * rms(mlp))
        streams = new

    scale = linear(silu(t_streams[1]), p["final"]["modulation"])
    y = linear(rms(streams[1]) * (1 + scale[:, None]), p["final"]["proj"])
    b, n, height, width, c = x.shape
    y = y.reshape(b, n, height // patch, width // patch, patch, patch, c).transpose(0, 1, 2, 4, 3, 5, 6)
    return y.reshape(x.shape)


def test_matches_an_independent_reference(make_config):
    # LaVin-DiT's own design (3D RoPE alone), which the reference writes out.
    cfg = make_config(**{"model.num_heads": 4, "model.num_kv_heads": 2, "model.pos_embed": "none"}).model
    model = randomized(lambda: models.build(cfg, nnx.Rngs(0)))
    x, t, context = inputs(pairs=1)
    params = nnx.split(model, nnx.Param)[1].to_pure_dict()
    expected = reference_jdit(params, cfg, x, t, context["cond"])
    np.testing.assert_allclose(compiled(model)(x, t, context), expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())
