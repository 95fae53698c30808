"""Entry point: `python -m lavin_jax.main --config=configs/tiny.py --workdir=DIR [--mode=...]`.

Run the same command on every host of a pod; run it again to resume. Any config field can be
overridden, e.g. `--config.total_steps=1000 --config.mesh.fsdp=4`.
"""

from __future__ import annotations

import json
import logging as logging_std
import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from lavin_jax import config as config_lib
from lavin_jax import latents, parallel, summary, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "summary", "latent_stats", "latent_cache"],
    "train; summary (params, FLOPs); latent_stats (of the ST-VAE run in --workdir); latent_cache "
    "(encode --examples episodes of the config into --workdir, with config.vae.checkpoint).",
)
_EXAMPLES = flags.DEFINE_integer("examples", 256, "latent_stats / latent_cache: how many images or episodes to encode.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(logging_std.Filter):
    """Keeps orbax's and grain's routine INFO lines off the terminal; warnings still show."""

    def filter(self, record):
        noisy = any(f"/{name}/" in record.pathname for name in ("orbax", "grain", "tensorstore"))
        return record.levelno >= logging_std.WARNING or not noisy


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    config = _CONFIG.value
    if _MODE.value == "summary":
        # Abstract evaluation only: the mesh is for the pod, not this host, so it is not checked.
        config_lib.validate(config, num_devices=None)
        result, table = summary.summarize(config)
        os.makedirs(_WORKDIR.value, exist_ok=True)
        with open(os.path.join(_WORKDIR.value, "summary.json"), "w") as f:
            json.dump(result, f, indent=2)
        print(table)
        print(f"{result['params']:,} parameters, {result['flops_per_example']:.4g} forward FLOPs per example.")
        return
    if _MODE.value == "latent_stats":
        print(json.dumps(latents.compute_stats(_WORKDIR.value, _EXAMPLES.value)))
        return
    if _MODE.value == "latent_cache":
        config_lib.validate(config, num_devices=None)
        written = latents.write_cache(config, _WORKDIR.value, _EXAMPLES.value)
        print(f"Wrote {written['examples']} episodes in {len(written['shards'])} shards to {_WORKDIR.value}.")
        return
    parallel.initialize_distributed()
    logging.info("Process %d of %d, %d local devices.", jax.process_index(), jax.process_count(), jax.local_device_count())
    train.train(config, _WORKDIR.value)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
