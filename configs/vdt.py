"""VDT (Lu et al.) on UCF-101 at 256 px, 16-frame clips as SD VAE latents (32 x 32 x 4 per frame),
trained by mask modelling with the paper's mixture and Gaussian diffusion as DiT's code trains it:
`--config=configs/vdt.py:L/2` (or `:S/2`).

The clips are cut from the released UCF-101 videos (`data/UCF-101/<class>/v_*.avi`, read with
PyAV; a fifth of the files held out, or `train/` and `test/` folders), 16 consecutive frames
each; any `data.clips` source works (`tfds:bair_robot_pushing_small`, `moving_digits`, ...). The SD
VAE's run is made by `python -m lavin_jax.convert --vae=sd-vae-ft-ema.safetensors --out=runs/sdvae`.
"""

from lavin_jax.config import dit_recipe
from lavin_jax.models import vdt


def get_config(variant: str = "L/2"):
    c = dit_recipe("vdt", vdt.variant(variant))  # DiT's train.py, which VDT's users trained with.
    c.data.clips = "data/UCF-101"
    c.data.video_frames = 16
    c.global_batch_size = 64
    c.ddpm.cfg_scale = 1.0  # VDT samples unguided: the mask is the condition.
    c.eval.episodes = 16
    return c
