"""EDM, Karras et al.'s "Elucidating the Design Space of Diffusion-Based Generative Models" (arXiv
2206.00364), as DiffiT's image-space models train and sample.

Noise is a level sigma: x = y + sigma n. The network F is wrapped in a preconditioning that makes
its input and target unit-variance at every sigma, the denoiser

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma)),

and is trained to give the clean y, weighted by lambda(sigma) so every sigma weighs alike. Three
parameterisations (Table 1): `edm` (c_skip = s_d^2 / (sigma^2 + s_d^2), ..., ln sigma ~ N(P_mean,
P_std^2)), `vp` (DDPM++'s variance preserving: c_out = -sigma, t ~ U(eps_t, 1)) and `ve` (NCSN++'s
variance exploding: c_out = sigma, sigma log-uniform). The loss is a mean over pixels where EDM's
code sums them: the same gradients up to the learning rate.

Sampling is the deterministic Heun sampler (Algorithm 2: N steps of sigma_i = (sigma_max^(1/rho) +
i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho down to 0, a second-order correction on every
step but the last, 2N - 1 denoiser calls), with Algorithm 2's stochastic churn as an option.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lavin_jax import guidance

PRECONDITIONINGS = ("edm", "vp", "ve")


def vp_sigma(t, beta_d: float, beta_min: float):
    """VP's noise level at time t in (0, 1]."""
    return jnp.sqrt(jnp.expm1(0.5 * beta_d * t**2 + beta_min * t))


def vp_time(sigma, beta_d: float, beta_min: float):
    """The inverse of `vp_sigma`."""
    return (jnp.sqrt(beta_min**2 + 2 * beta_d * jnp.log1p(sigma**2)) - beta_min) / beta_d


def coefficients(sigma: jax.Array, cfg) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(c_skip, c_out, c_in, c_noise) at noise levels `sigma` for `cfg.precond` (config.edm)."""
    if cfg.precond == "edm":
        sd2 = cfg.sigma_data**2
        total = sigma**2 + sd2
        return sd2 / total, sigma * cfg.sigma_data / jnp.sqrt(total), 1 / jnp.sqrt(total), jnp.log(sigma) / 4
    if cfg.precond == "vp":
        noise = (cfg.vp_steps - 1) * vp_time(sigma, cfg.beta_d, cfg.beta_min)
        return jnp.ones_like(sigma), -sigma, 1 / jnp.sqrt(sigma**2 + 1), noise
    if cfg.precond == "ve":
        return jnp.ones_like(sigma), sigma, jnp.ones_like(sigma), jnp.log(sigma / 2)
    raise ValueError(f"Preconditioning {cfg.precond!r} must be one of {', '.join(PRECONDITIONINGS)}.")


def sigma_range(cfg) -> tuple[float, float]:
    """The noise levels the parameterisation was trained over, which the sampler keeps within."""
    if cfg.precond == "vp":
        return float(vp_sigma(cfg.epsilon_t, cfg.beta_d, cfg.beta_min)), float(vp_sigma(1.0, cfg.beta_d, cfg.beta_min))
    if cfg.precond == "ve":
        return float(cfg.ve_sigma_min), float(cfg.ve_sigma_max)
    return 0.0, float("inf")


def denoiser(model, cfg):
    """(x, sigma (B,), context) -> D(x; sigma): `model`, the network F, preconditioned."""

    def denoise(x, sigma, context):
        c_skip, c_out, c_in, c_noise = coefficients(sigma, cfg)
        shape = (-1, *([1] * (x.ndim - 1)))
        out = model(x * c_in.reshape(shape), c_noise, context)
        return c_skip.reshape(shape) * x + c_out.reshape(shape) * out

    return denoise


def training_sigma(key: jax.Array, batch: int, cfg) -> jax.Array:
    """Noise levels drawn as the parameterisation trains."""
    u = jax.random.uniform(key, (batch,))
    if cfg.precond == "vp":
        return vp_sigma(1 + u * (cfg.epsilon_t - 1), cfg.beta_d, cfg.beta_min)
    if cfg.precond == "ve":
        return cfg.ve_sigma_min * (cfg.ve_sigma_max / cfg.ve_sigma_min) ** u
    return jnp.exp(cfg.p_mean + cfg.p_std * jax.random.normal(key, (batch,)))


def loss_weight(sigma: jax.Array, cfg) -> jax.Array:
    """lambda(sigma): 1 / c_out^2, so the weighted loss is F's own unit-variance regression."""
    if cfg.precond == "edm":
        return (sigma**2 + cfg.sigma_data**2) / (sigma * cfg.sigma_data) ** 2
    return 1 / sigma**2


