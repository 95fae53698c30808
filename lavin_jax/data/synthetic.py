"""The built-in synthetic in-context task suite.

Every task draws a random scene and makes an (input, target) pair from it whose target is exact.
The scenes are flat-coloured shapes on a soft gradient (`draw_scene`), so the renderer knows which
shape each pixel shows, and dense targets (segmentation, depth, edges, optical flow) come from the
same pass that paints the image. Set in motion, the same scenes make the video tasks and the
ST-VAE's clips (`base_clip`, `SyntheticClips`).

A task (`TASKS`) makes its pair as a pure function of the generator it is given, so an episode that
seeds the generator from (seed, index) (lavin_jax.data.episodes) can be rebuilt by any host alone.
Frames are float32 [T, H, W, 3] in [-1, 1]. Targets that are not pictures (classes, depth, flow,
joints, boxes) are drawn with the encodings of lavin_jax.data.scoring, normals as raw RGB = n (the
form scoring's normals metric reads), and every task names the metric of scoring.METRICS that
scores predictions of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import functools
import math
from typing import NamedTuple

import numpy as np
import scipy.ndimage

from lavin_jax.data import scoring

# Far more examples than any run reads; grain's MapDataset wants a finite length.
NUM_EXAMPLES = 2**40

# Seed streams, here and in lavin_jax.data.episodes: every data draw is
# np.random.default_rng((seed, stream, index)) with its own stream, so no two kinds of draw replay
# each other's randomness.
EPISODE_STREAM = 0  # an episode's pairs, index: the example
NUM_PAIRS_STREAM = 1  # a global batch's number of pairs K, index: the batch
CLIP_STREAM = 2  # a SyntheticClips clip, index: the example
CLIP_LENGTH_STREAM = 3  # a global batch's clip length (clip_length), index: the batch
VIDEO_STREAM = 4  # whether a global batch of episodes is video, index: the batch

# The background is a soft gradient: its colour changes by at most this much across the image.
_MAX_BACKGROUND_CHANGE = 0.8

# Scene videos (`base_clip`, `SyntheticClips`) have 1+4k frames, the ST-VAE's causal clip length.
_CLIP_TIME_FACTOR = 4
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


# kind -> (draw geometry, mask at an offset); a scene stores the kind's index into this tuple,
# and segmentation gives kind k the class k + 1 (0 is the background).
_SHAPES = (
    (_draw_circle, _circle_mask),
    (_draw_rectangle, _rectangle_mask),
    (_draw_stripes, _stripes_mask),
)
_CIRCLE, _RECTANGLE, _STRIPES = range(len(_SHAPES))


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


def _shape_mask(shape: Shape, y: np.ndarray, x: np.ndarray, t: float) -> np.ndarray:
    """Where `shape` covers the points (y, x) at time t (in frames)."""
    t = float(t)  # a numpy scalar time would promote the float32 coordinates to float64
    dy, dx = shape.velocity[0] * t, shape.velocity[1] * t
    return _SHAPES[shape.kind][1](shape.geometry, y, x, dy, dx, shape.scroll * t)


def _paint(scene: Scene, size: int, t: float, masks: Sequence[np.ndarray]):
    """The scene at time t, painted in one pass over its shapes' masks: the image, float32
    [size, size, 3], and the index map of the shape each pixel shows, uint8 [size, size]: 0 for
    the background, i + 1 for scene.shapes[i]."""
    y, x = _grid(size)
    angle = scene.angle + scene.spin * t
    ramp = ((x - 0.5) * math.cos(angle) + (y - 0.5) * math.sin(angle)) / math.sqrt(2) + 0.5
    # Channel by channel throughout: numpy is an order of magnitude slower when it broadcasts
    # over, or masks, a trailing axis of length 3.
    image = np.empty((size, size, 3), np.float32)
    for channel in range(3):
        image[..., channel] = scene.start[channel] + ramp * scene.change[channel]
    index = np.zeros((size, size), np.uint8)
    for number, (shape, mask) in enumerate(zip(scene.shapes, masks), start=1):
        for channel, value in enumerate(shape.colour):
            image[..., channel][mask] = value
        index[mask] = number
    return np.clip(image, -1.0, 1.0, out=image), index


def render_scene(scene: Scene, size: int, t: float = 0.0) -> np.ndarray:
    """The scene at time t (in frames) as float32 [size, size, 3] in [-1, 1]."""
    y, x = _grid(size)
    return _paint(scene, size, t, [_shape_mask(shape, y, x, t) for shape in scene.shapes])[0]


def _render_times(scene: Scene, size: int, times) -> np.ndarray:
    """The scene rendered at each of `times`, float32 [len(times), size, size, 3]."""
    clip = np.empty((len(times), size, size, 3), np.float32)
    for frame, t in enumerate(times):
        clip[frame] = render_scene(scene, size, t)
    return clip


def base_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random still scene: a soft colour gradient with a few flat-coloured shapes on top."""
    return render_scene(draw_scene(rng), size)


