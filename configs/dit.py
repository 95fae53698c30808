"""DiT (Peebles & Xie) on ImageNet 256 px, class-conditional, trained as the paper trains it:
`--config=configs/dit.py:XL/2`, any of S, B, L, XL with patch 2, 4 or 8.

The images come from tfds (`imagenet2012`, prepared in its data dir beforehand) and are learned as
ST-VAE latents (32 x 32 x 16 at 256 px); DiT's own SD-VAE latents are 4 channels.
"""

from lavin_jax.config import base
from lavin_jax.models import dit


def get_config(variant: str = "XL/2"):
    c = base("dit")
    c.model.update(dit.variant(variant))
    c.model.in_channels = 16  # ST-VAE latent channels.
    c.data.classes = "tfds:imagenet2012"
    c.data.image_size = 256
    c.total_steps = 400_000
    c.global_batch_size = 256
    c.eval_every = 50_000
    c.checkpoint_every = 10_000
    # AdamW at a constant 1e-4, no weight decay, no warmup or clipping; EMA 0.9999 (DiT's train.py).
    c.optim.warmup_steps = 0
    c.optim.grad_clip = 0.0
    c.eval.episodes = 50  # per class: 50,000 samples, the FID-50K protocol.
    return c
