"""The one config schema every run shares, and its validation.

`configs/*.py` start from `base()` and change a few fields; `validate()` turns every mistake a
person can make in a config into one sentence naming the field, before anything is compiled.
"""

from __future__ import annotations

import difflib
import importlib.util
import os

import ml_collections

from lavin_jax import models, objectives, parallel
from lavin_jax.data import synthetic
from lavin_jax.models import discriminator

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


def base(model: str = "jdit") -> ml_collections.ConfigDict:
    """LaVin-DiT's training setup on ST-VAE latents of 256px episodes, for the model family `model`
    (its `default_config()` is `config.model`); the configs in `configs/` change a few fields."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 100_000
    c.global_batch_size = 640
    c.log_every = 50
    c.checkpoint_every = 2_000
    c.keep_checkpoints = 3
    c.eval_every = 5_000  # and at the last step; 0: never (benchmarks).
    # A run, or a release converted by `python -m lavin_jax.convert`, whose newest EMA weights a
    # fresh run's model starts from (fine-tuning); its model config must match this one's.
    c.init_from = ""
    # JAX's persistent compilation cache: a restarted or repeated run reads its compiled step
    # variants from here instead of compiling them again; "" turns it off.
    c.compile_cache = "~/.cache/lavin_jax/jax"

    c.model = models.default_config(model)

    c.vae = ml_collections.ConfigDict()
    c.vae.name = "stvae"  # stvae: J-DiT works on ST-VAE latents; none: on RGB pixels.
    c.vae.downsample = 8  # latent pixels per side of one ST-VAE latent.
    c.vae.checkpoint = "runs/stvae"  # the ST-VAE run (its workdir, here configs/stvae.py's) J-DiT learns on.

    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"  # synthetic (encoded in the step when vae.name='stvae') | latents
    c.data.latent_dir = ""  # source='latents': a cache written by --mode=latent_cache.
    c.data.image_size = 256
    c.data.max_pairs = 8  # K in [1, max_pairs] in-context pairs, drawn per batch.
    c.data.cond_drop_prob = 0.1  # share of batches trained with the pairs dropped (CFG).
    c.data.tasks = tuple(synthetic.TASKS)  # the built-in suite, all 27 tasks, images and videos.
    c.data.task_weights = ()  # "task=weight" entries for synthetic or record tasks; others weigh 1.
    c.data.records = ()  # directories of ArrayRecord shards written by `python -m lavin_jax.data.ingest`.
    c.data.video_frames = 5  # frames of each input and target clip of a video task (1+4k for the ST-VAE).
    c.data.flip_prob = 0.5  # real pairs of tasks that allow it are mirrored, input and target alike.
    c.data.num_threads = 2  # threads building batches ahead, in each process (or worker).
    c.data.num_workers = 0  # worker processes per host decoding and rendering; 0: in the trainer's process.
    # How ingest stores real data: frames resized to `size` square by `resize` (crop: short side
    # to size, centre crop; pad: long side to size, black borders; stretch), then `encoding`.
    c.data.ingest = ml_collections.ConfigDict()
    c.data.ingest.size = 256
    c.data.ingest.resize = "crop"  # crop | pad | stretch
    c.data.ingest.encoding = "png"  # png | jpeg | raw
    c.data.ingest.video_stride = 0  # frames between the starts of clips cut from one video; 0: no overlap.
    # ST-VAE examples: 1-frame images, and from step video_start on, video_share of the batches
    # are clips of clip_frames = 1+4k frames (the two-stage curriculum).
    c.data.clip_frames = 17
    c.data.video_start = 0
    c.data.video_share = 0.5

    c.flow = ml_collections.ConfigDict()
    c.flow.t_mean = 0.0  # logit-normal t = sigmoid(N(t_mean, t_std)), then shifted.
    c.flow.t_std = 1.0
    c.flow.shift = 1.0
    c.flow.l1_weight = 0.1
    c.flow.prediction = "velocity"  # velocity (as the official code) | data (the clean answer; see flow.py).
    c.flow.min_remaining = 0.05  # prediction='data': the floor of 1 - t in its velocity (x1 - x_t) / (1 - t).
    c.flow.sample_steps = 20
    c.flow.sampler = "euler"  # euler (as the official code) | heun (second order, 2 model calls a step).
    c.flow.time_grid = "lavin"  # lavin: dense near the noise end; uniform; official (the release's, 19 steps).
    c.flow.cfg_scale = 1.5

    # ST-VAE training (model.name='stvae'): loss weights, the perceptual net, the discriminator.
    c.autoencoder = ml_collections.ConfigDict()
    c.autoencoder.l1_weight = 1.0
    c.autoencoder.mse_weight = 0.0
    c.autoencoder.kl_weight = 1e-6
    c.autoencoder.lpips_weight = 0.0  # > 0 needs lpips_file.
    c.autoencoder.lpips_file = ""  # made by `python -m lavin_jax.tools.convert_lpips`.
    c.autoencoder.disc_weight = 0.5  # times the adaptive weight ||grad rec|| / ||grad adv||.
    c.autoencoder.disc_start = 0  # the step the adversarial loss and the discriminator start.
    c.autoencoder.disc = discriminator.default_config()
    c.autoencoder.eval_examples = 4  # held-out images and clips in each evaluation.

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
    c.sample.num_examples = 4  # episodes per task shown in each sample grid.
    c.sample.num_pairs = 0  # pairs of each shown and evaluated episode; 0: data.max_pairs.

    # J-DiT evaluation (--mode=eval, and every eval_every steps): held-out episodes of every task,
    # scored beside the baselines.
    c.eval = ml_collections.ConfigDict()
    c.eval.episodes = 16  # per task.
    c.eval.records = ()  # record directories of held-out pairs (e.g. a test split); (): data.records.
    c.eval.fid_weights = ""  # Inception-v3 file for FID of image tasks (lavin_jax.tools.convert_fid).
    c.eval.fvd_weights = ""  # I3D file for FVD of video tasks.
    c.lock()  # a misspelt field in a config file or override is an error, not a new field.
    return c


def load(path: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
    """Loads `get_config()` from a config file and applies dotted overrides (tests, notebooks)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file {path!r} does not exist.")
    spec = importlib.util.spec_from_file_location("lavin_jax_user_config", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"Config file {path!r} cannot be loaded as a Python module.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return override(module.get_config(), overrides or {})


def override(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
    """Sets each dotted name of `overrides` (e.g. "data.image_size") in `config`; returns it."""
    for key, value in overrides.items():
        section, name = locate(config, key)
        section[name] = value
    return config


def locate(config: ml_collections.ConfigDict, key: str) -> tuple[ml_collections.ConfigDict, str]:
    """The section holding the dotted field `key` and the field's name: ("model.hidden") ->
    (config.model, "hidden"). A field the config lacks is a ValueError naming it and the closest
    existing name (a misspelt override, in code or on the command line)."""
    parts = key.split(".")
    section = config
    for depth, part in enumerate(parts):
        where = ".".join(["config", *parts[:depth]])
        if not isinstance(section, ml_collections.ConfigDict):
            raise ValueError(f"config.{key}: {where} is a value, not a section of fields.")
        if part not in section:
            close = difflib.get_close_matches(part, list(section), n=1)
            hint = f"did you mean {where}.{close[0]}?" if close else f"{where} has {', '.join(section)}."
            raise ValueError(f"{where}.{part} is not a field; {hint}")
        if depth < len(parts) - 1:
            section = section[part]
    return section, parts[-1]


def require(ok: bool, message: str) -> None:
    """Raises ValueError(message) unless `ok`: every config check's one sentence."""
    if not ok:
        raise ValueError(message)


def validate(config, num_devices: int | None, num_processes: int = 1) -> dict[str, int] | None:
    """Raises ValueError naming the offending field; returns the mesh shape.

    The model family checks its own fields (`models.check`), the objective its own sections
    (`objectives.check`), and the data pipeline its sources and tasks when it is built, which the
    trainer does next, before anything is compiled. With `num_devices=None` (abstract uses such as
    `--mode=summary`) the mesh is not checked."""
    for field in ("total_steps", "log_every", "checkpoint_every", "keep_checkpoints", "global_batch_size"):
        require(int(config[field]) > 0, f"config.{field}={config[field]} must be positive.")
    require(config.eval_every >= 0, f"config.eval_every={config.eval_every} must be non-negative (0: never).")
    m = config.model
    models.check(m)
    objectives.check(config)
    o = config.optim
    require(o.schedule in ("constant", "cosine"), f"config.optim.schedule={o.schedule!r} must be 'constant' or 'cosine'.")
    require(o.lr > 0, f"config.optim.lr={o.lr} must be positive.")
    require(o.warmup_steps >= 0, f"config.optim.warmup_steps={o.warmup_steps} must be non-negative.")
    require(0.0 <= o.ema_decay < 1.0, f"config.optim.ema_decay={o.ema_decay} must be in [0, 1).")
    require(config.sample.num_examples >= 1, f"config.sample.num_examples={config.sample.num_examples} must be at least 1.")

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
    for field in ("num_heads", "num_kv_heads"):  # J-DiT's heads split over the tensor axis.
        if field not in m:
            continue
        require(
            m[field] % shape["tensor"] == 0,
            f"config.model.{field}={m[field]} is not divisible by config.mesh.tensor={shape['tensor']}.",
        )
    return shape
