"""Asynchronous checkpoints of the train state and the config.

Each step directory holds two orbax items: `state` (the array pytree, written by every host for
its own shards, readable onto any mesh) and `config` (the run's config as JSON). The data
position is the step itself (`data/pipeline.py`), so a checkpoint does not depend on how many
processes wrote it. Restoring reads `config` first, so a checkpoint of another model, seed, batch
size or data is refused with a sentence naming the fields before any array is read; one that
cannot be read raises `Unreadable`, which the trainer answers by resuming from an older one and
moving the damaged one aside (`set_aside`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from lavin_jax import config as config_lib
from lavin_jax import models

# The fields that make a checkpoint this run's: the model's shapes, and what decides which examples
# come in which order (the step means another data position under other values).
# Everything else (precision, remat, attention kernel, optimizer, logging, mesh) may change on
# resume.
_RUN_FIELDS = ("model", "seed", "global_batch_size", "data")
_FREE_FIELDS = frozenset({
    "model.dtype", "model.attention", "model.remat", "model.scan_layers", "data.num_threads", "data.num_workers",
    "data.ingest",  # how real data was stored; the records it wrote are named by data.records.
    # Where a frozen text encoder is and how its weights are held: checked against the model's
    # fields (width, length) wherever it is read.
    "model.text_encoder_path", "model.text_encoder_dtype",
})


# The file that marks a run directory as a conversion (EMA weights only, `lavin_jax.convert`).
CONVERTED = "CONVERTED"


class Unreadable(ValueError):
    """A checkpoint item that is missing or cannot be read: damage (a save cut short, a bad disk),
    unlike a checkpoint of another run, which reads fine and is refused."""


def _path(directory: str) -> epath.Path:
    # epath, so gs:// directories work too; orbax needs local paths absolute.
    return epath.Path(directory if "://" in directory else os.path.abspath(directory))


def latest_step(directory: str) -> int | None:
    """The step of the newest finished checkpoint in `directory`, or None; creates nothing."""
    return max(ocp.path.step.checkpoint_steps(_path(directory)), default=None)


def _state_handler(host_copy: bool) -> ocp.PyTreeCheckpointHandler:
    """The `state` item's handler. Device arrays skip orbax's replica-parallel writing when one
    process holds every replica: it only shares the writing out among hosts, and in one process
    costs a slice program compiled for each array shape (3 of a small run's 21 s on CPU).
    `host_copy=False` writes numpy leaves without the deep copy orbax makes of every one before
    writing any, two gigabytes at a time (the largest leaf must fit)."""
    registry = ocp.type_handlers.create_type_handler_registry(
        (jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=jax.process_count() > 1)),
        (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=host_copy)),
    )
    return ocp.PyTreeCheckpointHandler(save_concurrent_gb=None if host_copy else 2, type_handler_registry=registry)


def _restore_args(abstract_state, partial: bool = False) -> ocp.args.PyTreeRestore:
    """Reads the arrays `abstract_state` names onto its shardings."""
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
    return ocp.args.PyTreeRestore(item=abstract_state, restore_args=restore_args, partial_restore=partial)


def tuples(value):
    """A config read back from JSON with its lists as the tuples the config schema holds."""
    if isinstance(value, dict):
        return {k: tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(tuples(v) for v in value)
    return value


class Checkpointer:
    def __init__(self, directory: str, *, keep: int, save_every: int, host_copy: bool = True):
        """`host_copy=False` saves host (numpy) arrays synchronously, straight from their memory,
        two gigabytes at a time: for a state as large as the memory (a converted 3.4B model),
        which orbax's default would first copy whole."""
        self.directory = _path(directory)
        policies = ocp.checkpoint_managers
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                # Orbax's default policy would also save the first step of a fresh run; only
                # multiples of `save_every` are wanted, plus a last save when JAX announces a
                # preemption.
                save_decision_policy=policies.AnySavePolicy(
                    [
                        policies.FixedIntervalPolicy(save_every),
                        policies.PreemptionCheckpointingPolicy(),
                    ]
                ),
                preservation_policy=policies.LatestN(keep),
                enable_async_checkpointing=host_copy,
            ),
            item_handlers={
                "state": _state_handler(host_copy),
                "config": ocp.JsonCheckpointHandler(),
            },
        )

    def save(self, step: int, state, config, *, force: bool = False) -> bool:
        """Starts writing `step` unless the save interval skips it; returns whether it started.

        The arrays are copied off the devices before this returns, so training may go on (and
        donate `state`) while the files are written.
        A step that is already saved is not saved again, forced or not.
        """
        if step in self._manager.all_steps():
            return False  # orbax raises for a forced save of an existing step.
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeSave(state),
                config=ocp.args.JsonSave(_config_as_json(config)),
            ),
            force=force,
        )

    def restore(self, step: int, abstract_state, config):
        """Returns the state of `step` placed like `abstract_state`.

        `abstract_state` is a pytree of `jax.ShapeDtypeStruct`s with shardings, so a checkpoint
        written on one mesh is read straight onto the current run's mesh.
        """
        # A save of `step` still in flight has no step directory yet; let it land first.
        self.wait()
        _check_run_matches(self.directory / str(step), self.read_config(step), config)
        return self._restore_item(step, "state", _restore_args(abstract_state))

    def read_config(self, step: int) -> dict:
        """The config `step` was written with, as JSON (lists where the config had tuples)."""
        return self._restore_item(step, "config", ocp.args.JsonRestore())

    def restore_state(self, step: int, abstract_state):
        """The arrays of `step` that `abstract_state` names, placed like it. It may name any part
        of the saved state, e.g. only {"ema": ...} to use a trained model elsewhere (a frozen
        ST-VAE): the rest is never read."""
        args = _restore_args(abstract_state, partial=True)
        with ocp.PyTreeCheckpointer() as reader:
            return self._guarded(step, "state", lambda item_dir: reader.restore(item_dir, args=args))

    def _restore_item(self, step: int, name: str, args):
        restore = lambda _: self._manager.restore(step, args=ocp.args.Composite(**{name: args}))[name]
        return self._guarded(step, name, restore)

    def _guarded(self, step: int, name: str, restore):
        """`restore(item_dir)`, with a missing or unreadable item named in one sentence."""
        step_dir = self.directory / str(step)
        if not step_dir.is_dir():
            raise FileNotFoundError(f"Checkpoint {step_dir} does not exist.")
        item_dir = step_dir / name
        if not item_dir.is_dir():
            raise Unreadable(f"Checkpoint item {item_dir} is missing.")
        try:
            return restore(item_dir)
        except Exception as error:  # orbax, tensorstore and json each fail their own way.
            raise Unreadable(f"Checkpoint item {item_dir} cannot be read: {_first_cause(error)}") from error

    def steps(self) -> list[int]:
        """The finished checkpoints' steps, oldest first."""
        return sorted(self._manager.all_steps())

    def set_aside(self, step: int) -> epath.Path:
        """Renames the checkpoint `step` to `<step>.corrupt` (`<step>.corrupt.N` when taken) and
        returns its new path: a damaged checkpoint is kept for a person to inspect, under a name
        orbax neither lists, resumes from nor deletes. Every process calls `reload` afterwards."""
        target = self.directory / f"{step}.corrupt"
        for n in itertools.count(1):  # a copy of this step set aside before keeps its name.
            if not target.exists():
                break
            target = self.directory / f"{step}.corrupt.{n}"
        (self.directory / str(step)).rename(target)
        return target

    def reload(self):
        """Lists the steps on disk again, after `set_aside` moved some."""
        self._manager.reload()

    def wait(self):
        """Blocks until every started save is on disk, surfacing any error it hit."""
        self._manager.wait_until_finished()

    def close(self):
        """Waits for started saves, then releases orbax's threads."""
        self._manager.close()


