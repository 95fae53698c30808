"""The LaVin-DiT ST-VAE (official architecture, 4x8x8, 16 channels) on 256 px images, then images
and 17-frame clips; with LPIPS (convert the weights first, see lavin_jax/tools/convert_lpips.py)."""

from lavin_jax.config import base


def get_config():
    c = base("stvae")
    c.model.dtype = "bfloat16"
    c.total_steps = 200_000
    c.global_batch_size = 64
    c.eval_every = 5_000

    c.data.image_size = 256
    c.data.clip_frames = 17
    c.data.video_start = 100_000  # stage 1: images only; stage 2: images and clips.
    c.data.video_share = 0.5

    c.autoencoder.lpips_weight = 1.0
    c.autoencoder.lpips_file = "lpips_vgg16.safetensors"
    c.autoencoder.disc_start = 50_000
    c.autoencoder.disc.dtype = "bfloat16"

    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.optim.lr = 1e-4
    c.optim.b1, c.optim.b2 = 0.5, 0.9
    c.optim.ema_decay = 0.999
    return c