def base_clip(rng: np.random.Generator, size: int, frames: int) -> np.ndarray:
    """A random moving scene, float32 [frames, size, size, 3] in [-1, 1]: shapes drift at constant
    velocities, stripes scroll, the background gradient turns. Frame t renders the scene at time t;
    frame 0 equals `base_image` drawn from the same generator state."""
    if frames < 1:
        raise ValueError(f"frames={frames} must be at least 1.")
    return _render_times(draw_scene(rng, moving=True), size, range(frames))


# Dense tasks see their scenes laid out on a ground plane: the lower a shape's centre of mass in the
# image, the nearer it is, and nearer shapes are painted over farther ones. Depth is then exact and
# also visible, from height in the image and from occlusion. Depths run from _FAR at the top of the
# image to _NEAR at its bottom; the background, at _MAX_DEPTH, is farther than every shape.
_MAX_DEPTH = 10.0
_NEAR, _FAR = 2.0, 9.0


class _Layers(NamedTuple):
    """A scene at one time on the ground plane, with everything a dense target is made of."""

    image: np.ndarray  # float32 [H, W, 3]
    index: np.ndarray  # uint8 [H, W]: 0 background, i + 1 where shapes[i] is visible
    shapes: tuple[Shape, ...]  # far to near, the painting order
    depths: tuple[float, ...]  # of `shapes`, non-increasing


def _layers(scene: Scene, size: int, t: float) -> _Layers:
    """The scene at time t on the ground plane: its shapes repainted far to near."""
    y, x = _grid(size)
    masks = [_shape_mask(shape, y, x, t) for shape in scene.shapes]
    # A shape wholly outside the image (a moving one can leave) is never seen; any depth will do.
    centres = [float(y[mask].mean()) if mask.any() else 0.0 for mask in masks]
    depths = [_FAR - (_FAR - _NEAR) * centre for centre in centres]
    order = sorted(range(len(masks)), key=lambda i: -depths[i])  # stable: ties keep scene order
    shapes = tuple(scene.shapes[i] for i in order)
    image, index = _paint(dataclasses.replace(scene, shapes=shapes), size, t, [masks[i] for i in order])
    return _Layers(image, index, shapes, tuple(depths[i] for i in order))


# ---------------------------------------------------------------------------------------------
# Tasks


@dataclasses.dataclass(frozen=True)
class Task:
    """One synthetic task. `make(rng, size, frames)` draws an (input, target) pair, each float32
    [frames, size, size, 3] in [-1, 1], from the generator alone; size is a multiple of 4 of at
    least 16, frames is 1 for an image task and at least 2 for a video one."""

    name: str
    make: Callable[[np.random.Generator, int, int], tuple[np.ndarray, np.ndarray]]
    video: bool
    metric: str  # a key of scoring.METRICS


def _task(name: str, metric: str, make, *, video: bool = False) -> Task:
    def checked(rng: np.random.Generator, size: int, frames: int):
        if size < 16 or size % 4:
            raise ValueError(f"size={size} must be a multiple of 4 of at least 16 (task {name!r}).")
        if video and frames < 2:
            raise ValueError(f"frames={frames} must be at least 2 for the video task {name!r}.")
        if not video and frames != 1:
            raise ValueError(f"frames={frames} must be 1 for the image task {name!r}.")
        return make(rng, size, frames)

    return Task(name, checked, video, metric)


# --- Tasks on the rendered scene: its frames go in and a transform of them comes out, or the other
# way round (restoration). A pair's parameters (hole, noise level, ...) are drawn once, so a video's
# frames share them.


def _draw(rng, frames):
    """The scene of a pair: still for an image task (one frame), moving for a video task, so one
    make serves an image task and its video variant."""
    return draw_scene(rng, moving=frames > 1)


