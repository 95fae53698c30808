"""Gaussian diffusion as DiT trains and samples it (DDPM with improved-diffusion's learned variance).

The forward process adds noise over T steps with variances beta_t:
q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), abar_t = prod_{s <= t} (1 - beta_s). DiT uses
T = 1000 linear betas from 1e-4 to 0.02. The model sees x_t and the timestep and predicts the noise
eps; from it follow the predicted x_0 and the mean of the reverse step p(x_{t-1} | x_t), which is
the Gaussian posterior q(x_{t-1} | x_t, x_0) with the predicted x_0 put in.

With `learn_sigma` the model also outputs, per element, a value v in about [-1, 1] that places the
reverse step's log variance between the posterior's (v = -1) and beta_t (v = 1), the two bounds of
"Improved Denoising Diffusion Probabilistic Models" (Nichol & Dhariwal, 2021). Training is their
hybrid loss: the plain noise MSE plus the variational bound in bits per dimension, the bound seeing
the predicted noise through a stop-gradient so that it trains the variance alone. Without
`learn_sigma` the variance is fixed to the posterior's (improved-diffusion's "fixed small"; DiT
always learns it).

Sampling walks a respaced schedule: a subset of the original timesteps whose betas are re-derived so
that abar is unchanged at the kept steps (DiT samples 250 of 1000). Indices `t` below always count
steps of the schedule at hand; the model is always called with `Schedule.timesteps[t]`, the
original timestep it was trained on. Samplers are ancestral DDPM and DDIM (with `eta`).

Arrays have their channels last; with `learn_sigma` the model's output has twice the channels of
x: the first half the noise, the second half v.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lavin_jax import guidance


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
    """Per-step constants of a (possibly respaced) process, float64 numpy arrays of length num_steps."""

    betas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray
    timesteps: np.ndarray  # The original timestep of each step: what the model is called with.

    @property
    def num_steps(self) -> int:
        return len(self.betas)


def _schedule(betas: np.ndarray, timesteps: np.ndarray) -> Schedule:
    betas = np.asarray(betas, np.float64)
    alphas = 1.0 - betas
    acp = np.cumprod(alphas)
    acp_prev = np.append(1.0, acp[:-1])
    posterior_variance = betas * (1.0 - acp_prev) / (1.0 - acp)
    # Step 0's posterior variance is 0: improved-diffusion logs step 1's there instead. A one-step
    # schedule has no step 1; its only step is then the whole process, and beta its variance.
    first = posterior_variance[1] if len(betas) > 1 else betas[0]
    return Schedule(
        betas=betas,
        alphas_cumprod=acp,
        alphas_cumprod_prev=acp_prev,
        sqrt_alphas_cumprod=np.sqrt(acp),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - acp),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / acp),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / acp - 1.0),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=np.log(np.append(first, posterior_variance[1:])),
        posterior_mean_coef1=betas * np.sqrt(acp_prev) / (1.0 - acp),
        posterior_mean_coef2=(1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp),
        timesteps=np.asarray(timesteps, np.int64),
    )


def linear_schedule(num_steps: int, beta_start: float, beta_end: float) -> Schedule:
    return _schedule(np.linspace(beta_start, beta_end, num_steps, dtype=np.float64), np.arange(num_steps))


def respace(schedule: Schedule, steps: int) -> Schedule:
    """`steps` of the schedule's steps, evenly spaced from the first to the last as improved-diffusion's
    space_timesteps(T, [steps]) picks them (its fractional stride and Python's rounding), with betas
    that keep abar at every kept step."""
    n = schedule.num_steps
    if not 1 <= steps <= n:
        raise ValueError(f"Cannot respace {n} steps to {steps}.")
    if steps == 1:
        # space_timesteps keeps step 0 here; sampling from pure noise needs the noisiest step.
        kept = [n - 1]
    else:
        stride, position, kept = (n - 1) / (steps - 1), 0.0, []
        for _ in range(steps):
            kept.append(round(position))
            position += stride
    acp = schedule.alphas_cumprod[kept]
    betas = 1.0 - acp / np.append(1.0, acp[:-1])
    return _schedule(betas, schedule.timesteps[kept])


def _extract(arr: np.ndarray, t: jax.Array, ndim: int) -> jax.Array:
    """arr[t] as float32, shaped (B, 1, ..., 1) to broadcast against arrays of rank `ndim`."""
    return jnp.asarray(arr, jnp.float32)[t].reshape((-1,) + (1,) * (ndim - 1))


def _mean_flat(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """A draw of x_t ~ q(x_t | x_0) with the given standard normal noise."""
    return _extract(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0 + _extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise


def q_posterior(schedule: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0); the last two shaped (B, 1, ..., 1)."""
    mean = _extract(schedule.posterior_mean_coef1, t, x_t.ndim) * x0 + _extract(schedule.posterior_mean_coef2, t, x_t.ndim) * x_t
    return mean, _extract(schedule.posterior_variance, t, x_t.ndim), _extract(schedule.posterior_log_variance_clipped, t, x_t.ndim)


def _split(output: jax.Array, learn_sigma: bool) -> tuple[jax.Array, jax.Array | None]:
    if not learn_sigma:
        return output, None
    channels = output.shape[-1] // 2
    return output[..., :channels], output[..., channels:]


def _pred_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    recip, recipm1 = _extract(schedule.sqrt_recip_alphas_cumprod, t, x_t.ndim), _extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.ndim)
    return recip * x_t - recipm1 * eps


