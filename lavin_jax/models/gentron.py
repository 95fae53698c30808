"""GenTron, DiT grown to text (Chen et al., arXiv 2312.04557): text-to-image, and text-to-video
with motion-free guidance.

An image (B, 1, H, W, C), or a clip (B, T, H, W, C), is cut into p x p patches per frame with DiT's
fixed 2D sin-cos embedding. A caption reaches the model twice: its token embeddings, projected to
the model's width, are the keys and values of a cross-attention in every block (image tokens are
the queries, the caption's padding never attended to), and its pooled embedding joins the
timestep's in the conditioning vector that adaLN reads. Each block is DiT's adaLN-Zero block
with, between its self-attention (within each frame) and its MLP, the cross-attention (a
LayerNorm, then attention whose output projection starts at zero, so a block starts as the
identity as DiT's does) and, for video (`temporal`), a temporal self-attention over each patch's
frames, its last projection zero too so that a text-to-image checkpoint starts as itself on every
frame (`config.init_from`). The frame order enters only that temporal attention, as sin-cos
embeddings added to its normalised input.

Motion-free guidance: an example marked `motion_free` has the temporal attention's mask the
identity (each frame attends to itself alone), which is how GenTron trains on images as still
clips and samples with and without motion.

The caption's encoder is the paper's frozen T5 or CLIP text transformer (`text_encoder`, read
from its released directory and run by the step, or once into the latent cache), or for the tiny
configs `text.ByteEncoder`, trained with the model and needing no files.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lavin_jax.models import dit, layers, text, transformer
from lavin_jax.parallel import constrain

# DiT's sizes and GenTron's giant, (hidden, depth, heads); a variant is a size and a patch, "XL/2".
SIZES = {**dit.SIZES, "G": (1664, 48, 16)}
PATCHES = dit.PATCHES
TEXT_ENCODERS = ("bytes", *text.FROZEN)


def variant(name: str) -> dict:
    """{'hidden', 'depth', 'num_heads', 'patch_size'} of a variant string such as 'G/2'."""
    return transformer.variant("GenTron", name, SIZES, PATCHES)


class CrossAttention(nnx.Module):
    """x + out(attention(q = LN(x), k = v = text)): image tokens read the caption."""

    def __init__(self, cfg, *, dtype, rngs: nnx.Rngs):
        d = cfg.hidden
        self.head_dim, self.attention_impl = d // cfg.num_heads, cfg.attention
        self.norm = nnx.LayerNorm(d, epsilon=1e-6, dtype=dtype, rngs=rngs,
                                  scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("embed",)),
                                  bias_init=nnx.with_partitioning(layers.zeros, ("embed",)))
        self.q, self.k, self.v = (layers.dense(d, d, ("embed", "heads"), dtype=dtype, rngs=rngs) for _ in range(3))
        self.out = layers.dense(d, d, ("heads", "embed"), zero_init=True, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, words: jax.Array, lengths: jax.Array) -> jax.Array:
        return x + transformer.self_attention(self, self.norm(x), words, lengths)


class GenTronBlock(nnx.Module):
    """DiT's block with cross-attention to the caption (and, for video, temporal attention)
    between its self-attention and its MLP."""

    def __init__(self, cfg, *, dtype, rngs: nnx.Rngs):
        self.dit = dit.DiTBlock(cfg, dtype=dtype, rngs=rngs)
        self.cross = CrossAttention(cfg, dtype=dtype, rngs=rngs)
        self.temporal = (transformer.TemporalAttention(cfg.hidden, cfg.num_heads, cfg.attention, zero_fc=True, dtype=dtype, rngs=rngs)
                         if cfg.temporal else None)

    def __call__(self, x: jax.Array, c: jax.Array, words: jax.Array, lengths: jax.Array, frames: int,
                 alone: jax.Array | None, positions: jax.Array | None) -> jax.Array:
        """x: (B, frames * N, D); words: (B, S, D) and their lengths (B,); alone: (B,) bool, the
        motion-free examples; positions: (frames, D), for the temporal attention."""

        def between(x):
            x = self.cross(x, words, lengths)
            if self.temporal is None:
                return x
            b, length, d = x.shape
            return self.temporal(x.reshape(b, frames, length // frames, d), alone, positions).reshape(b, length, d)

        return self.dit(x, c, frames=frames, between=between)


class GenTron(nnx.Module):
    objective = "ddpm"  # the defaults of config.objective and config.conditioning.
    conditioning = "text"
    # Model fields a fine-tune (config.init_from) may switch on, adding parameters to the run's:
    # a text-to-video model starts from its text-to-image run.
    grows = ("temporal",)

    @staticmethod
    def default_config() -> ml_collections.ConfigDict:
        """GenTron-XL/2 text-to-image on 4-channel latents; `configs/gentron.py:<variant>` sets
        the size, `temporal` makes it text-to-video."""
        c = ml_collections.ConfigDict()
        c.name = "gentron"
        c.update(variant("XL/2"))
        c.in_channels = 4
        c.learn_sigma = True  # ddpm: also predict the variance (2x output channels); flow: False.
        c.mlp_ratio = 4.0
        c.temporal = False  # text-to-video: a temporal attention in every block.
        # bytes: `text.ByteEncoder`, trained with the model (no files); t5 or clip: that encoder,
        # frozen, released in the Hugging Face directory `text_encoder_path`, its width `text_width`.
        c.text_encoder = "bytes"  # of TEXT_ENCODERS
        c.text_encoder_path = ""
        c.text_encoder_dtype = "bfloat16"  # of its weights on the devices; it computes in float32.
        c.text_length = 64  # tokens a caption keeps (BOS and EOS included)
        c.text_width = 256
        c.text_depth = 4
        c.text_heads = 4
        return transformer.compute_fields(c)

    @staticmethod
    def check_config(cfg) -> None:
        dit.check_fields(cfg, positive=("text_length", "text_width", "text_depth", "text_heads"))
        if cfg.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"config.model.text_encoder={cfg.text_encoder!r} must be one of {TEXT_ENCODERS}.")
        if cfg.text_length < 3:
            raise ValueError(f"config.model.text_length={cfg.text_length} must be at least 3: a caption's tokens between BOS and EOS (T5's: before EOS).")
        if cfg.text_encoder_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"config.model.text_encoder_dtype={cfg.text_encoder_dtype!r} must be 'float32' or 'bfloat16'.")
        if cfg.text_encoder != "bytes" and not cfg.text_encoder_path:
            raise ValueError(f"config.model.text_encoder={cfg.text_encoder!r} needs config.model.text_encoder_path, the directory of its release.")
        if cfg.text_width % cfg.text_heads:
            raise ValueError(f"config.model.text_width={cfg.text_width} is not divisible by config.model.text_heads={cfg.text_heads}.")

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        dtype = dit.add_embedders(self, cfg, rngs=rngs)
        cfg, d = self.cfg, cfg.hidden
        self.text_encoder = text.ByteEncoder(cfg, dtype=dtype, rngs=rngs) if cfg.text_encoder == "bytes" else None
        self.words = layers.dense(cfg.text_width, d, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.pooled1 = layers.dense(cfg.text_width, d, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.pooled2 = layers.dense(d, d, ("mlp", "embed"), dtype=dtype, rngs=rngs)
        self.blocks = transformer.stack(lambda rngs: GenTronBlock(cfg, dtype=dtype, rngs=rngs), cfg.depth, rngs)
        dit.add_final_layer(self, cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, t: jax.Array, context: dict) -> jax.Array:
        """x: noisy images (B, 1, H, W, C) or clips (B, T, H, W, C) with `temporal`; t: (B,)
        diffusion timesteps; context: 'text' (B, S) byte tokens and 'text_length' (B,)
        (`text.tokenize`), or with a frozen encoder its 'text_hidden' (B, S, text_width) and
        'text_pooled' (B, text_width), and for clips optionally 'motion_free' (B,) bool. Returns (B, T, H, W,
        out_channels), float32."""
        p, channels = self.cfg.patch_size, self.cfg.in_channels
        frames = x.shape[1]
        if x.ndim != 5 or x.shape[-1] != channels or x.shape[2] % p or x.shape[3] % p or (frames > 1 and not self.cfg.temporal):
            raise ValueError(
                f"GenTron takes images (B, 1, H, W, {channels}), or clips with config.model.temporal, with H and W divisible "
                f"by patch_size={p}; got {x.shape}."
            )
        height, width = x.shape[2] // p, x.shape[3] // p
        dtype = layers.DTYPES[self.cfg.dtype]
        h = self.patch_embed(layers.patchify(x.astype(dtype), p))
        h = h + jnp.tile(layers.posemb_sincos_2d(height, width, self.cfg.hidden), (frames, 1)).astype(dtype)
        h = constrain(h, "batch", "length", "act_embed")

        lengths = context["text_length"]
        if self.text_encoder is not None:
            tokens, pooled = self.text_encoder(context["text"], lengths)
        else:  # a frozen encoder's output, from the step or the latent cache.
            tokens, pooled = context["text_hidden"].astype(dtype), context["text_pooled"]
        words = constrain(self.words(tokens), "batch", "length", "act_embed")
        c = self.t_embed(t) + self.pooled2(nnx.silu(self.pooled1(pooled.astype(dtype))))

        alone = context.get("motion_free") if self.cfg.temporal else None
        positions = layers.posemb_sincos_1d(jnp.arange(frames), self.cfg.hidden) if self.cfg.temporal else None
        h = transformer.run_stack(self.blocks, h, c, words, lengths, frames, alone, positions, cfg=self.cfg)
        return dit.final_layer(self, h, c, frames, height, width)
