"""Model families. Each is an nnx.Module class with a static `default_config()` (its
`config.model` section, `name` included) and a static `check_config(model_config)` that raises
ValueError naming the field its architecture cannot take; a family whose inputs must fit its
fields (DiffiT's windows) also has a static `check_input(model_config, side)`, for model inputs of
that side. Which objective trains a family is
`lavin_jax.objectives`' business."""

from flax import nnx

from lavin_jax.models import diffit, dit, gentron, jdit, sdvae, stvae, vdt

FAMILIES = {"jdit": jdit.JDiT, "dit": dit.DiT, "vdt": vdt.VDT, "gentron": gentron.GenTron,
            "diffit": diffit.DiffiT, "diffit_image": diffit.DiffiTImage, "stvae": stvae.STVAE, "sdvae": sdvae.SDVAE}
# The autoencoders a diffusion model can work in (config.vae.name): each has encode -> posterior,
# decode, and a static latent_frames(model_config, frames).
AUTOENCODERS = ("stvae", "sdvae")


def default_config(name: str):
    if name not in FAMILIES:
        raise ValueError(f"Model family {name!r} is unknown; known models: {', '.join(FAMILIES)}.")
    return FAMILIES[name].default_config()


def check(model_config) -> None:
    if model_config.name not in FAMILIES:
        raise ValueError(
            f"config.model.name={model_config.name!r} is unknown; known models: {', '.join(FAMILIES)}."
        )
    FAMILIES[model_config.name].check_config(model_config)


def build(model_config, rngs: nnx.Rngs) -> nnx.Module:
    return FAMILIES[model_config.name](model_config, rngs=rngs)
