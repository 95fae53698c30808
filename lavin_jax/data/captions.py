"""Captioned scenes: images (and clips) whose captions are exactly true, and a fixed detector that
reads a picture back into the words a caption uses, for text-to-image and text-to-video models
(GenTron) that must be judged without a person.

A scene is one or two objects on black: each a shape (`SHAPES`), a colour (`COLOURS`, never two
alike in a scene), a size (`SIZES`) and a place, and in a moving scene a direction it moves in
(`MOTIONS`), from a start it could leave either way along that axis (so clips of at most
`MAX_FRAMES` frames). Its caption names them in a fixed grammar:

    a small red circle
    a large blue square left of a small yellow triangle       (or: above)
    a small green circle moving right                         (moving scenes)

Two objects are named left to right where they are further apart across than down, else top to
bottom (by a clear margin), so the relation word is always true of the picture. `detect` finds each colour's largest
blob (pixels nearest that palette colour), its shape by how much of its bounding box it fills (a
square all of it, a circle pi/4, a triangle half), its size by its bounding box and its place by
its centre: the renderer's own scenes read back exactly (a test holds it so), and `alignment`
scores a generated picture against the caption it was drawn from, word class by word class.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import scipy.ndimage

from lavin_jax.data import synthetic

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 70), "blue": (60, 90, 240), "yellow": (235, 215, 40)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.26, "large": 0.42}  # the side of an object's bounding box, of the image's.
MOTIONS = {"right": (0.0, 1.0), "left": (0.0, -1.0), "down": (1.0, 0.0), "up": (-1.0, 0.0)}
SPEED = 0.09  # of the image's side a frame.
# The most frames a moving scene has: a large object's path over them fits in the picture either
# way from one start (draw), 4 at SPEED.
MAX_FRAMES = int((1 - max(SIZES.values())) / (2 * SPEED)) + 1
FILL = {"square": 1.0, "circle": math.pi / 4, "triangle": 0.5}  # of the bounding box.
MIN_BLOB = 0.25  # of a small object's area: less is noise, not an object.
# How far a pixel may be from a palette colour and still be read as it (0-255 RGB distance).
COLOUR_TOLERANCE = 90.0
RELATION_MARGIN = 0.1  # of the image's side: how much further apart across than down, or the reverse.
MIN_SIZE = 32  # pixels: from here up the detector reads every drawn scene back exactly (tested at 32 and 64).
ASPECTS = ("colour", "shape", "size", "relation", "motion", "axis")


@dataclasses.dataclass(frozen=True)
class Thing:
    """One object of a scene: its centre (y, x) at time 0 in unit coordinates, its motion a
    direction of MOTIONS or '' for none."""

    shape: str
    colour: str
    size: str
    centre: tuple[float, float]
    motion: str = ""

    def words(self) -> str:
        return f"a {self.size} {self.colour} {self.shape}" + (f" moving {self.motion}" if self.motion else "")

    def centre_at(self, t: float) -> tuple[float, float]:
        dy, dx = MOTIONS[self.motion] if self.motion else (0.0, 0.0)
        return self.centre[0] + SPEED * t * dy, self.centre[1] + SPEED * t * dx


def relation(first: tuple[float, float], second: tuple[float, float]) -> str:
    """How a thing centred at `first` stands to one at `second`: 'left of', 'right of', 'above' or
    'below', along the axis they are further apart on. Captions name the first object so that it
    is always 'left of' or 'above'."""
    dy, dx = second[0] - first[0], second[1] - first[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def in_caption_order(things) -> tuple[Thing, ...]:
    """Left to right where two objects are further apart across than down, else top to bottom."""
    if len(things) < 2:
        return tuple(things)
    a, b = things
    across = abs(a.centre[1] - b.centre[1]) >= abs(a.centre[0] - b.centre[0])
    key = (lambda thing: thing.centre[1]) if across else (lambda thing: thing.centre[0])
    return tuple(sorted(things, key=key))


def caption(things) -> str:
    things = in_caption_order(things)
    if len(things) == 1:
        return things[0].words()
    return f"{things[0].words()} {relation(things[0].centre, things[1].centre)} {things[1].words()}"


def draw(rng: np.random.Generator, *, moving: bool = False, frames: int = 1) -> tuple[Thing, ...]:
    """One or two objects of distinct colours that do not touch and stay inside the picture for
    `frames` frames (moving: each in a direction of MOTIONS, at most MAX_FRAMES)."""
    if moving and frames > MAX_FRAMES:
        raise ValueError(f"Moving captioned scenes have at most {MAX_FRAMES} frames, not {frames}: over more, a large "
                         "object could not start where it might go either way, and its start would tell its way.")
    count = int(rng.integers(1, 3))
    colours = rng.permutation(list(COLOURS))[:count]
    while True:
        things = []
        for colour in colours:
            size = str(rng.choice(list(SIZES)))
            motion = str(rng.choice(list(MOTIONS))) if moving else ""
            half, travel = SIZES[size] / 2, SPEED * (frames - 1)
            dy, dx = MOTIONS[motion] if motion else (0.0, 0.0)
            # The start's range: along the motion, where the object could go either way and stay in
            # the picture. Were it where only its own way fits, its start would tell the way, and a
            # model would learn that instead of the word (BENCHMARKS.md, "The start told the way").
            lows = [half + travel * abs(d) for d in (dy, dx)]
            highs = [1 - half - travel * abs(d) for d in (dy, dx)]
            centre = tuple(float(rng.uniform(lo, hi)) for lo, hi in zip(lows, highs))
            things.append(Thing(str(rng.choice(SHAPES)), str(colour), size, centre, motion))
        if len(things) == 1 or (_apart(*things, frames) and _plain(*things)):
            return tuple(things)


def _apart(a: Thing, b: Thing, frames: int) -> bool:
    """Whether two objects' boxes keep a gap of a tenth of the picture in every frame."""
    gap = (SIZES[a.size] + SIZES[b.size]) / 2 + 0.1
    for t in range(frames):
        (ay, ax), (by, bx) = a.centre_at(t), b.centre_at(t)
        if abs(ay - by) < gap and abs(ax - bx) < gap:
            return False
    return True


