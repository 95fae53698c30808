import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lavin_jax import diffusion

DIT = diffusion.linear_schedule(1000, 1e-4, 0.02)
jit = jax.jit  # One compile per test, not one per op.


def oracle(mean, var, learn_sigma=False, v=0.0):
    """denoise(x_t, timesteps): the exact E[eps | x_t] of DIT's process for data x_0 ~ N(mean, var)
    elementwise (var = 0: all data at the point `mean`), plus a constant v if `learn_sigma`."""
    mean = jnp.asarray(mean, jnp.float32)

    def denoise(x, timesteps):
        assert timesteps.dtype == jnp.int32 and timesteps.shape == x.shape[:1]
        a = jnp.asarray(DIT.alphas_cumprod, jnp.float32)[timesteps].reshape((-1,) + (1,) * (x.ndim - 1))
        eps = jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * mean) / (a * var + 1 - a)
        return jnp.concatenate([eps, jnp.full_like(eps, v)], axis=-1) if learn_sigma else eps

    return denoise


def test_linear_schedule_by_hand():
    s = diffusion.linear_schedule(2, 0.1, 0.5)  # abar = 0.9, 0.45.
    assert s.num_steps == 2 and s.timesteps.tolist() == [0, 1]
    np.testing.assert_allclose(s.alphas_cumprod, [0.9, 0.45])
    np.testing.assert_allclose(s.alphas_cumprod_prev, [1.0, 0.9])
    np.testing.assert_allclose(s.posterior_variance, [0.0, 0.5 * 0.1 / 0.55])
    np.testing.assert_allclose(s.posterior_log_variance_clipped, np.log([1 / 11, 1 / 11]))
    np.testing.assert_allclose(s.posterior_mean_coef1, [1.0, 0.5 * math.sqrt(0.9) / 0.55])
    np.testing.assert_allclose(s.posterior_mean_coef2, [0.0, 0.1 * math.sqrt(0.5) / 0.55])
    np.testing.assert_allclose(s.sqrt_recipm1_alphas_cumprod, np.sqrt([1 / 0.9 - 1, 1 / 0.45 - 1]))


def test_dit_schedule():
    assert DIT.num_steps == 1000 and DIT.betas.dtype == np.float64
    np.testing.assert_allclose(DIT.betas[[0, -1]], [1e-4, 0.02])
    np.testing.assert_allclose(DIT.alphas_cumprod, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-12)
    np.testing.assert_array_equal(DIT.timesteps, np.arange(1000))


def fields(schedule):
    return {f.name: getattr(schedule, f.name) for f in dataclasses.fields(schedule)}


def test_respacing_to_every_step_changes_nothing():
    same = diffusion.respace(DIT, 1000)
    for name, value in fields(DIT).items():
        np.testing.assert_allclose(fields(same)[name], value, rtol=1e-9, err_msg=name)
    np.testing.assert_array_equal(same.timesteps, DIT.timesteps)


def test_respacing_keeps_abar_at_evenly_spaced_steps():
    s = diffusion.respace(DIT, 250)
    assert s.num_steps == 250 and s.timesteps[0] == 0 and s.timesteps[-1] == 999
    assert np.all(np.diff(s.timesteps) >= 4) and np.all(np.diff(s.timesteps) <= 5)
    np.testing.assert_allclose(s.alphas_cumprod, DIT.alphas_cumprod[s.timesteps], rtol=1e-12)
    # improved-diffusion's fractional strides over 10 steps, rounded as Python rounds: 4.5 to 4, 1.5 and 7.5 to 2 and 8.
    ten = diffusion.linear_schedule(10, 0.01, 0.2)
    three = diffusion.respace(ten, 3)
    np.testing.assert_array_equal(three.timesteps, [0, 4, 9])
    np.testing.assert_array_equal(diffusion.respace(ten, 7).timesteps, [0, 2, 3, 4, 6, 8, 9])
    np.testing.assert_allclose(three.betas[1], 1 - ten.alphas_cumprod[4] / ten.alphas_cumprod[0])
    # Respacing a respaced schedule indexes its steps, and still names the original timesteps.
    np.testing.assert_array_equal(diffusion.respace(s, 2).timesteps, [0, 999])
    assert diffusion.respace(DIT, 1).timesteps.tolist() == [999]  # One step starts from the noise.
    with pytest.raises(ValueError):
        diffusion.respace(ten, 11)


