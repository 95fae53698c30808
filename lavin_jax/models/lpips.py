"""LPIPS perceptual distance (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features
as a Perceptual Metric"), VGG16 variant, version 0.1 of the `lpips` package, in JAX.

Used as a perceptual loss when training the video VAE. The weights (ImageNet VGG16 plus the
LPIPS linear heads) are frozen, so everything here is a pure function over a flat dict of arrays
rather than an nnx.Module: the dict is passed into the jitted train step as a constant input and
never reaches the optimizer.

Make the weights file once with `lavin_jax.tools.convert_lpips` (needs torch, only there), read it
with `load`, and call `distance(weights, x, y)`. `random_weights` stands in for tests and demos.

Images are channels-last (B, H, W, 3) in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lavin_jax.models import frozen

CONVERT_COMMAND = (
    "python -m lavin_jax.tools.convert_lpips --vgg16=vgg16-397923af.pth --lin=vgg.pth "
    "--out=lpips_vgg16.safetensors"
)

# Output channels of VGG16's five blocks of 3x3 convs; a 2x2 max-pool precedes every block but the
# first. LPIPS reads each block's last ReLU: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
BLOCKS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3)


def _convs() -> list[tuple[str, int, int]]:
    """(name, in_channels, out_channels) of the 13 convs in order, named conv{block}_{i} from 1."""
    convs, cin = [], 3
    for b, block in enumerate(BLOCKS, start=1):
        for i, cout in enumerate(block, start=1):
            convs.append((f"conv{b}_{i}", cin, cout))
            cin = cout
    return convs


CONVS: tuple[tuple[str, int, int], ...] = tuple(_convs())

# The converted file's tensors:
#   vgg/conv{b}_{i}/kernel  (3, 3, C_in, C_out)  HWIO, for lax.conv_general_dilated
#   vgg/conv{b}_{i}/bias    (C_out,)
#   lin/{k}                 (C_k,)               k = 0..4, the LPIPS head on block k+1's output:
#                                                a bias-free 1x1 conv to one channel, i.e. one
#                                                non-negative weight per channel.
TENSORS: dict[str, tuple[int, ...]] = {
    **{
        name: shape
        for conv, cin, cout in CONVS
        for name, shape in ((f"vgg/{conv}/kernel", (3, 3, cin, cout)), (f"vgg/{conv}/bias", (cout,)))
    },
    **{f"lin/{k}": (block[-1],) for k, block in enumerate(BLOCKS)},
}

# LPIPS v0.1's scaling layer: maps [-1, 1] inputs to roughly ImageNet-normalised ones.
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)
# lpips divides by (norm + eps) so an all-zero feature vector stays zero instead of 0/0.
_EPS = 1e-10


# `check(weights, source)` and `load(path)`: the file's tensors checked against TENSORS.
FILE = frozen.WeightsFile("LPIPS", TENSORS, CONVERT_COMMAND)
# Random weights are NOT perceptual: the distance they give has LPIPS's structure but means
# nothing (non-negative heads keep it >= 0).
check, check_file, load, random_weights = FILE.check, FILE.check_file, FILE.load, FILE.random


def _features(weights: Mapping[str, jax.Array], x: jax.Array) -> list[jax.Array]:
    """VGG16's relu{1..5}_last feature maps of x (N, H, W, 3), in x's dtype."""
    outputs = []
    for b, block in enumerate(BLOCKS, start=1):
        if b > 1:
            # torchvision's MaxPool2d(2, 2): odd trailing rows/columns are dropped (VALID).
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        for i in range(1, len(block) + 1):
            kernel = jnp.asarray(weights[f"vgg/conv{b}_{i}/kernel"], x.dtype)
            bias = jnp.asarray(weights[f"vgg/conv{b}_{i}/bias"], x.dtype)
            x = jax.lax.conv_general_dilated(
                x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            # jax.nn.relu's gradient is a select, so the infinite gradient of the norm's sqrt at an
            # all-zero feature vector (see distance) is masked out instead of becoming 0 * inf.
            x = jax.nn.relu(x + bias)
        outputs.append(x)
    return outputs


def _unit(f: jax.Array) -> jax.Array:
    """f divided by its L2 norm along channels, as lpips' normalize_tensor."""
    return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + _EPS)


def distance(weights: Mapping[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    """LPIPS v0.1 (VGG16) distance between images x and y, (B, H, W, 3) in [-1, 1] -> (B,) float32.

    The convs run in the images' dtype (bfloat16 halves their cost); the scaling, normalisation
    and sums run in float32, where bfloat16's 8 mantissa bits would lose small differences.
    """
    if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(
            f"LPIPS compares two (B, H, W, 3) image batches, got shapes {x.shape} and {y.shape}."
        )
    batch = x.shape[0]
    # One pass over both batches: half the conv calls, and the same kernels for x and y.
    both = jnp.concatenate([x, y])
    scaled = ((both.astype(jnp.float32) - _SHIFT) / _SCALE).astype(both.dtype)
    total = jnp.zeros((batch,), jnp.float32)
    for k, f in enumerate(_features(weights, scaled)):
        f = _unit(f.astype(jnp.float32))
        diff = jnp.square(f[:batch] - f[batch:])
        # The head is a bias-free 1x1 conv to one channel: a weighted sum over channels (a product
        # and a sum rather than a matmul, which accelerators may run at reduced precision).
        per_pixel = jnp.sum(diff * jnp.asarray(weights[f"lin/{k}"], jnp.float32), axis=-1)
        total = total + jnp.mean(per_pixel, axis=(1, 2))
    return total