def _plain(a: Thing, b: Thing) -> bool:
    """Whether the two objects are clearly further apart on one axis than on the other, so that
    the relation word is plain to see (and to read back from a picture)."""
    return abs(abs(a.centre[0] - b.centre[0]) - abs(a.centre[1] - b.centre[1])) > RELATION_MARGIN


def _mask(thing: Thing, size: int, t: float) -> np.ndarray:
    y, x = synthetic._grid(size)
    cy, cx = thing.centre_at(t)
    half = SIZES[thing.size] / 2
    dy, dx = y - cy, x - cx
    if thing.shape == "circle":
        return dy**2 + dx**2 < half**2
    if thing.shape == "square":
        return (np.abs(dy) < half) & (np.abs(dx) < half)
    # An upright isosceles triangle filling half of its box: apex at the top, base at the bottom.
    return (np.abs(dy) < half) & (np.abs(dx) < (dy + half) / 2)


def render(things, size: int, t: float = 0.0) -> np.ndarray:
    """uint8 [size, size, 3]: the objects on black at time t (in frames)."""
    image = np.zeros((size, size, 3), np.uint8)
    for thing in things:
        image[_mask(thing, size, t)] = COLOURS[thing.colour]
    return image


def render_clip(things, size: int, frames: int) -> np.ndarray:
    """uint8 [frames, size, size, 3]."""
    return np.stack([render(things, size, t) for t in range(frames)])


@dataclasses.dataclass(frozen=True)
class Seen:
    """What `detect` reads of one colour's blob: shape, size and its box's centre (unit
    coordinates)."""

    shape: str
    size: str
    centre: tuple[float, float]


def _palette_index(image: np.ndarray) -> np.ndarray:
    """int [H, W]: each pixel's nearest palette colour (1 + its index in COLOURS), 0 for black or
    for a pixel further than COLOUR_TOLERANCE from every colour."""
    palette = np.asarray([(0, 0, 0), *COLOURS.values()], np.float32)
    distance = np.linalg.norm(image.astype(np.float32)[..., None, :] - palette, axis=-1)
    nearest = np.argmin(distance, axis=-1)
    return np.where(np.min(distance, axis=-1) <= COLOUR_TOLERANCE, nearest, 0)


