"""Parameter counts and forward FLOPs from abstract evaluation: nothing is allocated, so the 3.4B
config is summarised on a laptop.

FLOPs are counted from the forward pass's jaxpr, a multiply-add as 2: every matrix product and
convolution, through scans (times their length), remat, and nested jits. Elementwise work is left
out, as in the papers' tables.
"""

from __future__ import annotations

import math
from collections import defaultdict

import jax
from flax import nnx
from jax.extend import core as jex_core

from lavin_jax import models, objectives


def _dot_flops(eqn) -> int:
    (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
    lhs, rhs = (v.aval.shape for v in eqn.invars)
    out = eqn.outvars[0].aval.shape
    contracted = math.prod(lhs[d] for d in lhs_contract)
    return 2 * math.prod(out) * contracted


def _conv_flops(eqn) -> int:
    rhs = eqn.invars[1].aval.shape
    dims = eqn.params["dimension_numbers"]
    out_features = rhs[dims.rhs_spec[0]]
    per_output = math.prod(rhs) // out_features  # in_features/groups * kernel volume
    return 2 * math.prod(eqn.outvars[0].aval.shape) * per_output


def jaxpr_flops(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"].jaxpr)
        elif name == "cond":
            total += max(jaxpr_flops(branch.jaxpr) for branch in eqn.params["branches"])
        else:
            for param in eqn.params.values():
                if isinstance(param, jex_core.ClosedJaxpr):
                    total += jaxpr_flops(param.jaxpr)
                elif isinstance(param, jex_core.Jaxpr):
                    total += jaxpr_flops(param)
    return total


def forward_flops(config, inputs: tuple) -> int:
    """Forward FLOPs of one call on `inputs` (the objective's `example_inputs()`), with the XLA
    attention (countable)."""
    model_cfg = config.model.copy_and_resolve_references()
    if "attention" in model_cfg:
        model_cfg.attention = "xla"
    abstract_model = nnx.eval_shape(lambda: models.build(model_cfg, nnx.Rngs(0)))
    graphdef, params = nnx.split(abstract_model)
    forward = lambda params, *inputs: nnx.merge(graphdef, params)(*inputs)
    return jaxpr_flops(jax.make_jaxpr(forward)(params, *inputs).jaxpr)


def parameter_table(abstract_params, depth: int = 3) -> dict[str, int]:
    """Parameter counts grouped by module path, cut at `depth` levels."""
    counts: dict[str, int] = defaultdict(int)
    for path, leaf in jax.tree.leaves_with_path(abstract_params):
        keys = [str(getattr(k, "key", k)) for k in path]
        counts["/".join(keys[:depth])] += math.prod(leaf.shape)
    return dict(counts)


def summarize(config, abstract_params=None) -> tuple[dict, str]:
    """(summary.json contents, a printable per-module table)."""
    if abstract_params is None:
        abstract_model = nnx.eval_shape(lambda: models.build(config.model, nnx.Rngs(0)))
        abstract_params = nnx.split(abstract_model, nnx.Param)[1].to_pure_dict()
    table = parameter_table(abstract_params)
    params = sum(table.values())
    inputs = objectives.get(config).example_inputs()
    result = {
        "model": config.model.name,
        "params": params,
        "flops_per_example": forward_flops(config, inputs),
        # The shapes FLOPs were counted at (batch 1).
        "flops_inputs": [list(x.shape) for x in jax.tree.leaves(inputs)],
    }
    width = max(len(name) for name in table)
    lines = [f"{'module':<{width}}  {'params':>15}"]
    lines += [f"{name:<{width}}  {count:>15,}" for name, count in sorted(table.items())]
    lines.append(f"{'total':<{width}}  {params:>15,}")
    return result, "\n".join(lines)
