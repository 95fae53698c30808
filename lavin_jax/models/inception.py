"""Inception-v3 as FID reads it (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule
Converge to a Local Nash Equilibrium"), in JAX: the 2048-d pool3 features of an image, and in the
same pass what guided-diffusion's evaluator reads beside them (`outputs`): the spatial features
of sFID and the logits of the Inception Score.

The variant is the `pytorch-fid` package's FID Inception (mseitzer/pytorch-fid,
`fid_inception_v3`): TensorFlow's 2015-12-05 Inception graph, which the original TTUR FID code
reads, ported to torchvision's Inception-v3 modules. It differs from torchvision's network, and
this file keeps the differences:
  - the 3x3 average pools of Mixed_5b-d, Mixed_6b-e and Mixed_7b divide by the number of values
    inside the image, not by 9 (TensorFlow's average pool excludes the padding);
  - Mixed_7c max-pools its pool branch where every other block, and the paper, average-pools;
  - 1008 classes: FID reads the global average pool before the classifier; the Inception Score
    reads the classifier.

Weights: pytorch-fid's release file `pt_inception-2015-12-05-6726825d.pth`
(https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth),
converted once by `lavin_jax.tools.convert_fid` (reads .pth files with `lavin_jax.torch_files`); `load` reads the result
and `random_weights` stands in for tests and demos. The converter folds each frozen batch norm
(eps 1e-3) into its conv, so every unit here is conv + bias + ReLU. Files converted before the
classifier was kept still load: they give everything but the logits.

Preprocessing is pytorch-fid's InceptionV3 with resize_input and normalize_input: images resized
bilinearly to 299x299 (torch's F.interpolate(align_corners=False): half-pixel centres, no
antialiasing), in [-1, 1]. pytorch-fid resizes [0, 1] images before mapping them to [-1, 1]; a
bilinear resize commutes with that affine map, so `features` takes [-1, 1] images of any size,
channels last, and resizes them itself. Quantising to 8 bits first, as images read from files
are, is the caller's choice.

The network is written as data (`LAYERS`: `Conv`, `Pool` and `Fork` records), from which both the
weights table `TENSORS` and the forward pass (`apply`) follow. The same records and helpers, which
work on 2D and 3D inputs alike, build the I3D of FVD (`lavin_jax.models.i3d`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import safetensors

from lavin_jax.models import frozen

CONVERT_COMMAND = (
    "python -m lavin_jax.tools.convert_fid --inception=pt_inception-2015-12-05-6726825d.pth "
    "--out=fid_inception.safetensors"
)

SIZE = 299  # the input side the network was trained at; pool3 is 8x8 there.
CLASSES = 1008  # the classifier's outputs: TensorFlow's graph's `softmax` layer (fc in pytorch-fid).


class Conv(NamedTuple):
    """A conv whose frozen batch norm is folded into `{name}/kernel` and `{name}/bias`, then ReLU."""

    name: str
    features: int
    kernel: tuple[int, ...]  # 2 spatial sizes for images, 3 (time first) for clips.
    stride: int | tuple[int, ...] = 1
    padding: str = "SAME"  # lax's "SAME" pads like TensorFlow: the odd cell at the end.


class Pool(NamedTuple):
    """A max pool, or an average pool over the in-bounds values only (TensorFlow's)."""

    kind: str  # "max" or "avg"
    window: tuple[int, ...]
    stride: int | tuple[int, ...] = 1
    padding: str = "SAME"


class Fork(NamedTuple):
    """Parallel branches from one input, concatenated along channels in the order given."""

    branches: tuple[tuple[Layer, ...], ...]


Layer = Conv | Pool | Fork


def _per_axis(value: int | tuple[int, ...], n: int) -> tuple[int, ...]:
    return (value,) * n if isinstance(value, int) else tuple(value)


def tensor_shapes(layers: tuple[Layer, ...], channels: int) -> tuple[dict[str, tuple[int, ...]], int]:
    """The weights `layers` read from an input of `channels` channels, and their output channels.

    Kernels are channels-last (spatial..., C_in, C_out) for lax.conv_general_dilated.
    """
    shapes = {}
    for layer in layers:
        if isinstance(layer, Conv):
            shapes[f"{layer.name}/kernel"] = (*layer.kernel, channels, layer.features)
            shapes[f"{layer.name}/bias"] = (layer.features,)
            channels = layer.features
        elif isinstance(layer, Fork):
            outputs = [tensor_shapes(branch, channels) for branch in layer.branches]
            for branch_shapes, _ in outputs:
                shapes.update(branch_shapes)
            channels = sum(c for _, c in outputs)
    return shapes, channels


def conv_relu(weights: Mapping[str, jax.Array], layer: Conv, x: jax.Array) -> jax.Array:
    """One folded conv + batch norm + ReLU unit on x (N, [T,] H, W, C)."""
    n = x.ndim - 2
    axes = "DHW"[-n:]
    y = jax.lax.conv_general_dilated(
        x,
        jnp.asarray(weights[f"{layer.name}/kernel"], x.dtype),
        _per_axis(layer.stride, n),
        layer.padding,
        dimension_numbers=(f"N{axes}C", f"{axes}IO", f"N{axes}C"),
        # Accelerators' default precision multiplies in bfloat16 passes; metric features are
        # compared across runs and papers, so they are computed at full float32 precision.
        precision=jax.lax.Precision.HIGHEST,
    )
    return jax.nn.relu(y + jnp.asarray(weights[f"{layer.name}/bias"], x.dtype))


def pool(layer: Pool, x: jax.Array) -> jax.Array:
    """`layer` over x's spatial (and time) axes."""
    window = (1, *layer.window, 1)
    strides = (1, *_per_axis(layer.stride, x.ndim - 2), 1)
    if layer.kind == "max":
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, layer.padding)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, layer.padding)
    inside = jnp.ones((1, *x.shape[1:-1], 1), x.dtype)
    count = jax.lax.reduce_window(inside, 0.0, jax.lax.add, window, strides, layer.padding)
    return total / count


