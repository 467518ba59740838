"""Endless, resumable, rank-sharded sampling that also hands out each sample's random seed.

The global stream is the concatenation of per-epoch orders (``torch.randperm`` seeded with ``seed + epoch``, or
``0..n-1`` without shuffle); rank ``r`` of ``W`` takes stream positions ``r, r + W, r + 2W, ...``. Every item is
``(index, seed_key)`` with ``seed_key = (seed, position)``: the dataset seeds that sample's augmentation from it.
So a sample's content depends only on its stream position, never on which DataLoader worker made it, on the
number of workers, or on whether training was resumed; no ``worker_init_fn`` is needed for seeding.

Resuming continues the global stream where all ranks together left it. With another number of processes the rest
of the stream is re-sharded over the new ranks: no sample is skipped or repeated, each keeps its augmentation.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

import torch
from torch.utils.data import Sampler

SampleKey = tuple[int, tuple[int, int]]


class InfiniteSampler(Sampler[SampleKey]):
    """Yields ``(index, (seed, position))`` forever for one rank; ``start`` samples of this rank are skipped.

    ``start`` (and :meth:`state_dict`'s ``consumed``) counts samples this rank already *trained on*, which the
    training loop knows (iterations x batch size). The sampler cannot count them itself: DataLoader workers prefetch
    ahead of training, so what it has yielded is more than what was used. ``first_position`` is the global stream
    position this sampler's ranks start at (``start * world_size`` unless a state was loaded).
    """

    def __init__(self, dataset_size: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start: int = 0) -> None:
        if dataset_size <= 0:
            raise ValueError(f"InfiniteSampler needs a non-empty dataset, got dataset_size={dataset_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (it seeds numpy's SeedSequence), got {seed}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.dataset_size = int(dataset_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.first_position = int(start) * self.world_size

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """Dataset indices in the order of ``epoch`` (the same on every rank)."""
        if not self.shuffle:
            return torch.arange(self.dataset_size)
        return torch.randperm(self.dataset_size, generator=torch.Generator().manual_seed(self.seed + epoch))

    def __iter__(self) -> Iterator[SampleKey]:
        position = self.first_position + self.rank
        epoch: Optional[int] = None
        order = torch.empty(0, dtype=torch.long)
        while True:
            this_epoch, offset = divmod(position, self.dataset_size)
            if this_epoch != epoch:
                epoch, order = this_epoch, self.epoch_order(this_epoch)
            yield int(order[offset]), (self.seed, position)
            position += self.world_size

    def state_dict(self, consumed: int) -> dict[str, Any]:
        """What resuming needs; ``consumed`` = samples this rank trained on since ``first_position``."""
        if consumed < 0:
            raise ValueError(f"consumed must be >= 0, got {consumed}")
        return {"dataset_size": self.dataset_size, "shuffle": self.shuffle, "seed": self.seed,
                "world_size": self.world_size, "position": self.first_position + int(consumed) * self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved global stream at ``state['position']``, re-sharded if the world size differs."""
        for key in ("dataset_size", "shuffle", "seed"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"cannot resume the sample stream: the checkpoint has {key}={state[key]!r}, this run "
                    f"{getattr(self, key)!r}. Resume with the same dataset and seed, or start a new run from the "
                    f"weights with load_from=...")
        self.first_position = int(state["position"])
