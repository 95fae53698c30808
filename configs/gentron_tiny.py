"""A tiny text-to-image GenTron on captioned scenes (one or two coloured shapes on black, each
caption exactly true: "a large blue square left of a small yellow triangle"), 32 px in pixel space,
with a byte-level text encoder trained along: the CPU demo of the text path. Evaluation draws
held-out captions and reads the samples back with the renderer's detector (colour, shape, size,
relation), beside the same model told nothing.

It trains by flow matching like the other tiny configs; `--config.objective=ddpm
--config.model.learn_sigma=True` trains by Gaussian diffusion, as DiT's code.
"""

from lavin_jax.config import base, tiny_recipe


def get_config():
    c = tiny_recipe(base("gentron"))
    # 2100 steps on tiny_recipe's two CPU devices take the time 1500 took on one (BENCHMARKS.md).
    c.total_steps = 2100
    c.global_batch_size = 32
    c.log_every = 100
    c.checkpoint_every = c.eval_every = c.total_steps

    c.data.image_size = 32  # pixels patchified 4x4: 64 tokens.

    c.model.update(hidden=128, depth=4, num_heads=4, patch_size=4, in_channels=3, dtype="float32", learn_sigma=False,
                   text_length=80, text_width=64, text_depth=2, text_heads=2)
    # Unrolled, as the other CPU demos: 0.295 s a step against 0.356 s scanned (BENCHMARKS.md).
    c.model.scan_layers = False

    c.optim.lr = 3e-3
    c.optim.warmup_steps = 100
    c.optim.schedule = "cosine"
    c.optim.ema_decay = 0.99

    # `tiny_recipe`'s clean-picture prediction, against velocity prediction (20 steps, lr 2e-3) on
    # this machine: colour 0.92 against 0.88, size 0.77 against 0.59, relation 0.42 against 0.19
    # (BENCHMARKS.md).
    c.flow.time_grid = "uniform"
    c.flow.sample_steps = 10
    c.flow.cfg_scale = 3.0
    c.eval.episodes = 64  # held-out captions judged by the detector.
    c.sample.num_examples = 8  # scenes shown in the grid: renderer | model | told nothing.
    return c
