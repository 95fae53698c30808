"""`python -m lavin_jax.main` as a person runs it: each mistake one line, the compile cache, the
sample command's own files."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from lavin_jax import config as config_lib
from lavin_jax import evaluation, main
from conftest import ROOT


def command(*flags, devices=1):
    """lavin_jax.main with `flags` in a fresh process of `devices` CPU devices: (exit code, stdout, stderr)."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    result = subprocess.run([sys.executable, "-m", "lavin_jax.main", *flags], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize(
    "flags,error",
    [
        (["--config=configs/tiny.py", "--config.totl_steps=5"], "error: config.totl_steps is not a field; did you mean config.total_steps?"),
        (["--config", "configs/tiny.py", "--config.model.hiden=3"], "error: config.model.hiden is not a field; did you mean config.model.hidden?"),
        (["--config=configs/tiny.py", "--config.total_steps=abc"], "error: flag --config.total_steps=abc: invalid literal for int() with base 10: 'abc'"),
        (["--config=configs/nowhere.py", "--config.total_steps=5"], "error: Config file 'configs/nowhere.py' does not exist."),
        (["--config=configs/tiny.py", "--config.mesh.fsdp=2"],
         "error: config.mesh: the fixed axes' product 2 does not divide the 1 devices (on a CPU, run with "
         "XLA_FLAGS=--xla_force_host_platform_device_count=2 to simulate 2 devices)."),
    ],
)
def test_a_mistake_on_the_command_line_is_one_line_naming_it(tmp_path, flags, error):
    code, _, stderr = command(f"--workdir={tmp_path / 'run'}", *flags, "--config.compile_cache=")
    assert code == 1
    assert stderr.strip().splitlines()[-1] == error
    assert "Traceback" not in stderr
    assert not (tmp_path / "run").exists()


def raised(function):
    try:
        function()
    except Exception as error:  # noqa: BLE001 -- the error itself is what is checked.
        return error
    raise AssertionError("nothing was raised")


def test_only_lavin_jax_own_sentences_lose_their_traceback():
    assert main.for_a_person(raised(lambda: config_lib.require(False, "config.seed=-1 must be non-negative.")))
    assert main.for_a_person(raised(lambda: config_lib.load("nowhere.py")))
    # The same types raised inside a library, or by an operation of lavin_jax that went wrong, are bugs.
    assert not main.for_a_person(raised(lambda: jax.numpy.zeros(3).reshape(5)))
    assert not main.for_a_person(raised(lambda: np.zeros(3).reshape(5)))
    assert not main.for_a_person(raised(lambda: evaluation.mean_target(np.zeros(3), 2)))


def test_sample_command_names_its_files_apart_writes_to_output_dir_and_caches_compiles(trained_jdit, tmp_path):
    _, workdir = trained_jdit
    before = sorted(workdir.rglob("*"))
    out, cache = tmp_path / "out", tmp_path / "cache"
    code, stdout, stderr = command(
        "--mode=sample", "--config=configs/tiny.py", f"--workdir={workdir}", f"--output_dir={out}", f"--config.compile_cache={cache}",
        "--config.flow.sample_steps=2", "--config.sample.num_examples=1",
    )
    assert code == 0, stderr[-3000:]
    assert stdout.strip().splitlines()[-1] == f"Wrote the grids of step 1 (3 PNGs, 1 GIFs) to {out / 'samples' / 'sampled'}_*."
    assert sorted(os.listdir(out / "samples")) == [
        "sampled_edges_0000001.png", "sampled_flip_0000001.png", "sampled_frame_prediction_0000001.gif", "sampled_frame_prediction_0000001.png",
    ]
    assert sorted(workdir.rglob("*")) == before
    assert os.listdir(cache)  # the sampler's compiled program, for the next run.
