"""Optional data-parallel training under torchrun (WORLD_SIZE > 1), kept small.

Every rank walks the same chunk permutation and takes every world-th chunk of each global batch
(like DistributedSampler), so the ranks hold disjoint, equal shards of the batch a single process
would train on at that step. The loss is a mean over the local batch and DDP averages the
gradients, so the update equals the single-process one (up to the order of float sums). The
carried RNN state is per chunk and shards with the batch; checkpoints hold it gathered back
into the global batch order, so a run resumes exactly, on any number of processes that divides
the batch. Metrics are averaged over the ranks; rank 0 writes every file.

Backends: gloo for CPU tensors, NCCL for CUDA tensors when CUDA is available (one process group
that routes by device). tests/test_distributed.py runs 2 CPU processes on gloo.
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
            # CPU tensors (metrics, and everything under --device cpu) go over gloo even where CUDA exists.
            tdist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
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
            if self.world > 1:
                torch.cuda.set_device(dev)  # NCCL collectives (barrier included) use the current device
        return dev

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        # The learned h0/c0 (frame_rnn.h0) take part only in the first sub-sequence of a batch (the
        # trainer builds the state from them outside the forward): other steps leave them unused.
        dev = next(model.parameters()).device
        ids = [dev.index] if dev.type == "cuda" else None
        return DDP(model, device_ids=ids, find_unused_parameters=True)

    def local_batch(self, batch_size: int) -> int:
        if batch_size % self.world:
            raise ValueError(f"batch size {batch_size} must be a multiple of the {self.world} ranks")
        return batch_size // self.world

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        return idx[self.rank::self.world]

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks (train bits: each rank's mean over an equal shard)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        tdist.all_reduce(t)
        return float(t[0]) / self.world

    def sum(self, total: float, count: int) -> Tuple[float, int]:
        if self.world == 1:
            return total, count
        t = torch.tensor([total, float(count)], dtype=torch.float64)
        tdist.all_reduce(t)
        return float(t[0]), int(t[1])

    def gather_state(self, state: Optional[RNNState]) -> Optional[RNNState]:
        """Every tier's state on the CPU with the batch (dim 1) of the global batch, in its order; None for none."""
        return None if state is None else state.map(self._gather)

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return x.detach().cpu().clone()
        parts = [torch.empty_like(x) for _ in range(self.world)]
        tdist.all_gather(parts, x.detach().contiguous())
        # rank r holds global rows r, r + world, ...: interleave back into the global batch order
        L, b, H = x.shape
        return torch.stack(parts, dim=2).reshape(L, b * self.world, H).cpu()

    def local_state(self, state: RNNState, device) -> RNNState:
        """This rank's part of a gathered state, the rows shard() gives it: (L, B, H) -> (L, B / world, H)."""
        if state.h.shape[1] % self.world:
            raise ValueError(f"a carried state of {state.h.shape[1]} chunks cannot be split over {self.world} ranks")
        return state.map(lambda x: x[:, self.rank::self.world].contiguous().to(device))

    def barrier(self) -> None:
        """Wait until rank 0's files are written before other ranks read them."""
        if self.world > 1:
            tdist.barrier()

    def close(self) -> None:
        if self._owns_group:
            # All ranks tear the group down together: a rank that destroys it while rank 0 still writes the
            # summary has been seen to abort at exit ("terminate called without an active exception").
            tdist.barrier()
            tdist.destroy_process_group()
            self._owns_group = False
