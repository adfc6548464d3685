"""Generation across processes (torchrun): the sequences split over the ranks, the same audio as one process.

Two CPU processes under ``python -m torch.distributed.run`` (gloo), a tiny random checkpoint.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import random_model, run_python

from fastsrnn import SampleRNNConfig
from fastsrnn.checkpoint import save_checkpoint
from fastsrnn.cli import main
from fastsrnn.generation.generator import Generator
from fastsrnn.generation.longgen import GenerationRun
from fastsrnn.generation.ranks import RowsGenerator, split_rows
from fastsrnn.generation.settings import GenerationSettings
from fastsrnn.outlock import LOCK_NAME

REPO = Path(__file__).resolve().parents[1]
SMALL = SampleRNNConfig(frame_size=4, emb_size=8, dim=24, n_rnn=2, q_levels=32, sample_rate=800)


def _model():
    return random_model(SMALL, 0, scale=0.2)


@pytest.fixture
def ckpt(tmp_path):
    return save_checkpoint(tmp_path / "model.pt", _model())


def _torchrun(nproc: int, args: list, cwd: Path) -> None:
    """``args`` (``fastsrnn ...`` or a module) under torch.distributed.run with nproc CPU processes."""
    run_python(args, cwd, nproc)


def _same_folders(a: Path, b: Path) -> None:
    """Every file the same bytes; generation.json the same but for world_size."""
    names = sorted(p.name for p in a.iterdir() if p.name != LOCK_NAME)
    assert names == sorted(p.name for p in b.iterdir() if p.name != LOCK_NAME)
    assert not [n for n in names if n.startswith("state") or n.endswith(".part.wav")]
    for n in names:
        if n == "generation.json":
            sa, sb = json.loads((a / n).read_text()), json.loads((b / n).read_text())
            sa.pop("world_size", None), sb.pop("world_size", None)
            assert sa == sb and sa["complete"]
        else:
            assert (a / n).read_bytes() == (b / n).read_bytes(), n


def test_split_rows_cover_every_sequence_once():
    for n_seq in range(1, 9):
        for world in range(1, n_seq + 1):
            rows = [split_rows(n_seq, world, r) for r in range(world)]
            assert [i for r in rows for i in r] == list(range(n_seq)) and all(len(r) for r in rows)
    with pytest.raises(ValueError, match="fewer than the 3 processes"):
        split_rows(2, 3, 0)


@pytest.mark.parametrize("h0", ["learned", "random"])
def test_rows_generator_is_those_rows_of_the_full_generation(h0):
    m = _model()
    prime = torch.randint(0, SMALL.q_levels, (6 * SMALL.frame_size,))
    opts = dict(temperature=[0.8, 1.0, 1.2, 0.9], h0=h0, seed=3, backend="eager", device="cpu", prime=prime)
    full = Generator(m, 4, **opts).frames(30)
    for rows in (range(0, 1), range(1, 3), range(3, 4), range(0, 4)):
        g = RowsGenerator(m, rows, 4, **opts)
        assert torch.equal(torch.cat([g.frames(7), g.frames(23)], dim=1), full[rows.start:rows.stop])
        g2 = RowsGenerator(m, rows, 4, **opts)
        g2.load_state_dict(g.state_dict())
        assert torch.equal(g2.frames(3), g.frames(3))
    with pytest.raises(ValueError, match="sequences"):
        RowsGenerator(m, range(1, 3), 4, **opts).load_state_dict(RowsGenerator(m, range(0, 2), 4, **opts).state_dict())


def test_torchrun_generate_gives_the_single_process_files(tmp_path, ckpt):
    args = ["generate", str(ckpt), "--seconds", "0.2", "--n-seq", "3", "--device", "cpu", "--backend", "eager",
            "--seed", "4", "--temperature", "0.9,1.0,1.1", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    _torchrun(2, ["-m", "fastsrnn", *args, "--out", str(tmp_path / "two")], tmp_path)
    _same_folders(tmp_path / "one", tmp_path / "two")
    assert json.loads((tmp_path / "two" / "generation.json").read_text())["world_size"] == 2


KILL_AND_RESUME = """
import sys
import torch.distributed as dist
from fastsrnn.generation.longgen import GenerationRun
from fastsrnn.generation.settings import GenerationSettings

ckpt, out, mode = sys.argv[1:4]

class Killed(Exception):
    pass

def stop(run):  # the ranks die at different points: each resumes from its own last save
    if run.generated >= (5 + 2 * run.rank) * 80:
        raise Killed

if mode == "kill":
    try:
        settings = GenerationSettings(seconds=1.5, n_seq=3, seed=5, chunk_seconds=0.1, save_every=0.2)
        GenerationRun.create(ckpt, out, settings, backend="eager", device="cpu").run(progress=False, on_chunk=stop)
    except Killed:
        pass
else:
    GenerationRun.reopen(out).run(progress=False)
dist.destroy_process_group()
"""


def test_torchrun_kill_and_resume_gives_the_single_process_files(tmp_path, ckpt):
    settings = GenerationSettings(seconds=1.5, n_seq=3, seed=5, chunk_seconds=0.1, save_every=0.2)
    GenerationRun.create(ckpt, tmp_path / "one", settings, backend="eager", device="cpu").run(progress=False)
    script = tmp_path / "kill_and_resume.py"
    script.write_text(KILL_AND_RESUME)
    out = tmp_path / "two"
    _torchrun(2, [str(script), str(ckpt), str(out), "kill"], tmp_path)
    assert sorted(p.name for p in out.glob("state*")) == ["state.rank0.pt", "state.rank1.pt"]
    assert not [p for p in out.glob("seq_*.wav") if not p.name.endswith(".part.wav")]  # killed mid-run
    assert len(sf.read(out / "seq_002.part.wav")[0]) > len(sf.read(out / "seq_000.part.wav")[0])
    with pytest.raises(ValueError, match="started by 2 process.*torchrun --nproc-per-node 2"):
        GenerationRun.reopen(out)  # one process cannot continue two processes' states
    _torchrun(2, [str(script), str(ckpt), str(out), "resume"], tmp_path)
    _same_folders(tmp_path / "one", out)
    for f in json.loads((out / "generation.json").read_text())["files"]:
        assert len(sf.read(out / f)[0]) == 1200 and np.abs(sf.read(out / f)[0]).max() > 0
