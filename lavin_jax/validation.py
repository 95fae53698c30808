"""Every mistake a person can make in a config, as one sentence naming the field, before anything
compiles.

It sits above the pieces it asks: the model family checks its own fields (`models.check`), the
objective its sections and how they fit the model (`objectives.check`), the conditioning its
data (`conditioning.check`); what only the files can tell (a run to load, weights) each checks when
it opens them.
"""

from __future__ import annotations

from lavin_jax import conditioning, models, objectives, parallel
from lavin_jax.config import frame_shape, require


def validate(config, num_devices: int | None, num_processes: int = 1) -> dict[str, int] | None:
    """Raises ValueError naming the offending field; returns the mesh shape. With
    `num_devices=None` (abstract uses such as `--mode=summary`) the mesh is not checked."""
    for field in ("total_steps", "log_every", "checkpoint_every", "keep_checkpoints", "global_batch_size"):
        require(int(config[field]) > 0, f"config.{field}={config[field]} must be positive.")
    require(config.eval_every >= 0, f"config.eval_every={config.eval_every} must be non-negative (0: never).")
    m = config.model
    models.check(m)
    family = models.FAMILIES[m.name]
    require(
        config.conditioning == family.conditioning,
        f"config.conditioning={config.conditioning!r}, but config.model.name={m.name!r} is conditioned by {family.conditioning!r}.",
    )
    objectives.check(config)
    if hasattr(family, "check_input"):
        family.check_input(m, frame_shape(config)[0])
    conditioning.check(config)
    o = config.optim
    require(o.schedule in ("constant", "cosine"), f"config.optim.schedule={o.schedule!r} must be 'constant' or 'cosine'.")
    require(o.lr > 0, f"config.optim.lr={o.lr} must be positive.")
    require(o.warmup_steps >= 0, f"config.optim.warmup_steps={o.warmup_steps} must be non-negative.")
    require(o.grad_clip >= 0, f"config.optim.grad_clip={o.grad_clip} must be non-negative (0: no clipping).")
    require(0.0 <= o.ema_decay < 1.0, f"config.optim.ema_decay={o.ema_decay} must be in [0, 1).")
    require(config.sample.num_examples >= 1, f"config.sample.num_examples={config.sample.num_examples} must be at least 1.")
    require(config.sample.num >= 0, f"config.sample.num={config.sample.num} must be non-negative.")
    require(
        config.sample.num == 0 or config.conditioning == "class",
        f"config.sample.num={config.sample.num} draws class-balanced images of a class-conditional run; config.conditioning={config.conditioning!r}.",
    )

    if num_devices is None:
        return None
    shape = parallel.mesh_shape(config.mesh, num_devices)
    batch_shards = shape["data"] * shape["fsdp"]
    require(
        config.global_batch_size % batch_shards == 0,
        f"config.global_batch_size={config.global_batch_size} is not divisible by the "
        f"data-parallel size data*fsdp={batch_shards}.",
    )
    # Each process feeds its own rows, so every process must own whole data-parallel shards.
    require(
        batch_shards % num_processes == 0,
        f"config.mesh: the data-parallel size data*fsdp={batch_shards} is not divisible by the "
        f"{num_processes} processes, so hosts cannot each own whole batch shards.",
    )
    for field in ("num_heads", "num_kv_heads"):  # attention heads split over the tensor axis.
        if field not in m:
            continue
        require(
            m[field] % shape["tensor"] == 0,
            f"config.model.{field}={m[field]} is not divisible by config.mesh.tensor={shape['tensor']}.",
        )
    return shape
