import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lavin_jax import config as config_lib
from lavin_jax import models
from lavin_jax.config import DEFAULT_RULES


def randomized(model, seed=0):
    """The model with every parameter redrawn, so zero-initialised layers stop hiding bugs."""
    graphdef, params = nnx.split(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(params.to_pure_dict())
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [0.2 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))


def inputs(pairs=2, batch=2, size=16, seed=1):
    kx, kc, kt = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (batch, 1, size, size, 3))
    cond = jax.random.normal(kc, (batch, 2 * pairs + 1, size, size, 3))
    return x, jax.random.uniform(kt, (batch,)), {"cond": cond}


def test_zero_initialised_output_and_shape(make_config):
    model = models.build(make_config().model, nnx.Rngs(0))
    x, t, context = inputs()
    out = model(x, t, context)
    assert out.shape == x.shape and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, 0.0)  # zero final layer: a new model predicts no motion.


def test_prediction_uses_context_time_and_frame_order(make_config):
    model = randomized(models.build(make_config().model, nnx.Rngs(0)))
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


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scan_unrolled_and_remat_agree(make_config, remat):
    x, t, context = inputs()
    outputs, grads = [], []
    for scan in (True, False):
        cfg = make_config(**{"model.scan_layers": scan, "model.remat": remat}).model
        model = randomized(models.build(cfg, nnx.Rngs(0)))
        graphdef, params = nnx.split(model, nnx.Param)
        loss = lambda p: jnp.sum(nnx.merge(graphdef, p)(x, t, context) ** 2)
        outputs.append(model(x, t, context))
        grads.append(jax.grad(loss)(params))
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(a, b, atol=1e-4 * float(jnp.max(jnp.abs(a))))


def test_bfloat16_compute_keeps_float32_params(make_config):
    model = models.build(make_config(**{"model.dtype": "bfloat16"}).model, nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype("float32")}
    out = randomized(model)(*inputs())
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
        assert len(spec) in (0, len(shape.shape))
        assert set(spec) - {None} <= names
    # Block weights are stacked along a leading `layers` axis for the scan.
    q_spec = nnx.get_partition_spec(params)["blocks"]["cond"]["q"]["kernel"].get_value()
    assert tuple(q_spec) == ("layers", "embed", "heads")
