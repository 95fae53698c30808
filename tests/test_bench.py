"""The benchmark harness runs every part and reports consistent figures (no timing is asserted)."""

import gzip
import importlib.util
import json
import os

import jax
import pytest

from conftest import digits_config, shipped_config, small_config
from lavin_jax import bench, parallel
from lavin_jax.models import flops
from lavin_jax import state as state_lib

# One pair of 1-frame items: the train step and the pipeline have one shape.
CONFIG = {"data.max_pairs": 1, "data.cond_drop_prob": 0.0, "eval_every": 0, "checkpoint_every": 50}


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    config = small_config(**CONFIG)
    profile = tmp_path_factory.mktemp("profile")
    return config, bench.run(config, steps=2, sample_batch=2, peak_tflops=1.0, profile_dir=str(profile))


def test_every_part_that_applies_is_measured(measured):
    _, report = measured
    assert [p for p in bench.PARTS if p in report] == ["train", "sample", "data", "checkpoint"]  # pixels: no ST-VAE.
    assert report["devices"] == 8 and report["peak_tflops"] == 1.0 and report["date"]


def test_the_train_step_report_is_consistent(measured):
    config, report = measured
    r = report["train"]
    # One pair and a query of 1-frame items, then the answer: 4 frames of 16 tokens.
    assert r["tokens_per_example"] == 4 * 16
    assert r["model_flops_per_example"] == 3 * flops.forward(config.model, {"target": (1, 16, 16, 3), "cond": (3, 16, 16, 3)})
    assert r["tokens_per_sec"] == pytest.approx(r["examples_per_sec"] * 64)
    assert r["examples_per_sec"] == pytest.approx(config.global_batch_size / r["step_seconds"])
    per_device = r["model_flops_per_example"] * r["examples_per_sec"] / 8 / 1e12
    assert r["tflops_per_sec_per_device"] == pytest.approx(per_device) and r["mfu"] == pytest.approx(per_device)
    assert r["compile_seconds"] > 0
    assert r["vae_encode_flops_per_example"] == r["vae_share_of_flops"] == 0  # pixel space: no ST-VAE.


def test_sampling_counts_both_guidance_branches_of_every_step(measured):
    config, report = measured
    r = report["sample"]
    assert (r["model_calls"], r["guided"]) == (3, True)
    # Each step: the episode [in, target, query] and its unconditional branch [0, query].
    forward = lambda cond: flops.forward(config.model, {"target": (1, 16, 16, 3), "cond": (cond, 16, 16, 3)})
    assert r["model_flops_per_example"] == 3 * (forward(3) + forward(2))
    for n in (1, 2):
        batch = r[f"batch_{n}"]
        assert batch["seconds_per_example"] == pytest.approx(batch["seconds"] / n)
        # 1 or 2 episodes cannot be split over 8 batch shards: every device samples them whole.
        assert batch["tflops_per_sec_per_device"] == pytest.approx(r["model_flops_per_example"] * n / batch["seconds"] / 1e12)


def test_a_class_conditional_dit_is_measured_by_the_same_parts():
    config = digits_config(**{"objective": "ddpm", "model.learn_sigma": True, "eval_every": 0, "ddpm.sample_steps": 4})
    report = bench.run(config, ["train", "sample"], steps=1, sample_batch=2)
    one = {"target": (1, 8, 8, 3), "label": ()}
    assert report["train"]["tokens_per_example"] == 16  # 8 px in 2 px patches.
    assert report["train"]["model_flops_per_example"] == 3 * flops.forward(config.model, one)
    # Every DDPM step runs the labelled and the null-class branch: the same FLOPs each.
    assert (report["sample"]["model_calls"], report["sample"]["guided"]) == (4, True)
    assert report["sample"]["model_flops_per_example"] == 4 * 2 * flops.forward(config.model, one)


def test_data_and_checkpoint_costs_are_shares_of_the_step(measured):
    config, report = measured
    d, c = report["data"], report["checkpoint"]
    assert d["shapes"] == 1 and d["pipeline_examples_per_sec"] > 0 and d["waited_seconds_per_step"] >= 0
    assert d["share_of_step"] == pytest.approx(d["step_seconds_live"] / d["step_seconds_read_before"] - 1)
    # step, params, EMA and Adam's two moments (and its count), in float32.
    s = state_lib.setup(config, parallel.make_mesh(config))
    assert c["state_bytes"] == sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(s.abstract_state))
    assert 0 < c["save_hold_seconds"] <= c["save_written_seconds"]
    assert c["share_of_step"] == pytest.approx(c["save_hold_seconds"] / (50 * report["train"]["step_seconds"]))


def test_the_profile_says_where_the_step_went(measured):
    _, report = measured
    for part in ("train", "sample"):
        profile = report[part]["profile"]
        assert os.path.exists(profile["trace"]) and profile["op_ms"] > 0
        shares = [share for _, _, share in profile["top"]]
        assert 0 < sum(shares) <= 1 + 1e-6 and shares == sorted(shares, reverse=True)


def _write_trace(directory, events):
    path = directory / "plugins" / "profile" / "run" / "perfetto_trace.json.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)


