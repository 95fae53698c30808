"""The latent DiffiT (Hatamizadeh et al.) on ImageNet 256 px, class-conditional, trained as the
paper does and sampled as NVlabs' release: `--config=configs/diffit.py:XL/2` (the released size:
depth 28, width 1152, 561M parameters), or any of S, B, L, XL with patch 2, 4 or 8.

The images come from tfds (`imagenet2012`, prepared in its data dir beforehand) as SD VAE latents
(the run `runs/sdvae`: `python -m lavin_jax.convert --vae=sd-vae-ft-ema.safetensors`), learnt by
DDPM with learned variances (ADM's settings, as the paper), AdamW at 3e-4, batch 256, EMA 0.9999.
TMSA attends over the whole 16 x 16 token grid (`model.window`, 32 at 512 px).

Sampling is the release's `sample.py` at 256 px: 250 respaced DDPM steps, guidance on 3 of the 4
noise channels at 4.4, ramped from 1 by the power-cosine schedule. At 512 px the release guides at
a constant 1.49: `--config.data.image_size=512 --config.model.window=32
--config.ddpm.guidance_schedule=constant --config.ddpm.cfg_scale=1.49` (a converted file sets the
size and window itself).
"""

from lavin_jax.config import dit_recipe
from lavin_jax.models import diffit


def get_config(variant: str = "XL/2"):
    c = dit_recipe("diffit", diffit.variant(variant))
    c.model.window = c.data.image_size // c.vae.downsample // c.model.patch_size
    c.data.classes = "tfds:imagenet2012"
    c.optim.lr = 3e-4  # the paper's, at batch 256.
    c.ddpm.guided_channels = 3
    c.ddpm.cfg_scale = 4.4  # the release's scripts (the paper reports 4.6).
    c.ddpm.guidance_schedule = "power_cosine"
    c.sample.classes = (207, 360, 387, 974, 88, 979, 417, 279)
    c.eval.episodes = 50  # per class: 50,000 samples, the FID-50K protocol.
    return c
