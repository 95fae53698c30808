"""How a model is told what to make, apart from how it learns to make it.

A run names its conditioning (`config.conditioning`, the model family's own) beside its objective
(`config.objective`). The conditioning owns what is particular to it: where examples come from
(`source`), the example batch (`largest_batch`, `example_context`), the null condition that
classifier-free guidance samples against (`null`), how a person's prompt becomes model inputs and
an answer comes back (`answer`), and how samples are judged (`evaluator`). The objectives
(`lavin_jax.objectives`) own noise, loss and samplers, for any conditioning.

A batch is {"target": pixel frames (B, T, H, W, 3) in [-1, 1], context fields..., "skipped"}; the
context fields go to the model as its `context` dict; those named in `pixel_fields` are pixel
frames too, which latent space encodes like the target.
"""

from __future__ import annotations

from lavin_jax.conditioning.base import Conditioning


def _conditionings() -> dict[str, type[Conditioning]]:
    from lavin_jax.conditioning import incontext, labels, masks, text

    return {"incontext": incontext.InContext, "class": labels.ClassLabels, "mask": masks.FrameMasks, "text": text.Captions}


def get(config) -> Conditioning:
    return _conditionings()[config.conditioning](config)


def check(config) -> None:
    """Checks `config.conditioning` and its data fields; `none` (an autoencoder) has none."""
    known = _conditionings()
    if config.conditioning == "none":
        return
    if config.conditioning not in known:
        raise ValueError(f"config.conditioning={config.conditioning!r} is unknown; known: {', '.join(known)}, none.")
    known[config.conditioning].check(config)
