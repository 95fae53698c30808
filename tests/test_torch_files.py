"""The restricted reader of torch.save archives, on archives written without torch
(`conftest.save_torch_archive`)."""

import collections
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest

from conftest import TorchView, save_torch_archive
from lavin_jax import torch_files


def test_tensors_come_back_with_their_values_views_and_types(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as without torch, even where it is installed.
    weight = np.arange(12, dtype=np.float32).reshape(3, 4)
    shared = np.arange(10, dtype=np.float32)
    half = np.linspace(-1, 1, 6).astype(ml_dtypes.bfloat16).reshape(2, 3)
    state = collections.OrderedDict(
        weight=weight,
        transposed=TorchView(weight, 0, (4, 3), (1, 4)),  # a view of the same storage
        tail=TorchView(shared, 6, (4,), (1,)),
        half=half,
        steps=np.array(7, np.int64),
    )
    path = str(tmp_path / "state.pt")
    save_torch_archive(path, state)
    loaded = torch_files.load(path)
    assert list(loaded) == ["weight", "transposed", "tail", "half", "steps"]
    np.testing.assert_array_equal(loaded["weight"], weight)
    np.testing.assert_array_equal(loaded["transposed"], weight.T)
    np.testing.assert_array_equal(loaded["tail"], shared[6:])
    assert loaded["half"].dtype == ml_dtypes.bfloat16 and np.array_equal(loaded["half"], half.reshape(2, 3))
    assert int(loaded["steps"]) == 7


def test_a_file_that_asks_for_other_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    path = str(tmp_path / "bad.pt")
    save_torch_archive(path, {"extra": zipfile.ZipFile})  # any global outside a plain state dict
    with pytest.raises(ValueError, match=r"bad.pt asks for zipfile.ZipFile, which a plain state dict does not need"):
        torch_files.load(path)
    (tmp_path / "legacy.pt").write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(ValueError, match=r"legacy.pt is not a torch.save zip archive"):
        torch_files.load(str(tmp_path / "legacy.pt"))


def test_a_tensor_outside_its_storage_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    storage = np.arange(2, dtype=np.float32)
    for view in (TorchView(storage, 0, (8,), (1,)), TorchView(storage, -1, (1,), (1,)), TorchView(storage, 1, (2,), (1,))):
        path = str(tmp_path / "bad.pt")
        save_torch_archive(path, {"w": view})
        with pytest.raises(ValueError, match="does not lie inside its storage"):
            torch_files.load(path)


def test_a_missing_file_is_named():
    with pytest.raises(FileNotFoundError, match="nowhere.pth does not exist"):
        torch_files.load("/nonexistent/nowhere.pth")
