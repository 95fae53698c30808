"""A tiny J-DiT on the synthetic suite in pixel space: the CPU demo and the tests' model."""

from lavin_jax.config import base, tiny_recipe


def get_config():
    c = tiny_recipe(base("jdit"))
    c.total_steps = 2500
    c.global_batch_size = 16
    c.log_every = 50
    c.checkpoint_every = 500
    c.eval_every = 1250

    # 16x16 RGB frames patchified 4x4: 16 tokens a frame, no ST-VAE to train first.
    c.model.in_channels = 3
    c.data.image_size = 16
    c.data.max_pairs = 2
    # One task of each kind: a colour transform, a geometric one, a dense map, and a video task
    # (3-frame clips).
    c.data.tasks = ("low_light", "flip", "foreground_segmentation", "video_segmentation")
    c.data.video_frames = 3

    c.model.hidden = 96
    c.model.depth = 4
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.patch_size = 4
    c.model.dtype = "float32"
    # Four blocks on a CPU: XLA:CPU steps them unrolled about a fifth faster than as one scanned
    # loop, whose stacked activations it copies (BENCHMARKS.md); the end-to-end run, 9:05 -> 7:58.
    c.model.scan_layers = False
    # RoPE alone leaves a model this small months of CPU time from finding "the same place in the
    # query"; a fixed 2D embedding gives it that in a few hundred steps.
    c.model.pos_embed = "sincos"

    c.optim.lr = 3e-3
    c.optim.warmup_steps = 50
    c.optim.schedule = "cosine"
    c.optim.ema_decay = 0.99
    # A data prediction at t=0 is already the answer: one Euler step from noise. More steps of a
    # model this young drift from it (10 steps: foreground mIoU 0.11 against 0.19 in one step).
    # Guidance above 1.5 makes it commit to the pairs' kind of answer.
    c.flow.sample_steps = 1
    c.flow.cfg_scale = 1.75
    return c
