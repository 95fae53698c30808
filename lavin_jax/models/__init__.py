"""Model families. Each is an nnx.Module called as `model(x_t, t, context) -> velocity`, where
`context` is the batch without its `target`, with a static `check_config(model_config)` that
raises ValueError naming the field its architecture cannot take."""

from flax import nnx

from lavin_jax.models import jdit

FAMILIES = {"jdit": jdit.JDiT}


def check(model_config) -> None:
    if model_config.name not in FAMILIES:
        raise ValueError(
            f"config.model.name={model_config.name!r} is unknown; known models: {', '.join(FAMILIES)}."
        )
    FAMILIES[model_config.name].check_config(model_config)


def build(model_config, rngs: nnx.Rngs) -> nnx.Module:
    return FAMILIES[model_config.name](model_config, rngs=rngs)