def detect(image: np.ndarray) -> dict[str, Seen]:
    """colour name -> the largest blob of that colour in a uint8 [S, S, 3] image, where one is at
    least MIN_BLOB of a small object's area."""
    side = image.shape[0]
    index = _palette_index(image)
    smallest = MIN_BLOB * (SIZES["small"] * side) ** 2
    seen = {}
    for k, colour in enumerate(COLOURS, start=1):
        blobs, count = scipy.ndimage.label(index == k)
        if not count:
            continue
        areas = np.bincount(blobs.ravel())[1:]
        largest = int(np.argmax(areas)) + 1
        if areas[largest - 1] < smallest:
            continue
        ys, xs = np.nonzero(blobs == largest)
        box = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
        fill = len(ys) / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
        shape = min(FILL, key=lambda name: abs(FILL[name] - fill))
        size = min(SIZES, key=lambda name: abs(SIZES[name] * side - box))
        # The box's centre, not the blob's: a triangle's centroid sits below its box's centre.
        seen[colour] = Seen(shape, size, ((ys.min() + ys.max() + 1) / 2 / side, (xs.min() + xs.max() + 1) / 2 / side))
    return seen


def motion_of(first: Seen, last: Seen) -> str:
    """The direction of MOTIONS closest to how a blob's centre moved from `first` to `last`."""
    dy, dx = last.centre[0] - first.centre[0], last.centre[1] - first.centre[1]
    return max(MOTIONS, key=lambda name: MOTIONS[name][0] * dy + MOTIONS[name][1] * dx)


def axis_of(direction: str) -> str:
    """'across' for right and left, 'down' for down and up."""
    return "across" if MOTIONS[direction][0] == 0 else "down"


def alignment(things, pictures: np.ndarray) -> dict[str, float]:
    """How well uint8 pictures ([S, S, 3], or a clip [T, S, S, 3]) show the objects a caption
    names: per aspect of ASPECTS that applies, the share of right answers (colour: an object of the
    colour is there; shape, size: its blob's; relation: the two blobs stand as the caption says;
    motion: its blob moved in the caption's direction over the clip; axis: along the caption's
    axis, either way, which tells a model that reads "across" from "down" but not "right" from
    "left"), and `all`, 1.0 when every aspect is right."""
    clip = pictures if pictures.ndim == 4 else pictures[None]
    first, last = detect(clip[0]), detect(clip[-1])
    things = in_caption_order(things)
    scores: dict[str, list[float]] = {aspect: [] for aspect in ASPECTS}
    for thing in things:
        found = first.get(thing.colour)
        scores["colour"].append(float(found is not None))
        scores["shape"].append(float(found is not None and found.shape == thing.shape))
        scores["size"].append(float(found is not None and found.size == thing.size))
        if thing.motion:
            read = motion_of(found, last[thing.colour]) if found is not None and thing.colour in last and len(clip) > 1 else None
            scores["motion"].append(float(read == thing.motion))
            scores["axis"].append(float(read is not None and axis_of(read) == axis_of(thing.motion)))
    if len(things) == 2:
        a, b = (first.get(thing.colour) for thing in things)
        truth = relation(things[0].centre, things[1].centre)
        scores["relation"].append(float(a is not None and b is not None and relation(a.centre, b.centre) == truth))
    out = {aspect: float(np.mean(values)) for aspect, values in scores.items() if values}
    out["all"] = float(all(value == 1.0 for value in out.values()))
    return out


SCENE_STREAMS = {"train": 13, "test": 14}  # after clips.py's streams.


class Scenes:
    """The captioned scenes as a dataset (`data/captioned.py`'s 'scenes'): scene i of a split
    drawn from (seed, stream, i), `frames` frames of it (moving for clips)."""

    def __init__(self, split: str, size: int, frames: int, *, seed: int):
        self._seed, self._stream = int(seed), SCENE_STREAMS[split]
        self.frames, self.size = int(frames), int(size)
        self.name = f"the captioned scenes ({split})"

    def __len__(self) -> int:
        return synthetic.NUM_EXAMPLES

    def scene(self, index: int, moving: bool = True) -> tuple[Thing, ...]:
        rng = np.random.default_rng((self._seed, self._stream, int(index)))
        return draw(rng, moving=moving and self.frames > 1, frames=self.frames)

    def read(self, index: int, still: bool = False) -> tuple[np.ndarray, str]:
        """(uint8 [frames, S, S, 3], caption); a still is the scene drawn without motion."""
        things = self.scene(index, moving=not still)
        return render_clip(things, self.size, self.frames), caption(things)
