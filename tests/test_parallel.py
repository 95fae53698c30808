"""The distributed setup chosen by the environment, and the topology checks of the mesh. The
runtime itself is exercised for real by tests/test_multiprocess.py."""

import glob
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from lavin_jax import parallel

CLUSTER_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS", "SLURM_STEP_ID")


@pytest.fixture
def calls(monkeypatch):
    """The arguments each jax.distributed.initialize call would get, on a machine without TPUs."""
    made = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: made.append(kwargs))
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return made


def test_a_single_process_needs_no_setting(calls, monkeypatch):
    assert parallel.initialize_distributed() == "single" and calls == []
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task SLURM job is one process too.
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    assert parallel.initialize_distributed() == "single" and calls == []


def test_explicit_coordinator(calls, monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    with pytest.raises(ValueError, match="JAX_COORDINATOR_ADDRESS=10.0.0.1:1234 is set but JAX_PROCESS_ID is not"):
        parallel.initialize_distributed()
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert parallel.initialize_distributed() == "explicit"
    assert calls == [{"num_processes": 4, "process_id": 3}]  # JAX reads the address itself.


def test_slurm_and_tpu_are_detected(calls, monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "16")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    assert parallel.initialize_distributed() == "slurm"
    monkeypatch.delenv("SLURM_NTASKS")
    monkeypatch.setattr(glob, "glob", lambda pattern: ["/dev/vfio/0"] if "vfio" in pattern else [])
    assert parallel.initialize_distributed() == "tpu"
    assert calls == [{"cluster_detection_method": "slurm"}, {}]


def devices_after_use_cpu_devices(count: int, **env) -> str:
    """jax.device_count() of a fresh process that called parallel.use_cpu_devices(count) first,
    with `env` in place of the tests' own device count."""
    base = {name: value for name, value in os.environ.items() if name not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    script = f"from lavin_jax import parallel; parallel.use_cpu_devices({count}); import jax; print(jax.device_count())"
    result = subprocess.run([sys.executable, "-c", script], env={**base, "JAX_PLATFORMS": "cpu", **env}, capture_output=True, text=True, timeout=120)
    return result.stdout.strip() or result.stderr.strip().splitlines()[-1]


def test_cpu_devices_split_the_host_unless_the_environment_says_how_many():
    assert devices_after_use_cpu_devices(2) == "2"
    assert devices_after_use_cpu_devices(0) == "1"  # JAX's default.
    assert devices_after_use_cpu_devices(2, XLA_FLAGS="--xla_force_host_platform_device_count=3") == "3"
    assert devices_after_use_cpu_devices(2, JAX_NUM_CPU_DEVICES="1") == "1"
    assert devices_after_use_cpu_devices(-1) == "ValueError: config.mesh.cpu_devices=-1 must be non-negative (0: JAX's default of one)."


def test_a_mesh_without_its_devices_names_the_setting_that_decides_the_count(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
    mesh = {"data": 1, "fsdp": 4, "tensor": 1}
    with pytest.raises(ValueError, match=r"does not match the 2 devices \(on a CPU, --config.mesh.cpu_devices=4 makes 4 devices\)\.$"):
        parallel.mesh_shape(mesh, 2)
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "2")  # the environment wins over the field, so it is named.
    with pytest.raises(ValueError, match=r"\(on a CPU, JAX_NUM_CPU_DEVICES=4 makes 4 devices\)\.$"):
        parallel.mesh_shape(mesh, 2)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    with pytest.raises(ValueError, match=r"\(on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=4 makes 4 devices\)\.$"):
        parallel.mesh_shape(mesh, 2)


def test_tensor_groups_must_stay_within_a_host():
    hosts = np.repeat(np.arange(2), 4)  # 2 processes of 4 devices, laid out process-major.
    parallel.check_tensor_within_hosts(hosts.reshape(1, 2, 4))
    parallel.check_tensor_within_hosts(hosts.reshape(2, 2, 2))
    with pytest.raises(ValueError, match=r"config.mesh.tensor=8 spans several hosts of 4 devices each.*dividing 4"):
        parallel.check_tensor_within_hosts(hosts.reshape(1, 1, 8))
    with pytest.raises(ValueError, match=r"config.mesh.tensor=2"):
        parallel.check_tensor_within_hosts(np.array([0, 1, 0, 1]).reshape(1, 2, 2))
