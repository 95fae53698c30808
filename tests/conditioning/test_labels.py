import numpy as np
import pytest

from lavin_jax import conditioning, validation
from lavin_jax.conditioning import labels
from conftest import digits_config, shipped_config


@pytest.fixture(scope="module")
def classes():
    return conditioning.get(digits_config())


def test_the_null_condition_is_the_extra_class(classes):
    null = classes.null({"label": np.array([0, 3, 9], np.int32)}, 1)
    np.testing.assert_array_equal(null["label"], [10, 10, 10])


def test_prompts_are_classes_by_index_or_name(classes):
    np.testing.assert_array_equal(classes.labels([3, "7", np.int64(0), None]), [3, 7, 0, 10])  # None: the null class.
    with pytest.raises(ValueError, match=r"prompts\[1\]='seven' is not a class; classes: 0, 1, 2"):
        classes.labels([1, "seven"])
    with pytest.raises(ValueError, match=r"prompts\[0\]=10 is not a class index in \[0, 10\)"):
        classes.labels([10])


def test_model_inputs_of_another_form_are_named(classes):
    classes.check_context({"label": np.array([0, 10])}, 1)  # the null class may be asked for.
    for context, frames in (({"label": np.array([11])}, 1), ({"label": np.array([[1]])}, 1), ({"cond": np.zeros((1, 3))}, 1),
                            ({"label": np.array([1])}, 3)):
        with pytest.raises(ValueError, match=r"one label in \[0, 10\] per image is needed"):
            classes.check_context(context, frames)


@pytest.mark.parametrize("overrides,message", [
    ({"data.classes": ""}, r"config.conditioning='class' needs config.data.classes"),
    ({"data.source": "latents"}, r"config.data.source='latents' needs an autoencoder: config.vae.name and its config.vae.checkpoint"),
    ({"data.source": "latents", "vae.name": "stvae", "data.image_size": 16}, r"config.data.source='latents' needs config.data.latent_dir"),
    ({"conditioning": "incontext"}, r"config.conditioning='incontext', but config.model.name='dit' is conditioned by 'class'"),
    ({"model.learn_sigma": True, "objective": "flow"}, r"config.model.learn_sigma=True is for objective='ddpm'"),
    ({"objective": "ddpm", "ddpm.sampler": "plms"}, r"config.ddpm.sampler='plms' must be one of ddpm, ddim"),
    ({"objective": "ddpm", "ddpm.sample_steps": 1001}, r"config.ddpm.sample_steps=1001 must be in \[1, config.ddpm.num_steps=1000\]"),
])
def test_bad_class_settings_are_one_sentence(overrides, message):
    with pytest.raises(ValueError, match=message):
        validation.validate(digits_config(**overrides), num_devices=8)


def test_a_dataset_of_another_class_count_is_named():
    with pytest.raises(ValueError, match=r"config.model.num_classes=7 but config.data.classes='digits' has 10 classes"):
        conditioning.get(digits_config(**{"model.num_classes": 7})).check_files()


class Drawing:
    """A stand-in predictor that 'samples' held-out digits: of the asked class, or of the next
    (`shift`); with `cycle`, of every class in turn whatever is asked."""

    def __init__(self, classes, shift, cycle=False):
        images, found = labels.read_all(classes.dataset("test"))
        self.by_class = {k: images[found == k] for k in range(10)}
        self.shift, self.cycle = shift, cycle

    def sample(self, context, frames, seed, **options):
        asked = np.arange(len(context["label"])) if self.cycle else np.asarray(context["label"])
        drawn = [self.by_class[(int(k) + self.shift) % 10] for k in asked]
        picked = [images[i % len(images)] for i, images in enumerate(drawn)]
        return np.stack(picked)[:, None].astype(np.float32) / 127.5 - 1.0


