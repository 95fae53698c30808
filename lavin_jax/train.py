"""The model-agnostic trainer: sharded train state, optimizers and EMA, one jitted step, the loop.

What is trained, on what, with which loss is the objective's (`lavin_jax.objectives`, picked by
`config.objective`), and the examples are its source's. The train state (`lavin_jax.state`) is a
plain pytree of global jax.Arrays placed by the config's logical-axis rules: {step, params:
{name: ...}, ema: the EMA of params["model"], opt: {name: optimizer state}}. A generative model is
judged by its samples: the trainer builds a `Predictor` around its EMA weights and the
conditioning's evaluator.
"""

from __future__ import annotations

import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lavin_jax import checkpoint, inference, metrics, models, parallel, runs, summary, validation
from lavin_jax import state as state_lib
from lavin_jax.data import pipeline


def check_init_from(config) -> tuple[int | None, list[str]]:
    """(the step of `config.init_from`'s newest checkpoint (None when unset), the model fields the
    config switches on that grow the run's model (the family's `grows`)); a directory without a
    checkpoint, or of another model, is named before anything is compiled."""
    if not config.init_from:
        return None, []
    directory = os.path.join(config.init_from, "checkpoints")
    step = checkpoint.latest_step(directory) if os.path.isdir(directory) else None
    if step is None:
        raise FileNotFoundError(
            f"config.init_from={config.init_from!r} holds no checkpoint in {directory!r}: name a run, or a release "
            "converted by python -m lavin_jax.convert."
        )
    grown = checkpoint.check_same_model(directory, step, config, may_grow=getattr(models.FAMILIES[config.model.name], "grows", ()))
    return step, grown


def make_train_step(config, s: state_lib.Setup):
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

    state_sharding = state_lib.shardings(s.abstract_state)
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
    s = state_lib.setup(config, mesh)
    place = lambda tree, sharding: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
    # Constants first: a latent objective learns its ST-VAE's geometry from them.
    constants = place(s.objective.abstract_constants(mesh), NamedSharding(mesh, PartitionSpec()))
    batch = place(s.objective.largest_batch(config.global_batch_size), parallel.batch_sharding(mesh, config.mesh.rules))
    step_fn = make_train_step(config, s)
    return step_fn.lower(s.abstract_state, constants, batch, s.objective.phase(config.total_steps)).compile()


def evaluator(s: state_lib.Setup, constants: dict):
    """EMA parameters -> (PNG grids by name, GIFs by name, scalars, the printed table): a generative model's
    samples judged by its conditioning's evaluator (built once: held-out data, the compiled
    sampler), or the objective's own evaluation, its scalars listed by name."""
    if not s.objective.samples:

        def evaluate_objective(params):
            grids, scalars = s.objective.evaluate(s.graphdefs, params, constants, s.mesh)
            return grids, {}, scalars, "\n".join(f"{name:<42} {value:.4g}" for name, value in scalars.items())

        return evaluate_objective
    judged = predictor = None

    def evaluate(params):
        nonlocal judged, predictor
        if predictor is None:  # at the first evaluation: a run stopped before it pays nothing.
            judged = s.objective.conditioning.evaluator()
            predictor = inference.Predictor(s.objective, s.graphdefs["model"], params, constants, s.mesh)
        predictor.params = params
        report = judged.run(predictor)
        return report["grids"], report.get("animations", {}), judged.scalars(report), judged.table(report)

    return evaluate


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
    shape = validation.validate(config, jax.device_count(), jax.process_count())
    mesh = parallel.make_mesh(config)
    s = state_lib.setup(config, mesh)
    objective = s.objective
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
    init_step, grown = check_init_from(config) if latest is None else (None, [])
    init_step = _agreed(init_step)
    # The data position is the step (data/pipeline.py): a resumed run, in any number of
    # processes, reads on from its checkpoint's step. Made here, so bad data is named before the
    # workdir is touched.
    examples = objective.source(config.seed)
    reader = lambda step: pipeline.make_iterator(config, examples, jax.process_index(), jax.process_count(), step)
    data = reader(latest or 0)
    primary = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    logging.info("Mesh %s over %d devices in %d processes.", shape, jax.device_count(), jax.process_count())
    constants = state_lib.place_constants(s)
    checkpointer = checkpoint.Checkpointer(checkpoint_dir, keep=config.keep_checkpoints, save_every=config.checkpoint_every)
    if init_step is not None:
        logging.info("Starting from the EMA weights of %s, step %d.", config.init_from, init_step)
        if grown:  # a model grown from the run's: its parameters, and the new ones as initialised.
            saved_model = runs.trained_config(config.init_from, step=init_step)[0].model
            restored, new = runs.restore_shared(config.init_from, init_step, s.abstract_state["ema"], saved_model)
            if primary:
                print(f"Started from {config.init_from} (step {init_step}) grown by {', '.join(grown)}; new parameters: {', '.join(new)}.")
            state = state_lib.init_state(config, s, restored)
        else:
            state = state_lib.init_state(config, s, runs.restore_ema(config.init_from, init_step, s.abstract_state["ema"]))
    elif latest is None:
        state = state_lib.init_state(config, s)
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

    judge = evaluator(s, constants) if config.eval_every else None

    def evaluate(step: int):
        images, animations, scalars, table = judge(state["ema"])
        writer.write_images(step, images)
        for name, frames in animations.items():
            writer.write_animation(step, name, frames)
        if scalars:
            writer.write_scalars(step, scalars)
            evaluated.update(step=step, table=table)

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
        lines += [f"Evaluation at step {evaluated['step']}:", evaluated["table"]]
    lines.append(f"{'checkpoints':<12} {os.path.abspath(checkpoint_dir)} (steps {', '.join(map(str, saved))})")
    lines += [f"{name:<12} {os.path.abspath(path)}" for name, path in outputs.items()]
    return "\n".join(lines)
