"""GenTron (Chen et al.) text-to-image at 256 px on SD VAE latents (32 x 32 x 4), trained as DiT's
code trains (`config.dit_recipe`: Gaussian diffusion, learned sigma, AdamW at a constant 1e-4):
`--config=configs/gentron.py:XL/2` (or `:G/2`, the paper's giant, or any DiT size: S, B, L).

Until the frozen T5 / CLIP text encoders and captioned image datasets land (issue 20), it learns
the captioned scenes (`data.captions='scenes'`) with the byte-level text encoder trained along.
The SD VAE's run is made by `python -m lavin_jax.convert --vae=sd-vae-ft-ema.safetensors
--out=runs/sdvae`.
"""

from lavin_jax.config import dit_recipe
from lavin_jax.models import gentron


def get_config(variant: str = "XL/2"):
    c = dit_recipe("gentron", gentron.variant(variant))
    c.ddpm.cfg_scale = 4.5
    c.eval.episodes = 256
    return c
