"""A tiny J-DiT on the synthetic suite in pixel space: the CPU demo and the tests' model."""

from lavin_jax.config import base


def get_config():
    c = base()
    c.total_steps = 3000
    c.global_batch_size = 8  # on 2 CPU cores, more small steps beat fewer large ones.
    c.log_every = 50
    c.checkpoint_every = 500
    c.eval_every = 500

    # Pixel space until the ST-VAE lands: 16x16 RGB frames, 4x4 patches, 16 tokens a frame.
    c.vae.name = "none"
    c.model.in_channels = 3
    c.data.image_size = 16
    c.data.max_pairs = 2
    # Four image tasks and one video task (3-frame clips), from the built-in suite.
    c.data.tasks = ("colorization", "edges", "flip", "inpainting", "frame_prediction")
    c.data.video_frames = 3

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
    # Train more on noisy t, where only the in-context pairs tell the model what to draw: without
    # the shift a CPU-sized run learns to copy the query and ignores the pairs.
    c.flow.shift = 3.0
    c.flow.sample_steps = 10
    return c
