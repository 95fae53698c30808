"""The flow-matching objective learns: a J-DiT trained by the real step on a few fixed episodes
samples their answers. A break anywhere between the data and the answer (conditioning, time
convention, loss, parameterisation, sampler) fails it in seconds, not after a 10-minute demo."""

import numpy as np
import pytest

from lavin_jax import evaluation, inference
from lavin_jax.data import episodes, scoring
from conftest import fit

pytestmark = pytest.mark.optimized  # its tests train to a bar.

EPISODES = 8


@pytest.mark.parametrize("task", ["invert", "flip"])
def test_a_model_fitted_to_a_few_episodes_samples_their_answers(make_config, task):
    config = make_config(**{
        "data.tasks": (task,), "data.max_pairs": 1, "global_batch_size": EPISODES,
        "total_steps": 300, "optim.warmup_steps": 20,
    })
    source = episodes.Episodes(config.data, config.seed, EPISODES)
    drawn = [source.episode(i, 1) for i in range(EPISODES)]
    batch = {name: np.stack([e[name] for e in drawn]) for name in drawn[0]}
    objective, graphdef, params, mesh, _ = fit(config, batch, config.total_steps)

    # The demo's own sampler and guidance (configs/tiny.py), from noise never trained on.
    answers = inference.Predictor(objective, graphdef, params, objective.constants(), mesh).sample({"cond": batch["cond"]}, 1, seed=5)
    psnr = lambda answer: scoring.METRICS["image"](answer, batch["target"])["psnr"]
    copied, mean_target = psnr(batch["cond"][:, -1:]), psnr(evaluation.mean_target(batch["cond"], 1))
    # Each episode gets its own answer: the model reads its query and its pair, and the sampler
    # integrates the way the loss trained it. 300 steps give 18-20 dB here; the answers of a
    # model that ignores either half of an episode score like the baselines (5-14 dB).
    assert psnr(answers) > max(16.0, copied + 3.0, mean_target + 3.0), (psnr(answers), copied, mean_target)
