"""DiT (Peebles & Xie) on ImageNet 256 px, class-conditional, trained and sampled as the paper does:
`--config=configs/dit.py:XL/2`, any of S, B, L, XL with patch 2, 4 or 8.

The images come from tfds (`imagenet2012`, prepared in its data dir beforehand) and are learned as
latents of DiT's own autoencoder, the SD VAE (32 x 32 x 4 at 256 px, scaled by 0.18215), which
`python -m lavin_jax.convert --vae=sd-vae-ft-ema.safetensors --out=runs/sdvae` makes into the run
`vae.checkpoint` names. Sampling is sample.py's: 250 respaced DDPM steps, guidance 1.5 on the
first 3 of the 4 noise channels.
"""

from lavin_jax.config import dit_recipe
from lavin_jax.models import dit


def get_config(variant: str = "XL/2"):
    c = dit_recipe("dit", dit.variant(variant))  # AdamW at a constant 1e-4 (no weight decay); EMA 0.9999.
    c.data.classes = "tfds:imagenet2012"
    c.ddpm.guided_channels = 3  # sample.py guides 3 of the 4 latent channels (kept for its FIDs).
    c.sample.classes = (207, 360, 387, 974, 88, 979, 417, 279)  # --mode=sample's grid: sample.py's classes.
    c.eval.episodes = 50  # per class: 50,000 samples, the FID-50K protocol.
    return c
