"""The tiny J-DiT in the latent space of a tiny ST-VAE run (configs/stvae_tiny.py):

    python -m lavin_jax.main --config=configs/stvae_tiny.py --workdir=runs/stvae_tiny
    python -m lavin_jax.main --mode=latent_stats --config=configs/stvae_tiny.py --workdir=runs/stvae_tiny
    python -m lavin_jax.main --config=configs/tiny_latent.py --workdir=runs/tiny_latent

32 px episodes become 4x4x16 latents; the ST-VAE encodes them inside the step (small runs), or
once into a cache (--mode=latent_cache, then --config.data.source=latents
--config.data.latent_dir=DIR)."""

import os

from lavin_jax import config as config_lib


def get_config():
    c = config_lib.load(os.path.join(os.path.dirname(__file__), "tiny.py"))
    c.vae.name = "stvae"
    c.vae.checkpoint = "runs/stvae_tiny"
    c.model.in_channels = 16
    c.model.patch_size = 1  # 4x4 latents: one token per latent pixel, 16 a frame as in pixel space.
    c.data.image_size = 32
    c.data.video_frames = 5  # the ST-VAE encodes 1+4k-frame clips: 5 frames make 2 latent frames.
    return c
