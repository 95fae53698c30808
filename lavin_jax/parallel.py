"""Devices, the mesh, and the mapping from logical axis names to mesh axes.

Models name the axes of their parameters and key activations (`embed`, `heads`, `batch` ...);
`config.mesh.rules` maps those names onto the mesh axes `data`, `fsdp`, `tensor`. The same model
runs data-parallel, FSDP or tensor-parallel by config alone.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import threading

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")


def initialize_distributed() -> str:
    """Joins the other processes of a multi-process job, chosen by the environment; returns how.

    - `JAX_COORDINATOR_ADDRESS` (host:port of process 0) with `JAX_NUM_PROCESSES` and
      `JAX_PROCESS_ID`, and optionally `JAX_LOCAL_DEVICE_IDS` (GPUs this process drives): explicit,
      for GPU clusters without SLURM and for several CPU processes on one machine (`launch/local.sh`),
      whose collectives then run over gloo.
    - A SLURM job step of several tasks (`launch/slurm.sbatch`): JAX reads the coordinator, process
      count and id, and each task's GPUs from SLURM's variables.
    - A Cloud TPU VM (`launch/tpu_pod.sh`, `launch/xpk.sh`): JAX finds the slice's hosts itself.
    - Otherwise a single process, which needs nothing.
    """
    env = os.environ
    if "JAX_COORDINATOR_ADDRESS" in env:
        missing = [name for name in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if name not in env]
        if missing:
            raise ValueError(
                f"JAX_COORDINATOR_ADDRESS={env['JAX_COORDINATOR_ADDRESS']} is set but {' and '.join(missing)} "
                "is not: an explicit multi-process job needs all three."
            )
        jax.distributed.initialize(num_processes=int(env["JAX_NUM_PROCESSES"]), process_id=int(env["JAX_PROCESS_ID"]))
        return "explicit"
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in env:
        jax.distributed.initialize(cluster_detection_method="slurm")
        return "slurm"
    # TPU chips show up as /dev/accel* (v2-v4, v5p) or /dev/vfio/<n> (v5e, v6e) on a TPU VM.
    if glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"):
        jax.distributed.initialize()
        return "tpu"
    return "single"


def use_cpu_devices(count: int) -> None:
    """Makes JAX split this host's CPU into `count` devices (`config.mesh.cpu_devices`; 0 leaves
    JAX's one), unless the environment already sets the count (XLA_FLAGS'
    --xla_force_host_platform_device_count, JAX_NUM_CPU_DEVICES: tests, launch/local.sh) or JAX
    has already started (a notebook, a test). Only JAX's CPU backend reads it, so on a GPU or TPU
    host it changes nothing. Call before anything asks JAX for its devices."""
    count = int(count)
    if count < 0:
        raise ValueError(f"config.mesh.cpu_devices={count} must be non-negative (0: JAX's default of one).")
    if count and _cpu_count_setting() is None:
        _ask_cpu_devices(count)


def _cpu_count_setting() -> str | None:
    """The environment variable that sets JAX's CPU device count here, if one does."""
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return "XLA_FLAGS"
    return "JAX_NUM_CPU_DEVICES" if "JAX_NUM_CPU_DEVICES" in os.environ else None


def _cpu_devices_hint(count: int) -> str:
    """How to get `count` CPU devices here: the setting that decides it in this environment."""
    setting = {"XLA_FLAGS": f"XLA_FLAGS=--xla_force_host_platform_device_count={count}",
               "JAX_NUM_CPU_DEVICES": f"JAX_NUM_CPU_DEVICES={count}"}.get(_cpu_count_setting(), f"--config.mesh.cpu_devices={count}")
    return f"(on a CPU, {setting} makes {count} devices)"


def _ask_cpu_devices(count: int) -> None:
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX already started (a notebook, a test): its CPU devices must do.
        pass


def target_devices(topology: str) -> list:
    """Devices to compile for ahead of time: 'cpu:N' gives N CPU devices (call before anything
    else touches JAX's CPU backend); any other name is a TPU topology such as 'v5p:4x4x4' or
    'v5e:8x8', whose devices are abstract (needs libtpu: `pip install "jax[tpu]"`)."""
    kind, _, size = topology.partition(":")
    if kind == "cpu":
        if not size.isdigit() or int(size) < 1:
            raise ValueError(f"--topology={topology!r}: write cpu:N with N a positive device count.")
        _ask_cpu_devices(int(size))
        devices = jax.devices("cpu")
        if len(devices) != int(size):
            raise ValueError(f"--topology={topology!r}: JAX had already started with {len(devices)} CPU devices.")
        return devices
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(topology, "tpu").devices)
    except Exception as error:  # no libtpu, or a name it does not know.
        raise ValueError(
            f"--topology={topology!r} is not a TPU topology this machine can describe ({error}); "
            "install libtpu (jax[tpu]) for TPU topologies, or use cpu:N."
        ) from error


def mesh_shape(mesh_config, num_devices: int) -> dict[str, int]:
    """The mesh axis sizes from `config.mesh`, with a `-1` axis filled from the device count."""
    sizes = {axis: int(mesh_config[axis]) for axis in MESH_AXES}
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise ValueError(f"config.mesh: only one axis may be -1, got {', '.join(free)}.")
    for axis, size in sizes.items():
        if size == 0 or size < -1:
            raise ValueError(f"config.mesh.{axis}={size} must be a positive size or -1.")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(
                f"config.mesh: the fixed axes' product {fixed} does not divide the {num_devices} devices "
                f"{_cpu_devices_hint(fixed)}."
            )
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(
            f"config.mesh: data*fsdp*tensor={fixed} does not match the {num_devices} devices "
            f"{_cpu_devices_hint(fixed)}."
        )
    return sizes


