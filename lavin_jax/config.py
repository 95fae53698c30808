"""The one config schema every run shares, and its validation.

`configs/*.py` start from `base(family)` and change a few fields; `lavin_jax.validation` turns every
mistake a person can make in a config into one sentence naming the field, before anything is
compiled. This module is the house's ground floor: it imports no objective, trainer or runner.
"""

from __future__ import annotations

import difflib
import dis
import importlib.util
import inspect
import os
import sys
from typing import Callable

import ml_collections

from lavin_jax import models
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


def caption_frames(config) -> int:
    """A captioned example's frames: the clip length for a text-to-video model
    (`model.temporal`), else 1."""
    return int(config.data.video_frames) if config.model.get("temporal", False) else 1


def frame_shape(config) -> tuple[int, int]:
    """The side and channel count of one frame as the model sees it: pixels or latents."""
    if config.vae.name == "none":
        return config.data.image_size, 3
    return config.data.image_size // config.vae.downsample, config.model.in_channels


def base(model: str) -> ml_collections.ConfigDict:
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
    # What the run trains (`lavin_jax.objectives`: flow | ddpm | autoencoding) and how the model is
    # told what to make (`lavin_jax.conditioning`: incontext episodes | class labels | none); both
    # default to the family's own.
    c.objective = models.FAMILIES[model].objective
    c.conditioning = models.FAMILIES[model].conditioning

    c.vae = ml_collections.ConfigDict()
    # The autoencoder the model works in: stvae (LaVin-DiT's ST-VAE), sdvae (Stable Diffusion's
    # KL autoencoder, DiT's) or none (RGB pixels).
    c.vae.name = "stvae"
    c.vae.downsample = 8  # pixels per side of one latent.
    c.vae.checkpoint = "runs/stvae"  # the autoencoder's run (its workdir, here configs/stvae.py's) the model learns in.

    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"  # synthetic (encoded in the step when there is a vae) | latents
    c.data.latent_dir = ""  # source='latents': a cache written by --mode=latent_cache.
    c.data.image_size = 256
    c.data.max_pairs = 8  # K in [1, max_pairs] in-context pairs, drawn per batch.
    c.data.cond_drop_prob = 0.1  # share trained unconditionally (CFG): batches without pairs, or null labels.
    c.data.tasks = tuple(synthetic.TASKS)  # the built-in suite, all 27 tasks, images and videos.
    c.data.task_weights = ()  # "task=weight" entries for synthetic or record tasks; others weigh 1.
    c.data.records = ()  # directories of ArrayRecord shards written by `python -m lavin_jax.data.ingest`.
    # conditioning='class': the labelled images, "digits" (scikit-learn's bundled 8x8 digits),
    # "tfds:<name>" (an image classification dataset) or a directory written by ingest's `classes:`.
    c.data.classes = "digits"
    c.data.video_frames = 5  # frames of each input and target clip of a video task (1+4k for the ST-VAE); mask: of each clip.
    # conditioning='mask': the clips, "moving_digits" (bouncing digits made from the bundled digits),
    # "synthetic" (the moving scenes), a directory of video files or "tfds:<name>" (data/clips.py).
    c.data.clips = "moving_digits"
    c.data.frame_stride = 1  # conditioning='mask': the step between the source frames a clip takes.
    # conditioning='text': the captioned images (clips for a video model), "scenes" (rendered with
    # exact captions, data/captions.py); a share of video examples is motion-free (GenTron).
    c.data.captions = "scenes"
    c.data.motion_free_prob = 0.1
    # A video model's share of examples that are still images repeated over the clip's frames,
    # motion-free (GenTron's joint image-video training): a scene drawn without motion and
    # captioned so, or a clip's first frame with its caption.
    c.data.image_share = 0.0
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

    # conditioning='mask' (VDT's mask modelling): which part of each clip is given clean. Each
    # example draws a mode by these weights (VDT's mixture: a spatial block mask 0.2, the six
    # temporal modes sharing the rest); 0 turns a mode off. Masks are laid on the model's grid.
    c.mask = ml_collections.ConfigDict()
    c.mask.weights = ml_collections.ConfigDict({"spatial": 0.2, **{mode: 0.8 / 6 for mode in (
        "predict", "backward", "interpolate", "unconditional", "one_frame", "random")}})
    c.mask.given_frames = 0  # predict / backward: the frames given at the start / end; 0: half the clip (VDT: 8 of 16).
    c.mask.interpolation_step = 4  # interpolate: every k-th frame is given.
    c.mask.random_ratio = 0.8  # random: the chance that each frame is hidden.
    c.mask.spatial_ratio = 0.5  # spatial: the share of a frame's grid hidden, in blocks of 4+ cells.
    c.mask.spatial_edge = 3  # spatial: up to this many frames at each end of the clip are given whole.

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
    c.flow.motion_scale = 1.0  # GenTron's video: motion-free guidance's scale (1: none); guidance.py.

    # Gaussian diffusion (objective='ddpm'), as DiT trains and samples it.
    c.ddpm = ml_collections.ConfigDict()
    c.ddpm.num_steps = 1000
    c.ddpm.beta_start = 1e-4  # linear betas, scaled by 1000 / num_steps.
    c.ddpm.beta_end = 0.02
    c.ddpm.sample_steps = 250  # respaced, as DiT samples.
    c.ddpm.sampler = "ddpm"  # ddpm (ancestral) | ddim
    c.ddpm.eta = 0.0  # DDIM's noise.
    c.ddpm.cfg_scale = 1.5
    c.ddpm.motion_scale = 1.0  # as flow.motion_scale.
    c.ddpm.guided_channels = 0  # guidance on the first N noise channels; 0: all (DiT's sample.py: 3).
    c.ddpm.guidance_schedule = "constant"  # constant | power_cosine (DiffiT's 256 px sampler: 1 at the noise end up to cfg_scale).
    c.ddpm.guidance_power = 4.0  # power_cosine's exponent.

    # EDM (objective='edm', Karras et al.), as DiffiT's image-space models train and sample.
    c.edm = ml_collections.ConfigDict()
    c.edm.precond = "edm"  # edm | vp (DDPM++'s) | ve (NCSN++'s): the parameterisation (edm.py).
    c.edm.sigma_data = 0.5
    c.edm.p_mean = -1.2  # edm: ln sigma ~ N(p_mean, p_std^2) in training.
    c.edm.p_std = 1.2
    c.edm.beta_d = 19.9  # vp: sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), t ~ U(epsilon_t, 1).
    c.edm.beta_min = 0.1
    c.edm.epsilon_t = 1e-5
    c.edm.vp_steps = 1000  # vp: the network is told (vp_steps - 1) t.
    c.edm.ve_sigma_min = 0.02  # ve: sigma log-uniform between these.
    c.edm.ve_sigma_max = 100.0
    c.edm.sample_steps = 18  # Heun steps (2N - 1 denoiser calls): EDM's and DiffiT's CIFAR-10 setting.
    c.edm.sample_sigma_min = 0.002
    c.edm.sample_sigma_max = 80.0
    c.edm.rho = 7.0
    c.edm.churn = 0.0  # S_churn: 0 is the deterministic sampler.
    c.edm.churn_min = 0.0  # S_min, S_max: the levels churn applies to.
    c.edm.churn_max = 1e9
    c.edm.churn_noise = 1.0  # S_noise.
    c.edm.cfg_scale = 1.0
    c.edm.motion_scale = 1.0  # as flow.motion_scale.

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
    # JAX devices made of this host's CPU where JAX runs on it (0: JAX's default, one). Ignored
    # where the environment sets the count (XLA_FLAGS, JAX_NUM_CPU_DEVICES) and by accelerators.
    c.mesh.cpu_devices = 0

    c.sample = ml_collections.ConfigDict()
    c.sample.num_examples = 4  # episodes per task shown in each sample grid.
    c.sample.num_pairs = 0  # pairs of each shown and evaluated episode; 0: data.max_pairs.
    c.sample.num = 0  # conditioning='class', --mode=sample: images into samples/<step>.npz, classes balanced.
    c.sample.classes = ()  # conditioning='class', --mode=sample: the grid's classes (indices); (): all.

    # Evaluation (--mode=eval, and every eval_every steps): held-out episodes of every task scored
    # beside the baselines, or samples of every class judged by a classifier of the real images.
    c.eval = ml_collections.ConfigDict()
    c.eval.episodes = 16  # per task, or per class (an unconditional model draws as many as all the classes).
    c.eval.records = ()  # record directories of held-out pairs (e.g. a test split); (): data.records.
    c.eval.fid_weights = ""  # Inception-v3 file for FID of image tasks (lavin_jax.tools.convert_fid).
    c.eval.fvd_weights = ""  # I3D file for FVD of video tasks.
    c.lock()  # a misspelt field in a config file or override is an error, not a new field.
    return c


