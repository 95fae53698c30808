"""`python -m lavin_jax.main` as a person runs it: each mistake one line, the compile cache, the
sample command's own files."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from lavin_jax import config as config_lib
from lavin_jax import evaluation
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
         "error: config.mesh: the fixed axes' product 2 does not divide the 1 devices (on a CPU, "
         "XLA_FLAGS=--xla_force_host_platform_device_count=2 makes 2 devices)."),
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
    assert config_lib.for_a_person(raised(lambda: config_lib.require(False, "config.seed=-1 must be non-negative.")))
    assert config_lib.for_a_person(raised(lambda: config_lib.load("nowhere.py")))
    # The same types raised inside a library, or by an operation of lavin_jax that went wrong, are bugs.
    assert not config_lib.for_a_person(raised(lambda: jax.numpy.zeros(3).reshape(5)))
    assert not config_lib.for_a_person(raised(lambda: np.zeros(3).reshape(5)))
    assert not config_lib.for_a_person(raised(lambda: evaluation.mean_target(np.zeros(3), 2)))


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


def test_sample_writes_class_balanced_images_as_adms_evaluator_reads_them(trained_digits, tmp_path):
    drawn = {}
    for num in (12, 5):
        out = tmp_path / str(num)
        code, stdout, stderr = command("--mode=sample", "--config=configs/dit_digits.py", f"--workdir={trained_digits}", f"--output_dir={out}",
                                       f"--config.sample.num={num}", "--config.flow.sample_steps=3", "--config.compile_cache=", devices=2)
        assert code == 0, stderr[-3000:]
        path = out / "samples" / "2.npz"
        assert stdout.strip().endswith(f"and {num} images to {path}.")
        drawn[num] = np.load(path)
        assert drawn[num]["arr_0"].shape == (num, 8, 8, 3) and drawn[num]["arr_0"].dtype == np.uint8
        np.testing.assert_array_equal(drawn[num]["labels"], np.arange(num) % 10)
        assert sorted(os.listdir(out / "samples")) == ["2.npz", "sampled_classes_0000002.png"]
    # Image i's noise comes from (seed, i): how many are drawn, and in what batches, changes none.
    np.testing.assert_array_equal(drawn[12]["arr_0"][:5], drawn[5]["arr_0"])


def test_eval_judges_a_class_conditional_run_by_its_classifier(trained_digits, tmp_path):
    code, stdout, stderr = command("--mode=eval", "--config=configs/dit_digits.py", f"--workdir={trained_digits}", f"--output_dir={tmp_path}",
                                   "--config.flow.sample_steps=3", "--config.compile_cache=")
    assert code == 0, stderr[-3000:]
    assert "(real held-out images" in stdout and "chance 0.100" in stdout
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["step"] == 2 and report["accuracy"]["real"] > 0.9 and set(report["classes"]) == {str(k) for k in range(10)}


def test_a_class_conditional_run_is_prompted_by_class_index_or_name(trained_digits):
    from lavin_jax import inference

    predictor = inference.Predictor.from_workdir(str(trained_digits), overrides={"flow.sample_steps": 3})
    seven, three = predictor.predict_batch(["7", 3], seed=1)
    assert seven.shape == three.shape == (8, 8, 3) and seven.dtype == np.uint8
    np.testing.assert_array_equal(predictor.predict("7", seed=1), seven)  # prompt i's noise: (seed, i).
    with pytest.raises(ValueError, match=r"prompts\[0\]='seven' is not a class; classes: 0, 1"):
        predictor.predict("seven")
