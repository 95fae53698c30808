"""The DDPM objective learns: a DiT trained by the real step on one digit of each class draws,
for each label, its class's digit, by ancestral and by DDIM sampling. A break between the labels
and the image (label embedding, noise schedule, loss, learned variance, respacing, sampler,
guidance) fails it in seconds."""

import numpy as np
import pytest

from lavin_jax import diffusion, inference
from lavin_jax.objectives import ddpm
from conftest import digits_config, fit, one_digit_per_class

pytestmark = pytest.mark.optimized  # its tests train to a bar.


@pytest.fixture(scope="module")
def fitted():
    config = digits_config(**{"objective": "ddpm", "model.learn_sigma": True, "ddpm.cfg_scale": 4.0, "global_batch_size": 16,
                              "total_steps": 1000, "optim.warmup_steps": 20, "data.cond_drop_prob": 0.0})
    images, batch = one_digit_per_class(config)
    return (config, images, *fit(config, batch, config.total_steps))


# Measured after 1000 steps: 9 of 10 by ancestral sampling, 7 of 10 by 20 deterministic DDIM steps.
@pytest.mark.parametrize("options,least", [({}, 0.8), ({"sampler": "ddim", "steps": 20}, 0.6)])
def test_a_model_fitted_to_one_digit_per_class_draws_each_labels_digit(fitted, options, least):
    config, images, objective, graphdef, params, mesh, stats = fitted
    assert set(stats) >= {"mse", "vb"} and np.isfinite(stats["loss"])
    drawn = inference.Predictor(objective, graphdef, params, objective.constants(), mesh).sample({"label": np.arange(10, dtype=np.int32)}, 1, seed=3,
                                                                               **options)[:, 0]
    distances = ((drawn[:, None] - images[None]) ** 2).mean(axis=(2, 3, 4))  # [sample, class image]
    # Each label's sample is nearest its own class's digit; a model that ignores the label draws
    # one average digit for all (1 of 10 by chance).
    assert (distances.argmin(axis=1) == np.arange(10)).mean() >= least, distances.argmin(axis=1)


def test_samples_are_a_function_of_the_seed_and_their_index(fitted):
    _, _, objective, graphdef, params, mesh, _ = fitted
    predictor = inference.Predictor(objective, graphdef, params, objective.constants(), mesh)
    four = predictor.sample({"label": np.array([1, 2, 3, 4], np.int32)}, 1, seed=7, steps=5)
    two = predictor.sample({"label": np.array([1, 2], np.int32)}, 1, seed=7, steps=5)
    np.testing.assert_allclose(four[:2], two, atol=1e-5)
    assert not np.allclose(predictor.sample({"label": np.array([1, 2], np.int32)}, 1, seed=8, steps=5), two, atol=1e-3)


def test_the_schedule_is_dits_and_scales_with_the_step_count():
    config = digits_config(objective="ddpm")
    schedule = ddpm.DDPM(config).schedule
    np.testing.assert_allclose(schedule.betas[[0, -1]], [1e-4, 0.02])
    config.ddpm.num_steps = 500  # betas scaled by 1000/500: the same noise at the last step.
    half = ddpm.DDPM(config).schedule
    np.testing.assert_allclose(half.betas[[0, -1]], [2e-4, 0.04])
    assert abs(half.alphas_cumprod[-1] - diffusion.linear_schedule(1000, 1e-4, 0.02).alphas_cumprod[-1]) < 1e-4


def test_the_power_cosine_guidance_rises_from_one_at_the_noise_to_the_scale_at_the_data():
    # DiffiT's 256 px sampler at cfg 4.4 and power 4, at these original timesteps.
    t = np.array([999, 750, 500, 300, 200, 100, 50, 0])
    expected = [1.0, 1.0001, 1.033, 1.461, 2.224, 3.501, 4.119, 4.4]
    np.testing.assert_allclose(ddpm.guidance_at(4.4, t, 1000, "power_cosine", 4.0), expected, atol=1.5e-3)
    np.testing.assert_allclose(ddpm.guidance_at(1.49, t, 1000, "constant", 4.0), np.full(8, 1.49))
