"""Several processes (torchrun): the ranks, the split of the sequences into one contiguous range
per rank, the few meetings of the ranks, and the generator that makes one rank's rows.

Separate from longgen.py because it is the only part that knows about torch.distributed; a
single-process run goes through it with world = 1 and never meets anyone.
"""
from __future__ import annotations

from typing import Optional

import torch

from fastsrnn import env
from fastsrnn.generation.generator import Generator


def init_ranks() -> tuple:
    """(world, rank) from torchrun's variables; joins a gloo process group (CPU, for the few meetings)
    when WORLD_SIZE > 1 and none is set up yet."""
    world, rank, _ = env.torchrun_ranks()
    if rank >= world:
        raise ValueError(f"RANK {rank} is not below WORLD_SIZE {world}")
    if world > 1:
        import torch.distributed as dist

        if not dist.is_available():
            raise RuntimeError(f"WORLD_SIZE={world} but this torch has no torch.distributed; run one process")
        if not dist.is_initialized():
            dist.init_process_group("gloo")
        if dist.get_world_size() != world or dist.get_rank() != rank:
            raise RuntimeError(f"the process group ({dist.get_rank()} of {dist.get_world_size()}) disagrees with "
                               f"RANK {rank} / WORLD_SIZE {world}")
    return world, rank


def split_rows(n_seq: int, world: int, rank: int) -> range:
    """The sequences rank ``rank`` of ``world`` generates: a contiguous range, sizes differing by at most one."""
    if n_seq < world:
        raise ValueError(f"--n-seq {n_seq} is fewer than the {world} processes: give each process at least one "
                         f"sequence (--n-seq >= {world}) or run fewer processes")
    return range(rank * n_seq // world, (rank + 1) * n_seq // world)


def _all_gather(world: int, obj) -> list:
    """obj from every rank, in rank order (a meeting of all the ranks); [obj] for one process."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    every = [None] * world
    dist.all_gather_object(every, obj)
    return every


def _raise_failed(every: list, what: str) -> None:
    bad = [(r, e[0]) for r, e in enumerate(every) if e[0] is not None]
    if bad:
        raise RuntimeError(f"{what}: " + "; ".join(f"rank {r} failed: {m}" for r, m in bad))


def _raise_if_any_failed(world: int, err: Optional[BaseException], what: str) -> None:
    """Every rank learns whether any failed, and raises then (its own error where it has one)."""
    every = _all_gather(world, (None if err is None else f"{type(err).__name__}: {err}", None))
    if err is not None:
        raise err
    _raise_failed(every, what)


class RowsGenerator(Generator):
    """Rows ``rows`` of a ``n_seq_total``-sequence generation, bit for bit those rows of
    ``Generator(model, n_seq_total, ...)`` (same backend and device): the RNG draws the full
    n_seq_total-wide initial state and (n_frames, n_seq_total, F) uniforms per chunk, and this
    generator keeps its rows. temperature: a number or one per sequence of all n_seq_total.
    """

    def __init__(self, model, rows: range, n_seq_total: int, *, temperature=1.0, h0: str = "learned",
                 prime: Optional[torch.Tensor] = None, **options):
        if not (0 <= rows.start < rows.stop <= n_seq_total and rows.step == 1):
            raise ValueError(f"rows {rows} must be a non-empty contiguous range within the {n_seq_total} sequences")
        if isinstance(temperature, (list, tuple)):
            if len(temperature) != n_seq_total:
                raise ValueError(f"temperature: one per sequence expected ({n_seq_total}), got {len(temperature)}")
            temperature = list(temperature[rows.start:rows.stop])
        super().__init__(model, len(rows), temperature=temperature, h0=h0, **options)
        self.rows, self.n_seq_total = rows, n_seq_total
        self.rng = torch.Generator().manual_seed(self.seed)  # again: draw the full-width state from the start
        with torch.no_grad():
            full = self.model.initial_state(n_seq_total, h0, self.rng)
            keep = slice(rows.start, rows.stop)
            self.state.rnn = full.map(lambda t: t[:, keep].contiguous().to(self.device))
            if prime is not None:
                self._prime(prime)

    @torch.no_grad()
    def _uniforms(self, n_frames: int) -> torch.Tensor:
        """This rank's rows of the whole run's (n_frames, M, F) draw: the same numbers as one process."""
        u = torch.rand(n_frames, self.n_seq_total, self.cfg.frame_size, generator=self.rng)
        return u[:, self.rows.start:self.rows.stop].contiguous()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "rows": [self.rows.start, self.rows.stop], "n_seq_total": self.n_seq_total}

    def load_state_dict(self, d: dict) -> None:
        if d.get("rows") != [self.rows.start, self.rows.stop] or d.get("n_seq_total") != self.n_seq_total:
            raise ValueError(f"generation state is for sequences {d.get('rows')} of {d.get('n_seq_total')}, this "
                             f"generator makes [{self.rows.start}, {self.rows.stop}) of {self.n_seq_total}")
        super().load_state_dict(d)


def _generator(model, n_seq: int, rows: range, **options) -> Generator:
    """One process's generator: the plain one for all the sequences, else a RowsGenerator for its rows."""
    if len(rows) == n_seq:
        return Generator(model, n_seq, **options)
    return RowsGenerator(model, rows, n_seq, **options)
