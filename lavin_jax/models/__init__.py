"""Model families. Each is an nnx.Module called as `model(x_t, t, context) -> velocity`, where
`context` is the batch without its `target`; `build` makes one from `config.model`."""

from flax import nnx

from lavin_jax.models import jdit

FAMILIES = {"jdit": jdit.JDiT}


def build(model_config, rngs: nnx.Rngs) -> nnx.Module:
    return FAMILIES[model_config.name](model_config, rngs=rngs)
