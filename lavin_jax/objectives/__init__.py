"""What the trainer trains: an `Objective`, picked by `config.objective`.

The trainer (`lavin_jax.train`) owns what every run shares: the mesh, the sharded state
{step, params, ema, opt}, optimizers, EMA, the jitted step, checkpoints, logs. An objective owns
what differs: which modules are trained (`build`; `"model"` is the one kept with an EMA,
evaluated and summarised, others such as a discriminator get their own optimizer state), where
examples come from (`source`), the gradients of one step (`grads`), and evaluation
(`evaluate`). Generative objectives (`flow`, `ddpm`, `edm`) share `generative.Generative`: noise, loss
and samplers are theirs, the rest is the run's conditioning's (`lavin_jax.conditioning`); their
samples are judged by the conditioning's evaluator, which the caller builds. `phase(step)` names a step's static variant (e.g. before/after a GAN starts), so
the step compiles once per phase.
"""

from __future__ import annotations

from lavin_jax.objectives.base import Objective


def _objectives() -> dict[str, type[Objective]]:
    # Imported here: each objective module imports the models it trains.
    from lavin_jax.objectives import autoencoding, ddpm, edm, flow_matching

    return {"flow": flow_matching.FlowMatching, "ddpm": ddpm.DDPM, "edm": edm.EDM, "autoencoding": autoencoding.Autoencoding}


def get(config) -> Objective:
    """The objective of `config.objective` (already checked by `check`)."""
    return _objectives()[config.objective](config)


def check(config) -> None:
    known = _objectives()
    if config.objective not in known:
        raise ValueError(f"config.objective={config.objective!r} is unknown; known objectives: {', '.join(known)}.")
    autoencoder = config.objective == "autoencoding"
    if autoencoder != (config.conditioning == "none"):
        raise ValueError(
            f"config.objective={config.objective!r} cannot train config.model.name={config.model.name!r}: "
            + ("'autoencoding' trains an autoencoder (stvae)." if autoencoder else "flow and ddpm train a conditioned generative model.")
        )
    known[config.objective].check(config)
