"""The model-agnostic trainer: sharded train state, optimizers and EMA, one jitted step, the loop.

What is trained, on what, with which loss is the objective's (`lavin_jax.objectives`, picked by
`config.model.name`). The train state is a plain pytree of global jax.Arrays placed by the config's
logical-axis rules: {step, params: {name: ...}, ema: the EMA of params["model"],
opt: {name: optimizer state}}, one entry per module the objective trains.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lavin_jax import checkpoint, evaluation, metrics, objectives, parallel, summary
from lavin_jax import config as config_lib
from lavin_jax.data import pipeline


def make_optimizer(optim_cfg, total_steps: int):
    """AdamW after global-norm clipping, with linear warmup then a constant or cosine rate."""
    warmup = min(optim_cfg.warmup_steps, total_steps)
    if optim_cfg.schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(0.0, optim_cfg.lr, warmup, max(total_steps, warmup + 1))
    else:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, optim_cfg.lr, warmup), optax.constant_schedule(optim_cfg.lr)],
            [warmup],
        )
    tx = optax.chain(
        optax.clip_by_global_norm(optim_cfg.grad_clip),
        optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, weight_decay=optim_cfg.weight_decay),
    )
    return tx, schedule


@dataclasses.dataclass(frozen=True)
class Setup:
    """What the step and the loop need besides the state itself."""

    objective: objectives.Objective
    graphdefs: dict[str, Any]
    tx: optax.GradientTransformation  # one per trained module, each with its own state.
    schedule: Callable
    mesh: Mesh
    abstract_state: dict  # ShapeDtypeStructs carrying each leaf's NamedSharding.


def _split(modules: dict[str, nnx.Module]) -> tuple[dict, dict[str, nnx.State]]:
    split = {name: nnx.split(module, nnx.Param) for name, module in modules.items()}
    return {name: g for name, (g, _) in split.items()}, {name: p for name, (_, p) in split.items()}


def setup(config, mesh: Mesh, objective: objectives.Objective | None = None) -> Setup:
    """Shapes and shardings of the train state, by abstract evaluation: nothing is allocated."""
    objective = objective or objectives.get(config)
    graphdefs, states = _split(nnx.eval_shape(lambda: objective.build(nnx.Rngs(config.seed))))
    param_sharding = {name: parallel.param_shardings(state, mesh, config.mesh.rules) for name, state in states.items()}
    params = {name: state.to_pure_dict() for name, state in states.items()}
    tx, schedule = make_optimizer(config.optim, config.total_steps)
    opt = {name: jax.eval_shape(tx.init, tree) for name, tree in params.items()}
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_sharding = {
        name: optax.tree_map_params(
            tx, lambda _, sharding: sharding, opt[name], param_sharding[name],
            transform_non_params=lambda _: replicated,
        )
        for name in params
    }
    with_sharding = lambda tree, shardings: jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
    abstract_state = {
        "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
        "params": with_sharding(params, param_sharding),
        "ema": with_sharding(params["model"], param_sharding["model"]),
        "opt": with_sharding(opt, opt_sharding),
    }
    return Setup(objective, graphdefs, tx, schedule, mesh, abstract_state)


def shardings(abstract) -> Any:
    return jax.tree.map(lambda x: x.sharding, abstract)


def init_state(config, s: Setup, model_params=None) -> dict:
    """Initialises parameters directly into their shards; `model_params` (placed like the state's
    EMA), when given, are the "model" module's and its EMA's starting point instead (fine-tuning:
    the random ones are then never computed)."""

    def init(model_params):
        states = _split(s.objective.build(nnx.Rngs(config.seed)))[1]
        params = {name: state.to_pure_dict() for name, state in states.items()}
        if model_params is not None:
            params["model"] = model_params
        opt = {name: s.tx.init(tree) for name, tree in params.items()}
        return {"step": jnp.zeros((), jnp.int32), "params": params, "ema": params["model"], "opt": opt}

    return jax.jit(init, out_shardings=shardings(s.abstract_state))(model_params)


def check_init_from(config) -> int | None:
    """The step of `config.init_from`'s newest checkpoint (None when unset); a directory without
    one is named before anything is compiled."""
    if not config.init_from:
        return None
    directory = os.path.join(config.init_from, "checkpoints")
    step = checkpoint.latest_step(directory) if os.path.isdir(directory) else None
    if step is None:
        raise FileNotFoundError(
            f"config.init_from={config.init_from!r} holds no checkpoint in {directory!r}: name a run, or a release "
            "converted by python -m lavin_jax.convert."
        )
    checkpoint.check_same_model(directory, step, config)
    return step


def data_parallel(config):
    """`config` with a mesh of data parallelism alone, parameters replicated: how a trained model
    is used elsewhere (a frozen ST-VAE, the predictor). Returns it."""
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    return config


def trained_config(workdir: str, family: str | None = None, *, step: int | None = None, overrides: dict | None = None):
    """(config, step) of a run's checkpoint (default: the newest): the run's own config with
    `overrides` (dotted names) applied, made `data_parallel` and validated, so a bad override is
    named before any array is read. `family`: the model the run must have trained (None: any)."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Run {workdir!r} has no checkpoints directory {directory!r}.")
    step = checkpoint.latest_step(directory) if step is None else step
    if step is None:
        raise FileNotFoundError(f"Run {workdir!r} has no checkpoint in {directory!r}.")
    with checkpoint.reading(directory) as checkpointer:
        saved = checkpoint.tuples(checkpointer.read_config(step))
    trained = saved.get("model", {}).get("name")
    family = family or trained
    if trained != family:
        raise ValueError(f"Run {workdir!r} trained model {trained!r}, not {family!r}.")
    config = config_lib.base(family)
    try:
        for field, value in saved.items():
            if isinstance(value, dict):
                config[field].update(value)
            else:
                config[field] = value
    except (AttributeError, KeyError, TypeError) as error:
        raise ValueError(f"Run {workdir!r} was written with a config this version cannot read: {error}") from None
    config_lib.override(data_parallel(config), overrides or {})
    config_lib.validate(config, num_devices=None)
    return config, step


