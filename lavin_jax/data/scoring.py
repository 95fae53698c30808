"""How predictions are scored, and the image encodings of dense targets that scoring decodes.

J-DiT predicts RGB frames for every task, so a task whose answer is not a picture (classes, depth,
flow, a box) renders its ground truth as one with a fixed, invertible encoding; scoring decodes the
prediction the same way and compares it with the exact answer. Frames are float32 in [-1, 1]; the
encodings below are shared by the synthetic suite and by real data ingest, so both are scored
alike.

`METRICS[name](prediction, target)` scores a batch: both float32 [N, T, H, W, 3] (the prediction,
a model's output, may hold any values; it is clipped to [-1, 1]), each example is scored on its own
and the result is the mean of each named value over the N examples.
"""

from __future__ import annotations

from collections.abc import Callable
import functools

import dm_pix
import numpy as np

# ---------------------------------------------------------------------------------------------
# Encodings


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Frames in [-1, 1] (clipped) as uint8 RGB, how images and every encoding below are stored
    and shown; palette colours come back exact through `from_uint8`."""
    return np.rint((np.clip(np.asarray(frames, np.float32), -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def from_uint8(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB as float32 frames in [-1, 1]."""
    return np.asarray(frames, np.float32) / 127.5 - 1.0


def _palette(num_classes: int = 256) -> np.ndarray:
    palette = np.zeros((num_classes, 3), np.int64)
    for c in range(num_classes):
        value, bit = c, 7
        while value:
            for channel in range(3):
                palette[c, channel] |= ((value >> channel) & 1) << bit
            value >>= 3
            bit -= 1
    return (palette.astype(np.float32) / 255.0) * 2.0 - 1.0


# Class c -> an RGB colour in [-1, 1], PASCAL VOC's construction: the bits of c are dealt to the
# channels from the most significant bit down, so neighbouring classes get distant colours. Class 0
# (background or unlabelled) is black.
PALETTE = _palette()


def labels_to_image(labels: np.ndarray) -> np.ndarray:
    """Integer classes [...] in [0, 256) -> float32 [..., 3] palette colours."""
    # np.take, not PALETTE[labels]: fancy indexing with a trailing axis of 3 is several times slower.
    return np.take(PALETTE, np.asarray(labels), axis=0)


def image_to_labels(image: np.ndarray) -> np.ndarray:
    """The class of each pixel's nearest palette colour."""
    # |x - p|^2 less |x|^2, which every p shares: a [..., classes] matrix product, not [..., classes, 3].
    distance = (PALETTE * PALETTE).sum(-1) - 2.0 * (np.asarray(image, np.float32) @ PALETTE.T)
    return distance.argmin(-1)


def gray_to_image(plane: np.ndarray) -> np.ndarray:
    """A plane [...] as a gray image [..., 3]: the plane in each of R, G and B."""
    return np.repeat(plane[..., None], 3, axis=-1)


def depth_to_image(depth: np.ndarray, max_depth: float) -> np.ndarray:
    """Depth [...] in [0, max_depth] -> gray float32 [..., 3]: brightness grows linearly with
    depth, black (-1) is depth 0, which marks pixels without a measurement."""
    return gray_to_image(np.clip(np.asarray(depth, np.float32) / max_depth, 0.0, 1.0) * 2.0 - 1.0)


def image_to_depth(image: np.ndarray, max_depth: float) -> np.ndarray:
    """The inverse of `depth_to_image` (the channel mean, for predictions that are not gray)."""
    return (np.asarray(image, np.float32).mean(-1) + 1.0) / 2.0 * max_depth


# A panoptic segment is the palette label class + PANOPTIC_CLASSES * instance. The palette deals a
# label's three low bits to the top bit of each channel, so the class fixes a colour's coarse
# octant and the instances of a class differ in finer shades; instance 0 has its class's colour.
PANOPTIC_CLASSES = 8


