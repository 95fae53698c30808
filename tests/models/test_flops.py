import jax
import pytest
from flax import nnx

from lavin_jax import models, objectives, summary
from lavin_jax.models import dit, flops, layers
from conftest import shipped_config, small_config


def xla_flops(config, inputs) -> float:
    graphdef, params = nnx.split(nnx.eval_shape(lambda: models.build(config.model, nnx.Rngs(0))))
    forward = lambda params, *inputs: nnx.merge(graphdef, params)(*inputs)
    cost = jax.jit(forward).lower(params, *inputs).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]


def one_example(inputs) -> dict:
    x, _, context = inputs
    return {"target": x.shape[1:], **{name: value.shape[1:] for name, value in context.items()}}


def dit_config(depth: int):
    config = small_config(**{"data.image_size": 32})
    config.model = models.default_config("dit")
    config.model.update(hidden=192, depth=depth, num_heads=4, patch_size=2, in_channels=3, attention="xla", scan_layers=False)
    config.objective, config.conditioning = "ddpm", "class"
    return config


@pytest.mark.parametrize("depth", [1, 2])
def test_jdit_closed_form_is_what_xla_counts_in_the_compiled_forward(depth):
    """XLA's cost analysis of the compiled (unrolled: a scan's body counts once) forward pass also
    counts elementwise work, which adds a little; the last block's dead condition stream is gone
    from both. Sizes with enough work per element that the matrix products dominate."""
    config = small_config(**{"model.hidden": 192, "model.num_heads": 4, "model.num_kv_heads": 2, "model.depth": depth,
                             "data.image_size": 32, "model.attention": "xla", "model.scan_layers": False})
    inputs = objectives.get(config).example_inputs()
    analytic = flops.forward(config.model, one_example(inputs))
    assert 1.0 <= xla_flops(config, inputs) / analytic < 1.04
    # Exactly: the matrix products of the traced forward (summary's jaxpr counter), which still
    # holds the last block's condition stream after attention (out-projection and SwiGLU).
    x, _, context = inputs
    d, cond_tokens = config.model.hidden, context["cond"].shape[1] * (x.shape[2] // config.model.patch_size) ** 2
    dead = cond_tokens * 2 * (d * d + 3 * d * layers.swiglu_hidden(d))
    assert summary.forward_flops(config, inputs) == analytic + dead


@pytest.mark.parametrize("depth", [1, 2])
def test_dit_closed_form_is_every_matrix_product_of_the_forward(depth):
    config = dit_config(depth)
    inputs = objectives.get(config).example_inputs()
    analytic = flops.forward(config.model, one_example(inputs))
    assert summary.forward_flops(config, inputs) == analytic
    # XLA adds the elementwise work: GELU's tanh and the LayerNorms over every token, about 5%.
    assert 1.0 <= xla_flops(config, inputs) / analytic < 1.07


# DiT's Table 4: parameters (millions) and forward GFLOPs (multiply-adds) at 256 px, 32x32x4 latents.
TABLE_4 = {
    "S/8": (33, 0.36), "S/4": (33, 1.41), "S/2": (33, 6.06),
    "B/8": (130, 1.42), "B/4": (130, 5.56), "B/2": (130, 23.01),
    "L/8": (459, 5.01), "L/4": (458, 19.70), "L/2": (458, 80.71),
    "XL/8": (676, 7.39), "XL/4": (675, 29.05), "XL/2": (675, 118.64),
}


@pytest.mark.parametrize("variant", dit.VARIANTS)
def test_every_dit_variant_has_the_papers_size_and_flops(variant):
    cfg = models.default_config("dit")
    cfg.update(dit.variant(variant))
    params = nnx.state(nnx.eval_shape(lambda: models.build(cfg, nnx.Rngs(0))), nnx.Param)
    count = sum(x.size for x in jax.tree.leaves(params))
    millions, gmacs = TABLE_4[variant]
    assert abs(count / 1e6 / millions - 1) < 0.01, count
    # The table counts a multiply-add once; we count it as 2 FLOPs.
    assert abs(flops.forward(cfg, {"target": (1, 32, 32, 4), "label": ()}) / 2e9 / gmacs - 1) < 0.01


def test_a_family_without_a_formula_is_named():
    with pytest.raises(ValueError, match=r"config.model.name='stvae' has no closed-form FLOPs"):
        flops.forward(models.default_config("stvae"), {"target": (1, 8, 8, 3)})


def test_vdt_closed_form_is_every_matrix_product_of_the_forward():
    from conftest import vdt_config

    config = vdt_config(**{"model.hidden": 64, "model.depth": 2, "model.attention": "xla", "model.scan_layers": False})
    inputs = objectives.get(config).example_inputs()
    assert inputs[0].shape == (1, 4, 16, 16, 3)
    assert summary.forward_flops(config, inputs) == flops.forward(config.model, one_example(inputs))


@pytest.mark.parametrize("window", [4, 2])
def test_diffit_closed_form_is_every_matrix_product_of_the_forward(window):
    from lavin_jax import config as config_lib

    config = config_lib.base("diffit")
    config.vae.name = "none"
    config.data.image_size = 16
    config.model.update(hidden=32, depth=2, num_heads=2, patch_size=2, window=window, in_channels=3, num_classes=5, dtype="float32",
                        attention="xla", scan_layers=False)
    inputs = objectives.get(config).example_inputs()
    assert summary.forward_flops(config, inputs) == flops.forward(config.model, one_example(inputs))


@pytest.mark.parametrize("fields", [{}, {"model.blocks": 2, "model.channels": (32, 64, 96)}])
def test_the_u_shaped_diffit_closed_form_is_every_convolution_and_matrix_product(fields):
    config = shipped_config("diffit_digits", {"model.attention": "xla"}, fields)
    inputs = objectives.get(config).example_inputs()
    assert summary.forward_flops(config, inputs) == flops.forward(config.model, one_example(inputs))
