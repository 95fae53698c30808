"""The tiny GenTron grown into text-to-video: configs/gentron_tiny.py's model with a temporal
attention in every block, started from that text-to-image run (`init_from`; the new layers start
as the identity over time), fine-tuned on moving captioned scenes ("a small red circle moving
left"), a share of them motion-free. Evaluation reads the motion back from the clips, sampled
with motion-free guidance beside without it and beside the model told nothing:

    python -m lavin_jax.main --config=configs/gentron_tiny.py --workdir=runs/t2i
    python -m lavin_jax.main --config=configs/gentron_t2v_tiny.py --workdir=runs/t2v
"""

import os

from lavin_jax import config as config_lib


def get_config():
    c = config_lib.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "gentron_tiny.py"))
    c.init_from = "runs/t2i"
    c.model.temporal = True
    c.data.video_frames = 4  # objects move 0.09 of the picture a frame (captions.SPEED): 8.6 px a clip.
    c.data.motion_free_prob = 0.1  # GenTron's p_motion_free: each such clip's frames attend to themselves alone.
    # About 22 minutes on 2 CPU cores: the way read right in 0.98 of 128 held-out captions, 0.65 after 1000 steps (BENCHMARKS.md).
    c.total_steps = 2500
    c.global_batch_size = 16
    c.checkpoint_every = c.eval_every = 2500
    c.optim.warmup_steps = 50
    c.flow.motion_scale = 1.5
    c.eval.episodes = 32
    c.sample.num_examples = 4
    return c
