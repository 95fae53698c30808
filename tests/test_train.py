import json
import os
import signal

import jax
import numpy as np
import pytest

from lavin_jax import parallel, train
from lavin_jax.data import pipeline
from conftest import SMALL, small_config, write_inverted_pairs


def run_steps(config, mesh, batches):
    s = train.setup(config, mesh)
    state = train.init_state(config, s)
    step = train.make_train_step(config, s)
    constants = train.place_constants(s)
    losses = []
    for i, batch in enumerate(batches):
        batch = parallel.global_batch(batch, mesh, config.mesh.rules)
        state, stats = step(state, constants, batch, s.objective.phase(i))
        losses.append(float(stats["loss"]))
    return losses, jax.device_get(state)


def batches(config, n):
    data = pipeline.make_iterator(config)
    return [next(data) for _ in range(n)]


def test_loss_falls_on_a_fixed_batch():
    config = small_config(**{"optim.warmup_steps": 1, "optim.lr": 3e-3})
    mesh = parallel.make_mesh(config)
    losses, _ = run_steps(config, mesh, batches(config, 1) * 60)
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])


def test_sharded_step_matches_the_single_device_step():
    """data=2, fsdp=2, tensor=2 over 8 devices computes what one device computes, grouped-query
    heads included."""
    overrides = {"model.num_heads": 4, "model.num_kv_heads": 2, "optim.warmup_steps": 1}
    single = small_config(**overrides, **{"mesh.data": 1})
    sharded = small_config(**overrides, **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
    data = batches(single, 1) * 3  # one batch shape: one compilation per mesh.
    one_losses, one_state = run_steps(single, parallel.make_mesh(single, jax.devices()[:1]), data)
    mesh = parallel.make_mesh(sharded)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    eight_losses, eight_state = run_steps(sharded, mesh, data)
    np.testing.assert_allclose(eight_losses, one_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(eight_state), jax.tree.leaves(one_state)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def device_bytes(tree, device) -> int:
    return sum(shard.data.nbytes for x in jax.tree.leaves(tree) for shard in x.addressable_shards if shard.device == device)


def test_fsdp_and_tensor_parallelism_split_the_arrays_themselves():
    """Measured on placed arrays, not read off the rules: fsdp=8 leaves each device about 1/8 of
    the parameter and optimizer bytes; tensor=2 gives each device half the heads; a batch is
    split over data x fsdp and repeated over tensor."""
    config = small_config(**{"mesh.data": 1, "mesh.fsdp": 8, "model.hidden": 64})
    state = train.init_state(config, train.setup(config, parallel.make_mesh(config)))
    for part in ("params", "opt"):
        total = sum(x.nbytes for x in jax.tree.leaves(state[part]))
        for device in jax.devices():
            assert total / 8 <= device_bytes(state[part], device) < 1.05 * total / 8, part

    config = small_config(**{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "model.num_heads": 4, "model.num_kv_heads": 2})
    mesh = parallel.make_mesh(config)
    state = train.init_state(config, train.setup(config, mesh))
    head_dim = config.model.hidden // config.model.num_heads
    q = state["params"]["model"]["blocks"]["cond"]["q"]["kernel"]  # (layers, embed, heads * head_dim)
    assert {shard.data.shape[-1] for shard in q.addressable_shards} == {2 * head_dim}
    batch = parallel.global_batch(batches(config, 1)[0], mesh, config.mesh.rules)
    rows = {(shard.index[0].start, shard.index[0].stop) for shard in batch["cond"].addressable_shards}
    assert rows == {(0, 2), (2, 4), (4, 6), (6, 8)}  # 4 = data x fsdp slices, each on 2 tensor devices.


def test_indivisible_parameter_axis_is_named():
    config = small_config(**{"mesh.data": 1, "mesh.fsdp": 8})  # hidden 48 over 8 fsdp shards: fine
    train.setup(config, parallel.make_mesh(config))
    config = small_config(**{"mesh.data": 1, "mesh.fsdp": 8, "model.hidden": 36, "model.num_heads": 1, "model.num_kv_heads": 1})
    with pytest.raises(ValueError, match=r"Parameter .* axis \d+ of size 36 cannot be split 8 ways"):
        train.setup(config, parallel.make_mesh(config))


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_sigterm_saves_and_the_same_command_resumes_exactly(tmp_path, monkeypatch):
    # One number of pairs and no dropped batches: one step shape, compiled once per run.
    config_fields = {"total_steps": 6, "log_every": 1, "checkpoint_every": 4, "eval_every": 6,
                     "data.max_pairs": 1, "data.cond_drop_prob": 0.0}
    config = small_config(**config_fields)
    straight = tmp_path / "straight"
    train.train(small_config(**{**config_fields, "eval_every": 0}), str(straight))  # losses only: no sampler to compile.

    # A preemption during step 3: the run finishes that step, saves it, and exits cleanly.
    interrupted = tmp_path / "interrupted"
    calls = {"n": 0}
    real_global_batch = parallel.global_batch

    def preempt_at_third_batch(batch, mesh, rules):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_global_batch(batch, mesh, rules)

    monkeypatch.setattr(parallel, "global_batch", preempt_at_third_batch)
    state = train.train(config, str(interrupted))
    assert int(state["step"]) == 3
    assert sorted(os.listdir(interrupted / "checkpoints")) == ["3"]
    monkeypatch.setattr(parallel, "global_batch", real_global_batch)

    train.train(config, str(interrupted))
    expected = read_metrics(straight)
    resumed = [line for line in read_metrics(interrupted) if "loss" in line]
    evaluated = [line for line in read_metrics(interrupted) if "loss" not in line]
    assert [line["step"] for line in evaluated] == [6] and "eval_query_copied/edges/f1" in evaluated[0]
    assert [m["step"] for m in resumed] == [1, 2, 3, 4, 5, 6]
    assert [m["loss"] for m in resumed] == [m["loss"] for m in expected]
    for key in ("loss", "lr", "grad_norm", "steps_per_sec", "examples_per_sec"):
        assert key in resumed[-1]
    assert sorted(os.listdir(interrupted / "checkpoints")) == ["3", "4", "6"]
    assert sorted(os.listdir(interrupted / "samples")) == [f"samples_{task}_0000006.png" for task in sorted(SMALL["data.tasks"])]
    assert any(name.startswith("events") for name in os.listdir(interrupted / "tensorboard"))
    summary = json.loads((interrupted / "summary.json").read_text())
    assert summary["params"] > 0 and summary["flops_per_example"] > 0


def test_restoring_a_checkpoint_of_another_model_is_refused(tmp_path):
    one_shape = {"data.max_pairs": 1, "data.cond_drop_prob": 0.0}  # one compilation.
    train.train(small_config(**one_shape, **{"total_steps": 2, "checkpoint_every": 2, "eval_every": 0}), str(tmp_path))
    bigger = small_config(**one_shape, **{"total_steps": 4, "model.depth": 3})
    with pytest.raises(ValueError, match=r"was written for model.depth=2 but the config has model.depth=3"):
        train.train(bigger, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]  # saved work untouched.


def test_real_and_video_tasks_train_and_bad_records_are_counted(tmp_path):
    """Real pairs (3 of 4 records corrupt) beside a synthetic video task: image and video batches
    train, the bad records are logged as skipped, and both sample grids are written."""
    real = write_inverted_pairs(tmp_path / "real", count=4, bad=(0, 1, 2))
    config = small_config(**{"data.tasks": ("frame_prediction",), "data.records": (real,), "data.video_frames": 2, "data.max_pairs": 1,
                             "total_steps": 6, "log_every": 6, "checkpoint_every": 6, "eval_every": 6})
    frames = {batch["target"].shape[1] for batch in batches(config, 6)}
    assert frames == {1, 2}
    train.train(config, str(tmp_path / "run"))
    logged = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    last = [record for record in logged if "loss" in record][-1]
    assert last["skipped_records"] > 0 and np.isfinite(last["loss"])
    assert sorted(os.listdir(tmp_path / "run" / "samples")) == ["samples_frame_prediction_0000006.png", "samples_real_negate_0000006.png"]



def test_a_run_that_evaluates_names_a_missing_evaluation_file_before_the_workdir_is_touched(tmp_path):
    config = small_config(**{"eval_every": 2, "eval.fid_weights": str(tmp_path / "inception.safetensors")})
    with pytest.raises(FileNotFoundError, match=r"config.eval.fid_weights=.*inception.safetensors' does not exist"):
        train.train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
