"""The interface every conditioning implements (`lavin_jax.conditioning` has the registry)."""

from __future__ import annotations

from typing import Any

import jax

from lavin_jax.config import require


class Conditioning:
    """The interface; `incontext.InContext` and `labels.ClassLabels` implement it."""

    pixel_fields: tuple[str, ...] = ()
    # In latent space, each frame of an item is encoded alone (VDT's per-frame latents) rather
    # than the item as one clip (J-DiT's).
    frames_alone = False

    def __init__(self, config):
        self.config = config

    @staticmethod
    def check(config) -> None:
        """Raises ValueError, one sentence naming the field, for data settings it cannot use."""

    @staticmethod
    def check_source(config) -> None:
        """`data.source`: examples made live ('synthetic': rendered, read, or encoded in the step)
        or read from a latent cache ('latents', written by --mode=latent_cache)."""
        d = config.data
        require(d.source in ("synthetic", "latents"), f"config.data.source={d.source!r} is unknown; known sources: 'synthetic', 'latents'.")
        if d.source == "latents":
            require(config.vae.name != "none", "config.data.source='latents' needs an autoencoder: config.vae.name and its config.vae.checkpoint.")
            require(bool(d.latent_dir), "config.data.source='latents' needs config.data.latent_dir, a cache written by --mode=latent_cache.")

    def check_files(self) -> None:
        """Raises, naming the field, where a file or dataset the run reads is missing (before any
        compilation)."""

    def check_model_files(self) -> None:
        """Like `check_files`, for what using the trained model reads besides its weights (a
        frozen text encoder's release): checked wherever the model is loaded."""

    def check_eval_files(self, judge: bool = True) -> None:
        """Like `check_files`, for what only evaluation reads; with `judge` False, for what drawing
        the sample grids alone reads (`evaluator(judge=False)`)."""

    def constants(self) -> dict:
        """Frozen arrays of the conditioning's own encoder (GenTron's text encoder), passed to the
        step and the sampler beside the autoencoder's."""
        return {}

    def abstract_constants(self) -> dict:
        """`constants()` as ShapeDtypeStructs, its weights unread (`--mode=compile`)."""
        return {}

    def encoded(self, context: dict, constants: dict) -> dict:
        """A batch or context (traced) with what a frozen encoder of this conditioning makes
        from it (a caption's embeddings from its tokens) in place of its input; `constants` are
        `constants()`'s. As it is, where there is nothing to encode (a latent cache holds it)."""
        return context

    def source(self, seed: int):
        """A random-access source (`__len__`, `__getitem__` -> dict of numpy arrays) for grain."""
        raise NotImplementedError

    def largest_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """The shapes of the largest pixel batch `source` makes."""
        raise NotImplementedError

    def prompt_context(self, batch: dict) -> dict:
        """What a prompt gives the sampler for the examples of a training batch (arrays or
        shapes): the batch without its target."""
        return {name: value for name, value in batch.items() if name not in ("target", "skipped")}

    def example_context(self, frame: tuple[int, int, int]) -> tuple[int, dict[str, jax.ShapeDtypeStruct]]:
        """(target frames, context of one example) of the largest example, for FLOPs; `frame` is
        (side, side, channels) as the model sees it."""
        raise NotImplementedError

    def null(self, context: dict, frames: int) -> dict:
        """The context classifier-free guidance samples against (jit-traced)."""
        raise NotImplementedError

    def nulls(self, context: dict, frames: int) -> list[dict]:
        """The contexts guidance samples against, each telling the model less than the one
        before (`guidance.chain`): the null alone, unless a conditioning has more."""
        return [self.null(context, frames)]

    def check_context(self, context: dict, frames: int) -> None:
        """Raises ValueError, one sentence, where prompts in model inputs (`Predictor.sample`'s
        `context`) do not have the form this conditioning's batches have."""

    def answer(self, predictor, prompts: list, **options) -> list:
        """Answers to prompts (their form is the conditioning's), by `predictor.sample`."""
        raise NotImplementedError

    def evaluator(self, *, count: int | None = None, distances: bool = True, prefix: str = "samples", judge: bool = True) -> Any:
        """An object whose `run(predictor, **options)` returns a report with "grids" (name -> uint8
        image) and whose `scalars(report)` / `table(report)` flatten and print it. `judge` False
        asks only for the grids (`--mode=sample`): a conditioning whose samples need no data to
        draw then reads none (classes: no real images, no classifier)."""
        raise NotImplementedError
