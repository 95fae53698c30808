"""The train state of a config on a mesh: its shapes and shardings, and its first values.

The state is a plain pytree {step, params: {name: ...}, ema, opt: {name: ...}} of global arrays,
one entry per module the objective trains; `"model"` is the one kept with an EMA. Training,
inference and the benchmarks set it up here, so none of them imports another.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lavin_jax import objectives, parallel


def make_optimizer(optim_cfg, total_steps: int):
    """AdamW after global-norm clipping (if any), with linear warmup then a constant or cosine rate."""
    warmup = min(optim_cfg.warmup_steps, total_steps)
    if optim_cfg.schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(0.0, optim_cfg.lr, warmup, max(total_steps, warmup + 1))
    else:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, optim_cfg.lr, warmup), optax.constant_schedule(optim_cfg.lr)],
            [warmup],
        )
    tx = optax.chain(
        # 0: no clipping (DiT trains unclipped).
        optax.clip_by_global_norm(optim_cfg.grad_clip) if optim_cfg.grad_clip > 0 else optax.identity(),
        optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, weight_decay=optim_cfg.weight_decay),
    )
    return tx, schedule


@dataclasses.dataclass(frozen=True)
class Setup:
    """What the step and the loop need besides the state itself."""

    objective: objectives.base.Objective
    graphdefs: dict[str, Any]
    tx: optax.GradientTransformation  # one per trained module, each with its own state.
    schedule: Callable
    mesh: Mesh
    abstract_state: dict  # ShapeDtypeStructs carrying each leaf's NamedSharding.


def _split(modules: dict[str, nnx.Module]) -> tuple[dict, dict[str, nnx.State]]:
    split = {name: nnx.split(module, nnx.Param) for name, module in modules.items()}
    return {name: g for name, (g, _) in split.items()}, {name: p for name, (_, p) in split.items()}


def setup(config, mesh: Mesh, objective: objectives.base.Objective | None = None) -> Setup:
    """Shapes and shardings of the train state, by abstract evaluation: nothing is allocated."""
    objective = objective or objectives.get(config)
    graphdefs, states = _split(nnx.eval_shape(lambda: objective.build(nnx.Rngs(config.seed))))
    param_sharding = {name: parallel.param_shardings(state, mesh, config.mesh.rules) for name, state in states.items()}
    params = {name: state.to_pure_dict() for name, state in states.items()}
    tx, schedule = make_optimizer(config.optim, config.total_steps)
    opt = {name: jax.eval_shape(tx.init, tree) for name, tree in params.items()}
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_sharding = {
        name: optax.tree_map_params(
            tx, lambda _, sharding: sharding, opt[name], param_sharding[name],
            transform_non_params=lambda _: replicated,
        )
        for name in params
    }
    with_sharding = lambda tree, shardings: jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
    abstract_state = {
        "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
        "params": with_sharding(params, param_sharding),
        "ema": with_sharding(params["model"], param_sharding["model"]),
        "opt": with_sharding(opt, opt_sharding),
    }
    return Setup(objective, graphdefs, tx, schedule, mesh, abstract_state)


def shardings(abstract) -> Any:
    return jax.tree.map(lambda x: x.sharding, abstract)


def init_state(config, s: Setup, model_params=None) -> dict:
    """Initialises parameters directly into their shards; `model_params` (placed like the state's
    EMA, all of the "model" module's or a nested part of them), when given, are its and its EMA's
    starting point instead (fine-tuning: the random ones they replace are never computed)."""

    def fill(fresh: dict, given: dict) -> dict:
        return {name: fill(value, given[name]) if isinstance(value, dict) and name in given else given.get(name, value)
                for name, value in fresh.items()}

    def init(model_params):
        states = _split(s.objective.build(nnx.Rngs(config.seed)))[1]
        params = {name: state.to_pure_dict() for name, state in states.items()}
        if model_params is not None:
            params["model"] = fill(params["model"], model_params)
        opt = {name: s.tx.init(tree) for name, tree in params.items()}
        return {"step": jnp.zeros((), jnp.int32), "params": params, "ema": params["model"], "opt": opt}

    return jax.jit(init, out_shardings=shardings(s.abstract_state))(model_params)


def place_constants(s: Setup) -> dict:
    """The objective's frozen arrays, replicated on every device (every host passes its copy)."""
    return jax.tree.map(lambda a: parallel.replicate(a, s.mesh), s.objective.constants())