def test_the_profile_summary_counts_self_time_on_device_threads(tmp_path):
    meta = lambda pid, tid, kind, name: {"ph": "M", "pid": pid, "tid": tid, "name": kind, "args": {"name": name}}
    op = lambda tid, name, ts, dur, pid=1: {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": ts, "dur": dur}
    _write_trace(tmp_path, [
        meta(1, None, "process_name", "/device:GPU:0"), meta(1, 7, "thread_name", "Stream #1"),
        meta(1, 8, "thread_name", "XLA Modules"), meta(2, None, "process_name", "/host:CPU"), meta(2, 3, "thread_name", "python"),
        # A fusion holding two kernels, then a matmul; a module spanning them all; host work.
        op(7, "fusion", 0, 100), op(7, "kernel_a", 10, 30), op(7, "kernel_b", 50, 20), op(7, "gemm", 100, 300),
        op(8, "jit_train_step", 0, 400), op(3, "PjitFunction", 0, 500, pid=2),
    ])
    summary = bench.profile_summary(str(tmp_path))
    assert summary["op_ms"] == pytest.approx(0.4)
    assert summary["top"] == [["gemm", 0.3, 0.75], ["fusion", 0.05, 0.125], ["kernel_a", 0.03, 0.075], ["kernel_b", 0.02, 0.05]]


def test_where_a_device_has_a_line_of_xla_ops_only_that_line_counts(tmp_path):
    meta = lambda pid, tid, kind, name: {"ph": "M", "pid": pid, "tid": tid, "name": kind, "args": {"name": name}}
    op = lambda tid, name, ts, dur: {"ph": "X", "pid": 1, "tid": tid, "name": name, "ts": ts, "dur": dur}
    _write_trace(tmp_path, [
        meta(1, None, "process_name", "/device:GPU:0"), meta(1, 7, "thread_name", "Stream #1"), meta(1, 9, "thread_name", "XLA Ops"),
        op(7, "sm90_gemm_kernel", 0, 300), op(9, "dot.1", 0, 300), op(9, "fusion.2", 300, 100),
    ])
    summary = bench.profile_summary(str(tmp_path))
    assert summary["top"] == [["dot.1", 0.3, 0.75], ["fusion.2", 0.1, 0.25]]


def test_on_a_cpu_the_xla_threads_count_and_their_waits_are_one_bucket(tmp_path):
    _write_trace(tmp_path, [
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/host:CPU"}},
        {"ph": "M", "pid": 2, "tid": 3, "name": "thread_name", "args": {"name": "python"}},
        {"ph": "M", "pid": 2, "tid": 4, "name": "thread_name", "args": {"name": "tf_XLAPjRtCpuClient"}},
        {"ph": "X", "pid": 2, "tid": 3, "name": "PjitFunction", "ts": 0, "dur": 90},
        {"ph": "X", "pid": 2, "tid": 4, "name": "ThunkExecutor::Execute (wait for completion)", "ts": 0, "dur": 60},
        {"ph": "X", "pid": 2, "tid": 4, "name": "dot_fusion", "ts": 10, "dur": 20},
        {"ph": "X", "pid": 2, "tid": 4, "name": "Wait: pending_threads=1/8", "ts": 60, "dur": 20},
    ])
    assert bench.profile_summary(str(tmp_path))["top"] == [["(waiting)", 0.06, 0.75], ["dot_fusion", 0.02, 0.25]]


def test_a_missing_trace_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no perfetto trace"):
        bench.profile_summary(str(tmp_path))


def test_parts_and_models_are_checked_before_anything_is_built():
    with pytest.raises(ValueError, match="--parts: unknown part\\(s\\) speed; the parts: train, sample, vae, data, checkpoint, official"):
        bench.run(small_config(), ["train", "speed"])
    with pytest.raises(ValueError, match="--parts=vae: config.vae.name='none' trains on pixels"):
        bench.run(small_config(), ["vae"])
    with pytest.raises(ValueError, match=r"config.model.name='stvae': the benchmark harness measures the diffusion transformers \(jdit, dit, vdt, gentron, diffit, diffit_image\)"):
        bench.run(shipped_config("stvae_tiny", {}, {}))


def test_the_official_step_is_measured_only_when_a_checkout_is_named():
    assert "official" not in bench.check_parts(small_config(), [])
    with pytest.raises(ValueError, match="--parts=official needs --official=DIR, a checkout of DerrickWang005/LaVin-DiT"):
        bench.run(small_config(), ["official"])


def test_what_keeps_the_official_step_from_standing_beside_ours_is_named(tmp_path, monkeypatch):
    checkout = tmp_path / "LaVin-DiT"
    (checkout / "lib" / "model").mkdir(parents=True)
    (checkout / "lib" / "model" / "dit.py").write_text("")
    refusals = [
        (shipped_config("vdt_tiny", {}, {}), checkout, "compares J-DiT's train step; config.model.name='vdt'"),
        (small_config(**{"model.dtype": "bfloat16"}), checkout, "set --config.model.dtype=float32 \\(it is 'bfloat16'\\)"),
        (small_config(**{"vae.name": "stvae"}), checkout, "set --config.data.source=latents so both train on latents"),
        (small_config(), tmp_path, "is not a checkout of DerrickWang005/LaVin-DiT: it has no lib/model/dit.py"),
    ]
    for config, where, message in refusals:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            bench.check_parts(config, ["train", "official"], str(where))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
    with pytest.raises(ValueError, match="--official needs PyTorch in this environment \\(pip install torch\\)"):
        bench.check_parts(small_config(), ["official"], str(checkout))
