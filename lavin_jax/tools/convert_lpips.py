"""Converts the PyTorch LPIPS (VGG16, v0.1) weights into the safetensors file `lavin_jax.models.lpips`
reads:

    python -m lavin_jax.tools.convert_lpips --vgg16=vgg16-397923af.pth --lin=vgg.pth \\
        --out=lpips_vgg16.safetensors

Inputs:
  --vgg16  torchvision's ImageNet VGG16 state dict,
           https://download.pytorch.org/models/vgg16-397923af.pth
  --lin    the LPIPS v0.1 linear heads, `lpips/weights/v0.1/vgg.pth` inside the `lpips` pip package
           (or the same path in the GitHub repo richzhang/PerceptualSimilarity).

The .pth files are read by `lavin_jax.torch_files` (torch.load(weights_only=True) where torch is
installed; the legacy, non-zip format of torchvision's VGG16 file needs it); training reads the
output with numpy.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import safetensors.numpy
from absl import app, flags

from lavin_jax.models import lpips
from lavin_jax.tools import load_torch

# Indices of the 13 convs in torchvision's `vgg16().features`, in lpips.CONVS order; the indices
# between them are ReLUs and, after each block, a max-pool.
TORCHVISION_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def _get(state: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...], source: str) -> np.ndarray:
    """state[key] as float32, raising ValueError naming the key if it is absent or misshapen."""
    if key not in state:
        raise ValueError(f"The {source} state dict has no {key!r}; is it the right file?")
    value = np.asarray(state[key], np.float32)
    if value.shape != shape:
        raise ValueError(f"The {source} state dict's {key!r} has shape {value.shape}, expected {shape}.")
    return value


def convert(vgg_state: Mapping[str, np.ndarray], lin_state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torchvision VGG16 + lpips head state dicts (as numpy) -> the tensors of lpips.TENSORS.

    Keys the conversion does not need (VGG16's classifier) are ignored.
    """
    out = {}
    for index, (conv, cin, cout) in zip(TORCHVISION_CONVS, lpips.CONVS, strict=True):
        kernel = _get(vgg_state, f"features.{index}.weight", (cout, cin, 3, 3), "VGG16")
        # torch's OIHW -> lax's HWIO. Both layers are cross-correlations, so no spatial flip.
        out[f"vgg/{conv}/kernel"] = np.ascontiguousarray(kernel.transpose(2, 3, 1, 0))
        out[f"vgg/{conv}/bias"] = _get(vgg_state, f"features.{index}.bias", (cout,), "VGG16")
    for k, block in enumerate(lpips.BLOCKS):
        # lin{k} is Sequential(Dropout, Conv2d(C, 1, 1, bias=False)): its conv is `model.1`.
        weight = _get(lin_state, f"lin{k}.model.1.weight", (1, block[-1], 1, 1), "LPIPS heads")
        out[f"lin/{k}"] = weight.reshape(block[-1])
    return out


def define_flags() -> None:
    """The command line's flags, defined only when this module runs as the program (as a library,
    imported beside convert_fid, it must not claim --out)."""
    flags.DEFINE_string("vgg16", None, "torchvision's vgg16-397923af.pth.")
    flags.DEFINE_string("lin", None, "The lpips package's lpips/weights/v0.1/vgg.pth.")
    flags.DEFINE_string("out", None, "Where to write the .safetensors file.")
    flags.mark_flags_as_required(["vgg16", "lin", "out"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    weights = convert(load_torch(f.vgg16), load_torch(f.lin))
    lpips.check({name: w.shape for name, w in weights.items()}, f"The conversion for {f.out}")
    safetensors.numpy.save_file(weights, f.out)
    print(f"Wrote {len(weights)} LPIPS tensors to {f.out}.")


if __name__ == "__main__":
    define_flags()
    app.run(main)
