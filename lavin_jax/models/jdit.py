"""J-DiT, LaVin-DiT's joint diffusion transformer (arXiv 2411.11505).

Two token streams share one attention: the condition stream holds the clean in-context frames
[in_1, tgt_1, ..., in_K, tgt_K, query] and the target stream the noisy answer. Each stream has its
own weights (MM-DiT); both are modulated by the same timestep, told apart by learned prompt/answer
embeddings. Every in-context frame is one step along the time axis of a 3D RoPE. The model
predicts the flow-matching velocity of the target stream.

Shapes: frames are (B, T, H, W, C); tokens (B, L, D) with L = T * (H/p) * (W/p).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lavin_jax.models import layers, transformer
from lavin_jax.models.attention import attention
from lavin_jax.parallel import constrain


class Stream(nnx.Module):
    """One stream's half of a J-DiT block: AdaRN modulation, Q/K/V/out projections, QK-norm,
    and SwiGLU."""

    def __init__(self, cfg, *, dtype, rngs: nnx.Rngs):
        d, heads, kv_heads = cfg.hidden, cfg.num_heads, cfg.num_kv_heads
        kv_width = kv_heads * (d // heads)
        # scale_msa, gate_msa, scale_mlp, gate_mlp; zero so every block starts as the identity.
        self.modulation = transformer.adaln(d, 4, dtype=dtype, rngs=rngs)
        self.q = layers.dense(d, d, ("embed", "heads"), use_bias=False, dtype=dtype, rngs=rngs)
        self.k = layers.dense(d, kv_width, ("embed", "kv_heads"), use_bias=False, dtype=dtype, rngs=rngs)
        self.v = layers.dense(d, kv_width, ("embed", "kv_heads"), use_bias=False, dtype=dtype, rngs=rngs)
        self.q_norm = layers.RMSNorm(d, "heads", eps=cfg.norm_eps)
        self.k_norm = layers.RMSNorm(kv_width, "kv_heads", eps=cfg.norm_eps)
        self.out = layers.dense(d, d, ("heads", "embed"), use_bias=False, dtype=dtype, rngs=rngs)
        mlp_hidden = cfg.mlp_hidden or layers.swiglu_hidden(d)
        self.mlp = layers.SwiGLU(d, mlp_hidden, dtype=dtype, rngs=rngs)

    def qkv(self, h: jax.Array, head_dim: int):
        """QK-norm runs over the whole projected width, before the split into heads."""
        split = lambda x: x.reshape(*x.shape[:2], -1, head_dim)
        q = constrain(split(self.q_norm(self.q(h))), "batch", "length", "act_heads", None)
        k = constrain(split(self.k_norm(self.k(h))), "batch", "length", "act_kv_heads", None)
        v = constrain(split(self.v(h)), "batch", "length", "act_kv_heads", None)
        return q, k, v


class JDiTBlock(nnx.Module):
    """Per stream: x + tanh(g) * RMSNorm(f((1 + s) * RMSNorm(x))) for f = joint attention, then SwiGLU."""

    def __init__(self, cfg, *, dtype, rngs: nnx.Rngs):
        self.eps = cfg.norm_eps
        self.head_dim = cfg.hidden // cfg.num_heads
        self.attention_impl = cfg.attention
        self.cond = Stream(cfg, dtype=dtype, rngs=rngs)
        self.target = Stream(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, carry, t_cond, t_target, rope):
        c, x = carry
        streams = (self.cond, self.target)
        mods = [transformer.modulations(s.modulation, t, 4) for s, t in zip(streams, (t_cond, t_target))]

        qkv = [
            s.qkv(transformer.modulate(layers.rms_norm(h, self.eps), m[0]), self.head_dim)
            for s, h, m in zip(streams, (c, x), mods)
        ]
        q, k, v = (jnp.concatenate(parts, axis=1) for parts in zip(*qkv))
        cos, sin = rope
        q, k = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
        joint = attention(q, k, v, self.attention_impl)
        joint = joint.reshape(*joint.shape[:2], -1)
        attended = (joint[:, : c.shape[1]], joint[:, c.shape[1] :])

        outputs = []
        for s, h, a, (_, gate_msa, scale_mlp, gate_mlp) in zip(streams, (c, x), attended, mods):
            h = h + jnp.tanh(gate_msa)[:, None] * layers.rms_norm(s.out(a), self.eps)
            mlp_out = s.mlp(transformer.modulate(layers.rms_norm(h, self.eps), scale_mlp))
            h = h + jnp.tanh(gate_mlp)[:, None] * layers.rms_norm(mlp_out, self.eps)
            outputs.append(constrain(h, "batch", "length", "act_embed"))
        return tuple(outputs)


class FinalLayer(nnx.Module):
    """RMSNorm, scale-only modulation from the answer's timestep, zero-initialised projection."""

    def __init__(self, cfg, *, dtype, rngs: nnx.Rngs):
        d, p = cfg.hidden, cfg.patch_size
        self.eps = cfg.norm_eps
        self.modulation = transformer.adaln(d, 1, dtype=dtype, rngs=rngs)
        self.proj = layers.dense(
            d, p * p * cfg.in_channels, ("embed", "patch"), zero_init=True, dtype=dtype, rngs=rngs
        )

    def __call__(self, x, t_target):
        (scale,) = transformer.modulations(self.modulation, t_target, 1)
        return self.proj(transformer.modulate(layers.rms_norm(x, self.eps), scale))


