"""T5's encoder (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
Text-to-Text Transformer"), frozen, as GenTron reads captions with it: pure JAX functions of the
weights of a released Hugging Face directory (`T5EncoderModel`, or a whole
`T5ForConditionalGeneration` whose decoder is left unread), tokenized by the directory's own
`spiece.model` (sentencepiece) or `tokenizer.json` (the tokenizers library).

The facts, from the paper, Mesh TensorFlow's T5 and transformers' modeling_t5.py:
  - token embeddings (`shared`), no position embeddings and no embedding scale;
  - pre-norm blocks, x + attention(norm(x)) then x + feed-forward(norm(x)), and a final norm; the
    norm is RMS norm (no mean, no bias, eps `layer_norm_epsilon`), computed in float32;
  - `num_heads` heads of width `d_kv`, whose total may differ from `d_model`; the logits are NOT
    scaled by 1/sqrt(d_kv) (T5 folds that into q's initialisation);
  - one relative position bias for all layers, held by block 0: each key - query offset falls in
    a bucket (`relative_position_buckets`), each bucket a learned bias per head;
  - the feed-forward is config.json's `feed_forward_proj`: "relu" (T5 v1.0: wo(relu(wi x))) or
    "gated-gelu" (v1.1, Flan-T5: wo(gelu(wi_0 x) * wi_1 x), gelu the tanh approximation).
Tokens are the text's pieces then EOS (1), padded with 0; padding keys are never attended to.
`encode` returns the final hidden states (padding rows zero) and their mean over the valid tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import sentencepiece
import tokenizers

from lavin_jax.models import layers, released

NETWORK = "T5 encoder"
PAD, EOS, UNK = 0, 1, 2
TOKENIZERS = ("spiece.model", "tokenizer.json")  # in the order looked for.
REQUIRED = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
# transformers' defaults for the fields older releases lack (t5-small's config.json has no
# feed_forward_proj); 512 tokens is T5's training length, though relative positions take any.
DEFAULTS = {"feed_forward_proj": "relu", "layer_norm_epsilon": 1e-6, "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 128, "n_positions": 512}
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
}


@dataclasses.dataclass(frozen=True)
class Config:
    vocab: int
    width: int
    depth: int
    heads: int
    head_dim: int
    mlp: int
    gated: bool
    activation: str  # a key of ACTIVATIONS
    buckets: int
    max_distance: int
    eps: float
    max_length: int


def parse_config(config: Mapping, source: str) -> Config:
    """The Config of a T5 config.json's contents; `source` names it in messages."""
    if config.get("model_type", "t5") not in ("t5", "mt5"):
        raise ValueError(f"{source} describes a {config['model_type']!r} model, not T5.")
    c = released.settings(config, source, NETWORK, REQUIRED, DEFAULTS)
    kind = c["feed_forward_proj"]
    parts = kind.split("-")
    gated = len(parts) == 2 and parts[0] == "gated"
    if not (len(parts) == 1 or gated) or parts[-1] not in ACTIVATIONS:
        raise ValueError(f"{source} has feed_forward_proj {kind!r}; the {NETWORK} takes one of {sorted(ACTIVATIONS)}, or 'gated-' one.")
    # transformers reads "gated-gelu" as the tanh approximation, the gelu v1.1 was trained with.
    activation = "gelu_new" if kind == "gated-gelu" else parts[-1]
    return Config(c["vocab_size"], c["d_model"], c["num_layers"], c["num_heads"], c["d_kv"], c["d_ff"], gated, activation,
                  c["relative_attention_num_buckets"], c["relative_attention_max_distance"], c["layer_norm_epsilon"], c["n_positions"])


def read_config(directory: str) -> Config:
    config, path = released.read_config(directory, NETWORK)
    return parse_config(config, path)


