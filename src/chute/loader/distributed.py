"""Where this process stands in a distributed run, and which share of the work is its own: the one
rule every order (samplers, evaluation batches, key orders, shard and key streams) splits by.

Rank ``r`` of ``w`` takes the contiguous positions ``[r * N // w, (r + 1) * N // w)`` of the
epoch's ``N`` items (:func:`rank_span`): every item in exactly one share, shares differing by at
most one item. Training pads each share to ``ceil(N / w)`` by repeating its own first items (a rank
with none repeats the epoch's first), so every rank takes as many steps and fewer than ``w`` items
count twice (:func:`rank_share`); evaluation never pads. Contiguous shares are what streams need
(a rank reads its positions in sequence: shard lines, key ranges) and cost map-style orders nothing
(their items are a seeded permutation, or sorted batches that stay sorted within a share).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def world_position(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: the one rule every chute sampler, stream and worker seeder uses.

    Given values win; then torch.distributed when initialised; then the launcher's environment
    (``RANK``/``WORLD_SIZE`` from torchrun and Lightning, ``SLURM_PROCID``/``SLURM_NTASKS`` under
    srun), which also answers in spawned DataLoader workers, where no process group exists; else
    ``(0, 1)``.
    """
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        found = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        env = os.environ
        found = (
            int(env.get("RANK", env.get("SLURM_PROCID", 0))),
            int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", 1))),
        )
    return (found[0] if rank is None else rank), (found[1] if world_size is None else world_size)


def current_rank() -> int:
    """Global rank of this process (:func:`world_position`)."""
    return world_position()[0]


def rank_span(total: int, world: int, rank: int) -> tuple[int, int]:
    """The positions ``[start, stop)`` of ``total`` that rank ``rank`` of ``world`` takes (see the module).

    Example:
        >>> [rank_span(7, 3, r) for r in range(3)]
        [(0, 2), (2, 4), (4, 7)]
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} not in [0, {world})")
    return rank * total // world, (rank + 1) * total // world


def padded_share(total: int, world: int) -> int:
    """Items every rank takes in training: ``ceil(total / world)``."""
    return -(-total // world)


def rank_share(items: np.ndarray, rank: int, world: int, pad: bool) -> np.ndarray:
    """Rank ``rank``'s share of the epoch's ``items`` (see the module); ``pad``: training's equal shares.

    Example:
        >>> [rank_share(np.arange(7), r, 3, pad=True).tolist() for r in range(3)]
        [[0, 1, 0], [2, 3, 2], [4, 5, 6]]
    """
    start, stop = rank_span(len(items), world, rank)
    mine = items[start:stop]
    missing = padded_share(len(items), world) - len(mine)
    if not pad or missing <= 0 or len(items) == 0:
        return mine
    source = mine if len(mine) else items
    return np.concatenate([mine, source[np.arange(missing) % len(source)]])


def process_group_size() -> int:
    """The processes of the initialized ``torch.distributed`` process group (1 without one): above 1,
    a collective such as :func:`from_rank_zero` waits until every rank makes it."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def from_rank_zero(read: Callable[[], Any]) -> Any:
    """``read()`` on rank 0, shared with every rank (an error there is raised on every rank)."""
    dist = torch.distributed
    if process_group_size() <= 1:
        return read()
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = read()
        except Exception as err:  # the other ranks would wait for the broadcast forever
            box[0] = err
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], Exception):
        raise box[0]
    return box[0]
