"""The grain pipeline: per-process batches of the objective's examples, checkpointable by index.

Global batch s is examples s*G ... s*G + G - 1 (G = config.global_batch_size); process p of P
reads rows p*B ... p*B + B - 1 of it (B = G // P). Every host thus reads only its own shard, and
together the hosts read exactly the global batch, with no communication.
"""

from __future__ import annotations

import grain
from absl import flags

from lavin_jax import objectives


def make_dataset(config, process_index: int, process_count: int) -> grain.IterDataset:
    """This process's batches: dicts of numpy arrays whose leading dim is
    config.global_batch_size // process_count (the objective's `source` has the fields)."""
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index={process_index} is not in [0, process_count={process_count})."
        )
    if config.global_batch_size % process_count:
        raise ValueError(
            f"config.global_batch_size={config.global_batch_size} is not divisible by the "
            f"{process_count} processes."
        )
    num_threads, num_workers = int(config.data.num_threads), int(config.data.num_workers)
    for field, value in (("num_threads", num_threads), ("num_workers", num_workers)):
        if value < 0:
            raise ValueError(f"config.data.{field}={value} must be non-negative.")
    per_process = config.global_batch_size // process_count
    examples = objectives.get(config).source(config.seed)
    # Batches of B consecutive examples, of which process p takes every P-th starting at p: batch
    # s*P + p is exactly rows p*B ... p*B + B - 1 of global batch s.
    shards = grain.MapDataset.source(examples).batch(per_process)[process_index::process_count]
    # Threads build whole batches ahead; grain's default buffer (500) would hold hundreds of
    # batches of full-size images, so keep a couple per thread.
    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
    batches = shards.to_iter_dataset(read_options)
    if num_workers:
        # grain's workers read absl flags; outside an absl app (tests, notebooks) they are unparsed,
        # so take their defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        # Decoding and rendering in worker processes, free of the trainer's GIL; grain interleaves
        # the workers' batches in order, and the iterator state still names the exact batch.
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=2))
    return batches


def make_iterator(config, process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
    """An iterator over `make_dataset`'s batches whose `get_state()` / `set_state()` resume it
    at the exact batch."""
    return iter(make_dataset(config, process_index, process_count))