def panoptic_labels(classes, instances) -> np.ndarray:
    """The segment labels of (class, instance) pairs, class in [0, 8) and instance in [0, 32)."""
    classes, instances = np.asarray(classes), np.asarray(instances)
    if np.any((classes < 0) | (classes >= PANOPTIC_CLASSES)):
        raise ValueError(f"classes {np.unique(classes)} must lie in [0, {PANOPTIC_CLASSES}).")
    if np.any((instances < 0) | (instances >= len(PALETTE) // PANOPTIC_CLASSES)):
        raise ValueError(
            f"instances {np.unique(instances)} must lie in [0, {len(PALETTE) // PANOPTIC_CLASSES})."
        )
    return classes + PANOPTIC_CLASSES * instances


# Flow is stored as a share of the image side per frame, so one encoding serves every resolution;
# MAX_FLOW of the side (10%) is the most it can hold.
MAX_FLOW = 0.1


def flow_to_image(flow: np.ndarray) -> np.ndarray:
    """Optical flow (u, v) in pixels, float [..., H, W, 2] (u along x, to the right; v along y,
    down) -> float32 [..., H, W, 3]: R = u / (MAX_FLOW * W), G = v / (MAX_FLOW * H), clipped to
    [-1, 1], and B = 1, which marks the flow known (the flow metric skips target pixels with
    B <= 0, where a target's flow is unknown)."""
    flow = np.asarray(flow, np.float32)
    height, width = flow.shape[-3:-1]
    image = np.empty((*flow.shape[:-1], 3), np.float32)
    image[..., 0] = flow[..., 0] / (MAX_FLOW * width)
    image[..., 1] = flow[..., 1] / (MAX_FLOW * height)
    image[..., 2] = 1.0
    return np.clip(image, -1.0, 1.0, out=image)


def image_to_flow(image: np.ndarray) -> np.ndarray:
    """The flow (u, v) in pixels, [..., H, W, 2], of a `flow_to_image` encoding (B, the validity,
    is left to the caller)."""
    image = np.asarray(image, np.float32)
    height, width = image.shape[-3:-1]
    return np.stack([image[..., 0] * (MAX_FLOW * width), image[..., 1] * (MAX_FLOW * height)], axis=-1)


# A box is drawn as an outline in BOX_COLOUR over the image at BOX_CONTRAST, so no pixel of the
# image lies within sqrt(3) * (1 - BOX_CONTRAST) = 0.43 of the box colour; pixels within half that
# are the box's.
BOX_COLOUR = (1.0, -1.0, 1.0)
BOX_CONTRAST = 0.75
_BOX_TOLERANCE = 0.5 * np.sqrt(3.0) * (1.0 - BOX_CONTRAST)


def draw_box(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The image [H, W, 3] at BOX_CONTRAST with the outline of `box` = (top, left, bottom, right),
    inclusive pixel rows and columns, in BOX_COLOUR: a line min(H, W) // 64 pixels thick (at least
    one) inside the box, so the outline's extent is the box."""
    top, left, bottom, right = box
    thick = max(1, min(image.shape[:2]) // 64)
    drawn = np.asarray(image, np.float32) * BOX_CONTRAST
    outline = np.zeros(drawn.shape[:2], bool)
    outline[top : bottom + 1, left : right + 1] = True
    outline[top + thick : bottom + 1 - thick, left + thick : right + 1 - thick] = False
    for channel, value in enumerate(BOX_COLOUR):
        drawn[..., channel][outline] = value
    return drawn


def mask_to_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The box (top, left, bottom, right), inclusive pixel rows and columns, spanned by the True
    pixels of a mask [H, W]; None if it has none."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not rows.size:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def image_to_box(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """The box (top, left, bottom, right) spanned by the pixels near BOX_COLOUR, None if none."""
    near = ((np.asarray(image, np.float32) - np.float32(BOX_COLOUR)) ** 2).sum(-1) < _BOX_TOLERANCE**2
    return mask_to_box(near)


# ---------------------------------------------------------------------------------------------
# Metrics


def _per_example(score_example: Callable[[np.ndarray, np.ndarray], dict[str, float]]):
    """The batch scorer of a scorer of one example, [T, H, W, 3] each."""

    @functools.wraps(score_example)
    def score(prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
        prediction, target = np.asarray(prediction, np.float32), np.asarray(target, np.float32)
        if prediction.shape != target.shape or target.ndim != 5 or target.shape[-1] != 3 or not target.size:
            raise ValueError(
                f"prediction {prediction.shape} and target {target.shape} must share one shape "
                "[N, T, H, W, 3], N >= 1."
            )
        values = [score_example(np.clip(p, -1.0, 1.0), t) for p, t in zip(prediction, target)]
        return {name: float(np.mean([value[name] for value in values])) for name in values[0]}

    return score


# PSNR and SSIM of the frames mapped to [0, 1], i.e. of [-1, 1] frames with their data range of 2.
# A perfect prediction's PSNR, infinite, counts as _MAX_PSNR, so that it cannot swamp a mean.
_MAX_PSNR = 100.0


def frame_scores(prediction: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(PSNR, SSIM) of each frame alone, [M] each, of frames [M, H, W, 3] in [-1, 1] (the
    prediction clipped), as `image` scores them, in one batched call."""
    a, b = (np.clip(prediction, -1.0, 1.0) + 1.0) / 2.0, (np.asarray(target, np.float32) + 1.0) / 2.0
    psnr = np.minimum(np.asarray(dm_pix.psnr(a, b), np.float64), _MAX_PSNR)
    ssim = np.asarray(dm_pix.ssim(a, b, filter_size=min(11, *target.shape[1:3])), np.float64)
    return psnr, ssim


@_per_example
def _image(prediction, target):
    """psnr: dB, of the mean squared error over all the example's frames; ssim: dm-pix's (11 px
    Gaussian window, smaller on images under 11 px), the mean over frames."""
    a, b = (prediction + 1.0) / 2.0, (target + 1.0) / 2.0
    height, width = target.shape[1:3]
    # One image of all frames stacked, for one mean squared error over the example.
    psnr = float(dm_pix.psnr(a.reshape(-1, width, 3), b.reshape(-1, width, 3)))
    ssim = dm_pix.ssim(a, b, filter_size=min(11, height, width))
    return {"psnr": min(psnr, _MAX_PSNR), "ssim": float(np.mean(ssim))}


@_per_example
def _segmentation(prediction, target):
    """miou: the IoU of each class (`image_to_labels`) present in the target or the prediction,
    over all the example's frames, averaged over those classes."""
    p, t = image_to_labels(prediction).ravel(), image_to_labels(target).ravel()
    intersection = np.bincount(t[p == t], minlength=len(PALETTE))
    area_p, area_t = np.bincount(p, minlength=len(PALETTE)), np.bincount(t, minlength=len(PALETTE))
    union = area_p + area_t - intersection
    present = union > 0
    return {"miou": float(np.mean(intersection[present] / union[present]))}


@_per_example
def _panoptic(prediction, target):
    """pq: panoptic quality. A segment is one palette label in one frame, its class the label's
    class (`panoptic_labels`). A predicted and a target segment of one class match when their IoU
    exceeds 0.5, which makes matches unique; per class, PQ = (sum of matched IoUs) / (TP + FP / 2
    + FN / 2), averaged over the classes present in the target or the prediction."""
    frames = target.shape[0]
    count = len(PALETTE) * frames  # segment ids: label + len(PALETTE) * frame
    offsets = (len(PALETTE) * np.arange(frames))[:, None, None]
    p = (image_to_labels(prediction) + offsets).ravel()
    t = (image_to_labels(target) + offsets).ravel()
    area_p, area_t = np.bincount(p, minlength=count), np.bincount(t, minlength=count)
    pairs, intersection = np.unique(p * count + t, return_counts=True)
    seg_p, seg_t = np.divmod(pairs, count)
    iou = intersection / (area_p[seg_p] + area_t[seg_t] - intersection)
    category = np.arange(count) % PANOPTIC_CLASSES  # len(PALETTE) is a multiple of the classes
    matched = (iou > 0.5) & (category[seg_p] == category[seg_t])
    true = np.bincount(category[seg_t[matched]], minlength=PANOPTIC_CLASSES)
    iou_sum = np.bincount(category[seg_t[matched]], iou[matched], minlength=PANOPTIC_CLASSES)
    predicted = np.bincount(category[area_p > 0], minlength=PANOPTIC_CLASSES)
    actual = np.bincount(category[area_t > 0], minlength=PANOPTIC_CLASSES)
    present = predicted + actual > 0
    denominator = true + 0.5 * (predicted - true) + 0.5 * (actual - true)
    return {"pq": float(np.mean(iou_sum[present] / denominator[present]))}


@_per_example
def _depth(prediction, target):
    """absrel: mean |d - d*| / d*; delta1: the share of pixels with max(d / d*, d* / d) < 1.25; both
    over the pixels with a target depth d* > 0. Both are ratios of depths, so the encoding's
    max_depth cancels and frames decode with 1."""
    p, t = image_to_depth(prediction, 1.0), image_to_depth(target, 1.0)
    p, t = p[t > 0], t[t > 0]
    return {
        "absrel": float(np.mean(np.abs(p - t) / t)),
        "delta1": float(np.mean((p < 1.25 * t) & (t < 1.25 * p))),
    }


@_per_example
def _normals(prediction, target):
    """mean_angle: the mean angle in degrees between predicted and target normals (RGB = n, the
    prediction normalised); within_11_25: the share of pixels under 11.25 degrees; over the pixels
    with a target normal (a target of length under 0.5, such as mid-gray 0, marks none)."""
    p, t = prediction.astype(np.float64), target.astype(np.float64)
    length_p, length_t = np.linalg.norm(p, axis=-1), np.linalg.norm(t, axis=-1)
    valid = length_t > 0.5
    cosine = (p * t).sum(-1)[valid] / (np.maximum(length_p[valid], 1e-12) * length_t[valid])
    angle = np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))
    return {"mean_angle": float(np.mean(angle)), "within_11_25": float(np.mean(angle < 11.25))}


@_per_example
def _edges(prediction, target):
    """f1: of the binary edge maps, an edge where the channel mean is above 0 (white on black);
    1 when neither map has an edge."""
    p, t = prediction.mean(-1) > 0, target.mean(-1) > 0
    hits, misses = int((p & t).sum()), int((p ^ t).sum())
    return {"f1": 2 * hits / (2 * hits + misses) if hits + misses else 1.0}


# A joint is found when the prediction places it within this share of the image side of the target.
_PCK_THRESHOLD = 0.1


@_per_example
def _keypoints(prediction, target):
    """pck: joints are palette classes >= 1 on a class-0 background (`image_to_labels`), each at
    the centroid of its pixels in a frame; the share of the target's joints, over all frames, that
    the prediction places within _PCK_THRESHOLD of the longer image side; 1 when there are none."""
    threshold = _PCK_THRESHOLD * max(target.shape[1:3])
    found = total = 0
    for p, t in zip(image_to_labels(prediction), image_to_labels(target)):
        for joint in np.unique(t[t > 0]):
            total += 1
            placed = np.argwhere(p == joint)
            if len(placed):
                found += np.linalg.norm(placed.mean(0) - np.argwhere(t == joint).mean(0)) <= threshold
    return {"pck": found / total if total else 1.0}


def box_iou(a: tuple[int, int, int, int] | None, b: tuple[int, int, int, int] | None) -> float:
    """IoU of two boxes of inclusive pixel rows and columns; 1 when both are None, 0 when one is."""
    if a is None or b is None:
        return float(a is b)
    height = min(a[2], b[2]) - max(a[0], b[0]) + 1
    width = min(a[3], b[3]) - max(a[1], b[1]) + 1
    intersection = max(height, 0) * max(width, 0)
    area = lambda box: (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
    return intersection / (area(a) + area(b) - intersection)


@_per_example
def _boxes(prediction, target):
    """box_iou: of the predicted and target boxes (`image_to_box`), the mean over frames."""
    ious = [box_iou(image_to_box(p), image_to_box(t)) for p, t in zip(prediction, target)]
    return {"box_iou": float(np.mean(ious))}


@_per_example
def _flow(prediction, target):
    """epe: the mean end-point error, the distance in pixels between predicted and target flow
    vectors (`image_to_flow`), over the pixels with a target flow (B > 0)."""
    error = np.linalg.norm(image_to_flow(prediction) - image_to_flow(target), axis=-1)
    return {"epe": float(np.mean(error[target[..., 2] > 0]))}


# Scores where less is better (errors, distances); for every other score more is better.
LOWER_IS_BETTER = frozenset({"absrel", "mean_angle", "epe", "fid", "fvd"})

METRICS: dict[str, Callable[[np.ndarray, np.ndarray], dict[str, float]]] = {
    "image": _image,
    "segmentation": _segmentation,
    "panoptic": _panoptic,
    "depth": _depth,
    "normals": _normals,
    "edges": _edges,
    "keypoints": _keypoints,
    "boxes": _boxes,
    "flow": _flow,
}
