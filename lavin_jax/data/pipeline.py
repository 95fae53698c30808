"""The grain pipeline: per-process batches of a source's examples, a function of the step.

The caller hands it the source (the objective's `source(seed)`): the pipeline knows batches and
processes, not what an example is.

Global batch s is examples s*G ... s*G + G - 1 (G = config.global_batch_size); process p of P
reads rows p*B ... p*B + B - 1 of it (B = G // P). Every host thus reads only its own shard, and
together the hosts read exactly the global batch, with no communication.

Every example is a pure function of (seed, index), so the data position is the step: a resumed
run starts its iterator at the checkpoint's step and nothing about the data is saved. That is
what lets a checkpoint written by P processes resume in any other number of them.
"""

from __future__ import annotations

import grain
from absl import flags


def make_dataset(config, examples, process_index: int, process_count: int, start_step: int = 0) -> grain.IterDataset:
    """This process's batches of `examples` (random access, a dict of numpy arrays each) from
    global batch `start_step` on: dicts of arrays whose leading dim is
    config.global_batch_size // process_count."""
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
    # Batches of B consecutive examples, of which process p takes every P-th starting at p: batch
    # s*P + p is exactly rows p*B ... p*B + B - 1 of global batch s.
    first = start_step * process_count + process_index
    shards = grain.MapDataset.source(examples).batch(per_process)[first::process_count]
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
        # the workers' batches back into order.
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=2))
    return batches


def make_iterator(config, examples, process_index: int = 0, process_count: int = 1, start_step: int = 0) -> grain.DatasetIterator:
    """An iterator over `make_dataset`'s batches."""
    return iter(make_dataset(config, examples, process_index, process_count, start_step))