@contextlib.contextmanager
def reading(directory: str):
    """A Checkpointer that only reads `directory`'s checkpoints, closed when the block ends."""
    checkpointer = Checkpointer(directory, keep=1, save_every=1)
    try:
        yield checkpointer
    finally:
        checkpointer.close()


def _config_as_json(config: ml_collections.ConfigDict) -> dict:
    # A round trip through JSON text, so the current config compares like the saved one
    # (tuples become lists, non-JSON values become their best-effort form).
    return json.loads(config.to_json_best_effort())


def _run_fields(config_json: dict) -> dict:
    """The `_RUN_FIELDS` of a config as {dotted name: value}."""
    flat = {}
    for name in _RUN_FIELDS:
        value = config_json.get(name)
        if isinstance(value, dict):
            flat.update({f"{name}.{field}": v for field, v in value.items()})
        else:
            flat[name] = value
    return {name: value for name, value in flat.items() if name not in _FREE_FIELDS}


def _saved_fields(saved_config: dict) -> dict:
    """The `_run_fields` of a checkpoint's config, a field it lacks at its default: a run saved
    before the field existed ran as the default does (a new field's default keeps the old way)."""
    family = saved_config.get("model", {}).get("name")
    defaults = _run_fields(_config_as_json(config_lib.base(family))) if family in models.FAMILIES else {}
    return {**defaults, **_run_fields(saved_config)}


def _check_run_matches(step_dir: epath.Path, saved_config: dict, config) -> None:
    saved = _saved_fields(saved_config)
    current = _run_fields(_config_as_json(config))
    fields = list(current) + [field for field in saved if field not in current]
    differing = [field for field in fields if saved.get(field) != current.get(field)]
    if differing:
        raise ValueError(
            f"Checkpoint {step_dir} was written for {_describe(saved, differing)} "
            f"but the config has {_describe(current, differing)}; use a new workdir for a new run."
        )


def check_same_model(directory: str, step: int, config, may_grow: tuple[str, ...] = ()) -> list[str]:
    """Raises ValueError naming the model fields in which the checkpoint `step` of `directory`
    differs from `config` (precision, attention kernel and remat may differ), but for the
    `may_grow` fields (`model.<field>`) off in the checkpoint and on in the config: the ones
    returned, whose new parameters a fine-tune adds to the checkpoint's."""
    with reading(directory) as checkpointer:
        saved = _saved_fields(checkpointer.read_config(step))
    current = _run_fields(_config_as_json(config))
    names = list(current) + [name for name in saved if name not in current]
    differing = [name for name in names if name.startswith("model.") and saved.get(name) != current.get(name)]
    grown = [name for name in differing if name[len("model."):] in may_grow and not saved.get(name) and current.get(name)]
    differing = [name for name in differing if name not in grown]
    if differing:
        raise ValueError(
            f"Checkpoint {directory}/{step} holds a model with {_describe(saved, differing)} "
            f"but the config has {_describe(current, differing)}."
        )
    return grown


def _first_cause(error: BaseException) -> str:
    """The first line of the innermost error `error` was raised from: orbax wraps the error that
    says what is wrong (tensorstore's byte range, json's position) in generic ones."""
    while error.__cause__ or error.__context__:
        error = error.__cause__ or error.__context__
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _describe(fields: dict, names: list[str]) -> str:
    return ", ".join(f"{name}={fields[name]!r}" if name in fields else f"{name} unset" for name in names)
