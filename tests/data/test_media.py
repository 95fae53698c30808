import av
import numpy as np
import pytest
from PIL import Image

from lavin_jax.data import media


def _save(path, array, mode=None):
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return str(path)


def test_images_of_8_bit_modes_become_rgb(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    opaque = np.concatenate([rgb, np.full((5, 7, 1), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(media.read_image(_save(tmp_path / "rgb.png", rgb)), rgb)
    np.testing.assert_array_equal(media.read_image(_save(tmp_path / "gray.png", gray)), np.repeat(gray[..., None], 3, -1))
    np.testing.assert_array_equal(media.read_image(_save(tmp_path / "opaque.png", opaque)), rgb)
    frames = media.read_frames(str(tmp_path / "rgb.png"))
    assert frames.shape == (1, 5, 7, 3) and frames.dtype == np.uint8


@pytest.mark.parametrize(
    "name, write, reason",
    [
        ("clear.png", lambda p: _save(p, np.zeros((4, 4, 4), np.uint8)), "has transparent pixels"),
        ("deep.png", lambda p: _save(p, np.zeros((4, 4), np.uint16)), "has mode I;16"),
        ("corrupt.png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n truncated"), "cannot be read as an image"),
        ("text.jpg", lambda p: p.write_text("not an image"), "cannot be read as an image"),
        ("empty.mp4", lambda p: p.write_bytes(b""), "cannot be decoded as a video"),
    ],
)
def test_unusable_files_raise_skip_with_the_reason(tmp_path, name, write, reason):
    write(tmp_path / name)
    with pytest.raises(media.Skip, match=reason):
        media.read_frames(str(tmp_path / name))


def test_videos_are_read_by_extension(tmp_path):
    path = str(tmp_path / "clip.MP4")
    with av.open(path, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width, stream.pix_fmt = 16, 16, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 60 * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    assert media.is_video(path) and not media.is_video("a.png")
    frames = media.read_frames(path)
    assert frames.shape == (3, 16, 16, 3) and frames.dtype == np.uint8
    np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)), [0, 60, 120], atol=3)
    assert [f.shape for f in media.read_video(path)] == [(16, 16, 3)] * 3