class JDiT(nnx.Module):
    objective = "flow"  # the defaults of config.objective and config.conditioning.
    conditioning = "incontext"

    @staticmethod
    def default_config() -> ml_collections.ConfigDict:
        """LaVin-DiT-3.4B's shape at 12 layers; the size configs set hidden, depth and heads."""
        c = ml_collections.ConfigDict()
        c.name = "jdit"
        c.hidden = 1152
        c.depth = 12
        c.num_heads = 16
        c.num_kv_heads = 4
        c.patch_size = 2
        c.in_channels = 16  # ST-VAE latent channels; 3 in pixel space.
        c.mlp_hidden = 0  # 0: LaVin-DiT's SwiGLU rule, int(8 * hidden / 3 / 64) * 64.
        c.rope_base = 10_000.0
        # none: 3D RoPE alone, as LaVin-DiT. sincos: also DiT's fixed 2D sin-cos embedding on every
        # frame's tokens, which gives a small model its "same place in the query" attention far sooner.
        c.pos_embed = "none"
        return transformer.compute_fields(c)

    @staticmethod
    def check_config(cfg) -> None:
        transformer.check_fields(cfg, positive=("num_kv_heads", "patch_size", "in_channels"), choices=(("pos_embed", ("none", "sincos")),))
        if cfg.num_heads % cfg.num_kv_heads:
            raise ValueError(
                f"config.model.num_heads={cfg.num_heads} is not divisible by "
                f"config.model.num_kv_heads={cfg.num_kv_heads}."
            )
        if cfg.pos_embed == "sincos" and cfg.hidden % 4:
            raise ValueError(f"config.model.hidden={cfg.hidden} must be divisible by 4 for config.model.pos_embed='sincos'.")
        if (cfg.hidden // cfg.num_heads) % 6:
            raise ValueError(
                f"config.model: head_dim=hidden/num_heads={cfg.hidden // cfg.num_heads} must be divisible "
                "by 6, so 3D RoPE can split it into three even (t, h, w) parts."
            )

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        cfg = ml_collections.FrozenConfigDict(cfg)  # hashable: it is static graph data.
        self.cfg = cfg
        dtype = layers.DTYPES[cfg.dtype]
        d = cfg.hidden
        self.cond_embed = layers.PatchEmbed(cfg.patch_size, cfg.in_channels, d, dtype=dtype, rngs=rngs)
        self.target_embed = layers.PatchEmbed(cfg.patch_size, cfg.in_channels, d, dtype=dtype, rngs=rngs)
        self.t_embed = layers.TimestepEmbedder(d, rngs=rngs)
        embed_init = nnx.with_partitioning(nnx.initializers.normal(0.02), (None, "embed"))
        self.prompt_embed = nnx.Param(embed_init(rngs.params(), (1, d)))
        self.answer_embed = nnx.Param(embed_init(rngs.params(), (1, d)))

        self.blocks = transformer.stack(lambda rngs: JDiTBlock(cfg, dtype=dtype, rngs=rngs), cfg.depth, rngs)
        self.final = FinalLayer(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, t: jax.Array, context: dict) -> jax.Array:
        """x: noisy target (B, Tx, H, W, C); t: (B,) in [0, 1]; context['cond']: clean in-context
        frames (B, Tc, H, W, C). Returns the velocity, (B, Tx, H, W, C), float32."""
        cond = context["cond"]
        p = self.cfg.patch_size
        frame = (*x.shape[2:4], self.cfg.in_channels)
        same_frames = x.ndim == cond.ndim == 5 and x.shape[2:] == cond.shape[2:] == frame
        if not same_frames or frame[0] % p or frame[1] % p:
            raise ValueError(
                f"J-DiT takes target and condition frames (B, T, H, W, {self.cfg.in_channels}) of one "
                f"size divisible by patch_size={p}; got target {x.shape} and condition {cond.shape}."
            )
        t_cond_frames, (_, t_frames, height, width, _) = cond.shape[1], x.shape
        grid = (t_cond_frames + t_frames, height // p, width // p)
        rope = layers.rope_3d(grid, self.cfg.hidden // self.cfg.num_heads, self.cfg.rope_base)

        dtype = layers.DTYPES[self.cfg.dtype]
        c = self.cond_embed(cond.astype(dtype))
        h = self.target_embed(x.astype(dtype))
        if self.cfg.pos_embed == "sincos":
            # The row's half first (DiT's table transposed): the tiny recipe's figures were measured
            # so (issue 16) and its runs trained so; one run with DiT's order reached a lower video
            # segmentation mIoU (0.068 against 0.102), one seed each.
            pos = layers.posemb_sincos_2d(height // p, width // p, self.cfg.hidden, column_first=False).astype(dtype)
            c = c + jnp.tile(pos, (t_cond_frames, 1))
            h = h + jnp.tile(pos, (t_frames, 1))
        c = constrain(c, "batch", "length", "act_embed")
        h = constrain(h, "batch", "length", "act_embed")
        t_emb = self.t_embed(t)
        t_cond = t_emb + self.prompt_embed[...]
        t_target = t_emb + self.answer_embed[...]

        c, h = transformer.run_stack(self.blocks, (c, h), t_cond, t_target, rope, cfg=self.cfg)
        out = self.final(h, t_target).astype(jnp.float32)
        return layers.unpatchify(out, p, t_frames, height // p, width // p)