def make_mesh(config, devices=None) -> Mesh:
    """The (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes).

    Devices are laid out process-major, so the innermost axis, `tensor`, stays within one host
    whenever it divides the host's device count; a tensor axis spanning hosts is refused, since
    its per-layer collectives would cross the slow network."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(config.mesh, len(devices))
    mesh = jax.make_mesh(
        tuple(shape[axis] for axis in MESH_AXES),
        MESH_AXES,
        axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
        devices=devices,
    )
    check_tensor_within_hosts(np.vectorize(lambda device: device.process_index)(mesh.devices))
    return mesh


def check_tensor_within_hosts(processes: np.ndarray) -> None:
    """Refuses a mesh whose tensor groups span processes; `processes` holds the process index of
    each device of the (data, fsdp, tensor) mesh."""
    groups = processes.reshape(-1, processes.shape[-1])
    if any(len(set(group)) > 1 for group in groups.tolist()):
        per_host = processes.size // len(np.unique(processes))
        raise ValueError(
            f"config.mesh.tensor={processes.shape[-1]} spans several hosts of {per_host} devices each: "
            f"tensor parallelism must stay within one host; use a tensor size dividing {per_host}."
        )


def logical_to_mesh(spec: PartitionSpec, rules) -> PartitionSpec:
    """Renames logical axis names to mesh axes; a name with no rule is an error, not replication."""
    table = dict(rules)
    mesh_axes = []
    for name in spec:
        if name is None:
            mesh_axes.append(None)
        elif name not in table:
            raise ValueError(
                f"Logical axis {name!r} has no rule in config.mesh.rules; add ({name!r}, mesh_axes)."
            )
        else:
            mesh_axes.append(table[name])
    return PartitionSpec(*mesh_axes)


def _path_name(path) -> str:
    return "/".join(str(getattr(key, "key", getattr(key, "idx", key))) for key in path)


def param_shardings(abstract_params: nnx.State, mesh: Mesh, rules) -> dict:
    """NamedShardings (as a pure dict) for parameters, checking every sharded axis divides evenly."""
    specs = nnx.get_partition_spec(abstract_params).to_pure_dict()
    shapes = abstract_params.to_pure_dict()

    def place(path, spec, shape):
        if len(spec) != len(shape.shape):
            # An unnamed parameter would be replicated silently: a 3B model would not fit.
            raise ValueError(
                f"Parameter {_path_name(path)} of shape {shape.shape} has logical axes {tuple(spec)}; "
                "every parameter must name each of its axes (nnx.with_partitioning)."
            )
        mesh_spec = logical_to_mesh(spec, rules)
        for dim, (size, axes) in enumerate(zip(shape.shape, mesh_spec)):
            if axes is None:
                continue
            ways = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
            if size % ways:
                raise ValueError(
                    f"Parameter {_path_name(path)} of shape {shape.shape}: axis {dim} of size {size} "
                    f"cannot be split {ways} ways over mesh axes {axes}; change config.mesh or the "
                    "model size."
                )
        return NamedSharding(mesh, mesh_spec)

    return jax.tree.map_with_path(
        place, specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )


def place(array: np.ndarray | jax.Array, sharding: NamedSharding) -> jax.Array:
    """`array` placed by `sharding`, valid on multi-host meshes too: every host passes the whole
    host array and each device takes its part; a jax.Array is moved there."""
    if isinstance(array, jax.Array):
        return jax.device_put(array, sharding)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def replicate(array: np.ndarray | jax.Array, mesh: Mesh) -> jax.Array:
    """The same array on every device (`place` with a replicated sharding)."""
    return place(array, NamedSharding(mesh, PartitionSpec()))


# Activation constraints need the mesh and rules while a step is traced; the trainer sets them
# around tracing with `activation_sharding`, and without them `constrain` leaves arrays alone
# (single-device use, notebooks).
_context = threading.local()


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules):
    previous = getattr(_context, "value", None)
    _context.value = (mesh, rules)
    try:
        yield
    finally:
        _context.value = previous


def constrain(x: jax.Array, *logical_axes: str | None) -> jax.Array:
    current = getattr(_context, "value", None)
    if current is None:
        return x
    mesh, rules = current
    spec = logical_to_mesh(PartitionSpec(*logical_axes), rules)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
    """Where a batch's leading axis lives: the `batch` rule."""
    return NamedSharding(mesh, logical_to_mesh(PartitionSpec("batch"), rules))


def batch_shards(mesh: Mesh, rules) -> int:
    """Into how many parts the `batch` rule splits a batch on `mesh`."""
    axes = batch_sharding(mesh, rules).spec[0]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[axis] for axis in axes)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh, rules) -> dict[str, jax.Array]:
    """Assembles each process's rows, a 1/process_count slice of the global batch, into global
    arrays sharded by the `batch` rule."""
    sharding = batch_sharding(mesh, rules)
    arrays = {}
    for name, value in local_batch.items():
        value = np.asarray(value)
        global_shape = (value.shape[0] * jax.process_count(), *value.shape[1:])
        arrays[name] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return arrays
