"""Flow matching as LaVin-DiT trains and samples it.

Convention of the official code: t=0 is noise x0, t=1 is data x1, x_t = t*x1 + (1-t)*x0, and the
model predicts the velocity x1 - x0. Sampling integrates t from 0 to 1 (Euler steps, as the
official code, or Heun steps).

`flow.prediction='data'` lets the model predict the clean answer x1 instead, as JiT ("Back to
Basics: Let Denoising Generative Models Denoise", arXiv 2511.13720) does in pixel space: the
velocity is then (x1_pred - x_t) / (1 - t), and loss and sampler are unchanged. A small model finds
a clean image (often a copy or a transform of the query) far easier to produce than noise, and
the last sampling step lands exactly on its answer instead of leaving unremoved noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lavin_jax import guidance


def sample_time(key: jax.Array, batch: int, flow_cfg) -> jax.Array:
    """Logit-normal t = sigmoid(N(mean, std)), shifted by t/(t + s(1-t)); s > 1 favours noise."""
    t = jax.nn.sigmoid(flow_cfg.t_mean + flow_cfg.t_std * jax.random.normal(key, (batch,)))
    return t / (t + flow_cfg.shift * (1 - t))


def interpolate(x0: jax.Array, x1: jax.Array, t: jax.Array) -> jax.Array:
    t = t.reshape(-1, *([1] * (x1.ndim - 1)))
    return t * x1 + (1 - t) * x0


PREDICTIONS = ("velocity", "data")


def velocity(model, prediction: str = "velocity", min_remaining: float = 0.05) -> Callable[[jax.Array, jax.Array, dict], jax.Array]:
    """(x_t, t, context) -> the velocity of `model`, which predicts `prediction`: the velocity
    itself, or the clean data x1, whose velocity is (x1 - x_t) / (1 - t) with 1 - t floored at
    `min_remaining` (JiT's clip). Without the floor the velocity loss weighs the nearly clean end
    without bound (1 / (1 - t)^2); with it, training and sampling share one map from output to
    velocity, and past t = 1 - min_remaining the output acts as a scaled velocity."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"Prediction {prediction!r} must be one of {', '.join(PREDICTIONS)}.")
    if prediction == "velocity":
        return model

    def from_data(x, t, context):
        remaining = jnp.maximum(1.0 - t, min_remaining).reshape(-1, *([1] * (x.ndim - 1)))
        return (model(x, t, context) - x) / remaining

    return from_data


def loss(model, batch: dict, key: jax.Array, flow_cfg, weight: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """Velocity MSE plus `l1_weight` times velocity L1, each a mean per example, then over the
    batch; `weight` (broadcast to the target) counts only part of each example, still divided by
    its full size (VDT's masked loss)."""
    x1 = batch["target"]
    context = {name: value for name, value in batch.items() if name != "target"}
    noise_key, time_key = jax.random.split(key)
    x0 = jax.random.normal(noise_key, x1.shape, x1.dtype)
    t = sample_time(time_key, x1.shape[0], flow_cfg)
    predicted = velocity(model, flow_cfg.prediction, flow_cfg.min_remaining)
    error = predicted(interpolate(x0, x1, t), t, context) - (x1 - x0)
    if weight is not None:
        error = error * weight
    axes = tuple(range(1, error.ndim))
    mse = jnp.mean(jnp.square(error), axis=axes)
    l1 = jnp.mean(jnp.abs(error), axis=axes)
    return jnp.mean(mse + flow_cfg.l1_weight * l1), {"mse": jnp.mean(mse), "l1": jnp.mean(l1)}


# The released inference code's 20-point grid (19 Euler steps), to the 4 decimals it states.
OFFICIAL_GRID = (0.0, 0.0056, 0.0111, 0.0167, 0.0222, 0.0278, 0.0333, 0.0389, 0.0444, 0.05,
                 0.0524, 0.073, 0.1148, 0.1777, 0.2618, 0.3671, 0.4936, 0.6412, 0.81, 1.0)
TIME_GRIDS = ("lavin", "uniform", "official")


def time_grid(steps: int, kind: str = "lavin") -> np.ndarray:
    """`steps + 1` times from 0 (noise) to 1 (data).

    `lavin`, dense near the noise end like LaVin-DiT's inference grid: the first half of the points
    are uniform over [0, 0.05], the rest grow quadratically from there to 1, so the early steps,
    where the sample takes its shape, are fine. `uniform`: evenly spaced. `official`: the released
    code's own table (`OFFICIAL_GRID`, 19 steps only), which `lavin` approximates for any count.
    """
    if kind not in TIME_GRIDS:
        raise ValueError(f"Time grid {kind!r} must be one of {', '.join(TIME_GRIDS)}.")
    if steps < 1:
        raise ValueError(f"A time grid of {steps} steps: at least 1 is needed.")
    if kind == "official":
        if steps != len(OFFICIAL_GRID) - 1:
            raise ValueError(f"The official time grid has {len(OFFICIAL_GRID) - 1} steps, not {steps}.")
        return np.array(OFFICIAL_GRID)
    points = steps + 1
    if kind == "uniform" or points < 4:
        return np.linspace(0.0, 1.0, points)
    head = points // 2
    first = np.linspace(0.0, 0.05, head)
    step = first[1] - first[0]
    k = np.arange(1, points - head + 1, dtype=np.float64)
    # Quadratic from one uniform step past 0.05 up to exactly 1 at the last point.
    last = k[-1]
    curvature = (1.0 - first[-1] - step * last) / last**2
    rest = first[-1] + step * k + curvature * k**2
    return np.concatenate([first, rest])


SAMPLERS = ("euler", "heun")


def integrate(velocity: Callable[[jax.Array, jax.Array], jax.Array], x0: jax.Array, grid, method: str = "euler") -> jax.Array:
    """Integrates dx/dt = velocity(x, t) over `grid`, as one lax.scan. `euler`: one velocity a
    step. `heun`: an Euler step, then the step again with the mean of the velocities at its two
    ends; second order, so it reaches a given error in fewer steps, at two model calls a step."""
    if method not in SAMPLERS:
        raise ValueError(f"Sampler {method!r} must be one of {', '.join(SAMPLERS)}.")
    grid = jnp.asarray(grid, jnp.float32)
    at = lambda x, t: velocity(x, jnp.full((x.shape[0],), t))

    def step(x, times):
        t0, t1 = times
        v0 = at(x, t0)
        x1 = x + (t1 - t0) * v0
        if method == "heun":
            x1 = x + (t1 - t0) * 0.5 * (v0 + at(x1, t1))
        return x1, None

    return jax.lax.scan(step, x0, (grid[:-1], grid[1:]))[0]


def sample(model, context: dict, keys: jax.Array, shape, grid, *, nulls: Sequence[dict] = (), scales: Sequence = (),
           method: str = "euler", prediction: str = "velocity", min_remaining: float = 0.05) -> jax.Array:
    """Draws targets of `shape` (B, T, H, W, C) for `context`, integrating over the time `grid`,
    with classifier-free guidance against the weaker contexts `nulls` by `scales` (may be traced;
    `guidance.chain`; none: unguided, and no other branch). `model` predicts `prediction`
    (`velocity`'s arguments). Example b's noise comes from `keys[b]` alone, so it does not depend
    on the batch it is in."""
    model_velocity = velocity(model, prediction, min_remaining)

    def guided(x, t):
        return guidance.chain([model_velocity(x, t, c) for c in (context, *nulls)], scales)

    x0 = jax.vmap(lambda key: jax.random.normal(key, shape[1:], jnp.float32))(keys)
    return integrate(guided, x0, grid, method)
