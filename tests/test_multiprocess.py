"""Several processes, for real: `launch/local.sh` starts 2 processes of 4 CPU devices each, joined
by jax.distributed over loopback with gloo collectives. A launch costs a JAX start and a compile
in every process, so one launch serves every check: it resumes a checkpoint written by 1 process
onto another mesh shape, trains with the 1-process run's losses, and is preempted through one
of its processes; its checkpoint then resumes in 1 process on a third mesh shape."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lavin_jax import checkpoint, train
from conftest import ROOT, SMALL, config_flags, small_config

# One step shape (one K, no dropped batches, image tasks), so each process compiles once; one
# evaluation, at step 4, in both runs.
FIELDS = {
    "data.tasks": ("flip", "edges"), "data.max_pairs": 1, "data.cond_drop_prob": 0.0,
    "log_every": 1, "checkpoint_every": 2, "eval_every": 4,
    # A schedule that does not depend on total_steps, so runs of different lengths compare.
    "optim.schedule": "constant", "optim.warmup_steps": 2,
}


def logged(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def losses(workdir) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in logged(workdir) if "loss" in m}


def scores(workdir) -> dict[int, dict]:
    return {m["step"]: m for m in logged(workdir) if "loss" not in m}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """1 process x 8 devices (mesh data=8), 5 steps, checkpoints at 2, 4, 5, evaluations at 4, 5."""
    workdir = str(tmp_path_factory.mktemp("one_process"))
    train.train(small_config(**FIELDS, total_steps=5), workdir)
    return workdir


@pytest.fixture(scope="module")
def preempted(baseline, tmp_path_factory):
    """2 processes x 4 devices (mesh data=2, fsdp=4) resume the baseline's step 2, train, and get
    SIGTERM in process 1 once step 5 is logged. Returns (workdir, exit code, output)."""
    workdir = tmp_path_factory.mktemp("two_processes")
    shutil.copytree(os.path.join(baseline, "checkpoints", "2"), workdir / "checkpoints" / "2")
    fields = {**SMALL, **FIELDS, "total_steps": 10_000, "mesh.data": 2, "mesh.fsdp": 4}
    env = {**os.environ, "XLA_FLAGS": "", "PYTHON": sys.executable}  # the script sets 4 devices each.
    log = open(workdir / "launch.log", "w+")
    command = ["bash", str(ROOT / "launch" / "local.sh"), "2", "4", f"--config={ROOT / 'configs' / 'tiny.py'}", f"--workdir={workdir}"]
    launcher = subprocess.Popen(command + config_flags(fields), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and launcher.poll() is None:
        if os.path.exists(workdir / "metrics.jsonl") and max(losses(workdir), default=0) >= 5:
            break
        time.sleep(0.2)
    log.seek(0)
    pid = int(re.search(r"process 1: pid (\d+)", log.read()).group(1))
    os.kill(pid, signal.SIGTERM)
    code = launcher.wait(timeout=240)
    log.seek(0)
    return workdir, code, log.read()


def test_two_processes_continue_a_one_process_checkpoint_with_its_losses(baseline, preempted):
    workdir, code, output = preempted
    assert code == 0, output[-3000:]
    assert "Process 0 of 2, 4 local devices" in output and "Process 1 of 2, 4 local devices" in output
    two, one = losses(workdir), losses(baseline)
    # Only process 0 logs: every step once, in order, from the restored step on.
    steps = sorted(two)
    assert steps == list(range(3, steps[-1] + 1))
    np.testing.assert_allclose([two[s] for s in (3, 4, 5)], [one[s] for s in (3, 4, 5)], rtol=1e-5)
    # Both processes sampled the evaluation together; process 0 logged it once, as 1 process did.
    evaluated, expected = scores(workdir), scores(baseline)
    assert 4 in evaluated and all(step % 4 == 0 for step in evaluated) and set(evaluated[4]) == set(expected[4])
    np.testing.assert_allclose([evaluated[4][k] for k in sorted(expected[4])], [expected[4][k] for k in sorted(expected[4])], rtol=1e-4)


def test_sigterm_to_one_process_stops_both_at_one_saved_step(preempted):
    workdir, code, output = preempted
    stops = {int(p): int(s) for p, s in re.findall(r"Process (\d) of 2 stops at step (\d+) after SIGTERM", output)}
    assert set(stops) == {0, 1} and len(set(stops.values())) == 1, output[-3000:]
    step = stops[0]
    assert checkpoint.latest_step(str(workdir / "checkpoints")) == step
    assert max(losses(workdir)) == step
    assert code == 0


def test_a_checkpoint_of_two_processes_resumes_in_one(baseline, preempted, tmp_path):
    """Onto a third mesh shape (fsdp=8), with the losses the 1-process run has there."""
    workdir, _, _ = preempted
    stopped = checkpoint.latest_step(str(workdir / "checkpoints"))
    resumed = tmp_path / "resumed"
    shutil.copytree(workdir / "checkpoints", resumed / "checkpoints")
    losses_only = {**FIELDS, "eval_every": 0}
    state = train.train(small_config(**losses_only, total_steps=stopped + 1, **{"mesh.data": 1, "mesh.fsdp": 8}), str(resumed))
    assert int(state["step"]) == stopped + 1
    train.train(small_config(**losses_only, total_steps=stopped + 1), baseline)  # the 1-process run, on.
    np.testing.assert_allclose(losses(resumed)[stopped + 1], losses(baseline)[stopped + 1], rtol=1e-5)
