"""Converts the PyTorch weights of FID's Inception and FVD's I3D into the safetensors files
`lavin_jax.models.inception` and `lavin_jax.models.i3d` read:

    python -m lavin_jax.tools.convert_fid --inception=pt_inception-2015-12-05-6726825d.pth \\
        --out=fid_inception.safetensors
    python -m lavin_jax.tools.convert_fid --i3d=i3d_pretrained_400.pt --out=fvd_i3d.safetensors

Inputs (one per run):
  --inception  pytorch-fid's FID Inception state dict, from its GitHub release "fid_weights":
               https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/
               pt_inception-2015-12-05-6726825d.pth
  --i3d        a Kinetics-400 I3D state dict with piergiaj/pytorch-i3d's module names. Use
               VideoGPT's `i3d_pretrained_400.pt` (wilson1yan/VideoGPT, videogpt/fvd/; TF-Hub's
               i3d-kinetics-400 weights, those of the reference FVD); see lavin_jax/models/i3d.py.

Each conv's frozen batch norm is folded into it (kernel * gamma / sqrt(var + eps), bias
beta - mean * gamma / sqrt(var + eps), in float64): the networks only ever run in inference, so
the JAX side needs one conv and one add per unit, half the tensors, and no eps to get right.
The Inception's 1008-way classifier keeps its weight, transposed, for the Inception Score
(`lavin_jax.tools.fid`), and drops its bias, which that score never reads.

The .pth files are read by `lavin_jax.torch_files` (torch.load(weights_only=True) where torch is
installed; without it, zip archives by a restricted reader); evaluation reads the output with numpy.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import safetensors.numpy
from absl import app, flags

from lavin_jax.models import i3d, inception
from lavin_jax.tools import load_torch

# The batch norms' eps in both references: torchvision's BasicConv2d (pytorch-fid) and Sonnet's
# BatchNorm (TF-Hub's I3D; piergiaj's port keeps it).
EPS = 1e-3
_BATCH_NORM = ("weight", "bias", "running_mean", "running_var")
# The classifier's bias (TensorFlow's softmax/biases): the Inception Score's logits are pool3 times
# the weight alone (see inception.outputs).
INCEPTION_UNUSED = ("fc.bias",)


def _unused(key: str, unused: tuple[str, ...]) -> bool:
    # PyTorch's batch-norm step counter is in some state dicts and not others; nothing reads it.
    return key in unused or key.endswith(".num_batches_tracked")


def _read(
    state: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], unused: tuple[str, ...], source: str
) -> dict[str, np.ndarray]:
    """The `expected` tensors of `state` in float64; raises one ValueError listing every missing,
    misshapen and unexpected key (keys in `unused` are allowed and dropped)."""
    read = {key: np.asarray(state[key], np.float64) for key in expected if key in state}
    kinds = {
        "missing": [repr(key) for key in expected if key not in read],
        "unexpected": [repr(key) for key in sorted(state) if key not in expected and not _unused(key, unused)],
        "misshapen": [
            f"{key!r} has shape {read[key].shape}, expected {shape}"
            for key, shape in expected.items()
            if key in read and read[key].shape != shape
        ],
    }
    problems = [
        f"{len(keys)} {kind}: {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
        for kind, keys in kinds.items()
        if keys
    ]
    if problems:
        raise ValueError(f"The {source} state dict does not match ({'; '.join(problems)}). Is it the right file?")
    return read


def _units(tensors: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Our conv + batch norm units -> (their PyTorch module path, torch's kernel shape (O, I, *window))."""
    units = {}
    for name, shape in tensors.items():
        if name.endswith("/kernel"):
            unit = name.removesuffix("/kernel")
            *window, cin, cout = shape
            units[unit] = (unit.replace("/", "."), (cout, cin, *window))
    return units


