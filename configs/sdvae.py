"""The SD VAE, Stable Diffusion's KL autoencoder that DiT works in (8x, 4 channels), at its released
size: what `python -m lavin_jax.convert --vae=...` converts into, and an image autoencoder trained
like the ST-VAE (L1, KL, LPIPS, GAN) on 256 px images."""

from lavin_jax.config import base


def get_config():
    c = base("sdvae")
    c.model.dtype = "bfloat16"
    c.total_steps = 200_000
    c.global_batch_size = 64
    c.eval_every = 5_000
    c.data.image_size = 256
    c.data.video_share = 0.0  # an image model: its frames are encoded each alone.
    c.autoencoder.lpips_weight = 1.0
    c.autoencoder.lpips_file = "lpips_vgg16.safetensors"
    c.autoencoder.disc_start = 50_000
    c.optim.lr = 1e-4
    return c
