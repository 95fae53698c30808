"""Media files as frames: images and videos read into uint8 RGB arrays, for ingest, prompting and
the class-labelled datasets.

    read_image(path)   -> uint8 [H, W, 3]
    read_video(path)   -> uint8 [H, W, 3] frames, decoded one at a time (PyAV)
    read_frames(path)  -> uint8 [T, H, W, 3]: an image as one frame, a video's frames, by extension

Only 8-bit images are read: RGB, gray and palette images become RGB, RGBA (and gray or palette
with alpha) only if every pixel is opaque; any other mode (16-bit, CMYK, float) is refused rather
than guessed at. Video frames are taken as decoded, whatever the frame rate, and a video whose
frames change size is refused.

A file that cannot be used raises `Skip`, whose message says why without naming the file (callers
name it: ingest lists it as skipped, prompting and the labelled datasets raise a sentence with it).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")


class Skip(Exception):
    """A file or item that cannot be used; `str()` is the reason, e.g. "has no video stream"."""


def read_image(path: str) -> np.ndarray:
    """An image file as uint8 [H, W, 3]; raises Skip saying why it cannot be used."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("L", "RGB"):
                return np.asarray(image.convert("RGB"))
            if image.mode in ("P", "LA", "PA", "RGBA"):  # a palette may hold transparent colours.
                rgba = np.asarray(image.convert("RGBA"))
                if (rgba[..., 3] < 255).any():
                    raise Skip("has transparent pixels; only fully opaque RGBA is used")
                return rgba[..., :3]
            raise Skip(f"has mode {image.mode}; 8-bit RGB, gray, palette or opaque RGBA is needed")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise Skip(f"cannot be read as an image ({error})") from None


def read_video(path: str) -> Iterator[np.ndarray]:
    """The frames of a video file, uint8 [H, W, 3] each, decoded one at a time; raises Skip (when
    the stream reaches the bad part) saying why it cannot be used."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise Skip("has no video stream")
            shape = None
            for index, frame in enumerate(container.decode(video=0)):
                array = frame.to_ndarray(format="rgb24")
                shape = shape or array.shape
                if array.shape != shape:
                    raise Skip(f"changes size at frame {index}, from {shape[:2]} to {array.shape[:2]}")
                yield array
    except (av.FFmpegError, OSError, ValueError) as error:
        raise Skip(f"cannot be decoded as a video ({error})") from None


def is_video(path: str) -> bool:
    """Whether the file is read as a video: by its extension, VIDEO_EXTENSIONS."""
    return path.lower().endswith(VIDEO_EXTENSIONS)


def read_frames(path: str) -> np.ndarray:
    """An image file as uint8 [1, H, W, 3] or a video file's frames as [T, H, W, 3], by the
    extension; raises Skip saying why it cannot be used."""
    frames = list(read_video(path)) if is_video(path) else [read_image(path)]
    if not frames:
        raise Skip("has no frames")
    return np.stack(frames)
