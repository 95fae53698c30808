"""A run's outputs besides checkpoints: scalar logs, TensorBoard events and sample grids."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import tensorboardX
from absl import logging
from PIL import Image

from lavin_jax.data import scoring

# Pixels between neighbouring frames of an episode grid, and between an episode's condition
# frames and its prediction/target pair.
BORDER = 2
GAP = 8
_BACKGROUND = 255


class MetricWriter:
    """Writes `metrics.jsonl`, TensorBoard events and PNG samples under `workdir`.

    Every host builds one; only the primary host's (`enabled=True`) writes anything.
    """

    def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int | None = None):
        """`resume_step`: the checkpoint step a resumed run starts from. Lines the interrupted
        run logged after it are dropped, since the resumed run logs those steps again, and so
        are lines a killed write left unreadable, with a warning naming them."""
        # Where each output goes, for the writer and for a person (the trainer's summary).
        self.paths = {
            "metrics": os.path.join(workdir, "metrics.jsonl"),
            "samples": os.path.join(workdir, "samples"),
            "tensorboard": os.path.join(workdir, "tensorboard"),
        }
        self._enabled = enabled
        if not enabled:
            return
        os.makedirs(self.paths["samples"], exist_ok=True)
        if os.path.exists(self.paths["metrics"]):
            _repair(self.paths["metrics"], resume_step)
        # Append: a resumed run continues the log of the run it resumes.
        self._jsonl = open(self.paths["metrics"], "a", encoding="utf-8")
        self._tensorboard = tensorboardX.SummaryWriter(self.paths["tensorboard"])

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        if not self._enabled:
            return
        values = {name: float(value) for name, value in scalars.items()}
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
        # Flushed every call so a preempted run loses no logged step.
        self._jsonl.flush()
        for name, value in values.items():
            self._tensorboard.add_scalar(name, value, global_step=step)

    def write_image(self, step: int, name: str, image: np.ndarray) -> None:
        if not self._enabled:
            return
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(
                f"write_image({name!r}) needs a uint8 HxWx3 image, got {image.dtype} {image.shape}."
            )
        path = os.path.join(self.paths["samples"], f"{name}_{step:07d}.png")
        Image.fromarray(image).save(path)
        self._tensorboard.add_image(name, image, global_step=step, dataformats="HWC")

    def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        for name, image in images.items():
            self.write_image(step, name, image)

    def write_animation(self, step: int, name: str, frames: list[np.ndarray], seconds_per_frame: float = 0.4) -> None:
        """A looping GIF `samples/<name>_<step>.gif` of uint8 HxWx3 frames (a video task's grids)."""
        if not self._enabled:
            return
        with open(os.path.join(self.paths["samples"], f"{name}_{step:07d}.gif"), "wb") as f:
            f.write(gif(frames, seconds_per_frame))

    def close(self) -> None:
        if self._enabled:
            self._jsonl.close()
            self._tensorboard.close()


def _repair(path: str, resume_step: int | None) -> None:
    """Rewrites the log `path` without the lines after `resume_step` (when given) and without
    lines that are not JSON records: a write cut short (kill -9, a full disk) leaves a partial
    last line that would otherwise stop every later resume. Every other line is kept; the file is
    replaced whole, so a kill during the repair loses nothing either."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    kept, bad = [], []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            step = int(json.loads(line)["step"])
        except (ValueError, TypeError, KeyError):  # JSONDecodeError is a ValueError.
            bad.append(number)
            continue
        if resume_step is None or step <= resume_step:
            kept.append(line + "\n")
    if bad:
        logging.warning(
            "%s: dropped unreadable line%s %s (a write cut short); kept the rest.",
            path, "s" if len(bad) > 1 else "", ", ".join(map(str, bad)),
        )
    repaired = "".join(kept)
    if repaired != text:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(repaired)
        os.replace(path + ".tmp", path)


def gif(frames: list[np.ndarray], seconds_per_frame: float = 0.4) -> bytes:
    """A looping GIF of uint8 HxWx3 frames (files, and notebooks: IPython.display.Image(data))."""
    images = [Image.fromarray(frame) for frame in frames]
    out = io.BytesIO()
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=int(seconds_per_frame * 1000), loop=0)
    return out.getvalue()


def display_scale(side: int) -> int:
    """How many times to enlarge frames of `side` pixels so a person can see them (~128 px)."""
    return max(1, 128 // side)


def episode_grid(
    cond: np.ndarray, prediction: np.ndarray, target: np.ndarray, *, scale: int = 1
) -> np.ndarray:
    """Lays out episodes one per row: the condition frames, a gap, the prediction, the target.

    `cond` is [N, Tc, H, W, 3] (in_1, tgt_1, ..., in_K, tgt_K, query); `prediction` and `target`
    are [N, T, H, W, 3] (T = 1 for images); all in [-1, 1]. Frames are upscaled `scale` times
    (nearest neighbour) and framed by BORDER-pixel lines, so row n's frame j starts at
    (BORDER + n * (H*scale + BORDER), BORDER + j * (W*scale + BORDER)), with GAP - BORDER extra
    pixels before the prediction.
    """
    n, num_cond, h, w, _ = cond.shape
    if prediction.shape != target.shape or target.ndim != 5 or target.shape[0] != n or target.shape[2:] != (h, w, 3):
        raise ValueError(
            f"episode_grid: prediction {prediction.shape} and target {target.shape} must both be "
            f"(N={n}, T, {h}, {w}, 3) to match cond {cond.shape}."
        )
    return frame_grid(np.concatenate([cond, prediction, target], axis=1), scale=scale, gap_before=num_cond)


def episode_animation(cond: np.ndarray, prediction: np.ndarray, target: np.ndarray, *, scale: int = 1) -> list[np.ndarray]:
    """Episodes of clips as an animation: frame t is the `episode_grid` of every item's frame t.
    `cond` holds items of T = prediction.shape[1] frames each."""
    frames = prediction.shape[1]
    items = cond.reshape(cond.shape[0], -1, frames, *cond.shape[2:])
    return [episode_grid(items[:, :, t], prediction[:, t : t + 1], target[:, t : t + 1], scale=scale) for t in range(frames)]


def frame_grid(frames: np.ndarray, *, scale: int = 1, gap_before: int | None = None) -> np.ndarray:
    """Frames [N, T, H, W, 3] in [-1, 1] as N rows of T frames, upscaled `scale` times and
    framed by BORDER-pixel lines; column `gap_before` (if any) starts GAP - BORDER pixels later."""
    n, num_frames, h, w, _ = frames.shape
    frames = scoring.to_uint8(frames).repeat(scale, axis=2).repeat(scale, axis=3)
    fh, fw = h * scale, w * scale
    extra = 0 if gap_before is None else GAP - BORDER
    grid = np.full((BORDER + n * (fh + BORDER), BORDER + num_frames * (fw + BORDER) + extra, 3), _BACKGROUND, np.uint8)
    for row in range(n):
        y = BORDER + row * (fh + BORDER)
        for col in range(num_frames):
            x = BORDER + col * (fw + BORDER) + extra * (gap_before is not None and col >= gap_before)
            grid[y : y + fh, x : x + fw] = frames[row, col]
    return grid
