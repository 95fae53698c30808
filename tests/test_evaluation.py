import json
import os
import re

import numpy as np
import pytest
import scipy.linalg

from conftest import small_config
from lavin_jax import evaluation, main, runs
from lavin_jax.data import episodes, scoring


class Oracle:
    """A predictor that answers each episode (held as uint8) with a function of its query and true
    target, in [-1, 1] as a model's answers are."""

    def __init__(self, evaluation_, answer):
        self._targets = {drawn["cond"][i].tobytes(): drawn["target"][i] for _, drawn in evaluation_.tasks.values() for i in range(len(drawn["cond"]))}
        self._answer = answer

    def sample(self, context, frames, **options):
        cond = context["cond"]
        return np.stack([self._answer(scoring.from_uint8(c[-frames:]), scoring.from_uint8(self._targets[c.tobytes()])) for c in cond])


@pytest.fixture(scope="module")
def held_out():
    config = small_config(**{"data.tasks": ("colorization", "semantic_segmentation", "depth", "frame_prediction"),
                             "data.video_frames": 3, "eval.episodes": 3, "sample.num_examples": 2})
    return evaluation.Evaluation(config)


def test_episodes_are_held_out_per_task_with_the_configured_pairs(held_out):
    assert list(held_out.tasks) == ["colorization", "semantic_segmentation", "depth", "frame_prediction"]
    for name, (component, drawn) in held_out.tasks.items():
        frames = 3 if component.video else 1
        assert drawn["target"].shape == (3, frames, 16, 16, 3)
        assert drawn["cond"].shape == (3, (2 * held_out.pairs + 1) * frames, 16, 16, 3)
    # The tasks do not share their scenes, and training (seed, not seed + 1) never draws them.
    queries = [drawn["cond"][0, -1] for _, drawn in held_out.tasks.values()]
    assert not np.array_equal(queries[0], queries[2])
    training = episodes.Episodes(held_out.config.data, held_out.config.seed, held_out.config.global_batch_size)
    drawn = [training.episode(i, 1) for i in range(200)]
    trained_queries = {scoring.to_uint8(e["cond"][-1]).tobytes() for e in drawn if e["task"] == 0}  # colorization
    assert trained_queries
    assert not trained_queries & {query.tobytes() for query in held_out.tasks["colorization"][1]["cond"][:, -1]}


def test_a_perfect_model_beats_both_baselines_and_a_copying_one_equals_one(held_out):
    perfect = held_out.run(Oracle(held_out, lambda query, target: target))
    rows = perfect["tasks"]
    assert rows["colorization"]["model"]["psnr"] == 100.0 and rows["semantic_segmentation"]["model"]["miou"] == 1.0
    assert rows["depth"]["model"]["absrel"] == 0.0
    table = evaluation.table(perfect).splitlines()
    assert len(table) == 1 + 2 + 1 + 2 + 2  # header, then psnr/ssim, miou, absrel/delta1, psnr/ssim.
    assert all(line.endswith(" *") for line in table[1:])
    copying = held_out.run(Oracle(held_out, lambda query, target: query))
    for row in copying["tasks"].values():
        assert row["model"] == row["query_copied"]
    assert not any(line.endswith(" *") for line in evaluation.table(copying).splitlines())
    scalars = evaluation.scalars(copying)
    assert scalars["eval/depth/absrel"] == scalars["eval_query_copied/depth/absrel"]
    assert "eval_mean_target/frame_prediction/ssim" in scalars
    # A grid of sample.num_examples episodes per task.
    assert set(copying["grids"]) == {f"samples_{task}" for task in held_out.tasks}


def test_mean_target_averages_the_in_context_targets():
    frames = np.arange(5 * 2, dtype=np.float32).reshape(1, 5 * 2, 1, 1, 1)  # K=2 pairs of 2-frame items, a query.
    # Items: in_1 = frames 0-1, tgt_1 = 2-3, in_2 = 4-5, tgt_2 = 6-7, query = 8-9.
    np.testing.assert_array_equal(evaluation.mean_target(frames, 2).ravel(), [4.0, 5.0])


def test_frechet_distance_of_gaussians():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 3))
    assert evaluation.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # A shift by c in each of 3 dimensions adds 3c^2; doubling the spread adds tr((2 - 1)^2 I) = 3.
    assert evaluation.frechet_distance(a, a + 0.5) == pytest.approx(0.75, abs=1e-6)
    assert evaluation.frechet_distance(a, 2.0 * a) == pytest.approx(3.0, rel=0.05)
    # Fewer examples than features: the low-rank form equals the matrix square root's.
    few, other = rng.standard_normal((5, 40)), rng.standard_normal((6, 40)) + 0.3
    low_rank = evaluation.frechet_distance(few, other)
    covariance = lambda x: np.cov(x, rowvar=False)
    root = np.real(scipy.linalg.sqrtm(covariance(few) @ covariance(other)))
    full = np.sum((few.mean(0) - other.mean(0)) ** 2) + np.trace(covariance(few) + covariance(other) - 2 * root)
    assert low_rank == pytest.approx(full, rel=1e-6)


