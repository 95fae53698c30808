"""A tiny ST-VAE on synthetic scenes and moving-scene clips: the CPU demo of VAE training."""

from lavin_jax.config import base
from lavin_jax.models import stvae


def get_config():
    c = base("stvae")
    c.model.update(stvae.tiny_config())
    c.total_steps = 600
    c.global_batch_size = 8
    c.log_every = 25
    c.checkpoint_every = 200
    c.eval_every = 200

    # 32 px frames -> 4x4 latents. Images only for the first 200 steps, then half the batches are
    # 5-frame clips (2 latent frames).
    c.data.image_size = 32
    c.data.clip_frames = 5
    c.data.video_start = 200
    c.data.video_share = 0.5

    c.autoencoder.disc_start = 300
    c.autoencoder.disc.channels = 16
    c.autoencoder.disc.groups = 8

    c.mesh.data = -1  # plain data parallelism: the convolutions are small, so replicate them.
    c.mesh.fsdp = 1
    # Measured on the synthetic scenes: 1e-3 and above stall near the mean image for hundreds of
    # steps; 5e-4 learns fastest.
    c.optim.lr = 5e-4
    c.optim.warmup_steps = 20
    c.optim.schedule = "cosine"
    c.optim.b1, c.optim.b2 = 0.9, 0.99
    c.optim.ema_decay = 0.99
    return c
