"""The benchmark harness runs and reports consistent figures (no timing is asserted)."""

import pytest

from conftest import small_config
from lavin_jax import bench


def test_the_train_step_report_is_consistent():
    config = small_config(**{"data.max_pairs": 1, "data.cond_drop_prob": 0.0, "eval_every": 0})
    report = bench.train_step(config, steps=2, peak_tflops=1.0)
    # One pair and a query of 1-frame items, then the answer: 4 frames of 16 tokens.
    assert report["tokens_per_example"] == 4 * 16
    assert report["tokens_per_sec"] == pytest.approx(report["examples_per_sec"] * 64)
    assert report["examples_per_sec"] == pytest.approx(config.global_batch_size / report["step_seconds"])
    per_device = report["model_flops_per_example"] * report["examples_per_sec"] / report["devices"] / 1e12
    assert report["tflops_per_sec_per_device"] == pytest.approx(per_device) and report["mfu"] == pytest.approx(per_device)
    assert report["compile_seconds"] > 0


def test_a_config_of_another_model_is_refused():
    from conftest import shipped_config

    with pytest.raises(ValueError, match="config.model.name='stvae': the train-step benchmark counts J-DiT FLOPs"):
        bench.train_step(shipped_config("stvae_tiny", {}, {}), steps=1)
