"""EDM (`config.objective='edm'`) for any conditioning; `lavin_jax.edm` has the math.

The network is preconditioned to denoise at every noise level, trained with Karras et al.'s sigma
sampling and loss weights in one of three parameterisations (`edm.precond`: edm, vp, ve), and
sampled by Heun steps over a rho-spaced grid of levels, deterministic unless `edm.churn` is set,
with classifier-free guidance on the denoised output against the conditioning's null.
"""

from __future__ import annotations

import numpy as np

from lavin_jax import edm
from lavin_jax.config import require
from lavin_jax.objectives.generative import Generative


class EDM(Generative):
    @staticmethod
    def check(config) -> None:
        Generative.check(config)
        e = config.edm
        require(e.precond in edm.PRECONDITIONINGS, f"config.edm.precond={e.precond!r} must be one of {', '.join(edm.PRECONDITIONINGS)}.")
        require(
            not config.model.get("learn_sigma", False),
            "config.model.learn_sigma=True is for objective='ddpm'; EDM's denoiser predicts no variance, so set it False.",
        )
        for field in ("sigma_data", "p_std", "beta_d", "rho", "sample_sigma_max"):
            require(e[field] > 0, f"config.edm.{field}={e[field]} must be positive.")
        require(0 < e.epsilon_t < 1, f"config.edm.epsilon_t={e.epsilon_t} must be in (0, 1).")
        require(0 < e.ve_sigma_min < e.ve_sigma_max, f"config.edm: ve_sigma_min={e.ve_sigma_min} must be positive and below ve_sigma_max={e.ve_sigma_max}.")
        require(0 < e.sample_sigma_min < e.sample_sigma_max,
                f"config.edm: sample_sigma_min={e.sample_sigma_min} must be positive and below sample_sigma_max={e.sample_sigma_max}.")
        require(e.sample_steps >= 1, f"config.edm.sample_steps={e.sample_steps} must be at least 1.")
        require(e.churn >= 0 and e.churn_noise > 0, f"config.edm: churn={e.churn} must be non-negative and churn_noise={e.churn_noise} positive.")

    def loss(self, model, batch, key, weight=None):
        return edm.loss(model, batch, key, self.config.edm, weight)

    def sample_options(self, *, steps: int | None = None, cfg_scale: float | None = None, motion_scale: float | None = None,
                       churn: float | None = None) -> tuple[dict, tuple]:
        e = self.config.edm
        steps = int(e.sample_steps if steps is None else steps)
        if steps < 1:
            raise ValueError(f"steps={steps} must be at least 1.")
        churn = float(e.churn if churn is None else churn)
        if churn < 0:
            raise ValueError(f"churn={churn} must be non-negative.")
        # EDM's sampler keeps within the levels the parameterisation was trained over (VE: from 0.02).
        low, high = edm.sigma_range(e)
        grid = edm.sigma_grid(steps, max(e.sample_sigma_min, low), min(e.sample_sigma_max, high), e.rho)
        scales, static = self.guidance_options(e, cfg_scale, motion_scale)
        return {"grid": grid.astype(np.float32), **scales}, (*static, ("churn", churn))

    def model_calls(self, traced, static):
        return 2 * (len(traced["grid"]) - 1) - 1

    def draw(self, model, context, nulls, keys, shape, traced, static):
        e = self.config.edm
        return edm.sample(model, context, keys, shape, traced["grid"], e, nulls=nulls, scales=self.scales(traced, nulls),
                          churn=dict(static)["churn"], churn_range=(float(e.churn_min), float(e.churn_max)), churn_noise=float(e.churn_noise))
