import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lavin_jax import config as config_lib
from lavin_jax import edm


def settings(precond="edm", **fields):
    e = config_lib.base("diffit_image").edm
    e.precond = precond
    e.update(fields)
    return e


def vp_time_by_bisection(sigma, beta_d=19.9, beta_min=0.1):
    low, high = 0.0, 1.0
    for _ in range(80):
        middle = (low + high) / 2
        low, high = (middle, high) if np.sqrt(np.expm1(0.5 * beta_d * middle**2 + beta_min * middle)) < sigma else (low, middle)
    return (low + high) / 2


@pytest.mark.parametrize("sigma", [0.002, 0.3, 1.0, 7.5, 80.0])
def test_preconditioning_is_table_1s_closed_form(sigma):
    got = {p: [float(v) for v in edm.coefficients(jnp.float32(sigma), settings(p))] for p in edm.PRECONDITIONINGS}
    s2, sd2 = sigma**2, 0.25
    expected = {
        "edm": [sd2 / (s2 + sd2), sigma * 0.5 / np.sqrt(s2 + sd2), 1 / np.sqrt(s2 + sd2), np.log(sigma) / 4],
        "vp": [1.0, -sigma, 1 / np.sqrt(s2 + 1), 999 * vp_time_by_bisection(sigma)],
        "ve": [1.0, sigma, 1.0, np.log(sigma / 2)],
    }
    for p in edm.PRECONDITIONINGS:
        np.testing.assert_allclose(got[p], expected[p], rtol=2e-4, atol=1e-6, err_msg=p)
        # The loss weight undoes c_out: F's own regression target has weight one.
        weight = float(edm.loss_weight(jnp.float32(sigma), settings(p)))
        np.testing.assert_allclose(weight * expected[p][1] ** 2, 1.0, rtol=1e-4, err_msg=p)


def test_edms_network_sees_unit_variance_inputs_and_targets():
    """For data of standard deviation sigma_data, c_in x and F's target (y - c_skip x) / c_out
    are unit-variance at every sigma (the point of the parameterisation)."""
    ky, kn = jax.random.split(jax.random.key(0))
    y = 0.5 * jax.random.normal(ky, (200_000,))
    for sigma in (0.01, 0.5, 20.0):
        x = y + sigma * jax.random.normal(kn, y.shape)
        c_skip, c_out, c_in, _ = edm.coefficients(jnp.float32(sigma), settings())
        np.testing.assert_allclose([float(jnp.std(c_in * x)), float(jnp.std((y - c_skip * x) / c_out))], [1.0, 1.0], rtol=0.01)


def test_the_sigma_grid_is_rho_spaced_from_sigma_max_down_to_zero():
    grid = edm.sigma_grid(18, 0.002, 80.0, 7.0)
    assert grid.shape == (19,) and grid[0] == pytest.approx(80.0) and grid[-2] == pytest.approx(0.002) and grid[-1] == 0.0
    assert np.all(np.diff(grid) < 0)
    np.testing.assert_allclose(np.diff(grid[:-1] ** (1 / 7)), np.diff(grid[:-1] ** (1 / 7))[0])  # equal steps in sigma^(1/rho).


def gaussian_network(mean, std):
    """The network F whose VE-preconditioned denoiser is exact for data N(mean, std^2)."""

    def network(x, c_noise, context):
        sigma = (2 * jnp.exp(c_noise)).reshape(-1, *([1] * (x.ndim - 1)))
        denoised = (std**2 * x + sigma**2 * mean) / (std**2 + sigma**2)
        return (denoised - x) / sigma

    return network


@pytest.mark.parametrize("steps, churn, tolerance", [(18, 0.0, 0.02), (100, 40.0, 0.01)])
def test_heun_steps_with_the_exact_denoiser_draw_the_data_distribution(steps, churn, tolerance):
    """Data N(1.5, 0.3^2): the exact denoiser is known, so the sampler alone decides the result;
    the stochastic sampler (churn) needs more steps for the same error, as in EDM's paper."""
    e = settings("ve")
    grid = edm.sigma_grid(steps, 0.02, 80.0, 7.0)
    keys = jax.random.split(jax.random.key(1), 4096)
    draw = jax.jit(lambda keys: edm.sample(gaussian_network(1.5, 0.3), {}, keys, (4096, 1, 2, 2, 1), grid, e, churn=churn))
    samples = np.asarray(draw(keys))
    assert abs(samples.mean() - 1.5) < tolerance and abs(samples.std() - 0.3) < tolerance
    # Example b's sample depends on keys[b] alone.
    np.testing.assert_allclose(np.asarray(draw(keys[::-1]))[::-1], samples, atol=1e-5)


def test_one_step_lands_on_the_denoised_noise_and_guidance_chains_the_nulls():
    e = settings("ve")
    grid = edm.sigma_grid(1, 0.02, 80.0, 7.0)
    keys = jax.random.split(jax.random.key(2), 8)
    network = gaussian_network(1.5, 0.3)
    x0 = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), (1, 2, 2, 1)))(keys) * 80.0
    expected = edm.denoiser(network, e)(x0, jnp.full((8,), 80.0), {})
    np.testing.assert_allclose(edm.sample(network, {}, keys, (8, 1, 2, 2, 1), grid, e), expected, rtol=1e-5)
    # Guided against a null whose data mean is 0: f(null) + s (f(c) - f(null)).
    shifted = lambda x, c, context: gaussian_network(context["mean"], 0.3)(x, c, context)
    guided = edm.sample(shifted, {"mean": 1.5}, keys, (8, 1, 2, 2, 1), grid, e, nulls=[{"mean": 0.0}], scales=[2.0])
    null = edm.denoiser(shifted, e)(x0, jnp.full((8,), 80.0), {"mean": 0.0})
    np.testing.assert_allclose(guided, null + 2.0 * (expected - null), rtol=1e-5, atol=1e-6)
