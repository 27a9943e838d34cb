"""Distributed setup under torchrun (NCCL on GPUs, gloo on CPUs), and the few collectives training uses."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Dist:
    """This process's place in the job; a plain single process by default."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as td

            td.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Returns the element-wise sum of `values` over all processes."""
        if not self.enabled:
            return values
        import torch.distributed as td

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        td.all_reduce(t)
        return t.tolist()

    def all_sum_array(self, array: np.ndarray) -> np.ndarray:
        """Returns the sum of an int64 array (e.g. a confusion matrix) over all processes, exactly."""
        if not self.enabled:
            return array
        import torch.distributed as td

        t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64)).to(self.device)
        td.all_reduce(t)
        return t.cpu().numpy()

    def broadcast(self, value: object) -> object:
        """Returns rank 0's `value` on every process."""
        if not self.enabled:
            return value
        import torch.distributed as td

        box = [value]
        td.broadcast_object_list(box, src=0)
        return box[0]


def init_distributed() -> Dist:
    """Returns this process's rank/world/device; starts the process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device="cuda" if torch.cuda.is_available() else "cpu")
    import torch.distributed as td

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = f"cuda:{local_rank}", "nccl"
    else:
        device, backend = "cpu", "gloo"
    if not td.is_initialized():
        td.init_process_group(backend=backend)
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)


def close_distributed(dist: Dist) -> None:
    if dist.enabled:
        import torch.distributed as td

        if td.is_initialized():
            td.destroy_process_group()
