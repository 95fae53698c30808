"""The one config schema every run shares, and its validation.

`configs/*.py` start from `base()` and change a few fields; `validate()` turns every mistake a
person can make in a config into one sentence naming the field, before anything is compiled.
"""

from __future__ import annotations

import importlib.util

import ml_collections

from lavin_jax import models, parallel

# Logical axis -> mesh axes. Parameters and activations name their axes with the keys; the mesh
# has axes `data`, `fsdp`, `tensor`. Activations use `act_*` names so that a weight's `embed`
# axis can be FSDP-sharded while the activations' feature axis stays whole.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("layers", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("patch", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    # ST-VAE convolutions: small enough to replicate.
    ("conv_t", None),
    ("conv_h", None),
    ("conv_w", None),
    ("conv_in", None),
    ("conv_out", None),
    ("conv_norm", None),
)


def base() -> ml_collections.ConfigDict:
    """LaVin-DiT's training setup on ST-VAE latents of 256px episodes; size configs set the model."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 100_000
    c.global_batch_size = 640
    c.log_every = 50
    c.checkpoint_every = 2_000
    c.keep_checkpoints = 3
    c.eval_every = 5_000

    c.model = ml_collections.ConfigDict()
    c.model.name = "jdit"
    c.model.hidden = 1152
    c.model.depth = 12
    c.model.num_heads = 16
    c.model.num_kv_heads = 4
    c.model.patch_size = 2
    c.model.in_channels = 16  # ST-VAE latent channels; 3 in pixel space.
    c.model.mlp_hidden = 0  # 0: LaVin-DiT's SwiGLU rule, int(8 * hidden / 3 / 64) * 64.
    c.model.rope_base = 10_000.0
    c.model.norm_eps = 1e-6
    c.model.dtype = "bfloat16"  # compute dtype; parameters stay float32.
    c.model.attention = "auto"  # auto | xla | cudnn
    c.model.scan_layers = True
    c.model.remat = "none"  # none | full | dots (save matmul outputs only)

    c.vae = ml_collections.ConfigDict()
    c.vae.name = "stvae"  # stvae: the model works on ST-VAE latents; none: on RGB pixels.
    c.vae.downsample = 8  # latent pixels per side of one ST-VAE latent.

    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"
    c.data.image_size = 256
    c.data.max_pairs = 8  # K in [1, max_pairs] in-context pairs, drawn per batch.
    c.data.cond_drop_prob = 0.1  # share of batches trained with the pairs dropped (CFG).
    c.data.tasks = ("colorize", "edges", "flip", "vflip", "inpaint", "invert", "denoise")
    c.data.num_threads = 2

    c.flow = ml_collections.ConfigDict()
    c.flow.t_mean = 0.0  # logit-normal t = sigmoid(N(t_mean, t_std)), then shifted.
    c.flow.t_std = 1.0
    c.flow.shift = 1.0
    c.flow.l1_weight = 0.1
    c.flow.sample_steps = 20  # Euler steps.
    c.flow.time_grid = "lavin"  # lavin: dense near the noise end; uniform.
    c.flow.cfg_scale = 1.5

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 1_000
    c.optim.schedule = "constant"  # constant | cosine
    c.optim.weight_decay = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.grad_clip = 1.0
    c.optim.ema_decay = 0.9999

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1
    c.mesh.fsdp = -1  # -1: all devices left over by the other axes.
    c.mesh.tensor = 1
    c.mesh.rules = DEFAULT_RULES

    c.sample = ml_collections.ConfigDict()
    c.sample.num_examples = 4  # episodes shown in each sample grid.
    c.sample.num_pairs = 0  # 0: data.max_pairs.
    c.lock()  # a misspelt field in a config file or override is an error, not a new field.
    return c


def load(path: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
    """Loads `get_config()` from a config file and applies dotted overrides (tests, notebooks)."""
    spec = importlib.util.spec_from_file_location("lavin_jax_user_config", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"Config file {path!r} cannot be loaded as a Python module.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in (overrides or {}).items():
        _set_dotted(config, key, value)
    return config


def _set_dotted(config, key, value):
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        if part not in node:
            raise ValueError(f"Config override {key!r}: there is no field {part!r}.")
        node = node[part]
    if leaf not in node:
        raise ValueError(f"Config override {key!r}: there is no field {leaf!r}.")
    node[leaf] = value


def model_input(config) -> tuple[int, int]:
    """The side and channel count of one frame as the model sees it: pixels or latents."""
    if config.vae.name == "none":
        return config.data.image_size, 3
    return config.data.image_size // config.vae.downsample, config.model.in_channels


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def validate(config, num_devices: int | None, num_processes: int = 1) -> dict[str, int] | None:
    """Raises ValueError naming the offending field; returns the mesh shape.

    The model family checks its own fields (`models.check`) and the data pipeline its sources and
    tasks when it is built, which the trainer does next, before anything is compiled. With
    `num_devices=None` (abstract uses such as `--mode=summary`) the mesh is not checked."""
    for field in ("total_steps", "log_every", "checkpoint_every", "eval_every", "keep_checkpoints", "global_batch_size"):
        _require(int(config[field]) > 0, f"config.{field}={config[field]} must be positive.")

    m = config.model
    for field in ("patch_size", "in_channels"):  # every family's input; the rest is models.check's.
        _require(int(m[field]) > 0, f"config.model.{field}={m[field]} must be positive.")
    for field, allowed in (
        ("dtype", ("float32", "bfloat16")),
        ("attention", ("auto", "xla", "cudnn")),
        ("remat", ("none", "full", "dots")),
    ):
        _require(m[field] in allowed, f"config.model.{field}={m[field]!r} must be one of {allowed}.")
    models.check(m)

    v = config.vae
    _require(v.name in ("none", "stvae"), f"config.vae.name={v.name!r} must be 'none' or 'stvae'.")
    _require(
        v.name != "none" or m.in_channels == 3,
        f"config.model.in_channels={m.in_channels} but config.vae.name='none' trains on RGB pixels: "
        "set config.model.in_channels=3.",
    )
    d = config.data
    _require(
        v.name == "none" or (v.downsample > 0 and d.image_size % v.downsample == 0),
        f"config.data.image_size={d.image_size} is not divisible by config.vae.downsample={v.downsample}.",
    )
    size, _ = model_input(config)
    _require(
        size > 0 and size % m.patch_size == 0,
        f"config.data.image_size={d.image_size} gives model inputs of side {size}, not divisible by "
        f"config.model.patch_size={m.patch_size}.",
    )
    _require(d.max_pairs >= 1, f"config.data.max_pairs={d.max_pairs} must be at least 1.")
    _require(0.0 <= d.cond_drop_prob < 1.0, f"config.data.cond_drop_prob={d.cond_drop_prob} must be in [0, 1).")

    f = config.flow
    _require(f.shift > 0, f"config.flow.shift={f.shift} must be positive.")
    _require(f.t_std > 0, f"config.flow.t_std={f.t_std} must be positive.")
    _require(f.sample_steps >= 1, f"config.flow.sample_steps={f.sample_steps} must be at least 1.")
    _require(f.time_grid in ("lavin", "uniform"), f"config.flow.time_grid={f.time_grid!r} must be 'lavin' or 'uniform'.")
    o = config.optim
    _require(o.schedule in ("constant", "cosine"), f"config.optim.schedule={o.schedule!r} must be 'constant' or 'cosine'.")
    _require(o.lr > 0, f"config.optim.lr={o.lr} must be positive.")
    _require(o.warmup_steps >= 0, f"config.optim.warmup_steps={o.warmup_steps} must be non-negative.")
    _require(0.0 <= o.ema_decay < 1.0, f"config.optim.ema_decay={o.ema_decay} must be in [0, 1).")
    _require(config.sample.num_examples >= 1, f"config.sample.num_examples={config.sample.num_examples} must be at least 1.")
    _require(config.sample.num_pairs >= 0, f"config.sample.num_pairs={config.sample.num_pairs} must be non-negative.")

    if num_devices is None:
        return None
    shape = parallel.mesh_shape(config.mesh, num_devices)
    batch_shards = shape["data"] * shape["fsdp"]
    _require(
        config.global_batch_size % batch_shards == 0,
        f"config.global_batch_size={config.global_batch_size} is not divisible by the "
        f"data-parallel size data*fsdp={batch_shards}.",
    )
    # Each process feeds its own rows, so every process must own whole data-parallel shards.
    _require(
        batch_shards % num_processes == 0,
        f"config.mesh: the data-parallel size data*fsdp={batch_shards} is not divisible by the "
        f"{num_processes} processes, so hosts cannot each own whole batch shards.",
    )
    for field in ("num_heads", "num_kv_heads"):
        _require(
            m[field] % shape["tensor"] == 0,
            f"config.model.{field}={m[field]} is not divisible by config.mesh.tensor={shape['tensor']}.",
        )
    return shape
