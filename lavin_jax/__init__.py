"""lavin_jax: training and running LaVin-DiT and its family of vision diffusion transformers."""

import flax

# Parameters are created unsharded and placed by jitting their initialiser with the shardings the
# config's logical-axis rules give, so Flax must not try to shard them eagerly at creation.
flax.config.update("flax_always_shard_variable", False)
