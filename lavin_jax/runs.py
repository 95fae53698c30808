"""A trained run as others use it: its config and its EMA weights.

Inference, the frozen autoencoder of a latent run, fine-tuning (`config.init_from`) and the
converter read runs through here, without importing the trainer. A run is used data-parallel:
parameters replicated, batches split over every device.
"""

from __future__ import annotations

import os

import jax
from flax import nnx

from lavin_jax import checkpoint, models, parallel
from lavin_jax import config as config_lib


def data_parallel(config):
    """`config` with a mesh of data parallelism alone, parameters replicated: how a trained model
    is used elsewhere (a frozen ST-VAE, the predictor). Returns it."""
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    return config


def trained_config(workdir: str, family: str | None = None, *, step: int | None = None, overrides: dict | None = None):
    """(config, step) of a run's checkpoint (default: the newest): the run's own config with
    `overrides` (dotted names) applied and made `data_parallel`; its model section checked. The
    caller validates the rest (`lavin_jax.validation`) before reading arrays, so a bad override
    is named first. `family`: the model the run must have trained (None: any)."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Run {workdir!r} has no checkpoints directory {directory!r}.")
    step = checkpoint.latest_step(directory) if step is None else step
    if step is None:
        raise FileNotFoundError(f"Run {workdir!r} has no checkpoint in {directory!r}.")
    with checkpoint.reading(directory) as checkpointer:
        saved = checkpoint.tuples(checkpointer.read_config(step))
    trained = saved.get("model", {}).get("name")
    family = family or trained
    if trained != family:
        raise ValueError(f"Run {workdir!r} trained model {trained!r}, not {family!r}.")
    config = config_lib.base(family)
    try:
        for field, value in saved.items():
            if isinstance(value, dict):
                config[field].update(value)
            else:
                config[field] = value
    except (AttributeError, KeyError, TypeError) as error:
        raise ValueError(f"Run {workdir!r} was written with a config this version cannot read: {error}") from None
    config_lib.override(data_parallel(config), overrides or {})
    models.check(config.model)
    return config, step


def abstract_model(model_config, mesh, rules) -> tuple[nnx.GraphDef, dict]:
    """(graphdef, parameters as ShapeDtypeStructs placed by `rules` on `mesh`) of a model family,
    by abstract evaluation: nothing is allocated."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: models.build(model_config, nnx.Rngs(0))), nnx.Param)
    shardings = parallel.param_shardings(state, mesh, rules)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state.to_pure_dict(), shardings)
    return graphdef, abstract


def restore_ema(workdir: str, step: int, abstract_ema):
    """The EMA parameters of a run's checkpoint `step`, placed like `abstract_ema`."""
    with checkpoint.reading(os.path.join(workdir, "checkpoints")) as checkpointer:
        return checkpointer.restore_state(step, {"ema": abstract_ema})["ema"]


def restore_shared(workdir: str, step: int, abstract_ema: dict, saved_model_config) -> tuple[dict, list[str]]:
    """(the EMA parameters of a run's checkpoint `step`, placed like those of `abstract_ema`,
    the paths of `abstract_ema`'s parameters the run lacks) for a model that grows the run's
    (`saved_model_config`'s): GenTron's video model started from its image model. Every saved
    parameter must be the new model's, in the same shape."""
    saved = nnx.split(nnx.eval_shape(lambda: models.build(saved_model_config, nnx.Rngs(0))), nnx.Param)[1].to_pure_dict()
    new = []

    def shared(grown: dict, old: dict, path: str) -> dict:
        new.extend(f"{path}{name}" for name in grown if name not in old)
        out = {}
        for name, value in old.items():
            here = grown.get(name)
            if here is None or isinstance(value, dict) != isinstance(here, dict) or (not isinstance(value, dict) and here.shape != value.shape):
                raise ValueError(f"Run {workdir!r} holds parameter {path}{name} {getattr(value, 'shape', '')}, which the config's model "
                                 f"does not have in that shape.")
            out[name] = shared(here, value, f"{path}{name}/") if isinstance(value, dict) else here
        return out

    subset = shared(abstract_ema, saved, "")
    return restore_ema(workdir, step, subset), new

