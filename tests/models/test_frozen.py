import numpy as np
import pytest
import safetensors.numpy

from lavin_jax.models import frozen, i3d, inception, lpips

TOY = frozen.WeightsFile("Toy", {"a/kernel": (2, 3), "a/bias": (3,)}, "python -m make_toy")


def test_a_file_round_trips_and_whatever_is_wrong_is_named(tmp_path):
    weights = {"a/kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "a/bias": np.ones(3, np.float32)}
    path = str(tmp_path / "toy.safetensors")
    safetensors.numpy.save_file(weights, path)
    loaded = TOY.load(path)
    assert loaded.keys() == weights.keys() and all(np.array_equal(loaded[k], weights[k]) for k in weights)
    for broken, message in (
        ({"a/kernel": weights["a/kernel"]}, r"toy.safetensors lacks the Toy tensor 'a/bias'; rebuild it with `python -m make_toy`"),
        ({**weights, "a/bias": np.ones(4, np.float32)}, r"has tensor 'a/bias' of shape \(4,\), but Toy expects \(3,\)"),
        ({**weights, "b/bias": np.ones(1, np.float32)}, r"has tensors Toy does not know, e.g. 'b/bias'"),
    ):
        safetensors.numpy.save_file(broken, path)
        for read in (TOY.check_file, TOY.load):
            with pytest.raises(ValueError, match=message):
                read(path)
    with pytest.raises(FileNotFoundError, match=r"Toy weights file .*nowhere.safetensors does not exist; make it with `python -m make_toy`"):
        TOY.load(str(tmp_path / "nowhere.safetensors"))
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(ValueError, match=r"Toy weights file .*notes.txt is not a safetensors file"):
        TOY.load(str(tmp_path / "notes.txt"))


@pytest.mark.parametrize("module", [lpips, inception, i3d], ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_each_network_reads_its_own_table_and_names_its_converter(module, tmp_path):
    with pytest.raises(FileNotFoundError, match=module.CONVERT_COMMAND.split(" --")[0].replace(".", r"\.")):
        module.load(str(tmp_path / "nowhere.safetensors"))
    # A file of the right names, every tensor of shape (1, ...): refused for its first tensor.
    path = str(tmp_path / "stand_in.safetensors")
    safetensors.numpy.save_file({name: np.zeros((1,) * len(shape), np.float32) for name, shape in module.TENSORS.items()}, path)
    with pytest.raises(ValueError, match=f"tensor '{next(iter(module.TENSORS))}' of shape"):
        module.load(path)