def restore_ema(workdir: str, step: int, abstract_ema):
    """The EMA parameters of a run's checkpoint `step`, placed like `abstract_ema`."""
    with checkpoint.reading(os.path.join(workdir, "checkpoints")) as checkpointer:
        return checkpointer.restore_state(step, {"ema": abstract_ema})["ema"]


def place_constants(s: Setup) -> dict:
    """The objective's frozen arrays, replicated on every device (every host passes its copy)."""
    return jax.tree.map(lambda a: parallel.replicate(a, s.mesh), s.objective.constants())


def make_train_step(config, s: Setup):
    """The jitted step (state, constants, batch, phase) -> (state, metrics); the state is donated
    and `phase` (the objective's `phase(step)`) is static."""
    base_key = jax.random.key(config.seed)
    decay = config.optim.ema_decay

    def train_step(state, constants, batch, phase):
        key = jax.random.fold_in(base_key, state["step"])
        skipped = batch.pop("skipped", None)  # bad records the pipeline replaced: counted, not trained on.
        with parallel.activation_sharding(s.mesh, config.mesh.rules):
            grads, stats = s.objective.grads(s.graphdefs, state["params"], constants, batch, key, phase)
        if skipped is not None:
            stats["skipped_records"] = jnp.sum(skipped)
        # A module without a gradient in this phase (a GAN's discriminator before it starts)
        # keeps its parameters and optimizer state untouched: no update of zeros.
        params, opt = dict(state["params"]), dict(state["opt"])
        for name, module_grads in grads.items():
            module_params = state["params"][name]
            updates, opt[name] = s.tx.update(module_grads, state["opt"][name], module_params)
            params[name] = optax.apply_updates(module_params, updates)
            stats["grad_norm" if name == "model" else f"grad_norm_{name}"] = optax.tree.norm(module_grads)
        ema = jax.tree.map(lambda e, p: e + (1 - decay) * (p - e), state["ema"], params["model"])
        new_state = {"step": state["step"] + 1, "params": params, "ema": ema, "opt": opt}
        return new_state, {**stats, "lr": s.schedule(state["step"])}

    state_sharding = shardings(s.abstract_state)
    replicated = NamedSharding(s.mesh, PartitionSpec())
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, replicated, parallel.batch_sharding(s.mesh, config.mesh.rules)),
        out_shardings=(state_sharding, replicated),
        static_argnums=3,
        donate_argnums=0,
    )


