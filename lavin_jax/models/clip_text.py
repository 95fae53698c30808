"""CLIP's text transformer (Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision"), frozen, as GenTron reads captions with it: pure JAX functions of the
weights of a released Hugging Face directory (`CLIPTextModel`, or the text half of a whole
`CLIPModel`, whose config.json nests the text's fields under `text_config`), tokenized by the
directory's own `tokenizer.json` (the tokenizers library). The text transformer's tensors are
named under `text_model.`, except in a `CLIPTextModel` saved by transformers 5, which drops it.

The facts, from the paper, OpenAI's clip/model.py and transformers' modeling_clip.py:
  - learned token and position embeddings, summed; `max_position_embeddings` (77) tokens at most;
  - pre-LN blocks, x + attention(LN1(x)) then x + MLP(LN2(x)), and a final LayerNorm, eps
    `layer_norm_eps`;
  - attention with biased q/k/v/out projections, causal (a token reads itself and those before),
    scaled by 1/sqrt(head_dim);
  - the MLP fc2(act(fc1 x)), act `hidden_act`: quick_gelu, x * sigmoid(1.702 x) (OpenAI's
    releases), or the exact gelu;
  - the pooled output is the final-normed state of the EOS token, which ends the caption.
Tokens are BOS, the text's tokens, EOS, padded with EOS (as OpenAI's released tokenizer pads);
causality keeps the padding away from the valid tokens, and `encode` zeroes its rows.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers

from lavin_jax.models import layers, released

NETWORK = "CLIP text encoder"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
TOKENIZER = "tokenizer.json"
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings")
DEFAULTS = {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}  # transformers' defaults.
ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
}
ROOT = "text_model."  # where released files name the text transformer's tensors (but see `root`).
# A whole CLIPModel's tensors beside the text transformer's (CLIPTextModelWithProjection's projection too).
IGNORED = ("vision_model.", "visual_projection.weight", "text_projection.weight", "logit_scale")


@dataclasses.dataclass(frozen=True)
class Config:
    vocab: int
    width: int
    depth: int
    heads: int
    mlp: int
    activation: str  # a key of ACTIVATIONS
    eps: float
    max_length: int


def parse_config(config: Mapping, source: str) -> Config:
    """The Config of a CLIP text (or whole CLIP) config.json's contents; `source` names it."""
    if config.get("model_type", "clip") not in ("clip", "clip_text_model"):
        raise ValueError(f"{source} describes a {config['model_type']!r} model, not CLIP.")
    if "text_config" in config:
        config, source = config["text_config"], f"{source}'s text_config"
    c = released.settings(config, source, NETWORK, REQUIRED, DEFAULTS)
    if c["hidden_act"] not in ACTIVATIONS:
        raise ValueError(f"{source} has hidden_act {c['hidden_act']!r}; the {NETWORK} takes one of {sorted(ACTIVATIONS)}.")
    if c["hidden_size"] % c["num_attention_heads"]:
        raise ValueError(f"{source}'s hidden_size {c['hidden_size']} is not a multiple of num_attention_heads {c['num_attention_heads']}.")
    return Config(c["vocab_size"], c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["intermediate_size"],
                  c["hidden_act"], c["layer_norm_eps"], c["max_position_embeddings"])


def read_config(directory: str) -> Config:
    config, path = released.read_config(directory, NETWORK)
    return parse_config(config, path)


def release(cfg: Config, root: str = ROOT) -> released.Release:
    """Our parameters and the released tensors each is made of, named under `root`."""
    d = cfg.width

    def layer(name: str, shape: tuple[int, ...], linear: bool = False) -> released.Source:
        return released.per_layer(f"{root}encoder.layers.{{i}}.{name}", cfg.depth, shape, linear=linear)

    def dense(ours: str, name: str, features: int, out: int) -> dict[str, released.Source]:
        return {f"blocks/{ours}/kernel": layer(f"{name}.weight", (out, features), True), f"blocks/{ours}/bias": layer(f"{name}.bias", (out,))}

    def norm(ours: str, name: str) -> dict[str, released.Source]:
        return {f"blocks/{ours}/scale": layer(f"{name}.weight", (d,)), f"blocks/{ours}/bias": layer(f"{name}.bias", (d,))}

    sources = {
        "token_embed/embedding": released.tensor(f"{root}embeddings.token_embedding.weight", (cfg.vocab, d)),
        "position_embed/embedding": released.tensor(f"{root}embeddings.position_embedding.weight", (cfg.max_length, d)),
        **norm("norm1", "layer_norm1"),
        **{k: v for p in "qkv" for k, v in dense(p, f"self_attn.{p}_proj", d, d).items()},
        **dense("out", "self_attn.out_proj", d, d),
        **norm("norm2", "layer_norm2"),
        **dense("fc1", "mlp.fc1", d, cfg.mlp),
        **dense("fc2", "mlp.fc2", cfg.mlp, d),
        "final_norm/scale": released.tensor(f"{root}final_layer_norm.weight", (d,)),
        "final_norm/bias": released.tensor(f"{root}final_layer_norm.bias", (d,)),
    }
    # Older files also hold the position indices, a buffer.
    return released.Release(NETWORK, sources, (*IGNORED, f"{root}embeddings.position_ids"))


def root(checkpoint: released.Checkpoint) -> str:
    """Where `checkpoint` names the text transformer's tensors: under ROOT, or at the top."""
    return "" if "embeddings.token_embedding.weight" in checkpoint.shapes else ROOT


def shapes(directory: str) -> dict[str, tuple[int, ...]]:
    """Our parameters' shapes, from config.json alone (ahead-of-time compilation)."""
    return release(read_config(directory)).shapes()


