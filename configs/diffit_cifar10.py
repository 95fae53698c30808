"""The image-space DiffiT on CIFAR-10 (tfds `cifar10`, prepared in its data dir beforehand) at
32 px, as the paper trains it in EDM's framework: the U-shaped network of three resolutions (32,
16, 8 px; widths 128, 256, 256; two DiffiT ResBlocks each way; 4 x 4 windows of TMSA; a 512-wide
time token), Adam at 1e-3 with batch 512 for 200k steps, sampled by EDM's deterministic Heun
sampler in 18 steps (35 network calls). `--config.edm.precond=vp` or `ve` trains the other two
parameterisations (for VE, sampling starts its grid at 0.02 as EDM does). The paper's 64 px model
(FFHQ-64) is four resolutions and 8 x 8 windows: `--config.data.image_size=64
--config.model.channels='(128, 256, 256, 256)' --config.model.window=8`, 40 sampling steps.

Unconditional, as the paper's 1.95 FID is measured (`model.num_classes=0`: no class table, every
label the null class, no guidance); `--config.model.num_classes=10` trains the class-conditional
model with DiT's label dropout instead. EDM's dropout (0.13) and its non-leaking augmentation are
not part of this recipe.
"""

from lavin_jax.config import base


def get_config():
    c = base("diffit_image")
    c.vae.name = "none"
    c.data.classes = "tfds:cifar10"
    c.data.image_size = 32
    c.data.flip_prob = 0.5  # EDM's CIFAR-10 runs mirror the images.
    c.model.num_classes = 0
    c.total_steps = 200_000
    c.global_batch_size = 512
    c.eval_every = 20_000
    c.checkpoint_every = 5_000
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.0  # Adam, as EDM.
    c.optim.warmup_steps = 20_000  # EDM's ramp: 10 Mimg at batch 512.
    c.optim.grad_clip = 0.0
    c.optim.ema_decay = 0.9999
    c.eval.episodes = 50
    return c
