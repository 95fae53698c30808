"""The model-agnostic trainer: sharded train state, optimizer and EMA, one jitted step, the loop.

Any model family of `lavin_jax.models` trains here unchanged: the step only needs
`model(x_t, t, context) -> velocity`. The train state is a plain pytree
{step, params, ema, opt} of global jax.Arrays, placed by the config's logical-axis rules.
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

from lavin_jax import checkpoint, flow, metrics, parallel, summary
from lavin_jax import config as config_lib
from lavin_jax import models
from lavin_jax.data import pipeline, synthetic


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

    graphdef: Any
    tx: optax.GradientTransformation
    schedule: Callable
    mesh: Mesh
    abstract_state: dict  # ShapeDtypeStructs carrying each leaf's NamedSharding.


def setup(config, mesh: Mesh) -> Setup:
    """Shapes and shardings of the train state, by abstract evaluation: nothing is allocated."""
    abstract_model = nnx.eval_shape(lambda: models.build(config.model, nnx.Rngs(config.seed)))
    graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
    param_sharding = parallel.param_shardings(abstract_params, mesh, config.mesh.rules)
    params = abstract_params.to_pure_dict()
    tx, schedule = make_optimizer(config.optim, config.total_steps)
    opt = jax.eval_shape(tx.init, params)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_sharding = optax.tree_map_params(
        tx, lambda _, sharding: sharding, opt, param_sharding,
        transform_non_params=lambda _: replicated,
    )
    with_sharding = lambda tree, shardings: jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
    abstract_state = {
        "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
        "params": with_sharding(params, param_sharding),
        "ema": with_sharding(params, param_sharding),
        "opt": with_sharding(opt, opt_sharding),
    }
    return Setup(graphdef, tx, schedule, mesh, abstract_state)


def shardings(abstract) -> Any:
    return jax.tree.map(lambda x: x.sharding, abstract)


def init_state(config, s: Setup) -> dict:
    """Initialises parameters directly into their shards."""

    def init():
        params = nnx.split(models.build(config.model, nnx.Rngs(config.seed)), nnx.Param)[1].to_pure_dict()
        return {"step": jnp.zeros((), jnp.int32), "params": params, "ema": params, "opt": s.tx.init(params)}

    return jax.jit(init, out_shardings=shardings(s.abstract_state))()


def make_train_step(config, s: Setup):
    """The jitted step (state, batch) -> (state, metrics); the state is donated."""
    base_key = jax.random.key(config.seed)
    decay = config.optim.ema_decay

    def train_step(state, batch):
        key = jax.random.fold_in(base_key, state["step"])

        def loss_fn(params):
            with parallel.activation_sharding(s.mesh, config.mesh.rules):
                return flow.loss(nnx.merge(s.graphdef, params), batch, key, config.flow)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt = s.tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        ema = jax.tree.map(lambda e, p: e + (1 - decay) * (p - e), state["ema"], params)
        new_state = {"step": state["step"] + 1, "params": params, "ema": ema, "opt": opt}
        stats = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": s.schedule(state["step"]), **aux}
        return new_state, stats

    state_sharding = shardings(s.abstract_state)
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, parallel.batch_sharding(s.mesh, config.mesh.rules)),
        out_shardings=(state_sharding, NamedSharding(s.mesh, PartitionSpec())),
        donate_argnums=0,
    )


def make_sampler(config, s: Setup):
    """Jitted (params, context, key) -> predicted targets, with the config's guidance scale."""
    size, channels = config_lib.model_input(config)

    def sample(params, context, key):
        with parallel.activation_sharding(s.mesh, config.mesh.rules):
            model = nnx.merge(s.graphdef, params)
            shape = (context["cond"].shape[0], 1, size, size, channels)
            return flow.sample(model, context, key, shape, config.flow)

    # Replicated, so every host can read the whole prediction.
    return jax.jit(sample, out_shardings=NamedSharding(s.mesh, PartitionSpec()))


def sample_episodes(config) -> dict[str, np.ndarray]:
    """The fixed episodes every sample grid shows: held out by seed, with sample.num_pairs pairs."""
    source = synthetic.SyntheticEpisodes(config.data, config.seed + 1, config.global_batch_size)
    pairs = config.sample.num_pairs or config.data.max_pairs
    episodes = [source.episode(i, pairs) for i in range(config.sample.num_examples)]
    return {name: np.stack([e[name] for e in episodes]) for name in ("cond", "target")}


