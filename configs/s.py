"""LaVin-DiT 0.1B (the paper's smallest size; its exact shape is unpublished, this one is ours)."""

from lavin_jax.config import base


def get_config():
    c = base("jdit")
    c.model.hidden = 576
    c.model.depth = 10
    c.model.num_heads = 8
    c.model.num_kv_heads = 2
    return c
