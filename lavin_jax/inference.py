"""Prompting a trained model: a prompt in, the model's answer out, for any family and objective.

    from lavin_jax import inference

    predictor = inference.Predictor.from_workdir("runs/tiny")  # newest checkpoint, EMA weights
    # in-context (J-DiT): a few input/target pairs and a query -> the query's target
    answer = predictor.predict([("a.png", "a_edges.png"), ("b.png", "b_edges.png")], "c.png")
    # class-conditional (DiT): a class, by index or name -> an image
    digit = predictor.predict(7)

A prompt's form, how it becomes model inputs and how the answer comes back are the run's
conditioning's (`lavin_jax.conditioning`: `incontext` fits items of any size into the model's
frame and cuts the answer back to the query's size; `labels` takes classes); the sampler and its
options (steps, cfg_scale, sampler, and the objective's own: time_grid for flow, eta for ddpm)
are the objective's. Many prompts go through `predict_batch`, in batches of `batch_size` (padded
to it, so each kind of prompt compiles once); prompt i of a call draws its noise from (seed, i)
alone, so its answer depends neither on the batch size nor on the other prompts of the call.

The released LaVin-DiT inference script's recipe is a preset (`incontext.OFFICIAL`, with
`incontext.template_pairs`); it works at 512 px, so load the run with {"data.image_size": 512}:

    from lavin_jax.conditioning import incontext
    predictor = inference.Predictor.from_workdir(run, overrides={"data.image_size": 512})
    pairs = incontext.template_pairs("template/depth_estimation", seed=0)
    answer = predictor.predict(pairs, "query.png", **incontext.OFFICIAL)

Two differences remain: the script encodes the prompts with a sample of the ST-VAE's posterior
(ours: its mode) and returns the 512 px square (ours: the query's own size).
"""

from __future__ import annotations

import jax
import numpy as np

from lavin_jax import parallel, runs, validation
from lavin_jax import state as state_lib
from lavin_jax.data import scoring


class Predictor:
    """A generative model's parameters with its objective's jitted sampler, on `mesh`.

    `from_workdir` loads a run; the trainer's evaluation builds one around the EMA parameters it
    holds. Sampling defaults are the run's config; every call may override them. Each (prompt
    shape, static sampling options) compiles once; another guidance scale reuses the compiled
    sampler."""

    def __init__(self, objective, graphdef, params, constants: dict, mesh, *, batch_size: int | None = None):
        if not objective.samples:
            raise ValueError(f"config.objective={objective.config.objective!r} trains a model that draws no samples.")
        self.config = objective.config
        self.objective = objective
        self.conditioning = objective.conditioning
        self.params = params  # the trainer swaps in newer EMA parameters before each evaluation.
        self._constants = constants
        shards = parallel.batch_shards(mesh, self.config.mesh.rules)
        # Default: at least 8 prompts a call, and a whole number of rows for every batch shard.
        self.batch_size = batch_size or shards * -(-8 // shards)
        if self.batch_size % shards:
            raise ValueError(f"batch_size={self.batch_size} is not a multiple of the {shards} batch shards of the mesh.")
        self._batch_sharding = parallel.batch_sharding(mesh, self.config.mesh.rules)
        self._sample = objective.sampler(graphdef, mesh)
        self.step = None  # the checkpoint's step, when loaded from a run.

    @classmethod
    def from_workdir(cls, workdir: str, *, step: int | None = None, overrides: dict | None = None,
                     batch_size: int | None = None) -> Predictor:
        """The EMA weights of the run in `workdir` (its newest checkpoint unless `step`), with the
        run's config plus `overrides` (dotted names, e.g. {"vae.checkpoint": "runs/stvae"} when
        the ST-VAE run has moved), data-parallel over all devices."""
        config, step = runs.trained_config(workdir, step=step, overrides=overrides)
        validation.validate(config, num_devices=None)  # a bad override is named before any array is read.
        s = state_lib.setup(config, parallel.make_mesh(config))
        s.objective.check_files(data=False)  # a moved autoencoder run is named before the model is read.
        params = runs.restore_ema(workdir, step, s.abstract_state["ema"])
        predictor = cls(s.objective, s.graphdefs["model"], params, state_lib.place_constants(s), s.mesh, batch_size=batch_size)
        predictor.step = step
        return predictor

    @property
    def image_size(self) -> int:
        return int(self.config.data.image_size)

    def sample(self, context: dict, frames: int, *, indices=None, seed: int = 0, **options) -> np.ndarray:
        """Answers for N prompts already in model inputs: `context` {field: [N, ...]} as the
        conditioning's batches hold them (pixel frames float32 in [-1, 1] or uint8) -> float32
        pixels [N, frames, S, S, 3]. Prompt n draws its noise from (seed, indices[n]), by default
        (seed, n). `options`: the objective's sampling options (steps, cfg_scale, sampler, ...)."""
        traced, static = self.objective.sample_options(**options)
        context = {name: np.asarray(value) for name, value in context.items()}
        n = len(next(iter(context.values()))) if context else 0
        indices = np.arange(n) if indices is None else np.asarray(indices)
        if n == 0 or len(indices) != n or any(len(value) != n for value in context.values()):
            raise ValueError(f"Prompts {({k: v.shape for k, v in context.items()})} with {len(indices)} noise indices: N >= 1 of each field and one index each are needed.")
        self.conditioning.check_context(context, frames)
        answers = []
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            # Padded to batch_size with repeats of the last prompt, whose answers are dropped.
            rows = np.minimum(np.arange(start, start + self.batch_size), stop - 1)
            batch = {name: self._place(value, rows) for name, value in context.items()}
            answer = self._sample(self.params, self._constants, batch, np.int32(seed),
                                  self._place(indices.astype(np.int32), rows), traced, int(frames), static)
            answers.append(answer[: stop - start])
        return np.concatenate(jax.device_get(answers))  # every batch dispatched before the first is awaited.

    def _place(self, array: np.ndarray, rows: np.ndarray) -> jax.Array:
        """`array[rows]` as one batch sharded by the batch rule; each device takes only its own
        rows (uint8 frames become float32 there), so no host builds a whole batch of frames."""

        def part(index):
            block = array[rows[index[0]]][(slice(None), *index[1:])]
            return scoring.from_uint8(block) if block.dtype == np.uint8 else block

        return jax.make_array_from_callback((len(rows), *array.shape[1:]), self._batch_sharding, part)

    def predict(self, *prompt, **options):
        """The answer to one prompt (in-context: `predict(pairs, query)`; class: `predict(label)`).
        Options as `predict_batch`'s."""
        return self.predict_batch([prompt[0] if len(prompt) == 1 else prompt], **options)[0]

    def predict_batch(self, prompts, **options) -> list[np.ndarray]:
        """Answers to many prompts, uint8; `options` are the conditioning's (in-context: fit,
        resample) and the sampler's (seed, steps, cfg_scale, ...)."""
        return self.conditioning.answer(self, list(prompts), **options)
