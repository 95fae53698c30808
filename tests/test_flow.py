import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lavin_jax import flow


def flow_config(**fields):
    c = ml_collections.ConfigDict(
        dict(t_mean=0.0, t_std=1.0, shift=1.0, l1_weight=0.1, sample_steps=7, time_grid="lavin", cfg_scale=1.0,
             prediction="velocity", min_remaining=0.05)
    )
    c.update(fields)
    return c


def test_euler_integrates_a_constant_velocity_exactly():
    x0 = jax.random.normal(jax.random.key(0), (3, 1, 4, 4, 2))
    velocity = jax.random.normal(jax.random.key(1), x0.shape)
    x1 = flow.integrate(lambda x, t: velocity, x0, flow.time_grid(9))
    np.testing.assert_allclose(x1, x0 + velocity, atol=1e-5)


def test_euler_follows_a_straight_path_to_its_data_point():
    """On the path x_t = t*x1 + (1-t)*x0 the velocity x1 - x0 is constant: Euler lands on x1."""
    x0, x1 = jax.random.normal(jax.random.key(2), (2, 5, 3))
    data = lambda x, t: x1 - x0
    np.testing.assert_allclose(flow.integrate(data, x0, flow.time_grid(4)), x1, atol=1e-5)
    assert not np.allclose(flow.integrate(data, x0, [0.0, 0.5]), x1, atol=1e-2)  # half way only.


def test_heun_is_exact_where_the_velocity_is_linear_in_time_and_euler_is_not():
    """dx/dt = t from x0 over [0, 1] ends at x0 + 1/2; Heun's trapezoid is exact, Euler's left sum
    falls short by 1/(2n) on n uniform steps."""
    x0 = jnp.zeros((2, 3))
    velocity = lambda x, t: jnp.broadcast_to(t[:, None], x.shape)
    grid = flow.time_grid(4, "uniform")
    np.testing.assert_allclose(flow.integrate(velocity, x0, grid, "heun"), 0.5, atol=1e-6)
    np.testing.assert_allclose(flow.integrate(velocity, x0, grid, "euler"), 0.5 - 1 / 8, atol=1e-6)
    with pytest.raises(ValueError, match="Sampler 'rk4' must be one of euler, heun"):
        flow.integrate(velocity, x0, grid, "rk4")


def test_uniform_time_grid():
    np.testing.assert_allclose(flow.time_grid(4, "uniform"), [0.0, 0.25, 0.5, 0.75, 1.0])
    with pytest.raises(ValueError, match="Time grid 'cosine' must be one of lavin, uniform, official"):
        flow.time_grid(4, "cosine")


def test_the_official_grid_has_twenty_points_and_the_lavin_grid_shares_its_uniform_head():
    official = flow.time_grid(19, "official")
    assert len(official) == 20 and official[0] == 0.0 and official[-1] == 1.0 and np.all(np.diff(official) > 0)
    np.testing.assert_allclose(flow.time_grid(19)[:10], official[:10], atol=5e-5)
    with pytest.raises(ValueError, match="The official time grid has 19 steps, not 10"):
        flow.time_grid(10, "official")


@pytest.mark.parametrize("steps", [1, 3, 19, 40])
def test_time_grid_runs_from_noise_to_data_densest_near_noise(steps):
    grid = flow.time_grid(steps)
    assert len(grid) == steps + 1 and grid[0] == 0.0 and grid[-1] == pytest.approx(1.0)
    assert np.all(np.diff(grid) > 0)
    if steps >= 3:
        assert np.diff(grid)[0] < np.diff(grid)[-1]


def test_interpolation_convention_t0_noise_t1_data():
    x0, x1 = jnp.zeros((2, 3)), jnp.ones((2, 3))
    np.testing.assert_array_equal(flow.interpolate(x0, x1, jnp.array([0.0, 1.0])), [[0, 0, 0], [1, 1, 1]])


def test_time_sampling_logit_normal_and_shift():
    key = jax.random.key(3)
    t = flow.sample_time(key, 20_000, flow_config())
    assert 0 < float(t.min()) and float(t.max()) < 1
    assert float(jnp.median(t)) == pytest.approx(0.5, abs=0.02)
    shifted = flow.sample_time(key, 20_000, flow_config(shift=3.0))
    assert float(jnp.median(shifted)) == pytest.approx(0.25, abs=0.02)  # 0.5 / (0.5 + 3 * 0.5)


def test_loss_of_the_true_velocity_is_zero_and_weights_l1():
    """A model that knows the noise predicts x1 - x0 exactly; an off-by-c model pays c**2 + w*c."""
    batch = {"target": jax.random.normal(jax.random.key(4), (4, 1, 2, 2, 3))}
    key = jax.random.key(5)
    noise = jax.random.normal(jax.random.split(key)[0], batch["target"].shape)
    exact = lambda x, t, context: batch["target"] - noise
    loss, _ = flow.loss(exact, batch, key, flow_config())
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    off = lambda x, t, context: batch["target"] - noise + 0.5
    loss, aux = flow.loss(off, batch, key, flow_config(l1_weight=0.1))
    assert float(loss) == pytest.approx(0.25 + 0.05, rel=1e-5)
    assert float(aux["mse"]) == pytest.approx(0.25, rel=1e-5)


def test_model_never_sees_the_target():
    seen = {}

    def model(x, t, context):
        seen.update(context)
        return x

    flow.loss(model, {"target": jnp.ones((2, 1, 2, 2, 1)), "cond": jnp.zeros((2, 3, 2, 2, 1))},
              jax.random.key(0), flow_config())
    assert set(seen) == {"cond"}


def test_guidance_extrapolates_from_the_unconditional_velocity():
    """With v_cond = a and v_uncond = b constant, guided sampling moves by b + s(a - b); with a
    second, weaker null of velocity m (GenTron's motion-free one), by m + s(a - b) + s2(b - m)."""
    a, b, m = 2.0, 0.5, -1.0

    def model(x, t, context):
        return jnp.full_like(x, {5: a, 2: b, 1: m}[context["cond"].shape[1]])

    context, uncond, weaker = ({"cond": jnp.ones((1, n, 2, 2, 1))} for n in (5, 2, 1))
    x0 = jax.random.normal(jax.random.key(7), (1, 2, 2, 1))[None]
    draw = lambda nulls, scales: flow.sample(model, context, jax.random.key(7)[None], (1, 1, 2, 2, 1), flow.time_grid(3), nulls=nulls, scales=scales)
    for scale in (1.0, 1.5, 3.0):
        out = draw([] if scale == 1.0 else [uncond], [] if scale == 1.0 else [scale])
        np.testing.assert_allclose(out, x0 + b + scale * (a - b), atol=1e-5)
    np.testing.assert_allclose(draw([uncond, weaker], [3.0, 2.0]), x0 + m + 3.0 * (a - b) + 2.0 * (b - m), atol=1e-5)
    np.testing.assert_allclose(draw([uncond, weaker], [3.0, 1.0]), draw([uncond], [3.0]), atol=1e-5)