def test_q_posterior_is_bayes_rule():
    """q(x_{t-1} | x_t, x_0) ∝ N(x_t; sqrt(1 - b_t) x_{t-1}, b_t) N(x_{t-1}; sqrt(abar_{t-1}) x_0, 1 - abar_{t-1})."""
    s = diffusion.linear_schedule(5, 0.05, 0.3)
    rng = np.random.default_rng(0)
    x0, x_t = rng.standard_normal((2, 4, 2, 3))
    t = np.array([1, 2, 3, 4])
    b, abar_prev = s.betas[t][:, None, None], np.append(1.0, s.alphas_cumprod)[t][:, None, None]
    precision = (1 - b) / b + 1 / (1 - abar_prev)
    mean = (np.sqrt(1 - b) * x_t / b + np.sqrt(abar_prev) * x0 / (1 - abar_prev)) / precision
    got_mean, got_var, got_log_var = diffusion.q_posterior(s, jnp.asarray(x0), jnp.asarray(x_t), jnp.asarray(t))
    np.testing.assert_allclose(got_mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_var, 1 / precision, rtol=1e-5)
    np.testing.assert_allclose(got_log_var, -np.log(precision), rtol=1e-5)
    # At t = 0 the posterior is x_0 itself.
    mean0, var0, _ = diffusion.q_posterior(s, jnp.asarray(x0), jnp.asarray(x_t), jnp.zeros(4, jnp.int32))
    np.testing.assert_allclose(mean0, x0, atol=1e-6)
    np.testing.assert_array_equal(var0, 0.0)


def test_q_sample():
    x0, noise = np.random.default_rng(0).standard_normal((2, 3, 4, 2)).astype(np.float32)
    t = np.array([0, 500, 999])
    a = DIT.alphas_cumprod[t][:, None, None]
    np.testing.assert_allclose(diffusion.q_sample(DIT, x0, t, noise), np.sqrt(a) * x0 + np.sqrt(1 - a) * noise, rtol=1e-5, atol=1e-6)


def test_p_mean_variance():
    """v = -1, 1 and 0 give the posterior's log variance, log beta and their midpoint, and without
    learn_sigma the posterior's is taken; x_0 comes from the noise, clipped to [-1, 1] unless told not to."""
    t = np.array([3, 300, 999])
    x, eps = np.full((3, 2, 2, 1), 3.0, np.float32), np.zeros((3, 2, 2, 1), np.float32)
    v = np.array([-1.0, 1.0, 0.0], np.float32).reshape(3, 1, 1, 1) * np.ones_like(x)
    learned, fixed, unclipped = jit(lambda: (
        diffusion.p_mean_variance(DIT, np.concatenate([eps, v], -1), x, t, True),
        diffusion.p_mean_variance(DIT, eps, x, t, False),
        diffusion.p_mean_variance(DIT, eps, x, t, False, clip=False),
    ))()
    lo, hi = DIT.posterior_log_variance_clipped[t], np.log(DIT.betas[t])
    np.testing.assert_allclose(learned["log_variance"][:, 0, 0, 0], [lo[0], hi[1], (lo[2] + hi[2]) / 2], rtol=1e-5)
    np.testing.assert_allclose(learned["variance"], np.exp(learned["log_variance"]), rtol=1e-5)
    assert fixed["log_variance"].shape == x.shape
    np.testing.assert_allclose(fixed["log_variance"][:, 0, 0, 0], lo, rtol=1e-5)
    np.testing.assert_array_equal(fixed["pred_x0"], 1.0)
    np.testing.assert_allclose(unclipped["pred_x0"][:, 0, 0, 0], 3.0 / np.sqrt(DIT.alphas_cumprod[t]), rtol=1e-5)
    coef1, coef2 = DIT.posterior_mean_coef1[t], DIT.posterior_mean_coef2[t]
    np.testing.assert_allclose(fixed["mean"][:, 0, 0, 0], coef1 + 3.0 * coef2, rtol=1e-5)


