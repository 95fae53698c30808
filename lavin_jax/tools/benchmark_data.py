"""Data pipeline throughput, in examples per second, at several worker-process counts.

    python -m lavin_jax.tools.benchmark_data --config=configs/s.py --workers=0,2,4 \
        --config.global_batch_size=32 [--run=runs/s]

Reads `--batches` batches of this host's share (process 0 of `--processes`) of the config's
global batch through the same grain pipeline training uses, after `--warmup` batches (worker
start-up, first reads), for each worker count. With `--run`, the examples per second the train
step consumed in that run (the newest `examples_per_sec` of its metrics.jsonl, over all hosts)
is divided by `--processes` and reported beside: data must deliver more than that.
"""

from __future__ import annotations

import copy
import json
import os
import time

from absl import app, flags
from ml_collections import config_flags

from lavin_jax import config as config_lib
from lavin_jax.data import pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "A J-DiT or ST-VAE config.")
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "Worker-process counts to measure (config.data.num_workers).")
_BATCHES = flags.DEFINE_integer("batches", 20, "Timed batches per worker count.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed batches first.")
_PROCESSES = flags.DEFINE_integer("processes", 1, "Hosts the global batch is split over; this measures one host.")
_RUN = flags.DEFINE_string("run", None, "A training workdir whose logged examples_per_sec to compare with.")
flags.mark_flags_as_required(["config"])


def measure(config, workers: int, batches: int, warmup: int, processes: int) -> float:
    """This host's examples per second with `workers` worker processes."""
    config = copy.deepcopy(config)
    config.data.num_workers = workers
    iterator = pipeline.make_iterator(config, 0, processes)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    elapsed = time.perf_counter() - start
    return batches * (config.global_batch_size // processes) / elapsed


def consumed(run: str) -> float:
    """The newest examples_per_sec a training run logged."""
    path = os.path.join(run, "metrics.jsonl")
    rates = []
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if "examples_per_sec" in record:
                rates.append(record["examples_per_sec"])
    if not rates:
        raise ValueError(f"{path} has no examples_per_sec yet; let the run log once.")
    return rates[-1]


def main(argv):
    del argv
    config = _CONFIG.value
    config_lib.validate(config, num_devices=None)
    result = {"global_batch_size": config.global_batch_size, "processes": _PROCESSES.value, "examples_per_sec": {}}
    for workers in map(int, _WORKERS.value):
        rate = measure(config, workers, _BATCHES.value, _WARMUP.value, _PROCESSES.value)
        result["examples_per_sec"][workers] = rate
        print(f"{workers} workers: {rate:.1f} examples/s per host", flush=True)
    if _RUN.value:
        need = consumed(_RUN.value) / _PROCESSES.value
        result["train_step_examples_per_sec"] = need
        best = max(result["examples_per_sec"].values())
        print(f"the train step consumed {need:.1f} examples/s per host; data delivers {best / need:.1f}x that.")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    app.run(main)
