"""Text for text-conditioned models (GenTron): a tokenizer and an encoder that need no files, and
the frozen released encoders (`t5`, `clip_text`) by name.

`tokenize` writes a caption as its UTF-8 bytes, BOS before and EOS after, padded to a fixed
length; `ByteEncoder` is a small pre-norm transformer over those tokens, trained with the
diffusion model, so the tiny configs run on a fresh machine. The empty caption is BOS, EOS: never
a sequence of padding alone, so every example has keys to attend to, and it is the null text that
classifier-free guidance samples against.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from lavin_jax.models import clip_text, layers, t5, transformer
from lavin_jax.parallel import constrain

PAD, BOS, EOS = 0, 1, 2
VOCAB = 256 + 3  # the byte b is token b + 3.


def tokenize(texts, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(int32 tokens [N, length], int32 lengths [N]) of the strings `texts`; a caption longer
    than `length` - 2 bytes is cut, still ending in EOS."""
    tokens = np.full((len(texts), length), PAD, np.int32)
    lengths = np.zeros(len(texts), np.int32)
    for i, text in enumerate(texts):
        body = np.frombuffer(text.encode("utf-8"), np.uint8)[: length - 2].astype(np.int32) + 3
        row = np.concatenate([[BOS], body, [EOS]])
        tokens[i, : len(row)], lengths[i] = row, len(row)
    return tokens, lengths


# Frozen encoders released as Hugging Face directories (`config.model.text_encoder_path`): each
# module has `load`, `load_tokenizer`, `shapes` and `read_config`.
FROZEN = {"t5": t5, "clip": clip_text}


def tokenizer(cfg):
    """The tokenizer of `config.model`'s text encoder: (texts, length) -> (tokens, lengths)."""
    if cfg.text_encoder == "bytes":
        return tokenize
    return _frozen_tokenizer(cfg.text_encoder, cfg.text_encoder_path)


@functools.lru_cache(maxsize=4)
def _frozen_tokenizer(kind: str, directory: str):
    return FROZEN[kind].load_tokenizer(directory)  # once per process: a data worker's too.


def frozen_weights(cfg) -> dict:
    """The weights of `config.model`'s frozen encoder in `text_encoder_dtype` (T5-XXL's are 9.5
    GB in bfloat16, twice that in a float32 release), read once per process."""
    return _frozen_weights(cfg.text_encoder, cfg.text_encoder_path, cfg.text_encoder_dtype)


@functools.lru_cache(maxsize=1)
def _frozen_weights(kind: str, directory: str, dtype: str) -> dict:
    return {name: np.asarray(w, layers.DTYPES[dtype]) for name, w in FROZEN[kind].load(directory).params.items()}


@functools.lru_cache(maxsize=4)
def frozen_encode(kind: str, directory: str):
    """The pure `encode(params, tokens, lengths)` of a frozen encoder, from its config.json alone."""
    module = FROZEN[kind]
    return functools.partial(module.encode, module.read_config(directory))


def check_frozen(cfg) -> None:
    """A frozen encoder's release fits `config.model`, from its config.json and tokenizer alone."""
    try:
        found = FROZEN[cfg.text_encoder].read_config(cfg.text_encoder_path)
        tokenizer(cfg)
    except (ValueError, OSError) as error:
        raise type(error)(f"config.model.text_encoder_path={cfg.text_encoder_path!r}: {error}") from None
    if found.width != cfg.text_width:
        raise ValueError(f"config.model.text_width={cfg.text_width} but the {cfg.text_encoder} encoder in "
                         f"config.model.text_encoder_path={cfg.text_encoder_path!r} is {found.width} wide.")
    if found.max_length < cfg.text_length:
        raise ValueError(f"config.model.text_length={cfg.text_length} is more than the {found.max_length} tokens the "
                         f"{cfg.text_encoder} encoder in {cfg.text_encoder_path!r} takes.")


class ByteEncoderBlock(nnx.Module):
    """Pre-norm: x + attention(LN(x)) over the example's tokens, then x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, attention_impl: str, *, dtype, rngs: nnx.Rngs):
        self.head_dim, self.attention_impl = width // heads, attention_impl
        norm = lambda: nnx.LayerNorm(width, epsilon=1e-5, dtype=dtype, rngs=rngs,
                                     scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("embed",)),
                                     bias_init=nnx.with_partitioning(layers.zeros, ("embed",)))
        self.norm1, self.norm2 = norm(), norm()
        self.q, self.k, self.v = (layers.dense(width, width, ("embed", "heads"), dtype=dtype, rngs=rngs) for _ in range(3))
        self.out = layers.dense(width, width, ("heads", "embed"), dtype=dtype, rngs=rngs)
        self.fc1 = layers.dense(width, 4 * width, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.fc2 = layers.dense(4 * width, width, ("mlp", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
        x = x + transformer.self_attention(self, self.norm1(x), lengths=lengths)
        return x + self.fc2(nnx.gelu(self.fc1(self.norm2(x)), approximate=True))


class ByteEncoder(nnx.Module):
    """Byte tokens (B, L) -> (tokens (B, L, width), pooled (B, width)): learned token and position
    embeddings, `depth` blocks, a final LayerNorm; padding comes out as zeros and the pooled
    vector is the mean of the example's tokens."""

    def __init__(self, cfg, *, dtype, rngs: nnx.Rngs):
        width, self.length = cfg.text_width, cfg.text_length
        # Unit-scale embeddings, as T5's: the blocks' outputs start at about unit scale too, and
        # embeddings of 0.02 (GPT-2's, whose blocks start near zero) were drowned by what
        # attention mixes in from the whole caption; trained so, the tokens of captions one word
        # apart came to differ by 1-2% (BENCHMARKS.md, "GenTron on CPU").
        init = nnx.initializers.normal(1.0)
        self.embed = nnx.Embed(VOCAB, width, rngs=rngs, embedding_init=nnx.with_partitioning(init, (None, "embed")))
        self.position = nnx.Param(nnx.with_partitioning(init, (None, "embed"))(rngs.params(), (self.length, width)))
        self.blocks = transformer.stack(
            lambda rngs: ByteEncoderBlock(width, cfg.text_heads, cfg.attention, dtype=dtype, rngs=rngs), cfg.text_depth, rngs)
        self.norm = nnx.LayerNorm(width, epsilon=1e-5, dtype=dtype, rngs=rngs,
                                  scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("embed",)),
                                  bias_init=nnx.with_partitioning(layers.zeros, ("embed",)))
        # run_stack's fields for this stack; frozen: hashable static graph data.
        self.stack_cfg = ml_collections.FrozenConfigDict(dict(depth=cfg.text_depth, scan_layers=cfg.scan_layers, remat=cfg.remat))
        self.dtype = dtype

    def __call__(self, tokens: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = (self.embed(tokens) + self.position[...][: tokens.shape[1]]).astype(self.dtype)
        h = constrain(h, "batch", "length", "act_embed")
        h = self.norm(transformer.run_stack(self.blocks, h, lengths, cfg=self.stack_cfg))
        valid = (jnp.arange(tokens.shape[1])[None, :] < lengths[:, None])[..., None]
        h = jnp.where(valid, h, 0)
        pooled = jnp.sum(h.astype(jnp.float32), axis=1) / lengths[:, None]
        return h, pooled
