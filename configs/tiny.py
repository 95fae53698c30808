"""A tiny J-DiT on the synthetic suite in pixel space: the CPU demo and the tests' model."""

from lavin_jax.config import base


def get_config():
    c = base()
    c.total_steps = 1000
    c.global_batch_size = 8  # on 2 CPU cores, more small steps beat fewer large ones.
    c.log_every = 25
    c.checkpoint_every = 250
    c.eval_every = 250

    # Pixel space until the ST-VAE lands: 32x32 RGB frames, 4x4 patches.
    c.vae.name = "none"
    c.model.in_channels = 3
    c.data.image_size = 32
    c.data.max_pairs = 2
    c.data.tasks = ("colorize", "edges", "flip", "inpaint")

    c.model.hidden = 96
    c.model.depth = 4
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.patch_size = 4
    c.model.dtype = "float32"

    c.mesh.data = -1  # plain data parallelism over whatever devices there are.
    c.mesh.fsdp = 1

    c.optim.lr = 1e-3
    c.optim.warmup_steps = 50
    c.optim.schedule = "cosine"
    c.optim.ema_decay = 0.99
    c.flow.sample_steps = 10
    return c
