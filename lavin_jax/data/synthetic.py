"""The built-in synthetic in-context task suite.

An episode shows K (input, target) pairs of one task and then a query input whose target the
model must produce. Every example is a pure function of (seed, index), so any host can rebuild
any example alone and a resumed run sees exactly the data an uninterrupted one would have.
Images are float32 HxWx3 in [-1, 1]. The same scenes, set in motion, also make videos for the
ST-VAE (`base_clip`, `SyntheticClips`).
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import functools
import math

import numpy as np

# Far more examples than any run reads; grain's MapDataset wants a finite length.
NUM_EXAMPLES = 2**40

# Separate seed streams, so an episode's draws never coincide with a global batch's K draw, nor
# with a clip's (_CLIP_STREAM below).
_EPISODE_STREAM = 0
_NUM_PAIRS_STREAM = 1

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# The background's colour changes by at most this much across the whole image, which keeps its
# per-pixel gradient below _EDGE_THRESHOLD down to 8 px, so `edges` marks only shape outlines.
_MAX_BACKGROUND_CHANGE = 0.8
_EDGE_THRESHOLD = 0.1
_INPAINT_FILL = 0.0

# Scene videos (`base_clip`, `SyntheticClips`) have 1+4k frames, the ST-VAE's causal clip length.
_CLIP_TIME_FACTOR = 4
_CLIP_STREAM = 2
_CLIP_LENGTH_STREAM = 3
# Motion per frame, in unit coordinates (the image side is 1): shapes drift at a constant velocity
# of this speed, the background gradient turns by this many radians, stripes scroll by this many
# periods within their moving window. Slow enough that neighbouring frames differ only slightly.
_SPEED = (0.005, 0.025)
_SPIN = (0.01, 0.03)
_SCROLL = (-0.05, 0.05)

# Shapes and ramps draw Python floats (`tolist`, `math`), not numpy float64 scalars, which would
# promote the float32 coordinate arithmetic to float64. Motion enters as Python-float offsets that
# are exactly 0.0 at t=0, so the scene at t=0 renders bit for bit like a still of it.


def _draw_circle(rng):
    cy, cx = rng.uniform(0.0, 1.0, 2).tolist()
    return cy, cx, rng.uniform(0.08, 0.3)


def _draw_rectangle(rng):
    top, left = rng.uniform(0.0, 0.8, 2).tolist()
    height, width = rng.uniform(0.15, 0.5, 2).tolist()
    return top, left, height, width


def _draw_stripes(rng):
    return (rng.uniform(0.0, np.pi), rng.uniform(0.12, 0.3), *_draw_rectangle(rng))


def _circle_mask(geometry, y, x, dy, dx, _scroll):
    cy, cx, radius = geometry
    return (y - (cy + dy)) ** 2 + (x - (cx + dx)) ** 2 < radius**2


def _rectangle_mask(geometry, y, x, dy, dx, _scroll):
    top, left, height, width = geometry
    top, left = top + dy, left + dx
    return (y >= top) & (y < top + height) & (x >= left) & (x < left + width)


def _stripes_mask(geometry, y, x, dy, dx, scroll):
    angle, period, *window = geometry
    cos, sin = math.cos(angle), math.sin(angle)
    # The pattern moves with its window (shifted by (dy, dx)) and scrolls `scroll` periods on top.
    shift = (dx * cos + dy * sin) / period + scroll
    phase = (x * cos + y * sin) / period - shift
    # phase - floor(phase) is phase % 1 without numpy's slow floored modulo.
    return _rectangle_mask(window, y, x, dy, dx, scroll) & (phase - np.floor(phase) < 0.5)


# kind -> (draw geometry, mask at an offset); a scene stores the kind's index into this tuple.
_SHAPES = (
    (_draw_circle, _circle_mask),
    (_draw_rectangle, _rectangle_mask),
    (_draw_stripes, _stripes_mask),
)


@dataclasses.dataclass(frozen=True)
class Shape:
    """One flat-coloured shape of a scene; position at time t is its t=0 one plus t * velocity."""

    kind: int  # index into _SHAPES: circle, rectangle, stripes
    geometry: tuple[float, ...]
    colour: tuple[float, float, float]
    velocity: tuple[float, float] = (0.0, 0.0)  # (dy, dx) per frame, unit coordinates
    scroll: float = 0.0  # stripes only: periods per frame, within the moving window


@dataclasses.dataclass(frozen=True)
class Scene:
    """A soft colour gradient with flat-coloured shapes painted on top, in order; time-dependent
    when it has motion (`draw_scene(..., moving=True)`), a still otherwise."""

    angle: float  # direction of the background gradient
    start: tuple[float, float, float]
    change: tuple[float, float, float]
    shapes: tuple[Shape, ...]
    spin: float = 0.0  # background gradient turn, radians per frame


def draw_scene(rng: np.random.Generator, *, moving: bool = False) -> Scene:
    """A random scene. The motion is drawn after the whole still scene, so a moving scene drawn
    from a generator in some state is the still scene drawn from that state, set in motion."""
    angle = rng.uniform(0.0, 2 * np.pi)
    start = tuple(rng.uniform(-1.0, 1.0, 3).tolist())
    change = tuple(rng.uniform(-_MAX_BACKGROUND_CHANGE, _MAX_BACKGROUND_CHANGE, 3).tolist())
    shapes = []
    for _ in range(rng.integers(2, 6)):
        kind = int(rng.integers(len(_SHAPES)))
        geometry = _SHAPES[kind][0](rng)
        shapes.append(Shape(kind, geometry, tuple(rng.uniform(-1.0, 1.0, 3).tolist())))
    scene = Scene(angle, start, change, tuple(shapes))
    if not moving:
        return scene
    moved = []
    for shape in scene.shapes:
        direction = rng.uniform(0.0, 2 * np.pi)
        speed = rng.uniform(*_SPEED)
        velocity = (speed * math.sin(direction), speed * math.cos(direction))
        moved.append(dataclasses.replace(shape, velocity=velocity, scroll=rng.uniform(*_SCROLL)))
    spin = rng.uniform(*_SPIN) * (1.0 if rng.random() < 0.5 else -1.0)
    return dataclasses.replace(scene, shapes=tuple(moved), spin=spin)


@functools.lru_cache(maxsize=8)
def _grid(size):
    # Unit coordinates of pixel centres make every shape's size independent of the resolution.
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(coords, coords, indexing="ij")
    y.flags.writeable = x.flags.writeable = False
    return y, x


def render_scene(scene: Scene, size: int, t: float = 0.0) -> np.ndarray:
    """The scene at time t (in frames) as float32 [size, size, 3] in [-1, 1]."""
    y, x = _grid(size)
    t = float(t)
    angle = scene.angle + scene.spin * t
    ramp = ((x - 0.5) * math.cos(angle) + (y - 0.5) * math.sin(angle)) / math.sqrt(2) + 0.5
    # Channel by channel throughout: numpy is an order of magnitude slower when it broadcasts
    # over, or masks, a trailing axis of length 3.
    image = np.empty((size, size, 3), np.float32)
    for channel in range(3):
        image[..., channel] = scene.start[channel] + ramp * scene.change[channel]
    for shape in scene.shapes:
        dy, dx = shape.velocity[0] * t, shape.velocity[1] * t
        mask = _SHAPES[shape.kind][1](shape.geometry, y, x, dy, dx, shape.scroll * t)
        for channel, value in enumerate(shape.colour):
            image[..., channel][mask] = value
    return np.clip(image, -1.0, 1.0, out=image)


def base_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random still scene: a soft colour gradient with a few flat-coloured shapes on top."""
    return render_scene(draw_scene(rng), size)