def _eps(schedule: Schedule, x_t: jax.Array, t: jax.Array, pred_x0: jax.Array) -> jax.Array:
    recip, recipm1 = _extract(schedule.sqrt_recip_alphas_cumprod, t, x_t.ndim), _extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.ndim)
    return (recip * x_t - pred_x0) / recipm1


def p_mean_variance(schedule: Schedule, output: jax.Array, x_t: jax.Array, t: jax.Array, learn_sigma: bool, clip: bool = True) -> dict:
    """The reverse step p(x_{t-1} | x_t) that the model's `output` at x_t defines: its mean,
    variance and log variance (shaped like x_t), and the x_0 it predicts (clipped to [-1, 1] if `clip`)."""
    eps, v = _split(output, learn_sigma)
    min_log = _extract(schedule.posterior_log_variance_clipped, t, x_t.ndim)
    if learn_sigma:
        max_log = _extract(np.log(schedule.betas), t, x_t.ndim)
        frac = (v + 1.0) / 2.0
        log_variance = frac * max_log + (1.0 - frac) * min_log
    else:
        log_variance = jnp.broadcast_to(min_log, x_t.shape)
    pred_x0 = _pred_x0(schedule, x_t, t, eps)
    if clip:
        pred_x0 = jnp.clip(pred_x0, -1.0, 1.0)
    mean, _, _ = q_posterior(schedule, pred_x0, x_t, t)
    return {"mean": mean, "variance": jnp.exp(log_variance), "log_variance": log_variance, "pred_x0": pred_x0}


