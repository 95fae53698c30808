"""GenTron (Chen et al.) text-to-image at 256 px on SD VAE latents (32 x 32 x 4), trained as DiT's
code trains (`config.dit_recipe`: Gaussian diffusion, learned sigma, AdamW at a constant 1e-4):
`--config=configs/gentron.py:XL/2` (or `:G/2`, the paper's giant, or any DiT size: S, B, L).

The caption is read by a frozen T5-XXL encoder (width 4096) released as Hugging Face safetensors
files with its tokenizer, in the directory `model.text_encoder_path` (`model.text_encoder='clip'`
and CLIP's width for CLIP's text transformer); nothing is downloaded. The captions are COCO's,
prepared by tensorflow-datasets (`data.captions`: any folder of pictures with .txt captions, tar
shards or ingested directory, data/captioned.py). For long runs, encode both once:

    python -m lavin_jax.convert --vae=sd-vae-ft-ema.safetensors --out=runs/sdvae
    python -m lavin_jax.main --mode=latent_cache --config=configs/gentron.py:XL/2 --workdir=CACHE --examples=N
    python -m lavin_jax.main --config=configs/gentron.py:XL/2 --workdir=DIR --config.data.source=latents --config.data.latent_dir=CACHE
"""

from lavin_jax.config import dit_recipe
from lavin_jax.models import gentron


def get_config(variant: str = "XL/2"):
    c = dit_recipe("gentron", gentron.variant(variant))
    c.model.update(text_encoder="t5", text_encoder_path="runs/t5-xxl", text_width=4096, text_length=120)
    c.data.captions = "tfds:coco_captions"
    c.ddpm.cfg_scale = 4.5
    c.eval.episodes = 256
    return c
