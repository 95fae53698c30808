import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lavin_jax import models
from lavin_jax.models import flops, gentron, text
from conftest import randomized

LENGTH = 24


def small(**fields):
    cfg = models.default_config("gentron")
    cfg.update(hidden=32, depth=2, num_heads=4, patch_size=4, in_channels=3, dtype="float32", attention="xla", learn_sigma=False,
               text_length=LENGTH, text_width=16, text_depth=1, text_heads=2)
    cfg.update(fields)
    return cfg


def context(words, motion_free=None):
    tokens, lengths = text.tokenize(words, LENGTH)
    out = {"text": jnp.asarray(tokens), "text_length": jnp.asarray(lengths)}
    return out if motion_free is None else {**out, "motion_free": jnp.asarray(motion_free)}


def compiled(model):
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda state, x, t, c: nnx.merge(graphdef, state)(x, t, c))
    return lambda x, t, c: run(state, x, t, c)


def noise(frames, batch=2, seed=1):
    return jax.random.normal(jax.random.key(seed), (batch, frames, 16, 16, 3))


T = jnp.array([0.3, 0.8])


def test_tokens_are_bytes_between_bos_and_eos_and_a_long_caption_still_ends():
    tokens, lengths = text.tokenize(["ab", "", "x" * 100], 8)
    np.testing.assert_array_equal(tokens[0], [text.BOS, ord("a") + 3, ord("b") + 3, text.EOS, 0, 0, 0, 0])
    np.testing.assert_array_equal(tokens[1][:2], [text.BOS, text.EOS])
    assert list(lengths) == [4, 2, 8] and tokens[2, -1] == text.EOS


def test_the_caption_steers_the_picture_and_its_padding_does_not():
    run = compiled(randomized(lambda: models.build(small(), nnx.Rngs(0))))
    x = noise(1)
    told = run(x, T, context(["a small red circle", "a large blue square"]))
    other = run(x, T, context(["a small red square", "a large blue square"]))
    assert float(jnp.abs(told[0] - other[0]).max()) > 1e-3  # the first caption changed...
    np.testing.assert_allclose(told[1], other[1], atol=1e-6)  # ...the second did not.
    padded = context(["a small red circle", "a large blue square"])
    padded["text"] = padded["text"].at[:, 22:].set(77)  # past both captions' ends (20 and 21 tokens)
    np.testing.assert_allclose(run(x, T, padded), told, atol=1e-6)


def test_the_byte_encoder_keeps_each_byte_at_its_place():
    """A changed byte changes its own token far more than the others': the residual stream carries
    each byte's embedding. Embeddings much smaller than the blocks' outputs (0.02 against about 1)
    are drowned by what attention mixes in from the whole caption, so the change spreads (2-5x
    at its place against the rest at 0.02, 12-16x at 1.0), and in training the encoder's tokens
    came to differ by 1-2% between captions that differ in one word (BENCHMARKS.md)."""
    encoder = text.ByteEncoder(small(text_width=64, text_depth=2, text_heads=2), dtype=jnp.float32, rngs=nnx.Rngs(0))
    ids, lengths = text.tokenize(["a large red square", "a large rod square"], LENGTH)
    tokens, _ = encoder(jnp.asarray(ids), jnp.asarray(lengths))
    caption = slice(0, int(lengths[0]))  # BOS to EOS; the padding comes out as zeros.
    change = jnp.linalg.norm(tokens[0, caption] - tokens[1, caption], axis=-1) / jnp.linalg.norm(tokens[0, caption], axis=-1)
    place = 1 + len("a large r")  # after BOS
    assert float(change[place]) > 8 * float(jnp.delete(change, place).mean())


