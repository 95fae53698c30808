"""Flow matching (`config.objective='flow'`) for any conditioning; `lavin_jax.flow` has the math.

The model learns the velocity (or the clean data, `flow.prediction`) of a noisy target given its
context, and samples are drawn by integrating from noise with Euler or Heun steps over a time
grid, with classifier-free guidance against the conditioning's null condition.
"""

from __future__ import annotations

import numpy as np

from lavin_jax import flow
from lavin_jax.config import require
from lavin_jax.objectives.generative import Generative


class FlowMatching(Generative):
    @staticmethod
    def check(config) -> None:
        Generative.check(config)
        f = config.flow
        require(f.shift > 0, f"config.flow.shift={f.shift} must be positive.")
        require(f.t_std > 0, f"config.flow.t_std={f.t_std} must be positive.")
        require(f.sample_steps >= 1, f"config.flow.sample_steps={f.sample_steps} must be at least 1.")
        require(f.time_grid in flow.TIME_GRIDS, f"config.flow.time_grid={f.time_grid!r} must be one of {', '.join(flow.TIME_GRIDS)}.")
        require(
            f.time_grid != "official" or f.sample_steps == len(flow.OFFICIAL_GRID) - 1,
            f"config.flow.time_grid='official' has {len(flow.OFFICIAL_GRID) - 1} steps but config.flow.sample_steps={f.sample_steps}.",
        )
        require(0.0 < f.min_remaining <= 1.0, f"config.flow.min_remaining={f.min_remaining} must be in (0, 1].")
        require(f.prediction in flow.PREDICTIONS, f"config.flow.prediction={f.prediction!r} must be one of {', '.join(flow.PREDICTIONS)}.")
        require(
            not config.model.get("learn_sigma", False),
            "config.model.learn_sigma=True is for objective='ddpm'; flow matching predicts no variance, so set it False.",
        )
        require(f.sampler in flow.SAMPLERS, f"config.flow.sampler={f.sampler!r} must be one of {', '.join(flow.SAMPLERS)}.")

    def loss(self, model, batch, key, weight=None):
        return flow.loss(model, batch, key, self.config.flow, weight)

    def sample_options(self, *, steps: int | None = None, cfg_scale: float | None = None, motion_scale: float | None = None,
                       sampler: str | None = None, time_grid: str | None = None) -> tuple[dict, tuple]:
        f = self.config.flow
        steps = f.sample_steps if steps is None else steps
        method = sampler or f.sampler
        if method not in flow.SAMPLERS:
            raise ValueError(f"sampler={method!r} must be one of {', '.join(flow.SAMPLERS)}.")
        grid = np.asarray(flow.time_grid(steps, time_grid or f.time_grid), np.float32)
        scales, static = self.guidance_options(f, cfg_scale, motion_scale)
        return {"grid": grid, **scales}, (*static, ("method", method))

    def model_calls(self, traced, static):
        return (len(traced["grid"]) - 1) * (2 if dict(static)["method"] == "heun" else 1)

    def draw(self, model, context, nulls, keys, shape, traced, static):
        f = self.config.flow
        return flow.sample(model, context, keys, shape, traced["grid"], nulls=nulls, scales=self.scales(traced, nulls),
                           method=dict(static)["method"], prediction=f.prediction, min_remaining=f.min_remaining)