def compile_step(config, mesh: Mesh) -> jax.stages.Compiled:
    """The train step lowered and compiled ahead of time on `mesh`, whose devices may be abstract
    (a TPU topology on a laptop), for the largest batch the pipeline makes at the last step's
    phase. Nothing is allocated and no file of the run is read."""
    s = setup(config, mesh)
    place = lambda tree, sharding: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
    # Constants first: a latent objective learns its ST-VAE's geometry from them.
    constants = place(s.objective.abstract_constants(mesh), NamedSharding(mesh, PartitionSpec()))
    batch = place(s.objective.largest_batch(config.global_batch_size), parallel.batch_sharding(mesh, config.mesh.rules))
    step_fn = make_train_step(config, s)
    return step_fn.lower(s.abstract_state, constants, batch, s.objective.phase(config.total_steps)).compile()


# Stats that count events (logged as totals over the log interval, not means).
_COUNTS = ("skipped_records",)


class _Preemption:
    """Tells the loop when to save and stop after SIGTERM.

    One process installs its own handler. On several hosts, `jax.distributed` already listens for
    the signal in every process, and `reached_preemption_sync_point` has every host agree on the
    same step to stop at, so no host leaves the loop while another is still inside a step's
    collectives, and all save that step.
    """

    def __init__(self):
        self._requested = False
        self._previous = None

    def __enter__(self):
        if jax.process_count() == 1:
            try:
                self._previous = signal.signal(signal.SIGTERM, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): nothing to install.
                pass
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint and stopping.")
        self._requested = True

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1 and multihost_utils.reached_preemption_sync_point(step):
            self._requested = True
        if self._requested:
            logging.warning("Process %d of %d stops at step %d after SIGTERM.", jax.process_index(), jax.process_count(), step)
        return self._requested


def _agreed(step: int | None) -> int | None:
    """Process 0's view of a checkpoint step, on every process (one may see a save land late)."""
    if jax.process_count() == 1:
        return step
    step = int(multihost_utils.broadcast_one_to_all(np.int32(-1 if step is None else step)))
    return None if step < 0 else step


