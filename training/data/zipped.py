"""MTP's zipped per-dataset loaders, as a pure function of the iteration: resumable without any sampler state.

``main_pretrain.py`` gives each dataset a ``DistributedSampler`` (shuffled with ``seed + epoch``, padded by repeating
its first indices to a multiple of the world size, rank r taking every W-th index from r) and a ``DataLoader`` with
``drop_last``, and zips the loaders: an epoch ends with the shortest one, so every dataset restarts (reshuffled) after
``E = min_k floor(ceil(n_k / W) / b_k)`` iterations. Iteration ``it`` therefore takes, for rank r and dataset k,
batch ``it % E`` of epoch ``it // E``, which :class:`ZippedBatchSampler` yields from any ``start`` iteration.

Each index comes with its augmentation seed ``(seed, dataset, epoch, rank, position)``: a sample's augmentation
depends only on where it sits in the stream, never on DataLoader workers or on a resume.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

SampleKey = tuple[int, tuple[int, ...]]


def distributed_indices(size: int, epoch: int, seed: int, rank: int, world_size: int) -> list[int]:
    """``DistributedSampler(shuffle=True, drop_last=False, seed)`` after ``set_epoch(epoch)``: this rank's indices."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    total = math.ceil(size / world_size) * world_size
    padding = total - size
    order += (order * math.ceil(padding / size))[:padding] if padding > len(order) else order[:padding]
    return order[rank:total:world_size]


def epoch_iterations(sizes: Sequence[int], batch_sizes: Sequence[int], world_size: int) -> int:
    """Iterations per zipped epoch: the shortest dataset's full batches on one rank."""
    return min((math.ceil(n / world_size)) // b for n, b in zip(sizes, batch_sizes))


class ZippedBatchSampler(Sampler[list[SampleKey]]):
    """Batches of dataset ``dataset_index`` for one rank, from iteration ``start`` on, forever (a batch sampler)."""

    def __init__(self, size: int, batch_size: int, epoch_length: int, dataset_index: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        if size <= 0 or batch_size <= 0 or epoch_length <= 0:
            raise ValueError(f"need a non-empty dataset, a positive batch and epoch, got size {size}, batch "
                             f"{batch_size}, epoch {epoch_length}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.size, self.batch_size, self.epoch_length = size, batch_size, epoch_length
        self.dataset_index, self.seed, self.rank, self.world_size = dataset_index, seed, rank, world_size
        self.start = start

    def batch(self, iteration: int, indices: list[int]) -> list[SampleKey]:
        epoch, step = divmod(iteration, self.epoch_length)
        first = step * self.batch_size
        return [(indices[p], (self.seed, self.dataset_index, epoch, self.rank, p))
                for p in range(first, first + self.batch_size)]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        iteration, epoch, indices = self.start, -1, []
        while True:
            if iteration // self.epoch_length != epoch:
                epoch = iteration // self.epoch_length
                indices = distributed_indices(self.size, epoch, self.seed, self.rank, self.world_size)
            yield self.batch(iteration, indices)
            iteration += 1