def base_clip(rng: np.random.Generator, size: int, frames: int) -> np.ndarray:
    """A random moving scene, float32 [frames, size, size, 3] in [-1, 1]: shapes drift at constant
    velocities, stripes scroll, the background gradient turns. Frame t renders the scene at time t;
    frame 0 equals `base_image` drawn from the same generator state."""
    if frames < 1:
        raise ValueError(f"frames={frames} must be at least 1.")
    scene = draw_scene(rng, moving=True)
    clip = np.empty((frames, size, size, 3), np.float32)
    for t in range(frames):
        clip[t] = render_scene(scene, size, t)
    return clip


def _luma(image):
    return image @ _LUMA


def _gray_rgb(plane):
    return np.repeat(plane[..., None], 3, axis=-1).astype(np.float32)


def colorize(image, _rng):
    return _gray_rgb(_luma(image)), image


def edges(image, _rng):
    grad_y, grad_x = np.gradient(_luma(image))
    return image, _gray_rgb(np.where(np.hypot(grad_y, grad_x) > _EDGE_THRESHOLD, 1.0, -1.0))


def flip(image, _rng):
    return image, image[:, ::-1]


def vflip(image, _rng):
    return image, image[::-1]


def invert(image, _rng):
    return image, -image


def inpaint(image, rng):
    # The hole is drawn per pair, so the model has to find it rather than memorise its place.
    height, width = image.shape[:2]
    hole_h = rng.integers(height // 4, height // 2 + 1)
    hole_w = rng.integers(width // 4, width // 2 + 1)
    top = rng.integers(0, height - hole_h + 1)
    left = rng.integers(0, width - hole_w + 1)
    holed = image.copy()
    holed[top : top + hole_h, left : left + hole_w] = _INPAINT_FILL
    return holed, image


def denoise(image, rng):
    noise_std = rng.uniform(0.1, 0.4)
    noisy = image + noise_std * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(noisy, -1.0, 1.0), image


Task = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]

TASKS: dict[str, Task] = {
    "colorize": colorize,
    "edges": edges,
    "flip": flip,
    "inpaint": inpaint,
    "vflip": vflip,
    "invert": invert,
    "denoise": denoise,
}


def num_pairs(seed: int, batch_index: int, max_pairs: int, cond_drop_prob: float) -> int:
    """K for every episode of one global batch: 0 with probability cond_drop_prob (the
    unconditional branch of classifier-free guidance), else uniform in [1, max_pairs]."""
    rng = np.random.default_rng((seed, _NUM_PAIRS_STREAM, batch_index))
    if rng.random() < cond_drop_prob:
        return 0
    return int(rng.integers(1, max_pairs + 1))


class SyntheticEpisodes:
    """Random-access episodes, a source for `grain.MapDataset.source`.

    Example i has K = num_pairs(seed, i // global_batch_size, ...) pairs, so all examples of one
    global batch stack into one array. It is a dict with `cond` float32[2K+1, H, W, 3] (frames
    in_1, tgt_1, ..., in_K, tgt_K, query_in; [zeros, query_in] when K=0), `target` float32[1, H, W, 3] (the query's target)
    and `task` int32[] (index into `task_names`).
    """

    def __init__(self, data_config, seed: int, global_batch_size: int):
        self.task_names = tuple(data_config.tasks)
        known = ", ".join(TASKS)
        if not self.task_names:
            raise ValueError(f"config.data.tasks is empty; known tasks: {known}.")
        unknown = [name for name in self.task_names if name not in TASKS]
        if unknown:
            raise ValueError(
                f"config.data.tasks has unknown task(s) {', '.join(map(repr, unknown))}; "
                f"known tasks: {known}."
            )
        self._tasks = tuple(TASKS[name] for name in self.task_names)
        self._image_size = int(data_config.image_size)
        self._max_pairs = int(data_config.max_pairs)
        self._cond_drop_prob = float(data_config.cond_drop_prob)
        self._seed = int(seed)
        self._global_batch_size = int(global_batch_size)

    def __len__(self) -> int:
        return NUM_EXAMPLES

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        k = num_pairs(
            self._seed, index // self._global_batch_size, self._max_pairs, self._cond_drop_prob
        )
        return self.episode(index, k)

    def episode(self, index: int, num_pairs: int) -> dict[str, np.ndarray]:
        """Example `index` with an explicit number of pairs; its task and query do not depend on
        num_pairs, so episodes with and without context can be compared (CFG, evaluation)."""
        if num_pairs < 0:
            raise ValueError(f"num_pairs={num_pairs} must be non-negative.")
        rng = np.random.default_rng((self._seed, _EPISODE_STREAM, int(index)))
        task_index = int(rng.integers(len(self._tasks)))
        task = self._tasks[task_index]
        query_input, query_target = task(base_image(rng, self._image_size), rng)
        frames = []
        for _ in range(num_pairs):
            frames.extend(task(base_image(rng, self._image_size), rng))
        if not frames:
            # Dropped context looks as it does to guidance at inference (`flow.unconditional`):
            # one zero frame in place of the pairs, then the query.
            frames.append(np.zeros_like(query_input))
        frames.append(query_input)
        return {
            "cond": np.stack(frames),
            "target": query_target[None],
            "task": np.array(task_index, np.int32),
        }


def check_clip_frames(name: str, frames: int) -> None:
    if frames < 1 or (frames - 1) % _CLIP_TIME_FACTOR:
        raise ValueError(
            f"{name}={frames} must be 1 + {_CLIP_TIME_FACTOR}k for some k >= 0 (1, 5, 9, 13, 17, ...)."
        )


def clip_length(seed: int, batch_index: int, data_config) -> int:
    """The frame count of every example of one global batch, the ST-VAE's two-stage curriculum:
    1 (images) before batch `data.video_start`, then `data.clip_frames` for a `data.video_share`
    of the batches (a draw per batch) and 1 for the rest."""
    if batch_index < data_config.video_start:
        return 1
    rng = np.random.default_rng((seed, _CLIP_LENGTH_STREAM, batch_index))
    return int(data_config.clip_frames) if rng.random() < data_config.video_share else 1


class SyntheticClips:
    """Random-access scene videos for the ST-VAE, a source for `grain.MapDataset.source`.

    Example i is {"video": float32[frames, H, W, 3]} in [-1, 1], H = W = data_config.image_size: a
    `base_clip`, a pure function of (seed, i) drawn from its own seed stream, so clips never share
    draws with the episodes of the same seed. With `frames` given every example has that many
    (1+4k, the causal ST-VAE's clip length); without, the examples of global batch b (examples
    b*G ... b*G + G - 1) have `clip_length(seed, b, data_config)` frames.
    """

    def __init__(self, data_config, seed: int, *, frames: int | None = None, global_batch_size: int = 1):
        if frames is None:
            check_clip_frames("config.data.clip_frames", int(data_config.clip_frames))
        else:
            check_clip_frames("frames", int(frames))
        self._data_config = data_config
        self._frames = frames
        self._global_batch_size = int(global_batch_size)
        self._image_size = int(data_config.image_size)
        self._seed = int(seed)

    def __len__(self) -> int:
        return NUM_EXAMPLES

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        frames = self._frames
        if frames is None:
            frames = clip_length(self._seed, int(index) // self._global_batch_size, self._data_config)
        rng = np.random.default_rng((self._seed, _CLIP_STREAM, int(index)))
        return {"video": base_clip(rng, self._image_size, int(frames))}