def test_a_video_model_starts_as_its_image_model_on_every_frame():
    """The temporal attention's last projection starts at zero: with every other parameter of a
    text-to-video model copied from a (randomised) text-to-image one, each frame of a clip comes
    out as the image model draws that frame alone."""
    image = randomized(lambda: models.build(small(), nnx.Rngs(0)))
    video = models.build(small(temporal=True), nnx.Rngs(0))
    shared = nnx.state(image, nnx.Param).to_pure_dict()
    state = nnx.state(video, nnx.Param).to_pure_dict()
    state["blocks"].update({name: value for name, value in shared["blocks"].items()})
    state.update({name: value for name, value in shared.items() if name != "blocks"})
    nnx.update(video, state)
    clip, words = noise(3), context(["a small red circle", ""])
    out = compiled(video)(clip, T, words)
    per_frame = [compiled(image)(clip[:, f : f + 1], T, words) for f in range(3)]
    np.testing.assert_allclose(out, jnp.concatenate(per_frame, axis=1), atol=1e-5)


def test_motion_free_examples_see_each_frame_alone():
    """With the temporal attention live, changing frame 0 moves frame 2's output, except in an
    example marked motion-free (its frames attend to themselves only)."""
    run = compiled(randomized(lambda: models.build(small(temporal=True), nnx.Rngs(0))))
    clip = noise(3)
    changed = clip.at[:, 0].add(1.0)
    words = context(["a small red circle moving left", "a small red circle moving left"], motion_free=[False, True])
    moved = jnp.abs(run(changed, T, words) - run(clip, T, words))[:, 2].max(axis=(1, 2, 3))
    assert float(moved[0]) > 1e-3 and float(moved[1]) < 1e-6, moved


def test_variants_sizes_and_the_closed_form_flops():
    from lavin_jax import summary
    from conftest import small_config

    for name, hidden, depth in (("XL/2", 1152, 28), ("G/2", 1664, 48)):
        assert gentron.variant(name) == {"hidden": hidden, "depth": depth, "num_heads": 16, "patch_size": 2}
    with pytest.raises(ValueError, match=r"GenTron variant 'H/2' is unknown"):
        gentron.variant("H/2")
    config = small_config(**{"data.image_size": 32})
    config.model = small(scan_layers=False)
    config.objective, config.conditioning = "flow", "text"
    shapes = {"target": (1, 32, 32, 3), "text": (LENGTH,), "text_length": ()}
    for temporal, frames in ((False, 1), (True, 3)):
        config.model.temporal = temporal
        inputs = (jnp.zeros((1, frames, 32, 32, 3)), jnp.zeros((1,)), context(["a small red circle"]))
        assert summary.forward_flops(config, inputs) == flops.forward(config.model, {**shapes, "target": (frames, 32, 32, 3)})
    # A frozen encoder's output is read, not computed: the model's FLOPs leave it out.
    config.model.update(temporal=False, text_encoder="t5", text_encoder_path="t5-release")
    frozen = {"text_hidden": jnp.zeros((1, LENGTH, 16)), "text_pooled": jnp.zeros((1, 16)), "text_length": jnp.array([5])}
    inputs = (jnp.zeros((1, 1, 32, 32, 3)), jnp.zeros((1,)), frozen)
    assert summary.forward_flops(config, inputs) == flops.forward(config.model, {"target": (1, 32, 32, 3), "text_hidden": (LENGTH, 16)})


def test_bad_text_fields_are_named():
    with pytest.raises(ValueError, match=r"config.model.text_encoder='bert' must be one of"):
        models.check(small(text_encoder="bert"))
    with pytest.raises(ValueError, match=r"config.model.text_encoder='clip' needs config.model.text_encoder_path"):
        models.check(small(text_encoder="clip"))
    with pytest.raises(ValueError, match=r"config.model.text_width=30 is not divisible by config.model.text_heads=4"):
        models.check(small(text_width=30, text_heads=4))
    with pytest.raises(ValueError, match=r"GenTron takes images"):
        compiled(models.build(small(), nnx.Rngs(0)))(noise(2), T, context(["a", "b"]))