def dit_recipe(model: str, sizes: dict) -> ml_collections.ConfigDict:
    """`base(model)` of `sizes` (a variant's: the family's `variant('XL/2')`) set up as DiT's train.py
    trains at 256 px, which the papers built on DiT (VDT, GenTron) kept: SD VAE latents (the run
    `runs/sdvae`, made by `python -m lavin_jax.convert --vae=...`), AdamW at a constant 1e-4 with
    no warmup or clipping, global batch 256, 400k steps."""
    c = base(model)
    c.model.update(sizes)
    c.vae.name = "sdvae"
    c.vae.checkpoint = "runs/sdvae"
    c.data.image_size = 256
    c.total_steps = 400_000
    c.global_batch_size = 256
    c.eval_every = 50_000
    c.checkpoint_every = 10_000
    c.optim.warmup_steps = 0
    c.optim.grad_clip = 0.0
    return c


def tiny_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`c` set up as the tiny CPU demos train in pixel space (J-DiT's, VDT's, GenTron's): plain
    data parallelism over whatever devices there are, and flow matching as a small model learns
    it fastest. A small model predicts the clean answer far more easily than the velocity, which
    is mostly noise (flow.py); the velocity loss of a data prediction weighs 1 / (1 - t)^2, and
    floored at 0.25 the nearly clean steps stop drowning out the noisy ones, where only the
    condition says what to draw; and more of those noisy steps: t shifted towards the noise."""
    c.vae.name = "none"
    c.mesh.data = -1
    c.mesh.fsdp = 1
    # Two CPU devices, the batch split between them: XLA:CPU runs a small model's ops one after
    # another, most too small to keep two cores busy, so one device leaves a core idle half the
    # time; two run their halves side by side (the steps 1.2-1.6x faster on 2 cores, BENCHMARKS.md).
    c.mesh.cpu_devices = 2
    c.objective = "flow"
    c.flow.prediction = "data"
    c.flow.min_remaining = 0.25
    c.flow.shift = 3.0
    return c


def load(path: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
    """Loads `get_config()` from a config file and applies dotted overrides (tests, notebooks).
    As on the command line, `file.py:argument` passes the argument, e.g. a model variant
    (`configs/dit.py:B/4`)."""
    path, colon, argument = path.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file {path!r} does not exist.")
    spec = importlib.util.spec_from_file_location("lavin_jax_user_config", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"Config file {path!r} cannot be loaded as a Python module.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if colon and not inspect.signature(module.get_config).parameters:
        raise ValueError(f"Config file {path!r} takes no argument, but {argument!r} was given after ':'.")
    config = module.get_config(argument) if colon else module.get_config()
    return override(config, overrides or {})


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


_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def for_a_person(error: BaseException) -> bool:
    """Whether `error` is lavin_jax telling a person what to change: a ValueError or OSError made by
    a `raise` statement of this package, each one sentence naming the field or file. The same
    types raised anywhere else (inside jax or numpy, or by an operation of ours gone wrong) are
    bugs, whose traceback says where."""
    if not isinstance(error, (ValueError, OSError)):
        return False
    frame = error.__traceback__
    while frame.tb_next is not None:
        frame = frame.tb_next
    code = frame.tb_frame.f_code
    return code.co_filename.startswith(_PACKAGE + os.sep) and code.co_code[frame.tb_lasti] == dis.opmap["RAISE_VARARGS"]


def for_people(command: Callable[[], None]) -> None:
    """Runs a command-line program: a person's mistake (`for_a_person`) is printed as
    `error: <sentence>` with exit status 1, a bug keeps its traceback."""
    try:
        command()
    except (ValueError, OSError) as error:
        if not for_a_person(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
