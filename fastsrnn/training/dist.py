"""Optional data-parallel training under torchrun (WORLD_SIZE > 1), kept small.

Every rank walks the same chunk permutation and takes every world-th chunk of each batch
(like DistributedSampler); DDP averages the gradients; rank 0 writes every file. The carried
RNN states of all ranks are gathered into rank 0's checkpoint so that a resume is exact.
Only the single-process path (world = 1) is tested in this repository.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.distributed as tdist

from fastsrnn import env
from fastsrnn.model import RNNState


class Dist:
    def __init__(self, world: int = 1, rank: int = 0, local_rank: int = 0):
        self.world, self.rank, self.local_rank = world, rank, local_rank
        self._owns_group = False

    @classmethod
    def from_env(cls) -> "Dist":
        world, rank, local_rank = env.torchrun_ranks()
        d = cls(world, rank, local_rank)
        if world > 1 and not tdist.is_initialized():
            tdist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            d._owns_group = True
        return d

    @property
    def rank0(self) -> bool:
        return self.rank == 0

    def device(self, spec: str) -> torch.device:
        """'auto' -> cuda (this rank's GPU under torchrun) if available, else cpu."""
        if spec == "auto":
            spec = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(spec)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"device {spec!r}: CUDA is not available on this machine (use --device cpu)")
            if self.world > 1 and dev.index is None:
                dev = torch.device("cuda", self.local_rank)
        return dev

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        # h0 takes part only in the first sub-sequence of a batch: other steps leave it unused.
        ids = [model.h0.device.index] if model.h0.device.type == "cuda" else None
        return DDP(model, device_ids=ids, find_unused_parameters=True)

    def local_batch(self, batch_size: int) -> int:
        if batch_size % self.world:
            raise ValueError(f"batch size {batch_size} must be a multiple of the {self.world} ranks")
        return batch_size // self.world

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        return idx[self.rank::self.world]

    def sum(self, total: float, count: int) -> Tuple[float, int]:
        if self.world == 1:
            return total, count
        t = torch.tensor([total, float(count)], dtype=torch.float64)
        tdist.all_reduce(t)
        return float(t[0]), int(t[1])

    def gather_state(self, state: Optional[RNNState]) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(h, c) on the CPU with the batch (dim 1) of all ranks in rank order; (None, None) for no state."""
        if state is None:
            return None, None
        return self._gather(state.h), (None if state.c is None else self._gather(state.c))

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return x.detach().cpu().clone()
        parts = [torch.empty_like(x) for _ in range(self.world)]
        tdist.all_gather(parts, x.detach().contiguous())
        return torch.cat(parts, dim=1).cpu()

    def local_state(self, h: torch.Tensor, c: Optional[torch.Tensor], device) -> RNNState:
        """This rank's part of a gathered state: (L, B, H) -> (L, B / world, H) on ``device``."""
        b = h.shape[1] // self.world
        part = lambda x: x[:, self.rank * b:(self.rank + 1) * b].to(device)  # noqa: E731
        return RNNState(part(h), None if c is None else part(c))

    def barrier(self) -> None:
        """Wait until rank 0's files are written before other ranks read them."""
        if self.world > 1:
            tdist.barrier()

    def close(self) -> None:
        if self._owns_group:
            tdist.destroy_process_group()
