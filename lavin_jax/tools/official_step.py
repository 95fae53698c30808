"""The official PyTorch J-DiT's train step at a J-DiT config's shapes: bench's side by side.

    python -m lavin_jax.bench --config=configs/tiny.py --parts=train,official --official=~/LaVin-DiT

The LaVin-DiT authors' model (`lib/model/dit.py` of a checkout of DerrickWang005/LaVin-DiT) is
built at the config's width, depth, heads, key/value groups, patch and channels, fed random
tokens of the shapes our step trains on (`Bench.model_shapes` of the largest batch), and timed
for forward, MSE, backward and AdamW (gradients clipped as `optim.grad_clip` clips ours), eager,
in the process's default threads. The ratio our step / theirs is the figure issue 22 tracks.

Neither torch nor the checkout is a dependency: both are inputs the harness is pointed at. The
official code imports CUDA-only kernels; here PyTorch's own stand in for them, as the code's
semantics need: flash-attn's `flash_attn_func` by `scaled_dot_product_attention` (grouped keys
and values, tokens-first layout), apex's fused LayerNorm and RMSNorm by `torch.nn`'s, timm's
DropPath by the identity (drop_path is 0 in training here).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import statistics
import sys
import time
import types

OFFICIAL_FILE = os.path.join("lib", "model", "dit.py")


def _install_stand_ins(torch) -> None:
    """Modules named as the official code imports them, made of PyTorch's own layers."""
    functional = torch.nn.functional

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        # flash-attn's layout is (B, L, heads, head_dim); SDPA's (B, heads, L, head_dim).
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        out = functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=softmax_scale,
                                                      enable_gqa=k.shape[1] != q.shape[1])
        return out.transpose(1, 2)

    class DropPath(torch.nn.Identity):
        def __init__(self, drop_prob=0.0):
            super().__init__()

    modules = {
        "flash_attn": {"flash_attn_func": flash_attn_func},
        "apex": {},
        "apex.normalization": {},
        "apex.normalization.fused_layer_norm": {"FusedLayerNorm": torch.nn.LayerNorm, "FusedRMSNorm": torch.nn.RMSNorm},
        "timm": {},
        "timm.models": {},
        "timm.models.layers": {"DropPath": DropPath},
    }
    for name, members in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(members)
        sys.modules[name] = module


def official_model(official_dir: str):
    """(torch, the official LaVinDiT class) from the checkout at `official_dir` (`check`ed)."""
    import torch

    _install_stand_ins(torch)
    official_dir = _checkout(official_dir)
    sys.path.insert(0, official_dir)
    try:
        return torch, importlib.import_module("lib.model.dit").LaVinDiT
    finally:
        sys.path.remove(official_dir)


def _checkout(official_dir: str) -> str:
    return os.path.abspath(os.path.expanduser(official_dir))


def check(config, official_dir: str) -> None:
    """One sentence for what keeps the official step from standing beside ours: the config, the
    checkout, PyTorch."""
    m = config.model
    if m.name != "jdit":
        raise ValueError(f"--official compares J-DiT's train step; config.model.name={m.name!r}.")
    if config.vae.name != "none" and config.data.source != "latents":
        raise ValueError(
            "--official: our step would encode pixels with the frozen autoencoder and the official one would not; "
            "set --config.data.source=latents so both train on latents."
        )
    if m.dtype != "float32":
        raise ValueError(f"--official compares float32 steps on the CPU; set --config.model.dtype=float32 (it is {m.dtype!r}).")
    if not os.path.isfile(os.path.join(_checkout(official_dir), OFFICIAL_FILE)):
        raise FileNotFoundError(f"--official={official_dir!r} is not a checkout of DerrickWang005/LaVin-DiT: it has no {OFFICIAL_FILE}.")
    if importlib.util.find_spec("torch") is None:
        raise ValueError("--official needs PyTorch in this environment (pip install torch); it is not a dependency of lavin_jax.")


def measure(config, shapes: dict[str, tuple], official_dir: str, steps: int) -> dict:
    """Seconds of the official model's train step (median of `steps`, after two that warm up),
    on `shapes` (`Bench.model_shapes`: 'target' and 'cond' without the batch axis), with its
    parameter count. The config and checkout are `check`ed first, by bench's `check_parts`."""
    torch, LaVinDiT = official_model(official_dir)
    m, batch = config.model, config.global_batch_size
    p = m.patch_size
    torch.manual_seed(config.seed)
    model = LaVinDiT(patch_size=[p, p], in_channels=m.in_channels, hidden_size=m.hidden, depth=m.depth, num_heads=m.num_heads,
                     kv_group=m.num_heads // m.num_kv_heads)
    params = sum(w.numel() for w in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, betas=(config.optim.b1, config.optim.b2),
                                  weight_decay=config.optim.weight_decay)

    def tokens(shape):
        """Random patch tokens (B, T, H/p, W/p, p*p*C), the official model's input layout."""
        frames, height, width, channels = shape
        return torch.randn(batch, frames, height // p, width // p, p * p * channels)

    target, cond = shapes["target"], shapes["cond"]
    x, c, t = tokens(target), tokens(cond), torch.rand(batch)
    goal = torch.randn(batch, target[3], target[0], target[1], target[2])  # its output: B, C, T, H, W.

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x, t, c), goal)
        loss.backward()
        if config.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()

    model.train()
    for _ in range(2):
        step()
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    return {"step_seconds": statistics.median(seconds), "params": params, "torch": torch.__version__, "threads": torch.get_num_threads()}
