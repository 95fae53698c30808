"""Command-line tools run once, outside training (weight conversion)."""

from __future__ import annotations

import numpy as np

from lavin_jax import torch_files


def load_torch(path: str) -> dict[str, np.ndarray]:
    """A .pth state dict's tensors as float32 numpy arrays, read without running pickled code
    (`lavin_jax.torch_files`: torch.load(weights_only=True) where torch is installed)."""
    return {key: np.asarray(value, np.float32) for key, value in torch_files.load(path).items()}
