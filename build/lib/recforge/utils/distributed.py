"""Where this process stands in a ``torch.distributed`` job."""

from __future__ import annotations

import torch


def process_rank() -> tuple[int, int]:
    """``(rank, world size)`` of this process in a ``torch.distributed`` job, ``(0, 1)`` outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