def apply(
    weights: Mapping[str, jax.Array], layers: tuple[Layer, ...], x: jax.Array, taps: dict[str, jax.Array] | None = None
) -> jax.Array:
    """`layers` on x (N, [T,] H, W, C), channels last. `taps`, keyed by Conv names, gets those
    units' outputs (after their ReLU) on the way: inner features without a second pass."""
    for layer in layers:
        if isinstance(layer, Conv):
            x = conv_relu(weights, layer, x)
            if taps is not None and layer.name in taps:
                taps[layer.name] = x
        elif isinstance(layer, Pool):
            x = pool(layer, x)
        else:
            x = jnp.concatenate([apply(weights, branch, x, taps) for branch in layer.branches], axis=-1)
    return x


def resize(x: jax.Array, size: int) -> jax.Array:
    """x (..., H, W, C) resized to (..., size, size, C) bilinearly, as torch's
    F.interpolate(mode="bilinear", align_corners=False): half-pixel centres, no antialiasing
    (jax.image.resize would otherwise blur before shrinking, which the references do not)."""
    shape = (*x.shape[:-3], size, size, x.shape[-1])
    return jax.image.resize(x, shape, "linear", antialias=False)


def named_convs(block: str):
    """A Conv maker for the units of `block`, named `block/unit` after the PyTorch module paths."""

    def conv(unit: str, features: int, kernel: tuple[int, ...], stride: int = 1, padding: str = "SAME") -> Conv:
        return Conv(f"{block}/{unit}", features, kernel, stride, padding)

    return conv


def _block_a(name: str, pool_features: int) -> Fork:
    conv = named_convs(name)
    return Fork((
        (conv("branch1x1", 64, (1, 1)),),
        (conv("branch5x5_1", 48, (1, 1)), conv("branch5x5_2", 64, (5, 5))),
        (conv("branch3x3dbl_1", 64, (1, 1)), conv("branch3x3dbl_2", 96, (3, 3)), conv("branch3x3dbl_3", 96, (3, 3))),
        (Pool("avg", (3, 3)), conv("branch_pool", pool_features, (1, 1))),
    ))


