"""Classifier-free guidance against a chain of weaker conditions, the one formula both objectives
use.

With conditions c_0 (the prompt), c_1, ..., c_k, each telling the model less than the one before,
and scales s_1..s_k, the guided output is

    f(c_k) + s_1 (f(c_0) - f(c_1)) + ... + s_k (f(c_{k-1}) - f(c_k)).

One null (k = 1) is the usual f(null) + s (f(c) - f(null)). GenTron's motion-free guidance is
k = 2: c_1 drops the text, c_2 also the motion (every frame attends to itself alone), s_1 the text
scale and s_2 the motion scale, eps(x, 0, 0) + lT (eps(x, cT, cM) - eps(x, 0, cM)) + lM (eps(x,
0, cM) - eps(x, 0, 0)) as the paper writes it; s_2 = 1 gives back ordinary text guidance.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax


def chain(outputs: Sequence[jax.Array], scales: Sequence) -> jax.Array:
    """The guided output of `outputs` [f(c_0), ..., f(c_k)] with `scales` [s_1, ..., s_k] (each a
    number or a traced scalar)."""
    if len(outputs) != len(scales) + 1:
        raise ValueError(f"Guidance of {len(outputs)} outputs needs {len(outputs) - 1} scales, not {len(scales)}.")
    guided = outputs[-1]
    for stronger, weaker, scale in zip(outputs[:-1], outputs[1:], scales):
        guided = guided + scale * (stronger - weaker)
    return guided
