import dataclasses

import numpy as np
import pytest

from lavin_jax.data import captions


def scenes(count, moving, frames=captions.MAX_FRAMES, seed=0):
    return [captions.draw(np.random.default_rng((seed, i)), moving=moving, frames=frames) for i in range(count)]


@pytest.mark.parametrize("size", [captions.MIN_SIZE, 64])
def test_the_detector_reads_every_drawn_scene_back_exactly(size):
    for things in scenes(150, moving=False):
        assert captions.alignment(things, captions.render(things, size)) == {
            **{aspect: 1.0 for aspect in ("colour", "shape", "size")}, **({"relation": 1.0} if len(things) == 2 else {}), "all": 1.0}
    for things in scenes(60, moving=True):
        scores = captions.alignment(things, captions.render_clip(things, size, captions.MAX_FRAMES))
        assert scores["all"] == 1.0 and scores["motion"] == scores["axis"] == 1.0, (captions.caption(things), scores)


def test_where_a_moving_object_starts_does_not_tell_which_way_it_moves():
    """Over the T2V demo's 4 frames each object starts where it could leave either way along its
    axis, so objects moving right and left start over the same range across (down and up, down),
    and a model must read the word to know the way. Every path stays in the picture."""
    starts = {way: [] for way in captions.MOTIONS}
    assert captions.MAX_FRAMES == 4
    for things in scenes(600, moving=True):
        for thing in things:
            along = 0 if captions.MOTIONS[thing.motion][0] else 1
            starts[thing.motion].append(thing.centre[along])
            half = captions.SIZES[thing.size] / 2
            assert all(half - 1e-9 <= c <= 1 - half + 1e-9 for t in range(captions.MAX_FRAMES) for c in thing.centre_at(t)), thing
    for way, other in (("right", "left"), ("down", "up")):
        a, b = np.asarray(starts[way]), np.asarray(starts[other])
        assert abs(a.mean() - b.mean()) < 0.04 and abs(a.min() - b.min()) < 0.05 and abs(a.max() - b.max()) < 0.05, (way, a.mean(), b.mean())
    with pytest.raises(ValueError, match="at most 4 frames, not 5"):
        scenes(1, moving=True, frames=captions.MAX_FRAMES + 1)


def test_captions_say_what_the_picture_shows():
    red = captions.Thing("circle", "red", "small", (0.5, 0.25))
    blue = captions.Thing("square", "blue", "large", (0.45, 0.75), motion="up")
    assert captions.caption([blue, red]) == "a small red circle left of a large blue square moving up"
    below = captions.Thing("triangle", "green", "large", (0.8, 0.5))
    assert captions.caption([below, dataclasses.replace(red, centre=(0.2, 0.45))]) == "a small red circle above a large green triangle"
    drawn = scenes(200, moving=True)
    assert {len(things) for things in drawn} == {1, 2}
    assert all(len({thing.colour for thing in things}) == len(things) for things in drawn)


def test_a_wrong_picture_scores_what_is_wrong():
    red = captions.Thing("circle", "red", "small", (0.5, 0.2))
    blue = captions.Thing("square", "blue", "large", (0.5, 0.7))
    right = captions.render([red, blue], 32)
    mirrored = right[:, ::-1]
    assert captions.alignment([red, blue], mirrored) == {"colour": 1.0, "shape": 1.0, "size": 1.0, "relation": 0.0, "all": 0.0}
    other_shape = captions.render([captions.Thing("triangle", "red", "small", (0.5, 0.2)), blue], 32)
    assert captions.alignment([red, blue], other_shape)["shape"] == 0.5
    assert captions.alignment([red, blue], np.zeros_like(right)) == {"colour": 0.0, "shape": 0.0, "size": 0.0, "relation": 0.0, "all": 0.0}
    moving = captions.Thing("square", "green", "large", (0.5, 0.3), motion="right")
    clip = captions.render_clip([moving], 32, 6)
    assert captions.alignment([moving], clip)["motion"] == 1.0
    backwards = captions.alignment([moving], clip[::-1])
    assert backwards["motion"] == 0.0 and backwards["axis"] == 1.0  # the right axis, the wrong way.
    falling = dataclasses.replace(moving, motion="down", centre=(0.25, 0.3))
    down = captions.render_clip([falling], 32, 6)
    assert captions.alignment([falling], down)["motion"] == 1.0
    assert captions.alignment([moving], down)["axis"] == 0.0
