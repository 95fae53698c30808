"""Tiled application of a convolutional autoencoder: overlapping spatial tiles blended by linear
ramps, and causal time chunks, so a large image or a long clip is encoded or decoded in pieces
whose memory does not grow with its size (the ST-VAE's `tiled_encode` and `tiled_decode`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check_tiling(name: str, tile, overlap, frames, *, space_unit: int, time_unit: int) -> None:
    """Raises ValueError, one sentence naming the argument, for tiling arguments `name` cannot use:
    tile and overlap in multiples of `space_unit` with 0 <= overlap < tile, and frames None or
    1 + time_unit * k with k >= 1."""
    unit = f"a positive multiple of {space_unit}" if space_unit > 1 else "a positive integer"
    if not isinstance(tile, int) or isinstance(tile, bool) or tile <= 0 or tile % space_unit:
        raise ValueError(f"{name} tile={tile!r} must be {unit}.")
    if not isinstance(overlap, int) or isinstance(overlap, bool) or not 0 <= overlap < tile or overlap % space_unit:
        raise ValueError(
            f"{name} overlap={overlap!r} must be a multiple of {space_unit} in [0, tile={tile})."
        )
    if frames is not None and (
        not isinstance(frames, int) or isinstance(frames, bool) or frames < 1 + time_unit or (frames - 1) % time_unit
    ):
        raise ValueError(
            f"{name} frames={frames!r} must be None or 1 + {time_unit}k frames with k >= 1."
        )


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Starts of `tile`-long windows every `stride` covering [0, size); the last is moved back to
    end exactly at `size` (so every window is full-sized), one window when size <= tile."""
    if size <= tile:
        return [0]
    return list(range(0, size - tile, stride)) + [size - tile]


def blend_weights(starts: list[int], length: int) -> list[jax.Array]:
    """Per window, a 1D weight that ramps linearly, 1/(n+1) ... n/(n+1), across the n positions it
    shares with the window before and after it (1 elsewhere), so two neighbours sum to 1 there."""
    i = jnp.arange(length, dtype=jnp.float32)
    weights = []
    for k, s in enumerate(starts):
        w = jnp.ones((length,), jnp.float32)
        if k > 0:
            w = jnp.minimum(w, (i + 1) / (starts[k - 1] + length - s + 1))
        if k < len(starts) - 1:
            w = jnp.minimum(w, (length - i) / (s + length - starts[k + 1] + 1))
        weights.append(w)
    return weights


def tiled_spatial(fn, x: jax.Array, *, tile: int, overlap: int, in_unit: int, out_unit: int) -> jax.Array:
    """fn over overlapping spatial tiles of x (B, T, H, W, C), blended by linear ramps. fn maps a
    tile of p input pixels to p * out_unit / in_unit output pixels; tile and overlap are in input
    pixels. Windows are normalised by their summed weight, so any overlap pattern blends to a
    convex combination and a single tile is returned unchanged. Unlike official `tiled_encode2d`
    (tiles every 3/4 tile, each blended into its upper/left neighbour and cropped, trailing tiles
    partial), the last window is moved back to stay full-sized, so every tile has one shape.
    Official sizes: 512 px tiles with 128 px (64 latent px) overlap, 129-frame (33-latent) chunks."""
    sizes = x.shape[2:4]
    tiles = [min(tile, n) for n in sizes]
    starts = [tile_starts(n, t, tile - overlap) for n, t in zip(sizes, tiles)]
    scale = lambda p: p // in_unit * out_unit
    weights = [blend_weights([scale(s) for s in st], scale(t)) for st, t in zip(starts, tiles)]
    if len(starts[0]) == len(starts[1]) == 1:
        return fn(x)
    out = total = None
    for i, y0 in enumerate(starts[0]):
        for j, x0 in enumerate(starts[1]):
            y = fn(x[:, :, y0 : y0 + tiles[0], x0 : x0 + tiles[1]])
            w = weights[0][i][:, None] * weights[1][j][None, :]
            if out is None:
                b, t, _, _, c = y.shape
                out = jnp.zeros((b, t, scale(sizes[0]), scale(sizes[1]), c), jnp.float32)
                total = jnp.zeros((scale(sizes[0]), scale(sizes[1])), jnp.float32)
            window = (slice(scale(y0), scale(y0 + tiles[0])), slice(scale(x0), scale(x0 + tiles[1])))
            out = out.at[(slice(None), slice(None)) + window].add(y.astype(jnp.float32) * w[:, :, None])
            total = total.at[window].add(w)
    return (out / total[:, :, None]).astype(y.dtype)


def time_chunks(t: int, frames: int | None) -> list[tuple[int, int]]:
    """[start, end) chunks of at most `frames` frames, each starting on the previous one's last
    frame (starts every frames - 1), as official `tiled_encode`/`tiled_decode`: one chunk when
    t <= frames."""
    if frames is None or t <= frames:
        return [(0, t)]
    return [(s, min(s + frames, t)) for s in range(0, t - 1, frames - 1)]


def tiled_apply(fn, x: jax.Array, *, tile: int, overlap: int, frames: int | None, in_unit: int, out_unit: int):
    """fn over time chunks (`time_chunks`) of spatially tiled x (`tiled_spatial`). As official,
    each chunk after the first re-enters the causal model at the previous chunk's last frame,
    which then acts as its first frame (padded by repetition, encoded or decoded on its own), and
    the one output frame it gives is dropped: chunks stay causal and their outputs concatenate
    to the untiled frame count (1 + k latents for 1 + 4k frames, and back)."""
    outputs = []
    for k, (t0, t1) in enumerate(time_chunks(x.shape[1], frames)):
        y = tiled_spatial(fn, x[:, t0:t1], tile=tile, overlap=overlap, in_unit=in_unit, out_unit=out_unit)
        outputs.append(y if k == 0 else y[:, 1:])
    return outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=1)
