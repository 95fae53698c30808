"""The interface every objective implements (`lavin_jax.objectives` has the registry)."""

from __future__ import annotations

from typing import Any, Hashable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh


class Objective:
    """The interface; subclasses override what they need."""

    def __init__(self, config):
        self.config = config

    @staticmethod
    def check(config) -> None:
        """Raises ValueError, one sentence naming the field, for settings this objective cannot use."""

    def check_files(self, data: bool = True) -> None:
        """Raises, naming the field, when a file the run reads (weights, another run) is missing.
        Separate from `check` so that `--mode=summary` needs none of them. `data` False: only what
        using the trained model reads (its autoencoder), not its training data (a `Predictor`)."""

    def check_eval_files(self, judge: bool = True) -> None:
        """Like `check_files`, for what only evaluation reads (held-out data, metric networks):
        checked where a run evaluates, not where its model is only loaded."""

    def build(self, rngs: nnx.Rngs) -> dict[str, nnx.Module]:
        raise NotImplementedError

    def source(self, seed: int):
        """A random-access source (`__len__`, `__getitem__` -> dict of numpy arrays) for grain."""
        raise NotImplementedError

    def constants(self) -> dict[str, Any]:
        """Host arrays the step reads but never trains (e.g. a frozen perceptual network); they are
        passed to the jitted step replicated, not baked into it as constants."""
        return {}

    def phase(self, step: int) -> Hashable:
        return None

    def grads(self, graphdefs: dict, params: dict, constants: dict, batch: dict, key: jax.Array, phase):
        """({name: gradient of params[name]}, {stat name: scalar}) for one global batch; the
        stats include `loss`. A module left out of the gradients is not updated this step."""
        raise NotImplementedError

    def example_inputs(self) -> tuple:
        """`ShapeDtypeStruct` arguments of one forward call of `build()["model"]` (for FLOPs)."""
        raise NotImplementedError

    def largest_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """The shapes of the largest global batch the step trains on (`--mode=compile`)."""
        raise NotImplementedError

    def abstract_constants(self, mesh: Mesh) -> dict:
        """`constants()` as ShapeDtypeStructs, from no file where the shapes are known without
        one (`--mode=compile` on a machine that lacks the run's files)."""
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), self.constants())

    # Whether the model is judged by its samples (the conditioning's evaluator, with a predictor
    # around `sampler`) rather than by `evaluate`.
    samples = False

    def evaluate(self, graphdefs: dict, params: dict, constants: dict, mesh: Mesh) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """(PNG grids by name, scalars) from the EMA parameters of `"model"` on held-out data."""
        return {}, {}
