"""Hand a DataLoader with a seqba batch sampler to Accelerate without sharding it twice.

``accelerator.prepare(loader)`` wraps the loader's batch sampler in ``BatchSamplerShard``, which keeps every
``num_processes``-th batch. seqba's samplers built with ``num_replicas=world_size, rank=rank`` have already given
each rank its own batches (and BA rank groups their identical ones), so preparing them keeps about half the data
with 2 processes: seqba now raises when that happens (:func:`seqba.repeat.refuse_accelerate_reshard`), and
:func:`prepare_data_loader` is the way round it::

    from accelerate import Accelerator
    from seqba import RepeatBatchSampler, TokenBudgetBatchSampler
    from seqba.integrations.accelerate import prepare_data_loader

    accelerator = Accelerator()
    sampler = TokenBudgetBatchSampler(num_tokens, 4096, seed=1, num_replicas=accelerator.num_processes,
                                      rank=accelerator.process_index)
    loader = prepare_data_loader(accelerator, DataLoader(dataset, batch_sampler=RepeatBatchSampler(sampler, 4)))
    model, optimizer = accelerator.prepare(model, optimizer)
"""
from __future__ import annotations

from typing import Any

from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader as _accelerate_prepare_data_loader
from torch.utils.data import DataLoader

__all__ = ["prepare_data_loader", "sharding_of"]


def sharding_of(batch_sampler: Any) -> tuple[int, int] | None:
    """``(num_replicas, rank)`` of the first sampler in a chain of ``.batch_sampler`` wrappers that has them.

    Returns ``None`` when no sampler in the chain shards by rank (a torch ``BatchSampler``, a list of lists).
    """
    inner = batch_sampler
    while inner is not None and not hasattr(inner, "num_replicas"):
        inner = getattr(inner, "batch_sampler", None)
    return None if inner is None else (int(inner.num_replicas), int(getattr(inner, "rank", 0)))


def prepare_data_loader(accelerator: Accelerator, loader: DataLoader, **kwargs: Any) -> DataLoader:
    """``accelerator.prepare(loader)`` for a loader whose batch sampler already shards by rank.

    Returns accelerate's ``DataLoaderShard`` built with ``num_processes=1``: batches are moved to
    ``accelerator.device`` (if ``accelerator.device_placement``), ``set_epoch`` and the gradient-accumulation
    end-of-epoch signal work as for a prepared loader, and no ``BatchSamplerShard`` is added. The loader is not
    registered in ``accelerator.save_state``; save the sampler's position yourself.

    Args:
        accelerator: the run's ``Accelerator``.
        loader: a ``DataLoader`` with ``batch_sampler=`` a seqba sampler (possibly inside ``RepeatBatchSampler``)
            built with ``num_replicas=accelerator.num_processes`` and ``rank=accelerator.process_index``.
        **kwargs: passed on to ``accelerate.data_loader.prepare_data_loader`` (e.g. ``non_blocking=True``).

    Raises:
        ValueError: the sampler's ``num_replicas`` / ``rank`` differ from the accelerator's (every rank would read
            the same batches, or the wrong ones), or the loader's batch sampler does not shard by rank (then
            ``accelerator.prepare(loader)`` is what you want).
    """
    where = sharding_of(loader.batch_sampler)
    if where is None:
        raise ValueError(f"the loader's {type(loader.batch_sampler).__name__} does not shard by rank "
                         "(no num_replicas): use accelerator.prepare(loader)")
    expected = (accelerator.num_processes, accelerator.process_index)
    if where != expected:
        raise ValueError(f"the loader's sampler has (num_replicas, rank) = {where}, the accelerator runs "
                         f"{expected[0]} processes and this is process {expected[1]}: build the sampler with "
                         "num_replicas=accelerator.num_processes, rank=accelerator.process_index")
    return _accelerate_prepare_data_loader(
        loader, device=accelerator.device, num_processes=1, process_index=0,
        put_on_device=accelerator.device_placement, rng_types=None, **kwargs)