def encode(cfg: Config, params: Mapping[str, jax.Array], tokens: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(hidden float32 (B, L, width), padding rows zero; pooled float32 (B, width), the EOS
    token's, the last valid one) of tokens (B, L) whose first `lengths` (B,) are valid. Pure:
    jit it with `functools.partial` over cfg, as `load` makes it."""
    batch, length = tokens.shape
    if length > cfg.max_length:
        raise ValueError(f"{length} tokens exceed the {NETWORK}'s {cfg.max_length} positions.")
    f32 = lambda a: jnp.asarray(a).astype(jnp.float32)
    head_dim = cfg.width // cfg.heads
    x = f32(jnp.take(params["token_embed/embedding"], tokens, axis=0)) + f32(params["position_embed/embedding"][:length])
    causal = np.tril(np.ones((length, length), bool))
    act = ACTIVATIONS[cfg.activation]

    def block(x, w):
        w = {name: f32(value) for name, value in w.items()}
        dense = lambda name, h: h @ w[f"{name}/kernel"] + w[f"{name}/bias"]
        h = layers.layer_norm(x, cfg.eps) * w["norm1/scale"] + w["norm1/bias"]
        q, k, v = (dense(p, h).reshape(batch, length, cfg.heads, head_dim) for p in "qkv")
        # Plain attention: `attention.attention` is not causal.
        logits = jnp.where(causal, jnp.einsum("bqhd,bkhd->bhqk", q, k) * head_dim**-0.5, jnp.finfo(jnp.float32).min)
        x = x + dense("out", jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v).reshape(batch, length, -1))
        h = layers.layer_norm(x, cfg.eps) * w["norm2/scale"] + w["norm2/bias"]
        return x + dense("fc2", act(dense("fc1", h))), None

    x, _ = jax.lax.scan(block, x, {name.removeprefix("blocks/"): p for name, p in params.items() if name.startswith("blocks/")})
    x = layers.layer_norm(x, cfg.eps) * f32(params["final_norm/scale"]) + f32(params["final_norm/bias"])
    pooled = x[jnp.arange(batch), lengths - 1]
    valid = jnp.arange(length)[None, :] < lengths[:, None]
    return jnp.where(valid[..., None], x, 0.0), pooled


def read_tokenizer(directory: str) -> tuple[Callable[[Sequence[str]], list[list[int]]], int, int]:
    """(the directory's tokenizer as a function texts -> their tokens' ids without BOS and EOS,
    BOS's id, EOS's id)."""
    path = released.find_file(directory, (TOKENIZER,), f"{NETWORK} tokenizer")
    tokenizer = released.read_tokenizer_json(path)
    ids = [tokenizer.token_to_id(token) for token in (BOS, EOS)]
    for token, id_ in zip((BOS, EOS), ids):
        if id_ is None:
            raise ValueError(f"{path} has no {token} token: it is not CLIP's tokenizer.")
    return (lambda texts: [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]), *ids


def tokenize(tokens: Callable[[Sequence[str]], list[list[int]]], bos: int, eos: int, max_length: int, texts: Sequence[str], length: int):
    """(int32 tokens [N, length], int32 lengths [N]): BOS, each text's tokens, EOS, cut to keep
    the EOS, padded with EOS; the empty text is BOS, EOS."""
    return released.pack(tokens(texts), length, max_length, (bos,), (eos,), eos)


def load_tokenizer(directory: str):
    """The `tokenize(texts, length)` of the release in `directory`, its weights left unread (the
    data workers need no more)."""
    text_tokens, bos, eos = read_tokenizer(directory)
    return functools.partial(tokenize, text_tokens, bos, eos, read_config(directory).max_length)


def load(directory: str) -> released.Encoder:
    """The CLIP text encoder released in `directory`, everything checked before a tensor is read."""
    cfg = read_config(directory)
    to_tokens = load_tokenizer(directory)
    checkpoint = released.Checkpoint(directory, NETWORK)
    params = release(cfg, root(checkpoint)).read(checkpoint)
    return released.Encoder(cfg.width, cfg.max_length, params, to_tokens, functools.partial(encode, cfg))


def write_random(directory: str, config: Mapping, seed: int = 0, *, root: str = ROOT, **options) -> dict[str, np.ndarray]:
    """A random CLIP text encoder release in `directory`, its tensors named under `root`
    (`options` as released.write_random's), with a byte-level BPE tokenizer learnt from
    released.CAPTIONS (vocab_size tokens at most, at least 258), CLIP's BOS and EOS last and a
    post-processor that adds them, as CLIP's tokenizer.json has. A stand-in: a character no
    caption ends a word with is lost at a word's end, where CLIP's vocabulary has every byte.
    Returns the tensors written."""
    tensors = released.write_random(directory, release(parse_config(config, "config"), root), config, seed, **options)
    vocab = (config["text_config"] if "text_config" in config else config)["vocab_size"]
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE(end_of_word_suffix="</w>"))
    tokenizer.normalizer = tokenizers.normalizers.Lowercase()
    # CLIP's words (whitespace dropped), then each word's bytes as printable characters.
    words = tokenizers.Regex(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Split(words, behavior="removed", invert=True),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab - 2, show_progress=False, end_of_word_suffix="</w>",
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(released.CAPTIONS, trainer)
    tokenizer.add_special_tokens([BOS, EOS])
    tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(token, tokenizer.token_to_id(token)) for token in (BOS, EOS)])
    tokenizer.save(os.path.join(directory, TOKENIZER))
    return tensors
