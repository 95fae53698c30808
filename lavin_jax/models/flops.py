"""Forward FLOPs of one example in closed form, per family, for MFU (`lavin_jax.bench`).

A multiply-add counts as 2. Every matrix product (embeddings, projections, MLPs, modulations) and
both attention products (scores and the weighted sum) that the output needs are counted;
elementwise work, norms and position embeddings are left out, as in the papers' tables (DiT's
Table 4 counts multiply-adds: half these figures). `summary.forward_flops` counts the traced
forward instead, and the tests hold the two together.

`shapes` are the model's inputs for one example, without the batch axis: {"target": (T, H, W, C),
context field: shape, ...} (latent frames in latent space).
"""

from __future__ import annotations

from lavin_jax.models import layers

FREQUENCIES = 256  # the timestep embedder's sinusoidal features (`layers.TimestepEmbedder`).


def _timestep(d: int) -> int:
    return 2 * FREQUENCIES * d + 2 * d * d


def jdit(cfg, shapes: dict) -> int:
    """J-DiT: both streams' blocks over the joint sequence. The last block's condition stream after
    attention feeds nothing (only the target is decoded), so it is not counted; XLA removes it too."""
    d, p = cfg.hidden, cfg.patch_size
    kv = cfg.num_kv_heads * (d // cfg.num_heads)
    mlp = cfg.mlp_hidden or layers.swiglu_hidden(d)
    target_frames, height, width, _ = shapes["target"]
    per_frame = (height // p) * (width // p)
    n_cond, n_target = shapes["cond"][0] * per_frame, target_frames * per_frame
    n = n_cond + n_target
    patch = p * p * cfg.in_channels
    # Per token of either stream in a block: q and out (d x d), k and v (d x kv), SwiGLU.
    token = 2 * (2 * d * d + 2 * d * kv + 3 * d * mlp)
    block = n * token + 4 * n * n * d + 2 * (2 * d * 4 * d)  # + attention + both streams' modulations
    embed = 2 * n * patch * d + _timestep(d)
    final = 2 * d * d + 2 * n_target * d * patch
    dead = n_cond * 2 * (d * d + 3 * d * mlp)  # the last block's condition out-projection and SwiGLU
    return cfg.depth * block + embed + final - dead


def dit(cfg, shapes: dict) -> int:
    """DiT: self-attention blocks over the image's patches, adaLN-Zero's six modulations each."""
    d, p = cfg.hidden, cfg.patch_size
    _, height, width, channels = shapes["target"]
    n = (height // p) * (width // p)
    mlp = int(d * cfg.mlp_ratio)
    out = p * p * channels * (2 if cfg.learn_sigma else 1)
    block = n * 2 * (4 * d * d + 2 * d * mlp) + 4 * n * n * d + 2 * d * 6 * d
    embed = 2 * n * p * p * channels * d + _timestep(d)
    final = 2 * d * 2 * d + 2 * n * d * out
    return cfg.depth * block + embed + final


def vdt(cfg, shapes: dict) -> int:
    """VDT: per block a temporal attention over each patch's T frames (its q, k, v, out and fc
    projections), then DiT's block with attention within each frame."""
    d, p = cfg.hidden, cfg.patch_size
    frames, height, width, channels = shapes["target"]
    n = (height // p) * (width // p)
    tokens = frames * n
    mlp = int(d * cfg.mlp_ratio)
    out = p * p * channels * (2 if cfg.learn_sigma else 1)
    temporal = tokens * 2 * 5 * d * d + n * 4 * frames * frames * d
    spatial = tokens * 2 * (4 * d * d + 2 * d * mlp) + frames * 4 * n * n * d + 2 * d * 6 * d
    embed = 2 * tokens * p * p * channels * d + _timestep(d)
    final = 2 * d * 2 * d + 2 * tokens * d * out
    return cfg.depth * (temporal + spatial) + embed + final


def gentron(cfg, shapes: dict) -> int:
    """GenTron: the byte encoder over the caption's S tokens (all of them: padding is masked, not
    skipped; a frozen encoder is not the model's, as the autoencoder is not), the caption's projections, then per block DiT's block within each frame, the
    cross-attention (queries from the image, keys and values from the caption) and, for video,
    the temporal attention."""
    d, p, w = cfg.hidden, cfg.patch_size, cfg.text_width
    frames, height, width, channels = shapes["target"]
    n = (height // p) * (width // p)
    tokens, words = frames * n, shapes["text" if "text" in shapes else "text_hidden"][0]
    mlp = int(d * cfg.mlp_ratio)
    out = p * p * channels * (2 if cfg.learn_sigma else 1)
    encoder = cfg.text_depth * (words * 2 * (4 * w * w + 2 * w * 4 * w) + 4 * words * words * w) if cfg.text_encoder == "bytes" else 0
    caption = 2 * words * w * d + 2 * w * d + 2 * d * d  # the words' projection, the pooled MLP.
    spatial = tokens * 2 * (4 * d * d + 2 * d * mlp) + frames * 4 * n * n * d + 2 * d * 6 * d
    cross = tokens * 2 * 2 * d * d + words * 2 * 2 * d * d + 4 * tokens * words * d
    temporal = tokens * 2 * 5 * d * d + n * 4 * frames * frames * d if cfg.temporal else 0
    embed = 2 * tokens * p * p * channels * d + _timestep(d)
    final = 2 * d * 2 * d + 2 * tokens * d * out
    return encoder + caption + cfg.depth * (spatial + cross + temporal) + embed + final


def diffit(cfg, shapes: dict) -> int:
    """The latent DiffiT: per block TMSA (the tokens' fused q, k, v and the time token's, attention
    within windows of w x w tokens, the output projection) and the MLP; no modulations."""
    d, p, w = cfg.hidden, cfg.patch_size, cfg.window
    _, height, width, channels = shapes["target"]
    n = (height // p) * (width // p)
    mlp = int(d * cfg.mlp_ratio)
    out = p * p * channels * (2 if cfg.learn_sigma else 1)
    block = n * 2 * (4 * d * d + 2 * d * mlp) + 4 * n * w * w * d + 2 * d * 3 * d
    embed = 2 * n * p * p * channels * d + _timestep(d)
    return cfg.depth * block + embed + 2 * n * d * out


def diffit_image(cfg, shapes: dict) -> int:
    """The U-shaped DiffiT: every convolution (3x3 in each ResBlock, 1x1 shortcuts, the strided
    ones down, those after each 2x up, in and out) and each ResBlock's DiffiT block at its
    resolution (as `diffit`'s, windows of w x w, the time token's projection once)."""
    _, side, _, channels = shapes["target"]
    widths, w, tw = tuple(cfg.channels), cfg.window, cfg.time_width
    conv = lambda n, k, c_in, c_out: 2 * n * k * k * c_in * c_out

    def resblock(n, c_in, c_out):
        mlp = int(c_out * cfg.mlp_ratio)
        block = n * 2 * (4 * c_out * c_out + 2 * c_out * mlp) + 4 * n * w * w * c_out + 2 * tw * 3 * c_out
        return conv(n, 3, c_in, c_out) + (conv(n, 1, c_in, c_out) if c_in != c_out else 0) + block

    n = lambda level: (side >> level) ** 2
    total = _timestep(tw)  # the time token's MLP.
    total += conv(n(0), 3, channels, widths[0]) + conv(n(0), 3, widths[0], channels)
    for level, width in enumerate(widths):
        total += sum(resblock(n(level), widths[max(level - 1, 0)] if i == 0 else width, width) for i in range(cfg.blocks))
        if level < len(widths) - 1:
            total += conv(n(level + 1), 3, width, width)  # down
            total += conv(n(level), 3, widths[level + 1], widths[level + 1])  # up, at this level's size
            total += sum(resblock(n(level), widths[level + 1] + width if i == 0 else width, width) for i in range(cfg.blocks))
    return total


FORMULAS = {"jdit": jdit, "dit": dit, "vdt": vdt, "gentron": gentron, "diffit": diffit, "diffit_image": diffit_image}


def forward(model_cfg, shapes: dict) -> int:
    """The closed-form forward FLOPs of `model_cfg`'s family on one example of `shapes`."""
    if model_cfg.name not in FORMULAS:
        raise ValueError(f"config.model.name={model_cfg.name!r} has no closed-form FLOPs; known: {', '.join(FORMULAS)}.")
    return FORMULAS[model_cfg.name](model_cfg, shapes)