def test_the_classifier_tells_the_asked_class_from_another(classes):
    evaluation = classes.evaluator(count=6)
    assert evaluation.real_accuracy > 0.9
    right, wrong = evaluation.run(Drawing(classes, 0)), evaluation.run(Drawing(classes, 1))
    assert right["accuracy"]["model"] > 0.8 and right["accuracy"]["chance"] == 0.1
    assert wrong["accuracy"]["model"] < 0.2
    # One row per class, each as many images as the config shows (2), enlarged for a person.
    grid = right["grids"]["samples_classes"]
    scale = 2 + 8 * labels.metrics.display_scale(8)
    assert grid.shape == (10 * scale + 2, 2 * scale + 2, 3)
    assert "all" in evaluation.table(right) and set(evaluation.scalars(right)) >= {"eval/accuracy", "eval/accuracy/9"}


@pytest.fixture(scope="module")
def unconditional():
    return conditioning.get(shipped_config("diffit_digits", {}, {"model.num_classes": 0, "sample.num_examples": 3}))


def test_an_unconditional_model_reads_every_label_as_the_null_class_and_guides_against_nothing(unconditional):
    source = unconditional.source(0)
    examples = [source[i] for i in range(20)]
    assert {int(e["label"]) for e in examples} == {0}
    assert len({e["target"].tobytes() for e in examples}) == 20  # the dataset's images, shuffled, labels aside.
    assert unconditional.nulls({"label": np.zeros(2, np.int32)}, 1) == []
    np.testing.assert_array_equal(unconditional.labels([None, None]), [0, 0])
    with pytest.raises(ValueError, match=r"prompts\[0\]=3: an unconditional model \(config.model.num_classes=0\) takes None prompts alone"):
        unconditional.labels([3])
    with pytest.raises(ValueError, match=r"an unconditional model \(config.model.num_classes=0\) draws no classes"):
        validation.validate(shipped_config("diffit_digits", {}, {"model.num_classes": 0, "sample.classes": (1,)}), num_devices=8)


def test_an_unconditional_model_is_judged_by_how_its_samples_spread_over_the_classes(unconditional):
    """Held-out digits of every class score near the real images; one digit drawn every time
    scores 1."""
    evaluation = unconditional.evaluator(count=4)
    assert evaluation.count == 40 and evaluation.real_score > 6  # 4 for each of the 10 classes.
    spread, one = evaluation.run(Drawing(unconditional, 0, cycle=True)), evaluation.run(Drawing(unconditional, 3))
    assert spread["class_score"]["model"] > 0.8 * evaluation.real_score and spread["class_score"]["classes"] == 10
    assert one["class_score"]["model"] < 1.5 and one["classes"]["3"] > 0.8
    assert "accuracy" not in spread and set(evaluation.scalars(spread)) >= {"eval/class_score", "eval/class_score_real", "eval/share/9"}
    assert "class score" in evaluation.table(spread)
    scale = 2 + 16 * labels.metrics.display_scale(16)
    assert spread["grids"]["samples_classes"].shape == (scale + 2, 3 * scale + 2, 3)  # one row of 3.


def test_the_cifar10_config_trains_unconditionally_and_is_judged_by_the_spread_of_its_samples(tmp_path):
    """configs/diffit_cifar10.py, made small, on tensorflow-datasets' mock CIFAR-10 through the
    trainer: no class table, and its evaluation scores the spread of its samples."""
    import json

    import tensorflow_datasets as tfds
    from lavin_jax import train

    small = {"data.image_size": 8, "model.channels": (16, 32), "model.num_heads": 2, "model.time_width": 32, "model.groups": 4,
             "model.blocks": 1, "global_batch_size": 8, "total_steps": 2, "checkpoint_every": 2, "eval_every": 2,
             "eval.episodes": 4, "edm.sample_steps": 2, "mesh.data": -1, "mesh.fsdp": 1}
    config = shipped_config("diffit_cifar10", small, {})
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        state = train.train(config, str(tmp_path))
    assert int(state["step"]) == 2 and "class_embed" not in state["params"]["model"]
    scores = [json.loads(line) for line in open(tmp_path / "metrics.jsonl") if "eval/class_score" in line]
    assert [line["step"] for line in scores] == [2] and "eval/accuracy" not in scores[0]
    # Its 40 samples (eval.episodes for each of the 10 classes) read as the classes in these shares.
    shares = [value for name, value in scores[0].items() if name.startswith("eval/share/")]
    assert len(shares) == 10 and abs(sum(shares) - 1.0) < 1e-6 and all(abs(40 * value - round(40 * value)) < 1e-6 for value in shares)