def test_normal_kl():
    rng = np.random.default_rng(1)
    m1, m2, lv1, lv2 = rng.standard_normal((4, 10))
    np.testing.assert_allclose(diffusion.normal_kl(m1, lv1, m1, lv1), 0.0, atol=1e-6)
    s1, s2 = np.exp(lv1 / 2), np.exp(lv2 / 2)
    expected = np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    np.testing.assert_allclose(diffusion.normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-5)
    assert np.all(np.asarray(diffusion.normal_kl(m1, lv1, m2, lv2)) > 0)


def test_discretized_likelihood_is_a_distribution_over_the_256_values():
    centres = jnp.linspace(-1.0, 1.0, 256)[:, None]
    means, log_scales = jnp.array([[-1.0, -0.3, 0.0, 0.5, 0.99]]), jnp.log(jnp.array([[0.02, 0.1, 0.5, 1.0, 3.0]]))
    logp = diffusion.discretized_gaussian_log_likelihood(centres, jnp.broadcast_to(means, (256, 5)), jnp.broadcast_to(log_scales, (256, 5)))
    np.testing.assert_allclose(jnp.exp(logp).sum(0), 1.0, atol=1e-4)
    # A middle bin holds about the exact Gaussian mass over it (the CDF is an approximation).
    x, mean, scale = 0.2, 0.1, 0.05
    exact = 0.5 * (math.erf((x + 1 / 255 - mean) / scale / math.sqrt(2)) - math.erf((x - 1 / 255 - mean) / scale / math.sqrt(2)))
    got = math.exp(float(diffusion.discretized_gaussian_log_likelihood(jnp.array(x), jnp.array(mean), jnp.log(jnp.array(scale)))))
    assert abs(got - exact) < 0.01 * exact