def _expected(units: Mapping[str, tuple[str, tuple[int, ...]]], conv: str) -> dict[str, tuple[int, ...]]:
    """The PyTorch keys and shapes of `units`: the conv's weight and its batch norm's four arrays.

    `conv` is the conv's attribute in a PyTorch unit: "conv" in torchvision, "conv3d" in I3D.
    """
    expected = {}
    for module, shape in units.values():
        expected[f"{module}.{conv}.weight"] = shape
        expected.update({f"{module}.bn.{p}": (shape[0],) for p in _BATCH_NORM})
    return expected


def _fold(
    read: Mapping[str, np.ndarray], units: Mapping[str, tuple[str, tuple[int, ...]]], conv: str
) -> dict[str, np.ndarray]:
    """Each unit's conv with its batch norm folded in, as our (*window, I, O) kernel and bias."""
    out = {}
    for unit, (module, _) in units.items():
        gamma, beta, mean, var = (read[f"{module}.bn.{p}"] for p in _BATCH_NORM)
        scale = gamma / np.sqrt(var + EPS)
        # torch's (O, I, *window) -> lax's (*window, I, O). Both are cross-correlations: no flip.
        kernel = np.moveaxis(read[f"{module}.{conv}.weight"], (0, 1), (-1, -2)) * scale
        out[f"{unit}/kernel"] = np.ascontiguousarray(kernel, np.float32)
        out[f"{unit}/bias"] = (beta - mean * scale).astype(np.float32)
    return out


def convert_inception(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """pytorch-fid's FID Inception state dict (as numpy) -> the tensors of inception.TENSORS."""
    units = _units({k: v for k, v in inception.TENSORS.items() if k != inception.CLASSIFIER})
    classifier = {"fc.weight": (inception.CLASSES, inception.FEATURES)}
    read = _read(state, {**_expected(units, "conv"), **classifier}, INCEPTION_UNUSED, "FID Inception")
    # torch's Linear weight (out, in) -> our (in, out) matrix on pool3.
    kernel = np.ascontiguousarray(read["fc.weight"].T, np.float32)
    return {**_fold(read, units, "conv"), inception.CLASSIFIER: kernel}


def convert_i3d(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A piergiaj-style I3D state dict (as numpy) -> the tensors of i3d.TENSORS."""
    units = _units({k: v for k, v in i3d.TENSORS.items() if not k.startswith("logits/")})
    logits = {"logits.conv3d.weight": (i3d.CLASSES, i3d.WIDTH, 1, 1, 1), "logits.conv3d.bias": (i3d.CLASSES,)}
    read = _read(state, {**_expected(units, "conv3d"), **logits}, (), "I3D")
    # The logits are a biased 1x1x1 conv without batch norm: a matrix on the pooled features.
    kernel = read["logits.conv3d.weight"].reshape(i3d.CLASSES, i3d.WIDTH).T
    return {
        **_fold(read, units, "conv3d"),
        "logits/kernel": np.ascontiguousarray(kernel, np.float32),
        "logits/bias": read["logits.conv3d.bias"].astype(np.float32),
    }


def define_flags() -> None:
    """The command line's flags, defined only when this module runs as the program (as a library,
    imported beside convert_lpips, it must not claim --out)."""
    flags.DEFINE_string("inception", None, "pytorch-fid's pt_inception-2015-12-05-6726825d.pth.")
    flags.DEFINE_string("i3d", None, "A piergiaj-style Kinetics-400 I3D state dict (i3d_pretrained_400.pt).")
    flags.DEFINE_string("out", None, "Where to write the .safetensors file.")
    flags.mark_flags_as_required(["out"])
    flags.mark_flags_as_mutual_exclusive(["inception", "i3d"], required=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    if f.inception:
        network, weights = inception, convert_inception(load_torch(f.inception))
    else:
        network, weights = i3d, convert_i3d(load_torch(f.i3d))
    network.check({name: w.shape for name, w in weights.items()}, f"The conversion for {f.out}")
    safetensors.numpy.save_file(weights, f.out)
    print(f"Wrote {len(weights)} tensors to {f.out}.")


if __name__ == "__main__":
    define_flags()
    app.run(main)