def normal_kl(mean1, logvar1, mean2, logvar2) -> jax.Array:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def _approx_standard_normal_cdf(x: jax.Array) -> jax.Array:
    # The tanh approximation improved-diffusion uses, kept so that bits per dim compare with theirs.
    return 0.5 * (1.0 + jnp.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: jax.Array, means: jax.Array, log_scales: jax.Array) -> jax.Array:
    """Log probability (nats, elementwise) of x, 8-bit values scaled to [-1, 1], under a Gaussian
    integrated over each value's bin of width 2/255; the end bins reach to -inf and +inf."""
    centered = x - means
    inv_std = jnp.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    # The floors keep the log finite where a bin's mass underflows.
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def vb_terms_bpd(schedule: Schedule, output: jax.Array, x0: jax.Array, x_t: jax.Array, t: jax.Array, learn_sigma: bool) -> jax.Array:
    """Each example's term of the variational bound, in bits per dimension: KL(q(x_{t-1} | x_t, x_0)
    || p(x_{t-1} | x_t)), or at t = 0 the decoder's negative log likelihood of x_0."""
    true_mean, _, true_log_variance = q_posterior(schedule, x0, x_t, t)
    p = p_mean_variance(schedule, output, x_t, t, learn_sigma, clip=False)
    kl = _mean_flat(normal_kl(true_mean, true_log_variance, p["mean"], p["log_variance"])) / np.log(2.0)
    nll = -_mean_flat(discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"])) / np.log(2.0)
    return jnp.where(t == 0, nll, kl)


def training_loss(schedule: Schedule, model, x0: jax.Array, context, key: jax.Array, *, learn_sigma: bool,
                  weight: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """Per-example losses at a uniform random step, and their mean parts: noise MSE ("mse") and,
    with `learn_sigma`, the variational bound ("vb") that trains the variance. `weight` (broadcast
    to x0) counts only part of each example in the MSE, still divided by its full size; the bound
    keeps every element, as VDT's code has both.

    `model(x_t, timesteps, context)` is called with the original timesteps (int32, shape (B,))."""
    t_key, noise_key = jax.random.split(key)
    t = jax.random.randint(t_key, (x0.shape[0],), 0, schedule.num_steps, dtype=jnp.int32)
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    x_t = q_sample(schedule, x0, t, noise)
    output = model(x_t, jnp.asarray(schedule.timesteps, jnp.int32)[t], context).astype(jnp.float32)
    eps, v = _split(output, learn_sigma)
    mse = _mean_flat(jnp.square(noise - eps) * (1.0 if weight is None else weight))
    if not learn_sigma:
        return mse, {"mse": jnp.mean(mse)}
    # The bound would also pull the noise prediction, which the MSE already trains better; through a
    # stop-gradient it trains only v (improved-diffusion's hybrid loss, DiT's plain MSE weighting).
    frozen = jnp.concatenate([jax.lax.stop_gradient(eps), v], axis=-1)
    vb = vb_terms_bpd(schedule, frozen, x0, x_t, t, learn_sigma=True)
    return mse + vb, {"mse": jnp.mean(mse), "vb": jnp.mean(vb)}


def guide(outputs: Sequence[jax.Array], scales: Sequence, *, learn_sigma: bool, channels: int | None) -> jax.Array:
    """Classifier-free guidance as DiT's forward_with_cfg, of the model's outputs for the prompt
    and its weaker contexts (`guidance.chain`; one null: uncond + scale * (cond - uncond)), on the
    first `channels` noise channels only when given (DiT guides 3 of its 4 latent channels); every
    other channel, the variance's included, is the prompt's."""
    cond_out = outputs[0]
    eps_channels = cond_out.shape[-1] // 2 if learn_sigma else cond_out.shape[-1]
    guided = eps_channels if channels is None else channels
    if not 0 < guided <= eps_channels:
        raise ValueError(f"Cannot guide {channels} of {eps_channels} noise channels.")
    eps = guidance.chain([out[..., :guided] for out in outputs], scales)
    return jnp.concatenate([eps.astype(cond_out.dtype), cond_out[..., guided:]], axis=-1)


SAMPLERS = ("ddpm", "ddim")


def sample(schedule: Schedule, denoise: Callable[[jax.Array, jax.Array], jax.Array], keys: jax.Array, shape, *, method: str, eta: float,
           learn_sigma: bool, clip: bool = True) -> jax.Array:
    """Samples of `shape` (B, ...) drawn by walking the schedule from its last step to step 0.

    `denoise(x, timesteps)` is the model's output at x for the original timesteps (int32, (B,)).
    `keys` holds one PRNG key per example, the only source of that example's randomness, so that a
    sample does not depend on the batch it is drawn in. "ddpm" takes ancestral steps; "ddim" takes
    DDIM steps with noise scale `eta` (0: deterministic given the starting noise). `clip`: each
    step's predicted x_0 is clipped to [-1, 1], the range of pixels (latents have none: DiT
    samples them unclipped)."""
    if method not in SAMPLERS:
        raise ValueError(f"Sampler {method!r} must be one of {', '.join(SAMPLERS)}.")
    if len(keys) != shape[0]:
        raise ValueError(f"{len(keys)} keys for a batch of {shape[0]}.")
    pairs = jax.vmap(jax.random.split)(keys)
    start_keys, step_keys = pairs[:, 0], pairs[:, 1]
    normal = jax.vmap(lambda key: jax.random.normal(key, shape[1:], jnp.float32))
    timesteps = jnp.asarray(schedule.timesteps, jnp.int32)

    def step(x, i):
        t = jnp.full((shape[0],), i, jnp.int32)
        p = p_mean_variance(schedule, denoise(x, timesteps[t]), x, t, learn_sigma, clip=clip)
        noise = normal(jax.vmap(jax.random.fold_in, in_axes=(0, None))(step_keys, i))
        if method == "ddpm":
            last = (i == 0).astype(jnp.float32)  # The step to x_0 adds no noise.
            x = p["mean"] + (1.0 - last) * jnp.exp(0.5 * p["log_variance"]) * noise
        else:
            # The noise implied by the clipped x_0, so that the two stay consistent (improved-diffusion).
            eps = _eps(schedule, x, t, p["pred_x0"])
            abar_prev = _extract(schedule.alphas_cumprod_prev, t, x.ndim)
            # DDIM's sigma, eta * sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)), is eta times
            # the posterior's standard deviation: 0 at step 0, and at eta = 1 the DDPM posterior's.
            sigma = eta * jnp.sqrt(_extract(schedule.posterior_variance, t, x.ndim))
            x = p["pred_x0"] * jnp.sqrt(abar_prev) + jnp.sqrt(1.0 - abar_prev - sigma**2) * eps + sigma * noise
        return x.astype(jnp.float32), None

    x, _ = jax.lax.scan(step, normal(start_keys), jnp.arange(schedule.num_steps - 1, -1, -1, dtype=jnp.int32))
    return x