def test_vb_terms_vanish_for_the_true_posterior():
    """With the exact noise and v = -1 (the posterior's variance) the KL terms are 0; with v = 1 not."""
    rng = np.random.default_rng(0)
    x0, noise = rng.uniform(-1, 1, (3, 2, 4, 4, 2)).astype(np.float32), rng.standard_normal((3, 2, 4, 4, 2)).astype(np.float32)
    out = lambda v: jnp.concatenate([noise, jnp.full_like(noise, v)], axis=-1)

    @jit
    def terms(v, t):
        x_t = diffusion.q_sample(DIT, x0, t, noise)
        p = diffusion.p_mean_variance(DIT, out(v), x_t, t, learn_sigma=True, clip=False)
        nll = -diffusion.discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"]).mean((1, 2, 3, 4)) / math.log(2)
        return diffusion.vb_terms_bpd(DIT, out(v), x0, x_t, t, learn_sigma=True), nll

    t = jnp.array([1, 5, 20])  # Late steps' posterior variance is nearly beta itself.
    np.testing.assert_allclose(terms(-1.0, t)[0], 0.0, atol=1e-4)
    assert np.all(np.asarray(terms(1.0, t)[0]) > 1e-3)
    # At t = 0 the term is the decoder's negative log likelihood of x_0 in bits per dim.
    vb, nll = terms(0.5, jnp.zeros(3, jnp.int32))
    np.testing.assert_allclose(vb, nll, rtol=1e-6)


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_training_loss_of_an_oracle(learn_sigma):
    """A model that knows x_0 returns the true noise, when it is called with the original timesteps."""
    schedule = diffusion.respace(DIT, 50)
    x0 = np.random.default_rng(0).uniform(-1, 1, (16, 2, 4, 4, 3)).astype(np.float32)
    seen = []

    def model(x_t, timesteps, context):
        assert context == {"label": 7}
        seen.append(timesteps)
        a = jnp.asarray(DIT.alphas_cumprod, jnp.float32)[timesteps][:, None, None, None, None]
        eps = (x_t - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
        return jnp.concatenate([eps, -jnp.ones_like(eps)], axis=-1) if learn_sigma else eps

    @jit
    def loss(key):
        losses, stats = diffusion.training_loss(schedule, model, x0, {"label": 7}, key, learn_sigma=learn_sigma)
        return losses, stats, seen[-1]

    losses, stats, timesteps = loss(jax.random.key(1))
    assert losses.shape == (16,) and set(stats) == ({"mse", "vb"} if learn_sigma else {"mse"})
    assert float(stats["mse"]) < 1e-6
    assert set(np.asarray(timesteps).tolist()) <= set(schedule.timesteps.tolist()) and np.asarray(timesteps).max() > 50
    if learn_sigma:  # The exact posterior: bound terms are 0 except the decoder's at t = 0.
        np.testing.assert_allclose(np.asarray(losses)[np.asarray(timesteps) > 0], 0.0, atol=1e-4)
        np.testing.assert_allclose(float(jnp.mean(losses)), float(stats["mse"] + stats["vb"]), rtol=1e-5)


def test_the_bound_trains_only_the_variance():
    rng = np.random.default_rng(0)
    x0, offsets = rng.uniform(-1, 1, (8, 4, 4, 2)).astype(np.float32), rng.standard_normal((2, 8, 4, 4, 2)).astype(np.float32)

    def stats(params):
        model = lambda x, t, c: jnp.concatenate([params["eps"] * offsets[0], params["v"] * offsets[1]], axis=-1)
        return diffusion.training_loss(DIT, model, x0, None, jax.random.key(1), learn_sigma=True)[1]

    params = {"eps": jnp.float32(0.3), "v": jnp.float32(0.2)}
    vb, mse = jit(lambda p: (jax.grad(lambda p: stats(p)["vb"])(p), jax.grad(lambda p: stats(p)["mse"])(p)))(params)
    assert float(vb["eps"]) == 0.0 and float(vb["v"]) != 0.0
    assert float(mse["eps"]) != 0.0 and float(mse["v"]) == 0.0


def test_guidance():
    cond, uncond = np.random.default_rng(0).standard_normal((2, 2, 1, 3, 3, 8)).astype(np.float32)  # (B, F, H, W, 2C)
    same, guided, every = jit(lambda c, u: (
        diffusion.guide([c, u], [1.0], learn_sigma=True, channels=None),
        diffusion.guide([c, u], [4.0], learn_sigma=True, channels=3),
        diffusion.guide([c, u], [4.0], learn_sigma=False, channels=None),
    ))(cond, uncond)
    np.testing.assert_allclose(same, cond, atol=1e-6)
    assert guided.shape == cond.shape
    np.testing.assert_allclose(guided[..., :3], uncond[..., :3] + 4.0 * (cond[..., :3] - uncond[..., :3]), rtol=1e-6)
    np.testing.assert_array_equal(guided[..., 3:], cond[..., 3:])  # the fourth noise channel and the variance.
    np.testing.assert_allclose(every, uncond + 4.0 * (cond - uncond), rtol=1e-6)
    with pytest.raises(ValueError):
        diffusion.guide([cond, uncond], [4.0], learn_sigma=True, channels=5)


SHAPE = (4, 2, 4, 4, 3)


@pytest.mark.parametrize("method, steps, learn_sigma", [("ddpm", 50, True), ("ddim", 20, False)])
def test_sampling_finds_the_single_data_point(method, steps, learn_sigma):
    target = np.random.default_rng(0).uniform(-0.9, 0.9, SHAPE).astype(np.float32)
    keys = jax.random.split(jax.random.key(1), SHAPE[0])
    schedule, denoise = diffusion.respace(DIT, steps), oracle(target, 0.0, learn_sigma)
    x = jit(lambda keys: diffusion.sample(schedule, denoise, keys, SHAPE, method=method, eta=0.0, learn_sigma=learn_sigma))(keys)
    np.testing.assert_allclose(x, target, atol=1e-3)


def gaussian_moments(schedule, mean, var, method, eta):
    """Mean and variance of what the sampler draws with oracle(mean, var): each step is then affine in
    x_t plus Gaussian noise, so the moments follow exactly (no clipping happens at this spread)."""
    m, v = 0.0, 1.0
    for i in reversed(range(schedule.num_steps)):
        a, a_prev = schedule.alphas_cumprod[i], schedule.alphas_cumprod_prev[i]
        d = a * var + 1 - a
        x0 = np.array([np.sqrt(a) * var / d, mean * (1 - a) / d])  # E[x_0 | x_t] = x0[0] x_t + x0[1].
        eps = np.array([np.sqrt(1 - a) / d, -np.sqrt(a * (1 - a)) * mean / d])  # E[eps | x_t], likewise.
        if method == "ddpm":  # q(x_{t-1} | x_t, E[x_0 | x_t]), without noise at the last step.
            affine = schedule.posterior_mean_coef1[i] * x0 + [schedule.posterior_mean_coef2[i], 0.0]
            noise = schedule.posterior_variance[i] if i else 0.0
        else:
            noise = eta**2 * schedule.posterior_variance[i]
            affine = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - noise) * eps
        m, v = affine[0] * m + affine[1], affine[0] ** 2 * v + noise
    return m, v


