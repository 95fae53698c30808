"""Frozen networks read from converted weight files (LPIPS; FID's Inception-v3; FVD's I3D): what a
file must hold, and one reader that names whatever is wrong with it."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import numpy as np
import safetensors.numpy


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    network: str  # the network's name in messages.
    tensors: Mapping[str, tuple[int, ...]]  # every tensor of the file, name -> shape.
    convert_command: str  # the command that makes the file.

    def check(self, weights: Mapping[str, object], source: str) -> None:
        """Raises ValueError naming the first missing, misshapen or unknown tensor of `weights`
        (`source` says where they came from)."""
        missing = [name for name in self.tensors if name not in weights]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ValueError(
                f"{source} lacks the {self.network} tensor {missing[0]!r}{more}; rebuild it with `{self.convert_command}`."
            )
        for name, shape in self.tensors.items():
            if tuple(np.shape(weights[name])) != shape:
                raise ValueError(
                    f"{source} has tensor {name!r} of shape {tuple(np.shape(weights[name]))}, "
                    f"but {self.network} expects {shape}."
                )
        unknown = sorted(set(weights) - set(self.tensors))
        if unknown:
            raise ValueError(
                f"{source} has tensors {self.network} does not know, e.g. {unknown[0]!r}; "
                f"it is not a file made by `{self.convert_command}`."
            )

    def load(self, path: str) -> dict[str, np.ndarray]:
        """Reads the converted file at `path` and checks it."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{self.network} weights file {path} does not exist; make it with `{self.convert_command}`.")
        try:
            weights = safetensors.numpy.load_file(path)
        except Exception as error:  # safetensors' own errors name no file.
            raise ValueError(
                f"{self.network} weights file {path} is not a safetensors file ({error}); make it with `{self.convert_command}`."
            ) from None
        self.check(weights, f"{self.network} weights file {path}")
        return weights
