"""The EDM objective learns: a small image-space DiffiT trained by the real step on one digit of
each class draws, for each label, its class's digit with EDM's Heun sampler. A break between the
labels and the image (class embedding, TMSA's time, preconditioning, loss weights, sigma grid,
sampler, guidance) fails it."""

import numpy as np
import pytest

from lavin_jax import inference
from conftest import fit, one_digit_per_class, shipped_config

pytestmark = pytest.mark.optimized  # its tests train to a bar.


# configs/diffit_digits.py made small: 8 px digits, two resolutions (8 and 4 px), one 4 x 4 window.
SMALL = {"data.image_size": 8, "model.channels": (16, 32), "model.num_heads": 2, "model.time_width": 32, "model.groups": 4,
         "global_batch_size": 16, "edm.sample_steps": 8, "eval.episodes": 2, "sample.num_examples": 2, "compile_cache": "",
         "optim.warmup_steps": 20, "data.cond_drop_prob": 0.0}


@pytest.fixture(scope="module")
def fitted():
    config = shipped_config("diffit_digits", SMALL, {"total_steps": 300})
    images, batch = one_digit_per_class(config)
    return (config, images, *fit(config, batch, config.total_steps))


@pytest.mark.parametrize("options", [{}, {"churn": 5.0, "steps": 12}])
def test_a_model_fitted_to_one_digit_per_class_draws_each_labels_digit(fitted, options):
    config, images, objective, graphdef, params, mesh, stats = fitted
    assert set(stats) >= {"mse", "sigma"} and np.isfinite(stats["loss"])
    predictor = inference.Predictor(objective, graphdef, params, objective.constants(), mesh)
    drawn = predictor.sample({"label": np.arange(10, dtype=np.int32)}, 1, seed=3, **options)[:, 0]
    distances = ((drawn[:, None] - images[None]) ** 2).mean(axis=(2, 3, 4))  # [sample, class image]
    # A model that ignores the label draws one average digit for all (1 of 10 by chance).
    assert (distances.argmin(axis=1) == np.arange(10)).mean() >= 0.8, distances.argmin(axis=1)
    assert objective.model_calls(*objective.sample_options(**options)) == 2 * options.get("steps", 8) - 1


def test_any_family_trains_and_samples_by_edm():
    """DiT, a transformer the objective knows nothing of, on the same seam (in VP's parameterisation)."""
    from conftest import digits_config

    config = digits_config(**{"objective": "edm", "edm.precond": "vp", "edm.sample_steps": 3, "model.depth": 1})
    labels = np.arange(16, dtype=np.int32) % 10
    batch = {"target": np.zeros((16, 1, 8, 8, 3), np.float32), "label": labels, "skipped": np.zeros(16, np.int32)}
    objective, graphdef, params, mesh, stats = fit(config, batch, 2)
    assert np.isfinite(stats["loss"]) and stats["sigma"] > 0
    drawn = inference.Predictor(objective, graphdef, params, objective.constants(), mesh).sample({"label": labels[:2]}, 1, seed=0)
    assert drawn.shape == (2, 1, 8, 8, 3) and np.all(np.isfinite(drawn))