def test_fid_with_generated_inception_weights(tmp_path):
    """FID of the answers against the targets: 0 for perfect answers, more for the baselines."""
    import safetensors.numpy
    from lavin_jax.models import inception

    path = str(tmp_path / "inception.safetensors")
    safetensors.numpy.save_file(inception.random_weights(), path)
    config = small_config(**{"data.tasks": ("colorization",), "eval.episodes": 3, "eval.fid_weights": path})
    evaluation.check_files(config)
    held_out = evaluation.Evaluation(config)
    row = held_out.run(Oracle(held_out, lambda query, target: target))["tasks"]["colorization"]
    assert row["model"]["fid"] == pytest.approx(0.0, abs=1e-3)
    assert row["query_copied"]["fid"] > 1.0 and row["mean_target"]["fid"] > 1.0


@pytest.mark.parametrize(
    "fields, error, message",
    [
        ({"eval.fid_weights": "nowhere/inception.safetensors"}, FileNotFoundError,
         r"config.eval.fid_weights='nowhere/inception.safetensors' does not exist; make it with: python -m lavin_jax.tools.convert_fid"),
        ({"eval.fvd_weights": __file__, "data.video_frames": 5}, ValueError,
         r"config.data.video_frames=5: I3D needs clips of at least 9 frames"),
        ({"eval.fvd_weights": __file__, "data.video_frames": 9, "eval.episodes": 1}, ValueError,
         r"config.eval.episodes=1: FID and FVD need at least 2 episodes per task"),
        ({"eval.fvd_weights": __file__, "data.video_frames": 9}, ValueError, r"FVD I3D weights file .*test_evaluation.py is not a safetensors file"),
        ({"eval.records": ("nowhere",)}, ValueError, r"Directory 'nowhere' has no manifest.json"),
    ],
)
def test_feature_network_settings_are_checked_before_anything_runs(fields, error, message):
    with pytest.raises(error, match=message):
        evaluation.check_files(small_config(**fields))


def test_eval_and_sample_modes_write_scores_grids_and_animations(trained_jdit, capsys):
    """--mode=eval and --mode=sample: the model and data from the run, the evaluation from --config."""
    _, workdir = trained_jdit
    flags = small_config(**{"eval.episodes": 2, "flow.sample_steps": 2, "sample.num_examples": 1})
    main.evaluate_run(flags, str(workdir), "eval")
    written = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert written["step"] == 1 and written["episodes"] == 2 and written["pairs"] == 1
    assert set(written["tasks"]) == {"flip", "edges", "frame_prediction"}
    assert set(written["tasks"]["edges"]) == {"metric", "video", "model", "query_copied", "mean_target"}
    printed = capsys.readouterr().out
    assert "frame_prediction" in printed  # the table.
    assert f"Wrote the scores of step 1 to {workdir / 'eval' / 'metrics.json'} and {workdir / 'metrics.jsonl'}." in printed
    logged = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert logged[-1]["step"] == 1 and "eval/edges/f1" in logged[-1] and "eval_mean_target/flip/psnr" in logged[-1]
    main.evaluate_run(flags, str(workdir), "sample")
    # Named apart from training's samples_<task>_<step>.png, which a run of the same step has.
    assert {"sampled_flip_0000001.png", "sampled_edges_0000001.png", "sampled_frame_prediction_0000001.png",
            "sampled_frame_prediction_0000001.gif"} <= set(os.listdir(workdir / "samples"))
    assert f"to {workdir / 'samples' / 'sampled'}_*." in capsys.readouterr().out


def test_a_run_that_cannot_be_written_is_found_before_any_work(trained_jdit, tmp_path, monkeypatch, capsys):
    """--mode=eval prints its table and writes nowhere, or into --output_dir; --mode=sample asks for
    --output_dir before reading a weight. Tests run as root, whom file modes do not stop, so the run
    is made read-only where main asks: os.access."""
    _, workdir = trained_jdit
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: not (mode & os.W_OK and str(path).startswith(str(workdir))) and access(path, mode, **kw))
    files = lambda: {path: path.stat().st_mtime_ns for path in workdir.rglob("*")}
    before = files()
    flags = small_config(**{"eval.episodes": 1, "flow.sample_steps": 1})
    main.evaluate_run(flags, str(workdir), "eval")
    assert "frame_prediction" in capsys.readouterr().out  # the table.
    assert files() == before
    main.evaluate_run(flags, str(workdir), "eval", output_dir=str(tmp_path / "out"))
    assert "frame_prediction" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "eval" / "metrics.json").read_text())["episodes"] == 1
    assert files() == before
    monkeypatch.setattr(runs, "restore_ema", lambda *_: pytest.fail("weights read before the run was found read-only"))
    with pytest.raises(PermissionError, match=re.escape(f"--mode=sample cannot write {workdir}; name a folder it can write with --output_dir.")):
        main.evaluate_run(flags, str(workdir), "sample")


def test_eval_mode_names_a_missing_feature_network_before_any_weight_is_read(trained_jdit, tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "restore_ema", lambda *_: pytest.fail("weights read before the evaluation's files were checked"))
    flags = small_config(**{"eval.fid_weights": str(tmp_path / "inception.safetensors")})
    with pytest.raises(FileNotFoundError, match=r"config.eval.fid_weights=.*inception.safetensors' does not exist"):
        main.evaluate_run(flags, str(trained_jdit[1]), "eval")