def _everywhere(ok: bool) -> bool:
    """Whether `ok` holds in every process."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def restore_newest(checkpointer: checkpoint.Checkpointer, step: int, abstract_state, config) -> tuple[dict, int]:
    """(state, its step) of the newest checkpoint, from `step` down, that every process reads.

    One that cannot be read (a save cut short by a crash, a damaged disk) is passed over for the
    one before it; once one restores, process 0 moves those passed over aside, never deleting
    them, so that orbax neither lists nor overwrites them. When none restores, nothing is moved:
    the same failure everywhere may be this process's (memory, a library version), not the files'.
    A checkpoint of another run is refused (`Checkpointer.restore`): the config's mistake, not
    damage. Damage that only some processes read (a shard file only they need) is not recovered:
    orbax's restore ends at a barrier that a process which failed never reaches.
    """
    passed_over = []
    while True:
        try:
            state = checkpointer.restore(step, abstract_state, config)
        except checkpoint.Unreadable as error:
            logging.warning("Passing over the checkpoint of step %d: %s", step, error)
            state = None
        if _everywhere(state is not None):
            break
        passed_over.append(step)
        step = _agreed(max((s for s in checkpointer.steps() if s < step), default=None))
        if step is None:
            raise ValueError(
                f"No checkpoint in {checkpointer.directory} can be restored (steps {', '.join(map(str, passed_over))}; "
                "the warnings above say why): repair or move them, or use another --workdir."
            )
    if passed_over:
        if jax.process_index() == 0:
            for bad in passed_over:
                moved = checkpointer.set_aside(bad)
                logging.warning("Moved the unreadable checkpoint of step %d to %s; resuming from step %d.", bad, moved, step)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("unreadable checkpoints set aside")  # before anyone lists them.
        checkpointer.reload()
    return state, step


def train(config, workdir: str) -> dict:
    """Trains until config.total_steps, resuming from the newest checkpoint in workdir that
    reads (`restore_newest`); process 0 ends by printing a summary.

    Everything a person can get wrong (config, data, checkpoint) is checked before the first
    compilation. Returns the final state (global arrays)."""
    shape = config_lib.validate(config, jax.device_count(), jax.process_count())
    objective = objectives.get(config)
    objective.check_files()
    if config.eval_every:
        objective.check_eval_files()
    if os.path.exists(os.path.join(workdir, checkpoint.CONVERTED)):
        raise ValueError(
            f"--workdir={workdir!r} is a conversion, which holds EMA weights only: start a run from it "
            f"with --config.init_from={workdir} and a new --workdir."
        )
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    latest = _agreed(checkpoint.latest_step(checkpoint_dir))
    # A fresh run only: a resumed fine-tune has its own checkpoints and no longer needs init_from.
    init_step = _agreed(check_init_from(config)) if latest is None else None
    # The data position is the step (data/pipeline.py): a resumed run, in any number of
    # processes, reads on from its checkpoint's step. Made here, so bad data is named before the
    # workdir is touched.
    reader = lambda step: pipeline.make_iterator(config, jax.process_index(), jax.process_count(), step)
    data = reader(latest or 0)
    primary = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    mesh = parallel.make_mesh(config)
    logging.info("Mesh %s over %d devices in %d processes.", shape, jax.device_count(), jax.process_count())
    s = setup(config, mesh, objective)
    constants = place_constants(s)
    checkpointer = checkpoint.Checkpointer(checkpoint_dir, keep=config.keep_checkpoints, save_every=config.checkpoint_every)
    if init_step is not None:
        logging.info("Starting from the EMA weights of %s, step %d.", config.init_from, init_step)
        state = init_state(config, s, restore_ema(config.init_from, init_step, s.abstract_state["ema"]))
    elif latest is None:
        state = init_state(config, s)
    else:
        logging.info("Resuming from the checkpoint at step %d.", latest)
        state, restored = restore_newest(checkpointer, latest, s.abstract_state, config)
        if restored != latest:  # an older checkpoint: the data go back with it.
            data, latest = reader(restored), restored
    if primary:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary.summarize(config, s.abstract_state["params"]["model"])[0], f, indent=2)

    step_fn = make_train_step(config, s)
    writer = metrics.MetricWriter(workdir, enabled=primary, resume_step=latest or 0)
    logged, evaluated = {}, {}  # this run's last logged line and last evaluation, for the summary.

    def evaluate(step: int):
        images, scalars = s.objective.evaluate(s.graphdefs, state["ema"], constants, mesh)
        writer.write_images(step, images)
        if scalars:
            writer.write_scalars(step, scalars)
            evaluated.update(step=step, scalars=scalars)

    step = int(jax.device_get(state["step"]))
    compiled: set = set()
    pending: list[dict] = []
    # Throughput counts training only: compilations and evaluations move the clock forward.
    last_time, last_step = time.perf_counter(), step
    bar = tqdm.tqdm(total=config.total_steps, initial=step, disable=not primary, desc="train", dynamic_ncols=True)

    def log(step: int):
        """Logs the steps since the last log: their mean stats, and how many steps they are (a
        resumed or stopped run's interval is shorter than log_every)."""
        nonlocal pending, last_time, last_step
        host = jax.device_get(pending)
        now = time.perf_counter()
        # Phases may log different stats (a GAN's start): average each over the steps with it;
        # counts are summed over the interval.
        reduce = lambda name: np.sum if name in _COUNTS else np.mean
        scalars = {name: float(reduce(name)([p[name] for p in host if name in p])) for name in host[-1]}
        scalars["steps_in_mean"] = len(host)
        scalars["steps_per_sec"] = (step - last_step) / (now - last_time)
        scalars["examples_per_sec"] = scalars["steps_per_sec"] * config.global_batch_size
        writer.write_scalars(step, scalars)
        bar.set_postfix(loss=f"{scalars['loss']:.4f}")
        logged.update(step=step, scalars=scalars)
        pending, last_time, last_step = [], now, step

    with _Preemption() as preemption:
        while step < config.total_steps and not preemption.should_stop(step):
            local = next(data)
            phase = s.objective.phase(step)
            variant = (phase, tuple((name, value.shape[1:]) for name, value in sorted(local.items())))
            started = time.perf_counter()
            compiling = variant not in compiled
            if compiling:
                compiled.add(variant)
                logging.info("Compiling the train step for phase %s, batch shapes %s (variant %d).", *variant, len(compiled))
            batch = parallel.global_batch(local, mesh, config.mesh.rules)
            state, stats = step_fn(state, constants, batch, phase)
            if compiling:  # the call returns once compiled and dispatched; the step runs async.
                last_time += time.perf_counter() - started
            step += 1
            pending.append(stats)
            bar.update(1)

            if step % config.log_every == 0 or step == config.total_steps:
                log(step)
            checkpointer.save(step, state, config)
            if config.eval_every and (step % config.eval_every == 0 or step == config.total_steps):
                started = time.perf_counter()
                evaluate(step)
                last_time += time.perf_counter() - started
        if pending:  # stopped early: the steps since the last log are logged, not lost.
            log(step)
        checkpointer.save(step, state, config, force=True)
        checkpointer.wait()
    saved = checkpointer.steps()
    checkpointer.close()
    writer.close()
    bar.close()
    if primary:
        print(_summary(config, step, saved, checkpoint_dir, writer.paths, logged, evaluated))
    return state


def _summary(config, step: int, saved: list[int], checkpoint_dir: str, outputs: dict[str, str], logged: dict, evaluated: dict) -> str:
    """What a person reads when training ends: the step and loss it ended at, the last evaluation,
    and where the run's files are. `logged` and `evaluated`: this run's last {step, scalars}."""
    if step == config.total_steps:
        lines = [f"Trained to step {step} of {config.total_steps}."]
    else:
        lines = [f"Stopped at step {step} of {config.total_steps} by SIGTERM; the same command resumes."]
    if logged:
        first = logged["step"] - logged["scalars"]["steps_in_mean"] + 1
        span = f"step {first}" if first == logged["step"] else f"steps {first}-{logged['step']}"
        lines.append(f"Loss {logged['scalars']['loss']:.4f} (the mean over {span}).")
    if evaluated:
        lines += [f"Evaluation at step {evaluated['step']}:", _eval_table(evaluated["scalars"])]
    lines.append(f"{'checkpoints':<12} {os.path.abspath(checkpoint_dir)} (steps {', '.join(map(str, saved))})")
    lines += [f"{name:<12} {os.path.abspath(path)}" for name, path in outputs.items()]
    return "\n".join(lines)


def _eval_table(scalars: dict[str, float]) -> str:
    """Evaluation scalars as `evaluation.table` prints them, then any others (an objective without
    baselines) by name."""
    tasks, others = evaluation.from_scalars(scalars)
    lines = [evaluation.table({"tasks": tasks})] if tasks else []
    return "\n".join(lines + [f"{name:<42} {value:.4g}" for name, value in others.items()])
