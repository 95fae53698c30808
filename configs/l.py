"""LaVin-DiT 1.0B (the paper's middle size; its exact shape is unpublished, this one is ours)."""

from lavin_jax.config import base


def get_config():
    c = base("jdit")
    c.model.hidden = 1152
    c.model.depth = 26
    c.model.num_heads = 16
    c.model.num_kv_heads = 4
    c.model.remat = "dots"
    return c
