"""Frozen networks read from converted weight files (LPIPS; FID's Inception-v3; FVD's I3D): what a
file must hold, and one reader that names whatever is wrong with it."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import numpy as np
import safetensors
import safetensors.numpy


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    network: str  # the network's name in messages.
    tensors: Mapping[str, tuple[int, ...]]  # every tensor of the file, name -> shape.
    convert_command: str  # the command that makes the file.

    def check(self, shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
        """Raises ValueError naming the first missing, misshapen or unknown tensor of a file's
        tensor `shapes` (`source` says where they came from)."""
        missing = [name for name in self.tensors if name not in shapes]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ValueError(
                f"{source} lacks the {self.network} tensor {missing[0]!r}{more}; rebuild it with `{self.convert_command}`."
            )
        for name, shape in self.tensors.items():
            if tuple(shapes[name]) != shape:
                raise ValueError(f"{source} has tensor {name!r} of shape {tuple(shapes[name])}, but {self.network} expects {shape}.")
        unknown = sorted(set(shapes) - set(self.tensors))
        if unknown:
            raise ValueError(
                f"{source} has tensors {self.network} does not know, e.g. {unknown[0]!r}; "
                f"it is not a file made by `{self.convert_command}`."
            )

    def check_file(self, path: str) -> None:
        """Checks the converted file at `path` from its header: no tensor is read."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{self.network} weights file {path} does not exist; make it with `{self.convert_command}`.")
        try:
            with safetensors.safe_open(path, "numpy") as f:
                shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
        except Exception as error:  # safetensors' own errors name no file.
            raise ValueError(
                f"{self.network} weights file {path} is not a safetensors file ({error}); make it with `{self.convert_command}`."
            ) from None
        self.check(shapes, f"{self.network} weights file {path}")

    def load(self, path: str) -> dict[str, np.ndarray]:
        """Reads the converted file at `path`, checked first."""
        self.check_file(path)
        return safetensors.numpy.load_file(path)

    def random(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Arrays of every tensor's shape, for tests and demos without the file: He-normal
        kernels (activations keep their scale through the ReLUs), small biases, anything else
        uniform in [0, 1 / shape[0]) (non-negative, like LPIPS's trained heads). Structure only:
        what they compute means nothing."""
        rng = np.random.default_rng(seed)
        weights = {}
        for name, shape in self.tensors.items():
            if name.endswith("/kernel"):
                weights[name] = np.sqrt(2.0 / np.prod(shape[:-1])) * rng.standard_normal(shape)
            elif name.endswith("/bias"):
                weights[name] = 0.01 * rng.standard_normal(shape)
            else:
                weights[name] = rng.uniform(size=shape) / shape[0]
        return {name: w.astype(np.float32) for name, w in weights.items()}