class _Preemption:
    """Tells the loop when to save and stop after SIGTERM.

    One process installs its own handler. On several hosts, `jax.distributed` already listens for
    the signal, and `reached_preemption_sync_point` has every host agree on the same step to stop
    at, so no host leaves the loop while another is still inside a step's collectives.
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
        if jax.process_count() == 1:
            return self._requested
        return multihost_utils.reached_preemption_sync_point(step)


def _replicate(array: np.ndarray, mesh: Mesh) -> jax.Array:
    """The same host array on every device, valid on multi-host meshes too."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def train(config, workdir: str) -> dict:
    """Trains until config.total_steps, resuming from the newest checkpoint in workdir.

    Everything a person can get wrong (config, data, checkpoint) is checked before the first
    compilation. Returns the final state (global arrays)."""
    shape = config_lib.validate(config, jax.device_count(), jax.process_count())
    if config.vae.name != "none":
        raise ValueError(
            "config.vae.name='stvae': latent training needs the ST-VAE, which is not built yet; "
            "train in pixel space with config.vae.name='none' and config.model.in_channels=3."
        )
    data = pipeline.make_iterator(config, jax.process_index(), jax.process_count())
    primary = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    mesh = parallel.make_mesh(config)
    logging.info("Mesh %s over %d devices in %d processes.", shape, jax.device_count(), jax.process_count())
    s = setup(config, mesh)
    checkpointer = checkpoint.Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints, save_every=config.checkpoint_every
    )
    latest = checkpointer.latest_step()
    if latest is None:
        state = init_state(config, s)
    else:
        logging.info("Resuming from the checkpoint at step %d.", latest)
        state = checkpointer.restore(latest, s.abstract_state, data, config)
    if primary:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary.summarize(config, s.abstract_state["params"])[0], f, indent=2)

    step_fn = make_train_step(config, s)
    sampler = make_sampler(config, s)
    episodes = sample_episodes(config)
    sample_context = {"cond": _replicate(episodes["cond"], mesh)}
    writer = metrics.MetricWriter(workdir, enabled=primary, resume_step=latest or 0)

    def write_samples(step: int):
        prediction = jax.device_get(sampler(state["ema"], sample_context, jax.random.key(config.seed + 2)))
        scale = max(1, 128 // episodes["target"].shape[2])  # small frames are enlarged to be seen.
        writer.write_image(step, "samples", metrics.episode_grid(episodes["cond"], prediction, episodes["target"], scale=scale))

    step = int(jax.device_get(state["step"]))
    compiled_pairs: set[int] = set()
    pending: list[dict] = []
    # Throughput counts training only: compilations and sample grids move the clock forward.
    last_time, last_step = time.perf_counter(), step
    bar = tqdm.tqdm(total=config.total_steps, initial=step, disable=not primary, desc="train", dynamic_ncols=True)
    with _Preemption() as preemption:
        while step < config.total_steps and not preemption.should_stop(step):
            local = next(data)
            pairs = (local["cond"].shape[1] - 1) // 2
            started = time.perf_counter()
            compiling = pairs not in compiled_pairs
            if compiling:
                compiled_pairs.add(pairs)
                logging.info(
                    "Compiling the train step for condition shape %s (%d pairs): variant %d of at most %d.",
                    local["cond"].shape[1:], pairs, len(compiled_pairs), config.data.max_pairs + 1,
                )
            state, stats = step_fn(state, parallel.global_batch(local, mesh, config.mesh.rules))
            if compiling:  # the call returns once compiled and dispatched; the step runs async.
                last_time += time.perf_counter() - started
            step += 1
            pending.append(stats)
            bar.update(1)

            if step % config.log_every == 0 or step == config.total_steps:
                host = jax.device_get(pending)
                now = time.perf_counter()
                scalars = {name: float(np.mean([p[name] for p in host])) for name in host[0]}
                scalars["steps_per_sec"] = (step - last_step) / (now - last_time)
                scalars["examples_per_sec"] = scalars["steps_per_sec"] * config.global_batch_size
                writer.write_scalars(step, scalars)
                bar.set_postfix(loss=f"{scalars['loss']:.4f}")
                pending, last_time, last_step = [], now, step
            checkpointer.save(step, state, data, config)
            if step % config.eval_every == 0 or step == config.total_steps:
                started = time.perf_counter()
                write_samples(step)
                last_time += time.perf_counter() - started
        checkpointer.save(step, state, data, config, force=True)
        checkpointer.wait()
    checkpointer.close()
    writer.close()
    bar.close()
    return state