def _block_b(name: str) -> Fork:
    """The 35 -> 17 reduction (torchvision's InceptionB, not patched by pytorch-fid)."""
    conv = named_convs(name)
    return Fork((
        (conv("branch3x3", 384, (3, 3), 2, "VALID"),),
        (
            conv("branch3x3dbl_1", 64, (1, 1)),
            conv("branch3x3dbl_2", 96, (3, 3)),
            conv("branch3x3dbl_3", 96, (3, 3), 2, "VALID"),
        ),
        (Pool("max", (3, 3), 2, "VALID"),),
    ))


def _block_c(name: str, c7: int) -> Fork:
    conv = named_convs(name)
    return Fork((
        (conv("branch1x1", 192, (1, 1)),),
        (conv("branch7x7_1", c7, (1, 1)), conv("branch7x7_2", c7, (1, 7)), conv("branch7x7_3", 192, (7, 1))),
        (
            conv("branch7x7dbl_1", c7, (1, 1)),
            conv("branch7x7dbl_2", c7, (7, 1)),
            conv("branch7x7dbl_3", c7, (1, 7)),
            conv("branch7x7dbl_4", c7, (7, 1)),
            conv("branch7x7dbl_5", 192, (1, 7)),
        ),
        (Pool("avg", (3, 3)), conv("branch_pool", 192, (1, 1))),
    ))


def _block_d(name: str) -> Fork:
    """The 17 -> 8 reduction (torchvision's InceptionD, not patched by pytorch-fid)."""
    conv = named_convs(name)
    return Fork((
        (conv("branch3x3_1", 192, (1, 1)), conv("branch3x3_2", 320, (3, 3), 2, "VALID")),
        (
            conv("branch7x7x3_1", 192, (1, 1)),
            conv("branch7x7x3_2", 192, (1, 7)),
            conv("branch7x7x3_3", 192, (7, 1)),
            conv("branch7x7x3_4", 192, (3, 3), 2, "VALID"),
        ),
        (Pool("max", (3, 3), 2, "VALID"),),
    ))


def _block_e(name: str, pool_kind: str) -> Fork:
    conv = named_convs(name)
    return Fork((
        (conv("branch1x1", 320, (1, 1)),),
        (
            conv("branch3x3_1", 384, (1, 1)),
            Fork(((conv("branch3x3_2a", 384, (1, 3)),), (conv("branch3x3_2b", 384, (3, 1)),))),
        ),
        (
            conv("branch3x3dbl_1", 448, (1, 1)),
            conv("branch3x3dbl_2", 384, (3, 3)),
            Fork(((conv("branch3x3dbl_3a", 384, (1, 3)),), (conv("branch3x3dbl_3b", 384, (3, 1)),))),
        ),
        (Pool(pool_kind, (3, 3)), conv("branch_pool", 192, (1, 1))),
    ))


# Conv2d_1a_3x3 to Mixed_7c; the global average pool that makes pool3 is in `features`.
LAYERS: tuple[Layer, ...] = (
    Conv("Conv2d_1a_3x3", 32, (3, 3), 2, "VALID"),
    Conv("Conv2d_2a_3x3", 32, (3, 3), 1, "VALID"),
    Conv("Conv2d_2b_3x3", 64, (3, 3)),
    Pool("max", (3, 3), 2, "VALID"),
    Conv("Conv2d_3b_1x1", 80, (1, 1)),
    Conv("Conv2d_4a_3x3", 192, (3, 3), 1, "VALID"),
    Pool("max", (3, 3), 2, "VALID"),
    _block_a("Mixed_5b", 32),
    _block_a("Mixed_5c", 64),
    _block_a("Mixed_5d", 64),
    _block_b("Mixed_6a"),
    _block_c("Mixed_6b", 128),
    _block_c("Mixed_6c", 160),
    _block_c("Mixed_6d", 160),
    _block_c("Mixed_6e", 192),
    _block_d("Mixed_7a"),
    _block_e("Mixed_7b", "avg"),
    _block_e("Mixed_7c", "max"),  # pytorch-fid's FIDInceptionE_2: TensorFlow's graph max-pools here.
)

# The converted file's tensors, `{module path}/kernel` (kh, kw, C_in, C_out) and `/bias` (C_out,)
# for each of the 94 conv + batch norm units (module paths are pytorch-fid's with "/" for "."),
# and the classifier's weight, CLASSIFIER (2048, 1008). FEATURES: pool3's width, 2048.
_UNITS, FEATURES = tensor_shapes(LAYERS, 3)
CLASSIFIER = "fc/kernel"
TENSORS = {**_UNITS, CLASSIFIER: (FEATURES, CLASSES)}

