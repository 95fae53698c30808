"""`python -m lavin_jax.tools.fid`: guided-diffusion's evaluator metrics held to closed forms, the
Inception's extra outputs, the command on tiny files with random weights, and its refusals."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors.numpy

from conftest import ROOT, shipped_config
from lavin_jax import evaluation
from lavin_jax.data import labelled
from lavin_jax.models import inception
from lavin_jax.tools import convert_fid, fid

# --- the metrics ---------------------------------------------------------------------------------


def test_frechet_distance_of_gaussians_in_closed_form():
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    a, b = rng.uniform(0.5, 2.0, 6), rng.uniform(0.5, 2.0, 6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    sigma1, sigma2 = rotation @ np.diag(a) @ rotation.T, rotation @ np.diag(b) @ rotation.T
    # Covariances of one eigenbasis: tr(S1 + S2 - 2 (S1 S2)^(1/2)) = sum((sqrt(a) - sqrt(b))^2).
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert evaluation.frechet_from_statistics(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)
    assert evaluation.frechet_distance((mu1, sigma1), (mu2, sigma2)) == pytest.approx(expected, rel=1e-9)
    assert evaluation.frechet_from_statistics(mu1, sigma1, mu1, sigma1) == pytest.approx(0.0, abs=1e-9)

    # Fewer images than features against statistics (the low-rank form): against c I the root's
    # trace is sqrt(c) times the sum of the square roots of S1's eigenvalues.
    few = 3.0 + rng.standard_normal((4, 6)) * np.arange(1, 7)
    c = 2.5
    roots = np.sqrt(np.clip(np.linalg.eigvalsh(np.cov(few, rowvar=False)), 0, None)).sum()
    expected = np.sum((few.mean(0) - mu2) ** 2) + np.trace(np.cov(few, rowvar=False)) + 6 * c - 2 * np.sqrt(c) * roots
    # (The square roots of the zero eigenvalues' rounding, ~1e-8 each, bound the agreement.)
    assert evaluation.frechet_distance(few, (mu2, c * np.eye(6))) == pytest.approx(expected, rel=1e-7)
    assert evaluation.frechet_distance((mu2, c * np.eye(6)), few) == pytest.approx(expected, rel=1e-7)


def test_frechet_distance_refuses_a_square_root_that_is_not_real():
    # Not covariances: the product has a negative eigenvalue, its root an imaginary diagonal.
    with pytest.raises(ValueError, match="imaginary part of 1: the covariances are too ill-conditioned"):
        evaluation.frechet_from_statistics(np.zeros(2), np.diag([1.0, 1.0]), np.zeros(2), np.diag([-1.0, 1.0]))


def test_inception_score_of_hand_made_logits():
    assert fid.inception_score(np.zeros((20, 1008))) == pytest.approx(1.0, abs=1e-12)  # uniform: p(y|x) = p(y)
    distinct = 100.0 * np.eye(1008)[:10]  # ten images, each surely its own class
    assert fid.inception_score(distinct) == pytest.approx(10.0, rel=1e-9)
    # Probabilities that underflow contribute 0, where the evaluator's 0 * log 0 is NaN.
    assert fid.inception_score(1e4 * np.eye(1008)[:10]) == pytest.approx(10.0, rel=1e-12)
    # Splits of consecutive images, the last one shorter, their scores averaged.
    halves = 100.0 * np.eye(1008)[[0] * 5 + [1] * 5]
    assert fid.inception_score(halves, split=10) == pytest.approx(2.0)
    assert fid.inception_score(halves, split=5) == pytest.approx(1.0)
    mixed = np.exp((np.log(4.0) + 3 * np.log(4 / 3)) / 4)  # split [0, 1, 1, 1]: p(y) = (1/4, 3/4)
    assert fid.inception_score(halves, split=4) == pytest.approx((1.0 + mixed + 1.0) / 3)


def line(points, scale=1.0, width=4):
    """Points on the first axis of a `width`-d space."""
    x = np.zeros((len(points), width), np.float32)
    x[:, 0] = np.asarray(points) * scale
    return x


def test_manifold_radii_are_squared_distances_to_the_third_neighbour_counting_itself():
    radii = fid.manifold_radii(line(range(10)))
    # The ends' 3rd neighbours are 3 away (9), every other point's 2 away (4).
    np.testing.assert_array_equal(radii, [9, 4, 4, 4, 4, 4, 4, 4, 4, 9])
    with pytest.raises(ValueError, match="3 feature vectors have no 3th nearest neighbour"):
        fid.manifold_radii(line(range(3)))


@pytest.mark.parametrize("scale", [1.0, 100.0], ids=["float16", "float32 where float16 overflows"])
def test_precision_and_recall_on_a_line(scale):
    real = line(range(10), scale)
    # 10.5 and 12 lie within 9's radius 3 (12: on its boundary, <=), 12.5 and 30 beyond every ball.
    fake = line([10.5, 12.0, 12.5, 30.0], scale)
    # The fake set's radii reach all of 0..9 (30's 3rd neighbour is 10.5, 19.5 away).
    assert fid.precision_recall(real, fake) == (0.5, 1.0)


def test_precision_and_recall_of_known_sets():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20, 8)).astype(np.float32)
    b = a + 50.0  # far from a
    assert fid.precision_recall(a, a) == (1.0, 1.0)
    assert fid.precision_recall(a, b) == (0.0, 0.0)
    # Samples covering half the reference: all realistic, half the reference recalled.
    assert fid.precision_recall(np.concatenate([a, b]), a) == (1.0, 0.5)
    # Blocks change nothing but memory.
    real, fake = rng.integers(-3, 4, (12, 8)), rng.integers(-2, 5, (8, 8))  # distances exact in float16
    assert fid.precision_recall(real, fake, block=4) == fid.precision_recall(real, fake)
    np.testing.assert_array_equal(fid.manifold_radii(real, block=4), fid.manifold_radii(real))


# --- the network's outputs -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights():
    return inception.random_weights()


def images(seed, count, size):
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def test_one_pass_gives_pool_spatial_and_logits(weights):
    x = images(0, 2, 16).astype(np.float32) / 127.5 - 1.0
    out = jax.jit(inception.outputs)(weights, x)
    assert {name: value.shape for name, value in out.items()} == {"pool": (2, 2048), "spatial": (2, 2023), "logits": (2, 1008)}
    np.testing.assert_allclose(out["logits"], out["pool"] @ weights["fc/kernel"], rtol=1e-4, atol=1e-4)
    # spatial: Mixed_6d's 1x1 branch (its first), first 7 channels, flattened channels-last.
    before = next(i for i, layer in enumerate(inception.LAYERS) if isinstance(layer, inception.Fork) and layer.branches[0][0].name == "Mixed_6d/branch1x1")

    @jax.jit
    def branch(weights, x):  # up to Mixed_6c, then the unit alone
        x6c = inception.apply(weights, inception.LAYERS[:before], inception.resize(x, inception.SIZE))
        return inception.conv_relu(weights, inception.LAYERS[before].branches[0][0], x6c)

    unit = np.asarray(branch(weights, x))
    assert unit.shape == (2, 17, 17, 192)
    np.testing.assert_allclose(out["spatial"], unit[..., :7].reshape(2, -1), rtol=1e-5, atol=1e-5)
    assert not inception.has_classifier({name: w for name, w in weights.items() if name != inception.CLASSIFIER})


def official_state(seed=0):
    """A random state dict in pytorch-fid's names and layouts, from our units' table."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in inception.TENSORS.items():
        if name.endswith("/kernel") and name != inception.CLASSIFIER:
            *window, cin, cout = shape
            module = name.removesuffix("/kernel").replace("/", ".")
            state[f"{module}.conv.weight"] = rng.standard_normal((cout, cin, *window)).astype(np.float32)
            for p in ("weight", "bias", "running_mean", "running_var"):
                state[f"{module}.bn.{p}"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    state["fc.weight"] = rng.standard_normal((1008, 2048)).astype(np.float32)
    state["fc.bias"] = rng.standard_normal(1008).astype(np.float32)
    return state


def test_converter_keeps_the_classifier_and_old_files_still_load(tmp_path):
    state = official_state()
    out = convert_fid.convert_inception(state)
    assert {name: w.shape for name, w in out.items()} == inception.TENSORS
    np.testing.assert_array_equal(out["fc/kernel"], state["fc.weight"].T)  # its bias is not read
    with pytest.raises(ValueError, match=r"1 missing: 'fc\.weight'"):
        convert_fid.convert_inception({k: v for k, v in state.items() if k != "fc.weight"})

    new, old = str(tmp_path / "new.safetensors"), str(tmp_path / "old.safetensors")
    safetensors.numpy.save_file(out, new)
    safetensors.numpy.save_file({k: v for k, v in out.items() if k != "fc/kernel"}, old)
    assert inception.has_classifier(inception.load(new)) and not inception.has_classifier(inception.load(old))
    inception.check_file(old)
    broken = str(tmp_path / "broken.safetensors")
    safetensors.numpy.save_file({k: v for k, v in out.items() if k not in ("fc/kernel", "Mixed_7c/branch_pool/bias")}, broken)
    with pytest.raises(ValueError, match=r"lacks the FID Inception tensor 'Mixed_7c/branch_pool/bias'"):
        inception.check_file(broken)


# --- the evaluation on tiny files ----------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory, weights):
    """Random-weights Inception files (with and without the classifier), 8 samples at 16 px,
    6 reference images at 20 px and references of their statistics."""
    d = tmp_path_factory.mktemp("fid")
    paths = {name: str(d / name) for name in ("w.safetensors", "old.safetensors", "s.npz", "r.npz", "stats.npz", "fid_only.npz")}
    safetensors.numpy.save_file(weights, paths["w.safetensors"])
    safetensors.numpy.save_file({k: v for k, v in weights.items() if k != "fc/kernel"}, paths["old.safetensors"])
    np.savez(paths["s.npz"], arr_0=images(1, 8, 16))
    np.savez(paths["r.npz"], arr_0=images(2, 6, 20))
    out = fid.network_outputs(weights, [images(2, 6, 20)], 8)  # as the evaluation computes them
    stats = {}
    for mean, covariance, output in (("mu", "sigma", "pool"), ("mu_s", "sigma_s", "spatial")):
        features = np.asarray(out[output], np.float64)
        stats[mean], stats[covariance] = features.mean(0), np.cov(features, rowvar=False)
    np.savez(paths["stats.npz"], **stats)
    np.savez(paths["fid_only.npz"], mu=stats["mu"], sigma=stats["sigma"])
    return paths


def run(files, samples="s.npz", reference="r.npz", weights="w.safetensors"):
    s, r = fid.check_inputs(files[samples], files[reference], files[weights])
    return fid.evaluate(s, r, files[weights], batch=8)


@pytest.fixture(scope="module")
def against_images(files):
    return run(files)


def test_batches_are_padded_and_unpadded_in_order(files, weights):
    samples = fid.read_batch_file(files["s.npz"], "samples")
    chunks = list(samples.images(5))  # 5 and 3 images, each padded to a batch of 8
    assert [len(c) for c in chunks] == [5, 3]
    np.testing.assert_array_equal(np.concatenate(chunks), images(1, 8, 16))
    batched = fid.network_outputs(weights, chunks, 8)
    whole = fid.network_outputs(weights, [images(1, 8, 16)], 8)
    assert {name: value.shape for name, value in batched.items()} == {"pool": (8, 2048), "spatial": (8, 2023), "logits": (8, 1008)}
    for name in ("pool", "spatial", "logits"):
        np.testing.assert_allclose(batched[name], whole[name], rtol=1e-5, atol=1e-5)
    assert fid.device_batch(5) == 8 == fid.device_batch(8) and fid.device_batch(9) == 16


def test_samples_against_other_images(against_images):
    r = against_images
    assert r["fid"] > 1e-3 and r["sfid"] > 1e-3 and r["inception_score"] >= 1.0 and r["unavailable"] == {}
    assert 0.0 <= r["precision"] <= 1.0 and 0.0 <= r["recall"] <= 1.0
    assert (r["num_samples"], r["num_reference"]) == (8, 6)


def test_a_reference_of_statistics_only(files, against_images):
    r = run(files, reference="stats.npz")
    assert r["fid"] == pytest.approx(against_images["fid"], rel=1e-5)
    assert r["sfid"] == pytest.approx(against_images["sfid"], rel=1e-5)
    assert r["precision"] is r["recall"] is None
    why = f"{files['stats.npz']} holds statistics only, not the images (arr_0) whose features precision and recall compare."
    assert r["unavailable"] == {"precision": why, "recall": why}
    assert fid.report_lines(r)[3] == f"Precision: unavailable ({why})"
    r = run(files, reference="fid_only.npz")
    assert r["fid"] == pytest.approx(against_images["fid"], rel=1e-5) and r["sfid"] is None
    assert r["unavailable"]["sfid"] == f"{files['fid_only.npz']} holds neither images (arr_0) nor mu_s and sigma_s."


def test_weights_converted_before_the_classifier_give_all_but_the_inception_score(files, against_images):
    r = run(files, reference="stats.npz", weights="old.safetensors")
    assert r["inception_score"] is None
    assert r["unavailable"]["inception_score"] == (
        f"{files['old.safetensors']} was converted without the classifier the Inception Score reads; "
        f"convert it again with `{inception.CONVERT_COMMAND}`."
    )
    for metric in ("fid", "sfid"):
        assert r[metric] == pytest.approx(against_images[metric], rel=1e-5)


def bad_files(d):
    """{case: (samples, reference, weights, the sentence)} of files that cannot be used."""
    rng = np.random.default_rng(0)
    good, weights = str(d / "good.npz"), str(d / "w.safetensors")
    np.savez(good, arr_0=images(0, 4, 8))
    safetensors.numpy.save_file(inception.random_weights(), weights)
    cases = {}

    def case(name, arrays, sentence, role="samples"):
        path = str(d / f"{name}.npz")
        if arrays is not None:
            np.savez(path, **arrays)
        joint = "" if sentence.startswith("'s") else " "
        what = f"{role.capitalize()} file {path}{joint}{sentence}"
        cases[name] = (path, good, weights, what) if role == "samples" else (good, path, weights, what)

    case("missing", None, "does not exist.")
    case("no_images", {"mu": np.zeros(2048), "sigma": np.eye(2048)}, "has no arr_0: samples are uint8 images [N, H, W, 3] in arr_0.")
    case("float", {"arr_0": rng.uniform(size=(4, 8, 8, 3)).astype(np.float32)}, "'s arr_0 is float32 [4, 8, 8, 3], not uint8 images [N, H, W, 3].")
    case("gray", {"arr_0": images(0, 4, 8)[..., 0]}, "'s arr_0 is uint8 [4, 8, 8], not uint8 images [N, H, W, 3].")
    case("three", {"arr_0": images(0, 3, 8)}, "holds 3 images; the metrics need at least 4 (precision and recall read each image's 3rd nearest neighbour).")
    case("mismatched", {"mu": np.zeros(2048), "sigma": np.eye(2000)},
         "holds mu float64 [2048] and sigma [2000, 2000], not FID Inception's fid statistics, float [2048] and [2048, 2048].", "reference")
    case("sigma_s_alone", {"arr_0": images(0, 4, 8), "sigma_s": np.eye(2023)}, "holds sigma_s without mu_s.", "reference")
    case("empty", {"labels": np.zeros(4)}, "holds neither images (arr_0) nor statistics (mu and sigma).", "reference")
    text = str(d / "text.npz")
    with open(text, "w") as f:
        f.write("not a zip")
    cases["text"] = (text, good, weights, f"Samples file {text} is not an .npz file (a zip of .npy arrays, as np.savez writes).")
    nowhere = str(d / "nowhere.safetensors")
    cases["no_weights"] = (good, good, nowhere, f"FID Inception weights file {nowhere} does not exist; make it with `{inception.CONVERT_COMMAND}`.")
    return cases


def test_unusable_inputs_are_one_sentence_naming_the_file(tmp_path):
    for name, (samples, reference, weights, sentence) in bad_files(tmp_path).items():
        with pytest.raises((ValueError, FileNotFoundError)) as error:
            fid.check_inputs(samples, reference, weights)
        assert str(error.value) == sentence, name


# --- a reference from a run's held-out images, and the command -----------------------------------


def test_make_reference_writes_the_configs_held_out_split(tmp_path):
    config = shipped_config("dit_digits", {}, {})
    out = str(tmp_path / "ref.npz")
    dataset, indices = fid.reference_source(config, out, 0)
    assert dataset.name == "digits:test" and len(indices) == len(dataset) == 359
    dataset, indices = fid.reference_source(config, out, 20)
    assert len(set(indices)) == 20 and list(indices) == sorted(indices)
    assert fid.write_reference(dataset, indices, out) == f"Wrote 20 images of digits:test (16 px) to {out}."
    held = np.load(out)
    assert held["arr_0"].shape == (20, 16, 16, 3) and held["arr_0"].dtype == np.uint8
    test = labelled.open_dataset("digits", "test", 16, seed=int(config.seed))
    np.testing.assert_array_equal(held["arr_0"][5], test.read(indices[5])[0])
    assert held["labels"][5] == test.read(indices[5])[1]
    assert fid.read_batch_file(out, "reference").count == 20  # the evaluation reads it

    with pytest.raises(ValueError, match=r"^--num=400 must be in \[4, 359\], the images of digits:test\.$"):
        fid.reference_source(config, out, 400)
    with pytest.raises(ValueError, match=r"^--make_reference writes a class-labelled test split, but the config's conditioning is 'incontext', not 'class'\.$"):
        fid.reference_source(shipped_config("tiny", {}, {}), out, 0)
    with pytest.raises(FileNotFoundError, match="the folder .*nowhere does not exist"):
        fid.reference_source(config, str(tmp_path / "nowhere" / "ref.npz"), 0)


def command(*flags):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "lavin_jax.tools.fid", *flags], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def test_command_makes_a_reference_then_evaluates_it_against_itself(tmp_path, files):
    reference, metrics = str(tmp_path / "ref.npz"), str(tmp_path / "metrics.json")
    code, stdout, stderr = command("--make_reference", "--config=configs/dit_digits.py", f"--out={reference}", "--num=6")
    assert code == 0, stderr[-3000:]
    assert stdout.strip() == f"Wrote 6 images of digits:test (16 px) to {reference}."
    code, stdout, stderr = command(f"--samples={reference}", f"--reference={reference}", f"--inception={files['w.safetensors']}", "--batch=8", f"--out={metrics}")
    assert code == 0, stderr[-3000:]
    lines = stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["Inception Score", "FID", "sFID", "Precision", "Recall", f"Wrote the metrics to {metrics}."]
    report = json.load(open(metrics))
    assert lines[1] == f"FID: {report['fid']}" and (report["num_samples"], report["num_reference"]) == (6, 6)
    # Identical sets: no distance, every image inside the other set's manifold.
    assert report["fid"] == pytest.approx(0.0, abs=1e-6) and report["sfid"] == pytest.approx(0.0, abs=1e-3)
    assert (report["precision"], report["recall"]) == (1.0, 1.0) and report["unavailable"] == {}


def test_command_refuses_bad_input_in_one_line(tmp_path):
    code, stdout, stderr = command(f"--samples={tmp_path / 'x.npz'}", f"--reference={tmp_path / 'y.npz'}")
    assert (code, stdout) == (1, "")
    assert stderr.strip() == f"error: Samples file {tmp_path / 'x.npz'} does not exist."
