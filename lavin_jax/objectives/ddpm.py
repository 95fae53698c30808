"""Gaussian diffusion (`config.objective='ddpm'`) as DiT trains and samples it, for any
conditioning; `lavin_jax.diffusion` has the math.

1000 steps of linear betas; the model predicts the noise and, with `model.learn_sigma`, the
interpolation between the two bounds of each step's variance, trained by L_simple plus the
variational bound (improved-diffusion's hybrid loss). Samples are drawn by ancestral DDPM or DDIM
steps over a respaced schedule (DiT: 250 steps), with classifier-free guidance applied to the
noise as DiT's sampler applies it (or ramped over the steps, `ddpm.guidance_schedule`, as
DiffiT's).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from lavin_jax import diffusion
from lavin_jax.config import require
from lavin_jax.objectives.generative import Generative

SAMPLERS = ("ddpm", "ddim")
GUIDANCE_SCHEDULES = ("constant", "power_cosine")


def guidance_at(scale, timesteps, num_steps: int, schedule: str, power: float):
    """The text/class guidance scale at each example's original timestep (B,): `scale` throughout
    (`constant`), or MDT's power-cosine ramp that DiffiT's 256 px sampler uses, 1 at the noise end
    rising to `scale` at the data end, 1 + (scale - 1) (1 - cos(pi (1 - t / num_steps)^power)) / 2."""
    if schedule == "constant":
        return jnp.full(timesteps.shape, scale)
    ramp = 0.5 * (1 - jnp.cos(jnp.pi * (1 - timesteps.astype(jnp.float32) / num_steps) ** power))
    return 1 + (scale - 1) * ramp


class DDPM(Generative):
    @staticmethod
    def check(config) -> None:
        Generative.check(config)
        d = config.ddpm
        require(d.num_steps >= 2, f"config.ddpm.num_steps={d.num_steps} must be at least 2.")
        require(0.0 < d.beta_start < d.beta_end and 1000 / d.num_steps * d.beta_end < 1.0,
                f"config.ddpm: betas from beta_start={d.beta_start} to beta_end={d.beta_end} (times 1000/num_steps) must rise within (0, 1).")
        require(
            1 <= d.sample_steps <= d.num_steps,
            f"config.ddpm.sample_steps={d.sample_steps} must be in [1, config.ddpm.num_steps={d.num_steps}].",
        )
        require(d.sampler in SAMPLERS, f"config.ddpm.sampler={d.sampler!r} must be one of {', '.join(SAMPLERS)}.")
        require(0.0 <= d.eta <= 1.0, f"config.ddpm.eta={d.eta} must be in [0, 1].")
        require(d.guidance_schedule in GUIDANCE_SCHEDULES,
                f"config.ddpm.guidance_schedule={d.guidance_schedule!r} must be one of {', '.join(GUIDANCE_SCHEDULES)}.")
        require(d.guidance_power > 0, f"config.ddpm.guidance_power={d.guidance_power} must be positive.")
        require(d.guided_channels >= 0, f"config.ddpm.guided_channels={d.guided_channels} must be non-negative (0: all).")

    @property
    def learn_sigma(self) -> bool:
        return bool(self.config.model.get("learn_sigma", False))

    @functools.cached_property
    def schedule(self) -> diffusion.Schedule:
        d = self.config.ddpm
        scale = 1000 / d.num_steps  # as improved-diffusion: the same total noise at any step count.
        return diffusion.linear_schedule(int(d.num_steps), scale * float(d.beta_start), scale * float(d.beta_end))

    def loss(self, model, batch, key, weight=None):
        context = {name: value for name, value in batch.items() if name != "target"}
        losses, stats = diffusion.training_loss(self.schedule, model, batch["target"], context, key, learn_sigma=self.learn_sigma, weight=weight)
        return jnp.mean(losses), stats

    def sample_options(self, *, steps: int | None = None, cfg_scale: float | None = None, motion_scale: float | None = None,
                       sampler: str | None = None, eta: float | None = None) -> tuple[dict, tuple]:
        d = self.config.ddpm
        steps = int(d.sample_steps if steps is None else steps)
        if not 1 <= steps <= d.num_steps:
            raise ValueError(f"steps={steps} must be in [1, config.ddpm.num_steps={d.num_steps}].")
        method = sampler or d.sampler
        if method not in SAMPLERS:
            raise ValueError(f"sampler={method!r} must be one of {', '.join(SAMPLERS)}.")
        eta = float(d.eta if eta is None else eta)
        scales, static = self.guidance_options(d, cfg_scale, motion_scale)
        return scales, (*static, ("method", method), ("steps", steps), ("eta", eta))

    def model_calls(self, traced, static):
        return dict(static)["steps"]

    def draw(self, model, context, nulls, keys, shape, traced, static):
        options = dict(static)
        schedule = diffusion.respace(self.schedule, options["steps"])
        channels = int(self.config.ddpm.guided_channels) or None

        d = self.config.ddpm

        def denoise(x, t):
            if not nulls:
                return model(x, t, context)
            outputs = [model(x, t, c) for c in (context, *nulls)]
            scales = self.scales(traced, nulls)
            # The first scale (the class's or the text's) follows the schedule, per example.
            shape = (-1, *([1] * (x.ndim - 1)))
            scales[0] = guidance_at(scales[0], t, int(d.num_steps), d.guidance_schedule, float(d.guidance_power)).reshape(shape)
            return diffusion.guide(outputs, scales, learn_sigma=self.learn_sigma, channels=channels)

        return diffusion.sample(schedule, denoise, keys, shape, method=options["method"], eta=options["eta"], learn_sigma=self.learn_sigma,
                                clip=self.config.vae.name == "none")
