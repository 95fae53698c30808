import json
import os
import re
import signal

import jax
import numpy as np
import pytest

from lavin_jax import parallel, train
from lavin_jax.data import pipeline
from lavin_jax import state as state_lib
from conftest import SMALL, digits_config, iterate, small_config, write_inverted_pairs


def run_steps(config, mesh, batches):
    s = state_lib.setup(config, mesh)
    state = state_lib.init_state(config, s)
    step = train.make_train_step(config, s)
    constants = state_lib.place_constants(s)
    losses = []
    for i, batch in enumerate(batches):
        batch = parallel.global_batch(batch, mesh, config.mesh.rules)
        state, stats = step(state, constants, batch, s.objective.phase(i))
        losses.append(float(stats["loss"]))
    return losses, jax.device_get(state)


def batches(config, n):
    data = iterate(config)
    return [next(data) for _ in range(n)]


@pytest.mark.optimized
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
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def device_bytes(tree, device) -> int:
    return sum(shard.data.nbytes for x in jax.tree.leaves(tree) for shard in x.addressable_shards if shard.device == device)


def test_fsdp_and_tensor_parallelism_split_the_arrays_themselves():
    """Measured on placed arrays, not read off the rules: fsdp=8 leaves each device about 1/8 of
    the parameter and optimizer bytes; tensor=2 gives each device half the heads; a batch is
    split over data x fsdp and repeated over tensor."""
    config = small_config(**{"mesh.data": 1, "mesh.fsdp": 8, "model.hidden": 64})
    with jax.threefry_partitionable(True):  # as a pod initialises (JAX's default; conftest turns it off).
        state = state_lib.init_state(config, state_lib.setup(config, parallel.make_mesh(config)))
    for part in ("params", "opt"):
        total = sum(x.nbytes for x in jax.tree.leaves(state[part]))
        for device in jax.devices():
            assert total / 8 <= device_bytes(state[part], device) < 1.05 * total / 8, part

    config = small_config(**{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "model.num_heads": 4, "model.num_kv_heads": 2})
    mesh = parallel.make_mesh(config)
    state = state_lib.init_state(config, state_lib.setup(config, mesh))
    head_dim = config.model.hidden // config.model.num_heads
    q = state["params"]["model"]["blocks"]["cond"]["q"]["kernel"]  # (layers, embed, heads * head_dim)
    assert {shard.data.shape[-1] for shard in q.addressable_shards} == {2 * head_dim}
    batch = parallel.global_batch(batches(config, 1)[0], mesh, config.mesh.rules)
    rows = {(shard.index[0].start, shard.index[0].stop) for shard in batch["cond"].addressable_shards}
    assert rows == {(0, 2), (2, 4), (4, 6), (6, 8)}  # 4 = data x fsdp slices, each on 2 tensor devices.


def test_indivisible_parameter_axis_is_named():
    config = small_config(**{"mesh.data": 1, "mesh.fsdp": 8})  # hidden 48 over 8 fsdp shards: fine
    state_lib.setup(config, parallel.make_mesh(config))
    config = small_config(**{"mesh.data": 1, "mesh.fsdp": 8, "model.hidden": 36, "model.num_heads": 1, "model.num_kv_heads": 1})
    with pytest.raises(ValueError, match=r"Parameter .* axis \d+ of size 36 cannot be split 8 ways"):
        state_lib.setup(config, parallel.make_mesh(config))


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_sigterm_saves_and_the_same_command_resumes_exactly(tmp_path, monkeypatch, capsys):
    # One number of pairs and no dropped batches: one step shape, compiled once per run.
    config_fields = {"total_steps": 6, "log_every": 2, "checkpoint_every": 4, "eval_every": 6,
                     "data.max_pairs": 1, "data.cond_drop_prob": 0.0}
    config = small_config(**config_fields)
    straight = tmp_path / "straight"
    # Every step's loss, and no sampler to compile.
    train.train(small_config(**{**config_fields, "log_every": 1, "eval_every": 0}), str(straight))

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
    capsys.readouterr()
    state = train.train(config, str(interrupted))
    assert int(state["step"]) == 3
    assert sorted(os.listdir(interrupted / "checkpoints")) == ["3"]
    assert capsys.readouterr().out.startswith("Stopped at step 3 of 6 by SIGTERM; the same command resumes.\nLoss ")
    monkeypatch.setattr(parallel, "global_batch", real_global_batch)

    train.train(config, str(interrupted))
    per_step = [m["loss"] for m in read_metrics(straight)]
    resumed = [line for line in read_metrics(interrupted) if "loss" in line]
    evaluated = [line for line in read_metrics(interrupted) if "loss" not in line]
    assert [line["step"] for line in evaluated] == [6] and "eval_query_copied/edges/f1" in evaluated[0]
    # Logged every 2 steps, stopped after step 3 and resumed there: the stop logs step 3 alone and
    # the resumed run's first line step 4 alone. Each line's loss is the mean of the steps it
    # counts, as the uninterrupted run computed them, bit for bit (a float32 mean, as logged).
    spans = [(m["step"], int(m["steps_in_mean"])) for m in resumed]
    assert spans == [(2, 2), (3, 1), (4, 1), (6, 2)]
    assert [m["loss"] for m in resumed] == [float(np.mean(np.float32(per_step[step - n : step]))) for step, n in spans]
    for key in ("loss", "lr", "grad_norm", "steps_per_sec", "examples_per_sec"):
        assert key in resumed[-1]
    # The summary: the end and its loss, the evaluation beside its baselines, where everything is.
    summary = capsys.readouterr().out.splitlines()
    assert summary[:3] == ["Trained to step 6 of 6.", f"Loss {resumed[-1]['loss']:.4f} (the mean over steps 5-6).", "Evaluation at step 6:"]
    assert summary[3].split() == ["task", "value", "model", "query", "copied", "mean", "target"]
    assert {line.split()[0] for line in summary[4:-4]} == set(SMALL["data.tasks"])
    assert summary[-4:] == [
        f"checkpoints  {interrupted / 'checkpoints'} (steps 3, 4, 6)",
        f"metrics      {interrupted / 'metrics.jsonl'}",
        f"samples      {interrupted / 'samples'}",
        f"tensorboard  {interrupted / 'tensorboard'}",
    ]
    assert sorted(os.listdir(interrupted / "checkpoints")) == ["3", "4", "6"]
    assert sorted(os.listdir(interrupted / "samples")) == [f"samples_{task}_0000006.png" for task in sorted(SMALL["data.tasks"])]
    assert any(name.startswith("events") for name in os.listdir(interrupted / "tensorboard"))
    summary = json.loads((interrupted / "summary.json").read_text())
    assert summary["params"] > 0 and summary["flops_per_example"] > 0


