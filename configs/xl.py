"""LaVin-DiT 3.4B, the released model: J-DiT on 16-channel ST-VAE latents of 256px episodes."""

from lavin_jax.config import base


def get_config():
    c = base("jdit")
    c.model.hidden = 2304
    c.model.depth = 22
    c.model.num_heads = 32
    c.model.num_kv_heads = 8
    c.model.remat = "full"
    return c