def release(cfg: Config) -> released.Release:
    """Our parameters and the released tensors each is made of."""
    d, inner = cfg.width, cfg.heads * cfg.head_dim

    def layer(name: str, shape: tuple[int, ...], linear: bool = False) -> released.Source:
        return released.per_layer(f"encoder.block.{{i}}.layer.{name}.weight", cfg.depth, shape, linear=linear)

    feed_forward = ({"blocks/wi_0/kernel": layer("1.DenseReluDense.wi_0", (cfg.mlp, d), True),
                     "blocks/wi_1/kernel": layer("1.DenseReluDense.wi_1", (cfg.mlp, d), True)}
                    if cfg.gated else {"blocks/wi/kernel": layer("1.DenseReluDense.wi", (cfg.mlp, d), True)})
    sources = {
        # T5EncoderModel ties the encoder's embedding to `shared`; files may hold either name, or both.
        "token_embed/embedding": released.tensor("shared.weight", (cfg.vocab, d), tied=("encoder.embed_tokens.weight",)),
        "relative_bias/embedding": released.tensor(
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", (cfg.buckets, cfg.heads)),
        "blocks/attention_norm/scale": layer("0.layer_norm", (d,)),
        **{f"blocks/{p}/kernel": layer(f"0.SelfAttention.{p}", (inner, d), True) for p in "qkv"},
        "blocks/o/kernel": layer("0.SelfAttention.o", (d, inner), True),
        "blocks/mlp_norm/scale": layer("1.layer_norm", (d,)),
        **feed_forward,
        "blocks/wo/kernel": layer("1.DenseReluDense.wo", (d, cfg.mlp), True),
        "final_norm/scale": released.tensor("encoder.final_layer_norm.weight", (d,)),
    }
    return released.Release(NETWORK, sources, ignored=("decoder.", "lm_head.weight"))


def shapes(directory: str) -> dict[str, tuple[int, ...]]:
    """Our parameters' shapes, from config.json alone (ahead-of-time compilation)."""
    return release(read_config(directory)).shapes()


def relative_position_buckets(offsets: np.ndarray, num_buckets: int, max_distance: int) -> np.ndarray:
    """T5's bidirectional bucket of each key - query offset: half the buckets for keys after the
    query; within a half, distances below half of it have a bucket each, longer ones share
    log-spaced buckets up to max_distance, and anything farther the last.

    Computed on the host in float64 (the length is static): exact where a bucket starts at a
    power of two, where transformers' float32 log agrees only if it rounds correctly."""
    half = num_buckets // 2
    exact = half // 2
    distance = np.abs(offsets)
    far = exact + (np.log(np.maximum(distance, exact) / exact) / np.log(max_distance / exact) * (half - exact)).astype(np.int64)
    return np.where(offsets > 0, half, 0) + np.where(distance < exact, distance, np.minimum(far, half - 1))


def encode(cfg: Config, params: Mapping[str, jax.Array], tokens: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(hidden float32 (B, L, width), padding rows zero; pooled float32 (B, width), the mean of
    the valid rows) of tokens (B, L) whose first `lengths` (B,) are valid. Pure: jit it with
    `functools.partial` over cfg, as `load` makes it."""
    batch, length = tokens.shape
    if length > cfg.max_length:
        raise ValueError(f"{length} tokens exceed the {NETWORK}'s {cfg.max_length}.")
    f32 = lambda a: jnp.asarray(a).astype(jnp.float32)
    valid = jnp.arange(length)[None, :] < lengths[:, None]  # (B, L)
    x = f32(jnp.take(params["token_embed/embedding"], tokens, axis=0))
    buckets = relative_position_buckets(np.arange(length)[None, :] - np.arange(length)[:, None], cfg.buckets, cfg.max_distance)
    bias = f32(params["relative_bias/embedding"])[buckets].transpose(2, 0, 1)  # (heads, queries, keys)
    keys = valid[:, None, None, :]  # padding keys are never attended to.
    act = ACTIVATIONS[cfg.activation]

    def block(x, w):
        w = {name: f32(value) for name, value in w.items()}
        h = layers.rms_norm(x, cfg.eps) * w["attention_norm/scale"]
        q, k, v = ((h @ w[f"{p}/kernel"]).reshape(batch, length, cfg.heads, cfg.head_dim) for p in "qkv")
        # Plain attention: `attention.attention` takes neither a bias nor unscaled logits.
        logits = jnp.where(keys, jnp.einsum("bqhd,bkhd->bhqk", q, k) + bias, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1)
        x = x + jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, -1) @ w["o/kernel"]
        h = layers.rms_norm(x, cfg.eps) * w["mlp_norm/scale"]
        hidden = act(h @ w["wi_0/kernel"]) * (h @ w["wi_1/kernel"]) if cfg.gated else act(h @ w["wi/kernel"])
        return x + hidden @ w["wo/kernel"], None

    # Scanned over the stacked layers: one layer's program, compiled once for T5-XXL's 24.
    x, _ = jax.lax.scan(block, x, {name.removeprefix("blocks/"): p for name, p in params.items() if name.startswith("blocks/")})
    x = jnp.where(valid[..., None], layers.rms_norm(x, cfg.eps) * f32(params["final_norm/scale"]), 0.0)
    return x, x.sum(axis=1) / lengths[:, None].astype(jnp.float32)


def read_tokenizer(directory: str) -> Callable[[Sequence[str]], list[list[int]]]:
    """The directory's tokenizer as a function texts -> their pieces' ids, without EOS."""
    path = released.find_file(directory, TOKENIZERS, f"{NETWORK} tokenizer")
    if path.endswith(".json"):
        tokenizer = released.read_tokenizer_json(path)
        return lambda texts: [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]
    try:
        processor = sentencepiece.SentencePieceProcessor(model_file=path)
    except (OSError, RuntimeError) as error:
        raise ValueError(f"{path} is not a sentencepiece model ({error}).") from None
    return lambda texts: processor.encode(list(texts))


def tokenize(pieces: Callable[[Sequence[str]], list[list[int]]], max_length: int, texts: Sequence[str], length: int):
    """(int32 tokens [N, length], int32 lengths [N]): each text's pieces then EOS, cut to keep
    the EOS, padded with PAD; the empty text is EOS alone."""
    return released.pack(pieces(texts), length, max_length, (), (EOS,), PAD)


def load_tokenizer(directory: str):
    """The `tokenize(texts, length)` of the release in `directory`, its weights left unread (the
    data workers need no more)."""
    return functools.partial(tokenize, read_tokenizer(directory), read_config(directory).max_length)


def load(directory: str) -> released.Encoder:
    """The T5 encoder released in `directory`, everything checked before a tensor is read."""
    cfg = read_config(directory)
    to_tokens = load_tokenizer(directory)
    params = release(cfg).read(released.Checkpoint(directory, NETWORK))
    return released.Encoder(cfg.width, cfg.max_length, params, to_tokens, functools.partial(encode, cfg))


def write_random(directory: str, config: Mapping, seed: int = 0, *, tokenizer: str = "spiece.model", **options) -> dict[str, np.ndarray]:
    """A random T5 encoder release in `directory` (`options` as released.write_random's), with a
    sentencepiece model learnt from released.CAPTIONS (at most vocab_size pieces) written as
    `tokenizer`: spiece.model, or tokenizer.json as transformers converts it (Unigram over
    the same pieces and scores). Returns the tensors written."""
    tensors = released.write_random(directory, release(parse_config(config, "config")), config, seed, **options)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(released.CAPTIONS), model_writer=model, vocab_size=config["vocab_size"], hard_vocab_limit=False,
        model_type="unigram", pad_id=PAD, eos_id=EOS, unk_id=UNK, bos_id=-1, num_threads=1, minloglevel=2)
    path = os.path.join(directory, tokenizer)
    if tokenizer == "spiece.model":
        with open(path, "wb") as f:
            f.write(model.getvalue())
        return tensors
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    converted = tokenizers.Tokenizer(tokenizers.models.Unigram(vocab, unk_id=UNK, byte_fallback=False))
    converted.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    converted.add_special_tokens([vocab[PAD][0], vocab[EOS][0], vocab[UNK][0]])
    converted.post_processor = tokenizers.processors.TemplateProcessing(single=f"$A {vocab[EOS][0]}", special_tokens=[(vocab[EOS][0], EOS)])
    converted.save(path)
    return tensors
