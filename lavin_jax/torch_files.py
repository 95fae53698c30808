"""Reading PyTorch checkpoints (`torch.save` zip files) without PyTorch and without running their
pickled code.

A `.pt` file is a zip archive: `<root>/data.pkl`, a pickle of the saved object whose tensors refer
to raw storages `<root>/data/<key>`. The pickle is read by an unpickler that resolves only the
names a plain state dict uses (ordered dicts, tensor and parameter rebuilds, storage types) and
the `argparse.Namespace` of arguments that training scripts save beside their weights (DiT's
train.py), read as an inert `types.SimpleNamespace`; a file that would run other code is refused,
naming what it asked for. With torch installed, `torch.load(weights_only=True)` reads the file
instead, allowed the same Namespace.
"""

from __future__ import annotations

import argparse
import collections
import os
import pickle
import types
import zipfile

import ml_dtypes
import numpy as np

# Storage classes by the names torch pickles them under, and their element types.
_STORAGES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


def _rebuild_tensor(storage, offset, size, stride, *_):
    """A tensor as a copy of its view of the storage (element offset and strides, as torch stores
    them), after checking that the view lies inside the storage: the file says where, and a file
    must not make the reader look past the bytes it holds."""
    size, stride = tuple(size), tuple(stride)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if not isinstance(storage, np.ndarray) or offset < 0 or min(stride, default=0) < 0 or len(size) != len(stride) or last >= len(storage):
        raise ValueError(f"A tensor of size {size}, stride {stride} at offset {offset} does not lie inside its storage.")
    if not size:
        return np.array(storage[offset])
    itemsize = storage.dtype.itemsize
    return np.lib.stride_tricks.as_strided(storage[offset:], size, tuple(s * itemsize for s in stride)).copy()


def _rebuild_parameter(data, *_):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    # Its state is set as attributes (pickle's BUILD), never by code of the file's choosing.
    ("argparse", "Namespace"): types.SimpleNamespace,
    **{("torch", name): name for name in _STORAGES},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, root: str, path: str):
        super().__init__(file)
        self._archive, self._root, self._path = archive, root, path
        self._storages = {}  # key -> array: views of one storage share it, as in torch.

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise ValueError(
                f"{self._path} asks for {module}.{name}, which a plain state dict does not need, so it is "
                "not read (torch.load(weights_only=True), where torch is installed, allows a few more types)."
            )
        return _ALLOWED[module, name]

    def persistent_load(self, pid):
        kind, storage, key, _location, numel = pid
        if kind != "storage" or storage not in _STORAGES:
            raise ValueError(f"{self._path} holds a storage of kind {kind!r} / {storage!r}, which cannot be read.")
        if key not in self._storages:
            data = self._archive.read(f"{self._root}/data/{key}")
            dtype = np.dtype(_STORAGES[storage])
            if numel * dtype.itemsize > len(data):
                raise ValueError(f"{self._path}: storage {key} holds {len(data)} bytes, fewer than its {numel} elements.")
            self._storages[key] = np.frombuffer(data, dtype, count=numel)
        return self._storages[key]


def load(path: str):
    """The object a `torch.save` file holds, tensors as numpy arrays: with torch when it is
    installed (`weights_only=True`), else with the restricted reader above."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist.")
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
        return _to_numpy(state, torch)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a torch.save zip archive (legacy .pt files need torch to read).")
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path} has {len(pickles)} data.pkl entries; a torch.save archive has one.")
        root = pickles[0].rsplit("/", 1)[0]
        with archive.open(pickles[0]) as file:
            return _Unpickler(file, archive, root, path).load()


def _to_numpy(value, torch):
    if isinstance(value, torch.Tensor):
        value = value.detach()
        return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16) if value.dtype == torch.bfloat16 else value.numpy()
    if isinstance(value, dict):
        return type(value)((k, _to_numpy(v, torch)) for k, v in value.items())
    return value
