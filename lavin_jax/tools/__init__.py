"""Command-line tools run once, outside training (weight conversion)."""

from __future__ import annotations

import numpy as np


def load_torch(path: str) -> dict[str, np.ndarray]:
    """A .pth state dict's tensors as float32 numpy arrays, read without running pickled code."""
    try:
        import torch
    except ImportError:
        raise ImportError(
            "Reading the .pth files needs PyTorch (`pip install torch`), which only the weight conversions use."
        ) from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {key: value.detach().float().numpy() for key, value in state.items()}