@pytest.mark.parametrize("method, eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0)])
def test_sampling_a_gaussian_data_distribution(method, eta):
    """Data N(0.1, 0.15^2) and the exact noise predictor: 50 steps draw the moments that the steps'
    formulas imply (spreads short of the data's, DDPM's by a quarter, DDIM's at eta 0 by a sixth)."""
    schedule = diffusion.respace(DIT, 50)
    keys = jax.random.split(jax.random.key(2), 2048)
    x = jit(lambda keys: diffusion.sample(schedule, oracle(0.1, 0.15**2), keys, (2048, 8), method=method, eta=eta, learn_sigma=False))(keys)
    mean, var = gaussian_moments(schedule, 0.1, 0.15**2, method, eta)
    assert abs(float(x.mean()) - mean) < 0.005
    assert abs(float(x.std()) / np.sqrt(var) - 1) < 0.02


def test_sampling_is_determined_by_each_example_key():
    schedule, denoise = diffusion.respace(DIT, 10), oracle(0.0, 0.3, learn_sigma=True, v=0.5)
    keys = jax.random.split(jax.random.key(3), 8)

    @functools.partial(jit, static_argnums=1)
    def run(keys, method, eta):
        return diffusion.sample(schedule, denoise, keys, (len(keys), 5, 3), method=method, eta=eta, learn_sigma=True)

    ddpm = run(keys[:4], "ddpm", 0.0)
    np.testing.assert_allclose(run(keys[:2], "ddpm", 0.0), ddpm[:2], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(run(keys[2:4], "ddpm", 0.0), ddpm[2:], rtol=1e-6, atol=1e-6)  # not where in the batch.
    assert not np.allclose(ddpm[0], ddpm[1])
    # Keys sharded over the batch, as a data-parallel sampler holds them, give the same samples.
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.device_put(keys, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    np.testing.assert_allclose(run(sharded, "ddpm", 0.0)[:4], ddpm, rtol=1e-6, atol=1e-6)
    ddim = run(keys[:4], "ddim", 0.0)
    np.testing.assert_array_equal(run(keys[:4], "ddim", 0.0), ddim)
    assert not np.allclose(run(keys[:4], "ddim", 1.0), ddim, atol=1e-3)  # eta scales the step noise.


def test_sampling_rejects_bad_arguments():
    keys = jax.random.split(jax.random.key(0), 2)
    with pytest.raises(ValueError):
        diffusion.sample(DIT, oracle(0.0, 0.0), keys, (2, 3), method="euler", eta=0.0, learn_sigma=False)
    with pytest.raises(ValueError):
        diffusion.sample(DIT, oracle(0.0, 0.0), keys, (3, 3), method="ddpm", eta=0.0, learn_sigma=False)
