"""Public tensorflow-datasets as task pairs: `--source=tfds:NAME[:SPLIT]` of the ingest command.

    tfds name                 task                     input -> target                               metric
    nyu_depth_v2              depth                    image -> depth, gray: black 0 m, white 10 m   depth
    oxford_iiit_pet           foreground_segmentation  image -> background 0, pet 1, outline 2       segmentation
    scene_parse150 (ADE20K)   semantic_segmentation    image -> category per pixel, 0 unlabelled     segmentation
    bair_robot_pushing_small  frame_prediction         image_main frames [s, s+T) -> [s+T, s+2T)     image

Targets are drawn with `scoring`'s encodings (classes as `labels_to_image` palette colours), so
they are scored like the synthetic tasks.

An adapter only turns one example into native-resolution uint8 arrays: an (input, target) pair of
[H, W, 3] images, or for a video dataset one [N, H, W, 3] video, which ingest cuts into forward
frame-prediction pairs exactly as it does plain video files. Everything else (resizing, checking
that input and target agree, writing, reporting what was skipped) is ingest's and shared with the
folder sources. An adapter raises ValueError for an example it cannot use; ingest skips it, and
it skips an example whose image and target differ in size like any such pair (its pixels would
not correspond; resizing both would hide the mismatch).

Datasets are read with `tfds.data_source` (random access, numpy, no tensorflow needed), which
reads only datasets prepared in the ArrayRecord format and never downloads: prepare one first, on
a machine with tensorflow, with `tfds build NAME --file_format=array_record --data_dir=DIR`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from lavin_jax.data import scoring

NYU_MAX_DEPTH = 10.0  # metres; NYU's Kinect depth stays below it, and deeper pixels clip to white.
# The Oxford pets trimap's values 1 (pet), 2 (background), 3 (outline, neither surely) as classes:
# background is class 0 (black, as everywhere), and the uncertain outline keeps its own class so
# that neither side is taught a guess.
PET_CLASSES = {1: 1, 2: 0, 3: 2}
_PET_LABELS = np.zeros(256, np.int64)  # PET_CLASSES as a lookup table over the mask's uint8 values.
_PET_LABELS[list(PET_CLASSES)] = list(PET_CLASSES.values())


@dataclasses.dataclass(frozen=True)
class Adapter:
    task: str
    metric: str
    convert: Callable[[dict], tuple[np.ndarray, np.ndarray] | np.ndarray]
    video: bool = False  # convert returns one video for frame prediction, not a pair.


def _depth(example: dict) -> tuple[np.ndarray, np.ndarray]:
    return example["image"], scoring.to_uint8(scoring.depth_to_image(example["depth"], max_depth=NYU_MAX_DEPTH))


def _pet(example: dict) -> tuple[np.ndarray, np.ndarray]:
    trimap = np.asarray(example["segmentation_mask"])[..., 0]
    unknown = np.setdiff1d(trimap, list(PET_CLASSES))
    if unknown.size:
        raise ValueError(f"segmentation_mask has values {unknown[:5].tolist()} outside the trimap's 1, 2, 3")
    return example["image"], scoring.to_uint8(scoring.labels_to_image(_PET_LABELS[trimap]))


def _ade20k(example: dict) -> tuple[np.ndarray, np.ndarray]:
    # tfds takes the annotations of the Places Challenge 2017 instance masks: the red channel is
    # the category (0: unlabelled), the green channel the instance, which semantics ignores.
    return example["image"], scoring.to_uint8(scoring.labels_to_image(np.asarray(example["annotation"])[..., 0]))


def _bair(example: dict) -> np.ndarray:
    return example["image_main"]


ADAPTERS = {
    "nyu_depth_v2": Adapter("depth", "depth", _depth),
    "oxford_iiit_pet": Adapter("foreground_segmentation", "segmentation", _pet),
    "scene_parse150": Adapter("semantic_segmentation", "segmentation", _ade20k),
    "bair_robot_pushing_small": Adapter("frame_prediction", "image", _bair, video=True),
}


def open_source(name: str, split: str, data_dir: str | None):
    """The random-access examples of a prepared dataset; ValueError naming it if it cannot be read."""
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as error:  # tfds signals a missing or wrongly prepared dataset many ways.
        raise ValueError(
            f"tfds:{name}:{split} cannot be read from data_dir {data_dir!r} ({str(error).splitlines()[0]}); "
            f"prepare it with: tfds build {name} --file_format=array_record --data_dir=DIR."
        ) from None