def truncate_array_file(step_dir) -> tuple:
    """Cuts the largest array data file of a checkpoint's state to half; returns (its path
    relative to `step_dir`, its bytes now)."""
    path = max((p for p in (step_dir / "state").rglob("d/*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    return path.relative_to(step_dir), path.read_bytes()


def test_another_models_checkpoint_is_refused_and_an_unreadable_one_set_aside(tmp_path, monkeypatch, caplog):
    """Another model's checkpoint is the config's mistake: refused, nothing moved. A damaged one is
    passed over for the one before it, whose step the data restart from, and moved aside, kept;
    with none readable, the run stops naming the directory and moves nothing."""
    fields = {"data.max_pairs": 1, "data.cond_drop_prob": 0.0,  # one compilation.
              "total_steps": 2, "checkpoint_every": 1, "log_every": 1, "eval_every": 0}
    train.train(small_config(**fields), str(tmp_path))
    checkpoints = tmp_path / "checkpoints"
    bigger = small_config(**{**fields, "total_steps": 4, "model.depth": 3})
    with pytest.raises(ValueError, match=r"was written for model.depth=2 but the config has model.depth=3"):
        train.train(bigger, str(tmp_path))
    assert sorted(os.listdir(checkpoints)) == ["1", "2"]  # saved work untouched.

    damaged, damaged_bytes = truncate_array_file(checkpoints / "2")
    starts = []
    real_make_iterator = pipeline.make_iterator

    def make_iterator(config, examples, process_index, process_count, start_step):
        starts.append(start_step)
        return real_make_iterator(config, examples, process_index, process_count, start_step)

    monkeypatch.setattr(pipeline, "make_iterator", make_iterator)
    # Step 1 is then the last step: nothing left to compile or train.
    state = train.train(small_config(**{**fields, "total_steps": 1}), str(tmp_path))
    assert int(state["step"]) == 1 and starts == [2, 1]
    assert sorted(os.listdir(checkpoints)) == ["1", "2.corrupt"]
    assert (checkpoints / "2.corrupt" / damaged).read_bytes() == damaged_bytes
    assert f"Passing over the checkpoint of step 2: Checkpoint item {checkpoints / '2' / 'state'} cannot be read: " in caplog.text
    assert f"Moved the unreadable checkpoint of step 2 to {checkpoints / '2.corrupt'}; resuming from step 1." in caplog.text
    assert [m["step"] for m in read_metrics(tmp_path)] == [1]  # step 2's line went with its checkpoint.

    truncate_array_file(checkpoints / "1")
    with pytest.raises(ValueError, match=rf"No checkpoint in {re.escape(str(checkpoints))} can be restored \(steps 1; "):
        train.train(small_config(**fields), str(tmp_path))
    assert sorted(os.listdir(checkpoints)) == ["1", "2.corrupt"]


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


@pytest.mark.optimized
def test_a_class_conditional_dit_learns_its_classes_through_the_same_trainer(tmp_path, capsys):
    """The in-context runs above and a class-conditional DiT share the trainer, the sampler and the
    evaluation path; only the conditioning differs. 1000 steps on 8 px digits (about 30 s): the
    classifier reads 85% of the samples as their class (measured), chance being 10%."""
    config = digits_config(**{"total_steps": 1000, "eval_every": 1000, "checkpoint_every": 1000, "eval.episodes": 10,
                              "flow.sample_steps": 10})
    train.train(config, str(tmp_path))
    scores = [line for line in read_metrics(tmp_path) if "eval/accuracy" in line]
    assert [line["step"] for line in scores] == [1000]
    assert scores[0]["eval/accuracy"] > 0.5 and scores[0]["eval/accuracy_real"] > 0.9, scores[0]
    printed = capsys.readouterr().out
    assert "Evaluation at step 1000:" in printed and "chance 0.100" in printed
    assert os.listdir(tmp_path / "samples") == ["samples_classes_0001000.png"]
