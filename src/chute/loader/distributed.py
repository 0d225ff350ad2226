"""Where this process stands in a distributed run: the one rule every sampler, stream and seeder uses."""

from __future__ import annotations

import os

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
