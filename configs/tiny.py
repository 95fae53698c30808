"""A tiny J-DiT on the synthetic suite in pixel space: the CPU demo and the tests' model."""

from lavin_jax.config import base


def get_config():
    c = base()
    c.total_steps = 400
    c.global_batch_size = 16
    c.log_every = 10
    c.checkpoint_every = 100
    c.eval_every = 100

    # Pixel space until the ST-VAE lands: 32x32 RGB frames, 4x4 patches.
    c.vae.name = "none"
    c.model.in_channels = 3
    c.data.image_size = 32
    c.data.max_pairs = 2

    c.model.hidden = 96
    c.model.depth = 4
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.patch_size = 4
    c.model.dtype = "float32"

    c.mesh.data = -1  # plain data parallelism over whatever devices there are.
    c.mesh.fsdp = 1

    c.optim.lr = 1e-3
    c.optim.warmup_steps = 20
    c.optim.ema_decay = 0.99
    c.flow.sample_steps = 10
    return c