def _scene_frames(transform):
    """A task that renders the scene's frames and makes its pair with `transform(rng, frames)`."""

    def make(rng, size, frames):
        return transform(rng, _render_times(_draw(rng, frames), size, range(frames)))

    return make


def _restore(degrade):
    """The transform of a restoration task: the degraded frames in, the clean ones out."""
    return lambda rng, clean: (degrade(rng, clean), clean)


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _desaturate(_rng, clean):
    return scoring.gray_to_image(clean @ _LUMA)


def _cut_hole(rng, clean):
    # The hole is drawn per pair, so the model has to find it rather than memorise its place.
    size = clean.shape[1]
    hole_h, hole_w = rng.integers(size // 4, size // 2 + 1, 2)
    top, left = rng.integers(0, size - hole_h + 1), rng.integers(0, size - hole_w + 1)
    holed = clean.copy()
    holed[:, top : top + hole_h, left : left + hole_w] = 0.0
    return holed


def _add_noise(rng, clean):
    noisy = clean + rng.uniform(0.1, 0.4) * rng.standard_normal(clean.shape, dtype=np.float32)
    return np.clip(noisy, -1.0, 1.0)


def _blur(rng, clean):
    # A Gaussian blur whose width is a share of the image side, so it looks alike at every size.
    sigma = rng.uniform(0.01, 0.03) * clean.shape[1]
    return scipy.ndimage.gaussian_filter(clean, (0.0, sigma, sigma, 0.0), mode="nearest")


def _add_rain(rng, clean):
    """Bright streaks, all at one slant from the vertical, fresh in every frame: each streak is
    sampled a pixel apart along its length and lightens what it crosses by `strength`."""
    size = clean.shape[1]
    slant, strength = rng.uniform(-0.4, 0.4), rng.uniform(0.3, 0.8)
    count = int(rng.integers(30, 80))
    along = np.arange(math.ceil(0.15 * size) + 1) / size  # up to the longest streak
    rainy = clean.copy()
    for frame in rainy:
        starts = rng.uniform(-0.15, 1.0, (count, 2))  # (y, x); some start above or left of the image
        lengths = rng.uniform(0.05, 0.15, (count, 1))
        steps = np.minimum(along, lengths)  # a short streak's surplus samples pile up at its end
        rows = np.floor((starts[:, :1] + steps * math.cos(slant)) * size).astype(np.int64)
        cols = np.floor((starts[:, 1:] + steps * math.sin(slant)) * size).astype(np.int64)
        inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
        streak = np.zeros((size, size), bool)
        streak[rows[inside], cols[inside]] = True
        for channel in range(3):
            plane = frame[..., channel]
            plane[streak] += strength * (1.0 - plane[streak])
    return rainy


def _pixelate(rng, clean):
    """Area downsampling by 2 or 4, then nearest upsampling back: every factor x factor block holds
    the mean of the clean block."""
    factor = (2, 4)[rng.integers(2)]
    frames, size = clean.shape[:2]
    small = clean.reshape(frames, size // factor, factor, size // factor, factor, 3).mean((2, 4))
    return small.repeat(factor, axis=1).repeat(factor, axis=2)


def _darken(rng, clean):
    """Exposure cut to 10-35% with sensor noise: in [0, 1] brightness, gain * x + noise."""
    gain, noise_std = rng.uniform(0.1, 0.35), rng.uniform(0.01, 0.04)
    noise = rng.standard_normal(clean.shape, dtype=np.float32)
    return np.clip((clean + 1.0) * gain - 1.0 + 2.0 * noise_std * noise, -1.0, 1.0)


# --- Dense tasks: the scene on its ground plane (`_layers`) goes in, and a map of what each pixel
# shows comes out, frame by frame.


def _dense(target):
    """A task whose target frame is `target(layers)` of the scene at that time."""

    def make(rng, size, frames):
        scene = _draw(rng, frames)
        layers = [_layers(scene, size, t) for t in range(frames)]
        return np.stack([layer.image for layer in layers]), np.stack([target(layer) for layer in layers])

    return make


def _swapped(make):
    """The inverse task: make's target goes in, its input comes out."""

    def inverse(rng, size, frames):
        task_input, target = make(rng, size, frames)
        return target, task_input

    return inverse


def _per_shape(layers: _Layers, background, values) -> np.ndarray:
    """The map of `values[i]` where shapes[i] is visible and `background` elsewhere."""
    return np.asarray([background, *values])[layers.index]


def _semantic(layers):
    return scoring.labels_to_image(_per_shape(layers, 0, [shape.kind + 1 for shape in layers.shapes]))


def _panoptic(layers):
    # Semantic classes, with each kind's instances numbered in painting order.
    seen = [0] * len(_SHAPES)
    segments = []
    for shape in layers.shapes:
        segments.append(scoring.panoptic_labels(shape.kind + 1, seen[shape.kind]))
        seen[shape.kind] += 1
    return scoring.labels_to_image(_per_shape(layers, 0, segments))


def _foreground(layers):
    return scoring.labels_to_image(np.minimum(layers.index, 1))


def _depth(layers):
    return scoring.depth_to_image(_per_shape(layers, _MAX_DEPTH, layers.depths), _MAX_DEPTH)


def _edges(layers):
    """The outline of every visible shape: the pixels with a 4-neighbour that shows another shape
    (or the background), on both sides of each boundary; white on black."""
    index = layers.index
    outline = np.zeros(index.shape, bool)
    across, down = index[:, 1:] != index[:, :-1], index[1:] != index[:-1]
    outline[:, 1:] |= across
    outline[:, :-1] |= across
    outline[1:] |= down
    outline[:-1] |= down
    return scoring.gray_to_image(np.where(outline, np.float32(1.0), np.float32(-1.0)))


def _motion(shape: Shape) -> tuple[float, float]:
    """What a shape's pixels move by from one frame to the next, (u, v) = (dx, dy) in unit
    coordinates: its velocity, and for stripes also their scroll, which moves the pattern a
    `scroll` share of its period along the stripes' normal (cos, sin)(angle) in (x, y)."""
    dy, dx = shape.velocity
    if shape.kind == _STRIPES:
        angle, period = shape.geometry[:2]
        dx += shape.scroll * period * math.cos(angle)
        dy += shape.scroll * period * math.sin(angle)
    return dx, dy


def _flow(layers):
    """Optical flow from each frame t to frame t+1: the motion of the shape a pixel shows, and
    zero on the background, a canvas whose gradient turns (a change of colour, not motion). Motion
    is constant, so the last frame's flow, towards the frame after the clip, is defined too."""
    size = layers.index.shape[0]
    motions = [_motion(shape) for shape in layers.shapes]
    return scoring.flow_to_image(_per_shape(layers, (0.0, 0.0), motions) * size)


# --- Tasks that draw their own content.


def _draw_bumps(rng) -> list[tuple[float, float, float, float]]:
    """A height field, a sum of Gaussian bumps (cy, cx, sigma, amplitude) in unit coordinates:
    h(y, x) = sum amplitude * exp(-((y - cy)^2 + (x - cx)^2) / (2 sigma^2)). Amplitudes scale with
    the width, so slopes (and normals) span the same range for wide and narrow bumps."""
    bumps = []
    for _ in range(rng.integers(2, 6)):
        cy, cx = rng.uniform(0.0, 1.0, 2).tolist()
        sigma = rng.uniform(0.06, 0.2)
        bumps.append((cy, cx, sigma, sigma * rng.uniform(-1.5, 1.5)))
    return bumps


# Light comes from the upper left, towards the viewer: (x, y, z) with x right, y down, z out of
# the image. Fixed, so shading is a function of the normals alone.
_LIGHT = tuple((np.array([-1.0, -1.0, 2.0]) / math.sqrt(6.0)).tolist())


def _surface_normals(rng, size, _frames):
    """A shaded height field in, its unit normals n = (-dh/dx, -dh/dy, 1) / |.| out, as RGB = n
    (x right, y down, z towards the viewer). The shading is Lambertian, with ambient light, in a
    random colour."""
    y, x = _grid(size)
    slope_x, slope_y = np.zeros((size, size), np.float32), np.zeros((size, size), np.float32)
    for cy, cx, sigma, amplitude in _draw_bumps(rng):
        dy, dx = y - cy, x - cx
        bump = amplitude * np.exp((dy * dy + dx * dx) * (-0.5 / sigma**2))
        slope_x -= bump * dx / sigma**2
        slope_y -= bump * dy / sigma**2
    length = np.sqrt(slope_x * slope_x + slope_y * slope_y + 1.0)
    normal = np.stack([-slope_x / length, -slope_y / length, 1.0 / length], axis=-1)
    lit = np.clip(normal @ np.array(_LIGHT, np.float32), 0.0, 1.0)
    shading = np.empty((size, size, 3), np.float32)
    for channel, albedo in enumerate(rng.uniform(0.3, 1.0, 3).tolist()):
        shading[..., channel] = (0.25 + 0.75 * lit) * (2.0 * albedo) - 1.0
    return shading[None], normal[None]


# A stick figure's joints; joint i is marked in the target with palette class i + 1.
_JOINTS = ("head", "neck", "pelvis", "left hand", "right hand", "left foot", "right foot")
_LIMBS = ((0, 1), (1, 2), (1, 3), (1, 4), (2, 5), (2, 6))


def _draw_figure(rng) -> np.ndarray:
    """Joint positions (y, x) in unit coordinates, [len(_JOINTS), 2]: an upright torso, tilted a
    little, with one arm out to each side, at most 45 degrees off the torso's horizontal, and one
    leg down to each side, 30 to 60 degrees below it; every joint lies within 0.3 of a centre in
    [0.35, 0.65]^2, so inside the image. The left hand and foot lie left of the torso's axis, at
    smaller x in the image than the right ones (the tilt turns no limb past the vertical), so every
    joint is identifiable. No two joints lie closer than 0.099: the nearest possible pair is the
    head and a hand raised 45 degrees, 0.2475 scale apart, at the smallest scale, 0.4."""
    centre = rng.uniform(0.35, 0.65, 2)
    scale, tilt = rng.uniform(0.4, 0.5), rng.uniform(-0.3, 0.3)
    up = scale * np.array([-math.cos(tilt), math.sin(tilt)])
    right = scale * np.array([math.sin(tilt), math.cos(tilt)])  # the torso's right, normal to up
    neck, pelvis = centre + 0.2 * up, centre - 0.2 * up
    # Each limb's angle below the torso's horizontal, towards its own side: left limbs are mirrored.
    arms, legs = rng.uniform(-np.pi / 4, np.pi / 4, 2), rng.uniform(np.pi / 6, np.pi / 3, 2)
    sides = np.array([[-1.0], [1.0]])  # left, right

    def reach(joint, length, angles):  # the left and right limbs' ends
        return joint + length * (sides * np.cos(angles)[:, None] * right - np.sin(angles)[:, None] * up)

    hands, feet = reach(neck, 0.35, arms), reach(pelvis, 0.4, legs)
    return np.concatenate([[neck + 0.25 * up, neck, pelvis], hands, feet])


def _distance_to_limbs(joints: np.ndarray, size: int) -> np.ndarray:
    """Each pixel's distance to the nearest limb segment, in unit coordinates."""
    y, x = _grid(size)
    squared = np.full((size, size), np.inf, np.float32)
    for a, b in _LIMBS:
        (ay, ax), (by, bx) = joints[a].tolist(), joints[b].tolist()
        ey, ex = by - ay, bx - ax
        along = np.clip(((y - ay) * ey + (x - ax) * ex) * (1.0 / (ey * ey + ex * ex)), 0.0, 1.0)
        off_y, off_x = y - ay - along * ey, x - ax - along * ex
        np.minimum(squared, off_y * off_y + off_x * off_x, out=squared)
    return np.sqrt(squared)


def _keypoints(rng, size, _frames):
    """A scene with a stick figure on it (white limbs outlined in black, visible on any colour)
    in; its joints out, each a disc in its palette colour on black (class 0)."""
    image = base_image(rng, size)
    joints = _draw_figure(rng)
    # Widths in unit coordinates, but never under about a pixel, so small images show them too. A
    # radius of at least 0.75 px, over half a pixel's diagonal, covers the centre of the pixel a
    # joint lies in, and twice the radius (at most 0.094, at 16 px) is under the 0.099 between the
    # closest joints (`_draw_figure`), so no disc covers another: every joint shows, its pixels'
    # centroid within a radius of it.
    half_width, radius = max(0.012, 0.6 / size), max(0.025, 0.75 / size)
    distance = _distance_to_limbs(joints, size)
    outline, limb = distance < 2.0 * half_width, distance < half_width
    for channel in range(3):
        image[..., channel][outline] = -1.0
        image[..., channel][limb] = 1.0
    y, x = _grid(size)
    labels = np.zeros((size, size), np.uint8)
    for joint, (jy, jx) in enumerate(joints.tolist(), start=1):
        labels[(y - jy) ** 2 + (x - jx) ** 2 < radius**2] = joint
    return image[None], scoring.labels_to_image(labels)[None]


def _detection(rng, size, _frames):
    """Find the circle: a scene without circles with one circle painted on top in, the same scene
    with the circle's box out (`scoring.draw_box`: the box outline on the scene at lower contrast)."""
    scene = draw_scene(rng)
    circle = Shape(_CIRCLE, _draw_circle(rng), tuple(rng.uniform(-1.0, 1.0, 3).tolist()))
    others = tuple(shape for shape in scene.shapes if shape.kind != _CIRCLE)
    image = render_scene(dataclasses.replace(scene, shapes=(*others, circle)), size)
    # Its centre lies in the image and its radius exceeds half a pixel's diagonal from 16 px on, so
    # the circle always covers a pixel centre; on top, all of it is visible.
    box = scoring.mask_to_box(_shape_mask(circle, *_grid(size), 0.0))
    return image[None], scoring.draw_box(image, box)[None]


# --- Video tasks that play with time: which frames of one moving scene go in and come out.


def _retimed(input_times, target_times):
    """A task whose input (target) frames are the scene at times input_times(T) (target_times(T))."""

    def make(rng, size, frames):
        scene = _draw(rng, frames)
        render = lambda times: _render_times(scene, size, times)
        return render(input_times(frames)), render(target_times(frames))

    return make


# Makes that image and video tasks share.
_SEMANTIC = _dense(_semantic)
_DEPTH = _dense(_depth)
_INPAINTING = _scene_frames(_restore(_cut_hole))

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        _task("semantic_segmentation", "segmentation", _SEMANTIC),
        _task("panoptic_segmentation", "panoptic", _dense(_panoptic)),
        _task("foreground_segmentation", "segmentation", _dense(_foreground)),
        _task("depth", "depth", _DEPTH),
        _task("surface_normals", "normals", _surface_normals),
        _task("edges", "edges", _dense(_edges)),
        _task("keypoints", "keypoints", _keypoints),
        _task("detection", "boxes", _detection),
        _task("colorization", "image", _scene_frames(_restore(_desaturate))),
        _task("inpainting", "image", _INPAINTING),
        _task("denoising", "image", _scene_frames(_restore(_add_noise))),
        _task("deblurring", "image", _scene_frames(_restore(_blur))),
        _task("deraining", "image", _scene_frames(_restore(_add_rain))),
        _task("super_resolution", "image", _scene_frames(_restore(_pixelate))),
        _task("low_light", "image", _scene_frames(_restore(_darken))),
        _task("depth_to_image", "image", _swapped(_DEPTH)),
        _task("segmentation_to_image", "image", _swapped(_SEMANTIC)),
        _task("flip", "image", _scene_frames(lambda _rng, clip: (clip, clip[:, :, ::-1]))),
        _task("vflip", "image", _scene_frames(lambda _rng, clip: (clip, clip[:, ::-1]))),
        _task("invert", "image", _scene_frames(lambda _rng, clip: (clip, -clip))),
        # Video tasks. Times are in frames; T is the number of input (and of target) frames.
        _task(
            "frame_prediction", "image", _retimed(lambda T: range(T), lambda T: range(T, 2 * T)), video=True
        ),
        # Forward prediction of the clip played backwards: input the times 2T-1 down to T, target
        # T-1 down to 0, so input and target together play the clip in reverse.
        _task(
            "frame_prediction_backward",
            "image",
            _retimed(lambda T: range(2 * T - 1, T - 1, -1), lambda T: range(T - 1, -1, -1)),
            video=True,
        ),
        # Input the even times 0, 2, ..., 2T-2, target the odd times between them, 1, 3, ..., 2T-1;
        # T inputs have only T-1 gaps, so the last target lies half a step past the last input.
        _task(
            "frame_interpolation",
            "image",
            _retimed(lambda T: range(0, 2 * T, 2), lambda T: range(1, 2 * T, 2)),
            video=True,
        ),
        _task("video_segmentation", "segmentation", _SEMANTIC, video=True),
        _task("video_depth", "depth", _DEPTH, video=True),
        _task("optical_flow", "flow", _dense(_flow), video=True),
        _task("video_inpainting", "image", _INPAINTING, video=True),  # one hole for the whole clip
    )
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
    rng = np.random.default_rng((seed, CLIP_LENGTH_STREAM, batch_index))
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
        rng = np.random.default_rng((self._seed, CLIP_STREAM, int(index)))
        return {"video": base_clip(rng, self._image_size, int(frames))}
