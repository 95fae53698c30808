"""A small image-space DiffiT on scikit-learn's bundled digits (1,797 8x8 images of 10 classes, a
fifth held out by seed), at 16 px: the CPU demo of the U-shaped DiffiT and of EDM, class-
conditional. Its sample grid has one row per class; evaluation judges the samples with a
classifier of the real digits.

The U-Net is CIFAR-10's (configs/diffit_cifar10.py) made small: three resolutions (16, 8, 4 px)
of widths 32, 64, 64, one DiffiT ResBlock each way, 4 x 4 windows of time-dependent attention.
It trains by EDM's own parameterisation (levels drawn nearer the noise) and samples with its
deterministic Heun sampler.
"""

from lavin_jax.config import base


def get_config():
    c = base("diffit_image")
    c.total_steps = 1000
    c.global_batch_size = 64
    c.log_every = 100
    c.checkpoint_every = 500
    c.eval_every = 500

    c.vae.name = "none"
    c.data.classes = "digits"
    c.data.image_size = 16
    c.data.flip_prob = 0.0  # a mirrored digit is another glyph.

    c.model.update(channels=(32, 64, 64), blocks=1, num_heads=2, time_width=128, groups=8, num_classes=10)

    c.mesh.data = -1  # plain data parallelism over whatever devices there are.
    c.mesh.fsdp = 1

    c.optim.lr = 2e-3
    c.optim.warmup_steps = 100
    c.optim.ema_decay = 0.99

    # Noise levels drawn around 1 rather than EDM's exp(-1.2): a digit's class is settled at high
    # noise, and at 16 px there is little fine detail for the low levels to learn (measured on 8 px
    # digits, one per class, 300 steps: every label drawn as its digit, against 4 of 10 at -1.2).
    c.edm.p_mean = 0.0
    c.edm.sample_steps = 18
    c.edm.cfg_scale = 2.0
    c.eval.episodes = 20  # samples per class judged by the classifier.
    c.sample.num_examples = 8  # samples per class shown in the grid.
    return c