# sFID's features, TensorFlow's `mixed_6/conv`: the graph names its eleven Inception blocks mixed,
# mixed_1, ..., mixed_10 in order, which are torchvision's Mixed_5b, 5c, 5d, 6a, 6b, 6c, 6d, 6e,
# 7a, 7b, 7c (pytorch-fid's weights were ported by that mapping), so mixed_6 is Mixed_6d; a
# block's bare `conv` is its first branch, the 1x1 conv (the others sit under tower, tower_1,
# ...), and the node of that name is the unit's ReLU output. The evaluator keeps its first 7 of
# 192 channels, at 17 x 17: 2023 numbers, flattened channels-last as its NHWC tensor is.
SPATIAL_UNIT = "Mixed_6d/branch1x1"
SPATIAL_CHANNELS = 7
SPATIAL_FEATURES = 17 * 17 * SPATIAL_CHANNELS  # 299 -> 149 -> 147 -> 73 -> 71 -> 35 -> 17 (Mixed_6a).

# `check(weights, source)`: the tensors a conversion must hold. `check_file(path)`, `load(path)`:
# the file `lavin_jax.tools.convert_fid --inception` makes, or one made before it kept the
# classifier (`POOL_FILE`), whose weights give everything but the logits.
FILE = frozen.WeightsFile("FID Inception", TENSORS, CONVERT_COMMAND)
POOL_FILE = frozen.WeightsFile("FID Inception", _UNITS, CONVERT_COMMAND)
check, random_weights = FILE.check, FILE.random


def _file(path: str) -> frozen.WeightsFile:
    """The table `path` is checked against: POOL_FILE for a readable file without the classifier."""
    try:
        with safetensors.safe_open(path, "numpy") as f:
            held = set(f.keys())
    except Exception:  # missing or not safetensors: FILE.check_file says which, naming the file.
        return FILE
    return FILE if CLASSIFIER in held else POOL_FILE


def check_file(path: str) -> None:
    """Checks the converted file at `path` from its header: no tensor is read."""
    _file(path).check_file(path)


def load(path: str) -> dict:
    """Reads the converted file at `path`, checked first."""
    return _file(path).load(path)


def has_classifier(weights: Mapping[str, jax.Array]) -> bool:
    """Whether `weights` give the logits: False for a file converted before the classifier was kept."""
    return CLASSIFIER in weights


def outputs(weights: Mapping[str, jax.Array], x: jax.Array) -> dict[str, jax.Array]:
    """One pass of images x (N, H, W, 3) in [-1, 1], any H and W, float32 results:
      "pool":    (N, 2048) pool3, FID's features;
      "spatial": (N, 2023) the first 7 channels of Mixed_6d's 1x1 branch (SPATIAL_UNIT), sFID's;
      "logits":  (N, 1008) pool3 times the classifier's weight, where `weights` hold it. No bias:
                 the evaluator (like improved-gan's Inception Score before it) multiplies pool3 by
                 the input of the graph's `softmax/logits/MatMul`, upstream of the bias add."""
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"FID Inception takes (N, H, W, 3) images, got shape {x.shape}.")
    taps = {SPATIAL_UNIT: None}
    pool3 = jnp.mean(apply(weights, LAYERS, resize(jnp.asarray(x, jnp.float32), SIZE), taps), axis=(1, 2))
    spatial = taps[SPATIAL_UNIT][..., :SPATIAL_CHANNELS]
    out = {"pool": pool3, "spatial": spatial.reshape(spatial.shape[0], -1)}
    if has_classifier(weights):
        kernel = jnp.asarray(weights[CLASSIFIER], jnp.float32)
        out["logits"] = jnp.dot(pool3, kernel, precision=jax.lax.Precision.HIGHEST)
    return out


def features(weights: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
    """FID's pool3 features of images x (N, H, W, 3) in [-1, 1], any H and W -> (N, 2048) float32."""
    return outputs(weights, x)["pool"]