def loss(model, batch: dict, key: jax.Array, cfg, weight: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """lambda(sigma) |D(y + sigma n; sigma) - y|^2, a mean per example, then over the batch;
    `weight` (broadcast to the target) counts only part of each example."""
    y = batch["target"]
    context = {name: value for name, value in batch.items() if name != "target"}
    noise_key, sigma_key = jax.random.split(key)
    sigma = training_sigma(sigma_key, y.shape[0], cfg)
    shape = (-1, *([1] * (y.ndim - 1)))
    noisy = y + sigma.reshape(shape) * jax.random.normal(noise_key, y.shape, y.dtype)
    error = jnp.square(denoiser(model, cfg)(noisy, sigma, context) - y)
    if weight is not None:
        error = error * weight
    mse = jnp.mean(error, axis=tuple(range(1, y.ndim)))
    return jnp.mean(loss_weight(sigma, cfg) * mse), {"mse": jnp.mean(mse), "sigma": jnp.mean(sigma)}


def sigma_grid(steps: int, sigma_min: float, sigma_max: float, rho: float) -> np.ndarray:
    """`steps` noise levels from sigma_max down to sigma_min, rho-spaced, then 0."""
    if steps < 1:
        raise ValueError(f"An EDM sampler of {steps} steps: at least 1 is needed.")
    i = np.arange(steps, dtype=np.float64)
    fraction = i / max(steps - 1, 1)
    levels = (sigma_max ** (1 / rho) + fraction * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return np.append(levels, 0.0)


def sample(model, context: dict, keys: jax.Array, shape, grid, cfg, *, nulls: Sequence[dict] = (), scales: Sequence = (),
           churn: float = 0.0, churn_range: tuple = (0.0, float("inf")), churn_noise: float = 1.0) -> jax.Array:
    """Draws targets of `shape` (B, T, H, W, C) for `context` by Heun steps over `grid`
    (`sigma_grid`), guided against `nulls` by `scales` (`guidance.chain`; none: unguided);
    example b's noise from `keys[b]` alone. `churn` (Algorithm 2's S_churn) adds noise back to
    levels within `churn_range` (S_min, S_max), scaled by `churn_noise` (S_noise); 0 is the
    deterministic sampler."""
    grid = jnp.asarray(grid, jnp.float32)
    steps = grid.shape[0] - 1
    denoise_once = denoiser(model, cfg)

    def denoise(x, sigma):
        sigmas = jnp.full((x.shape[0],), sigma)
        outputs = [denoise_once(x, sigmas, c) for c in (context, *nulls)]
        return guidance.chain(outputs, scales) if nulls else outputs[0]

    noise = lambda i: jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), shape[1:]))(keys)
    x = noise(0) * grid[0]
    gamma = min(churn / steps, np.sqrt(2) - 1)

    def euler(x, inputs):
        """(Euler's step from the churned level, its slope, that level)."""
        i, now, after = inputs
        if churn:
            raised = now * (1 + jnp.where((now >= churn_range[0]) & (now <= churn_range[1]), gamma, 0.0))
            x = x + jnp.sqrt(raised**2 - now**2) * churn_noise * noise(i + 1)
            now = raised
        slope = (x - denoise(x, now)) / now
        return x + (after - now) * slope, slope, now

    def heun(x, inputs):
        stepped, slope, now = euler(x, inputs)
        after = inputs[2]
        slope_after = (stepped - denoise(stepped, after)) / after
        return stepped + (after - now) * 0.5 * (slope_after - slope), None  # the mean of both slopes.

    indices = jnp.arange(steps)
    x = jax.lax.scan(heun, x, (indices[:-1], grid[:-2], grid[1:-1]))[0]
    return euler(x, (indices[-1], grid[-2], grid[-1]))[0]  # the last step, to sigma 0, is Euler's.
