"""Data-parallel training under torchrun: 2 CPU processes on gloo train the same weights as one
process on the same global batch, resume exactly, and resume on another number of processes.

Each rank trains on a disjoint half of every global batch, DDP averages the gradients, so after
N steps the weights equal the single-process run's up to the order of float sums (the batch
split changes the reduction order of the matmuls and gloo sums the halves). Measured on a 2-core
x86 CPU, torch 2.13, after 10 steps: weights and Adam moments within 5.4e-6 (max abs), the carried
RNN state (LSTM cells reach several units) within 1.3e-4; a resume on the same number of processes
is bit-identical. The bounds below leave a margin for other CPUs and BLAS builds.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch.distributed as tdist
from helpers import riff_dataset, run_python

from fastsrnn.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not (tdist.is_available() and tdist.is_gloo_available()),
                                reason="torch was built without torch.distributed / gloo")

REPO = Path(__file__).resolve().parents[1]
TOL = 2e-5  # max abs difference of weights and Adam moments
STATE_TOL = 1e-3  # max abs difference of the carried RNN state (h, c) after the last step
N, K = 10, 6  # steps in all; the interrupted runs stop at step K (mid-batch: sub-sequence 2 of 4)
# riff data: 20 train chunks of 4,000 samples, 4 per batch (2 per rank), 4 sub-sequences of
# 1,024 per batch: the 10 steps cross two batch boundaries, where the learned h0 is used again.
ARGS = ["--preset", "tiny", "--batch-size", "4", "--tbptt", "64", "--checkpoint-every", "5", "--n-clips", "1",
        "--clip-seconds", "0.02", "--clip-backend", "eager", "--device", "cpu", "--seed", "3", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return riff_dataset(tmp_path_factory.mktemp("riff"))


def _train(data, run: Path, steps: int, nproc: int) -> None:
    """``fastsrnn train`` in a fresh process; under torch.distributed.run when nproc > 1."""
    run_python(["-m", "fastsrnn", "train", data, "--out", run, "--max-steps", steps, *ARGS], run.parent, nproc)


def _last(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")


def _max_diff(a: dict, b: dict):
    """(max abs difference of weights and Adam state, of the carried state); positions must be equal."""
    for k in ("step", "epoch", "batch", "sub"):
        assert a[k] == b[k], (k, a[k], b[k])
    assert a["model"].keys() == b["model"].keys()
    diffs = [(a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"]]
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    diffs += [(v.double() - sb[i][k].double()).abs().max().item() for i in sa for k, v in sa[i].items()]
    state = [0.0]
    for k in ("rnn_h", "rnn_c"):
        assert (a[k] is None) == (b[k] is None), k
        if a[k] is not None:
            assert a[k].shape == b[k].shape, k
            state.append((a[k] - b[k]).abs().max().item())
    upper_a, upper_b = a.get("rnn_upper") or [], b.get("rnn_upper") or []  # n tiers: the tiers above
    assert len(upper_a) == len(upper_b)
    for ta, tb in zip(upper_a, upper_b):
        state += [(x - y).abs().max().item() for x, y in zip(ta, tb) if x is not None]
    return max(diffs), max(state)


def _check(a: dict, b: dict, what: str) -> None:
    weights, state = _max_diff(a, b)
    print(f"\n{what}: weights and Adam state differ by {weights:.3g} at most, the carried state by {state:.3g}")
    assert weights < TOL and state < STATE_TOL, (what, weights, state)


def _metrics(run: Path) -> list:
    """The NLL records (validation, test); event records (clip scores) are compared apart."""
    return [r for r in _records(run) if "event" not in r]


def _records(run: Path) -> list:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """The reference runs: 1 and 2 processes for N steps, and 2 processes stopped at step K."""
    root = tmp_path_factory.mktemp("dist")
    _train(data, root / "one", N, 1)
    _train(data, root / "two", N, 2)
    _train(data, root / "two_k", K, 2)
    return root


def test_two_processes_train_the_weights_of_one(runs):
    one, two = _last(runs / "one"), _last(runs / "two")
    _check(one, two, f"2 processes vs 1 after {N} steps")
    assert two["rnn_h"].shape[1] == 4  # the carried state of the whole global batch (both ranks)
    # metrics are averaged over the ranks: the same as one process's, one record each (rank 0 writes)
    m1, m2 = _metrics(runs / "one"), _metrics(runs / "two")
    assert [r["step"] for r in m2] == [r["step"] for r in m1] == [5, 10, 10]
    # clip scores: written once (rank 0), the same checkpoints as one process's
    events = [[(r["event"], r["step"]) for r in _records(run) if "event" in r] for run in (runs / "one", runs / "two")]
    assert events[0] == events[1] and [e for e in events[0] if e[0] == "clip_scores"]
    for r1, r2 in zip(m1, m2):
        for k in ("train_bits", "valid_bits", "test_bits"):
            assert (k in r1) == (k in r2)
            if k in r1:
                assert abs(r1[k] - r2[k]) < 1e-4, (k, r1[k], r2[k])
    summary = json.loads((runs / "two" / "summary.json").read_text())
    assert summary["steps"] == N and abs(summary["test_bits"] - m1[-1]["test_bits"]) < 1e-4
    assert sorted(p.name for p in (runs / "two" / "samples").iterdir()) == ["0000005", "0000010"]
    assert [p.name for p in (runs / "two" / "samples" / "0000005").iterdir()] == ["clip_00.wav"]


def test_two_processes_resume_exactly(runs, tmp_path):
    assert _last(runs / "two_k")["step"] == K and _last(runs / "two_k")["sub"] == 2  # stopped mid-batch
    run = tmp_path / "run"
    shutil.copytree(runs / "two_k", run)
    _train(_data_of(runs), run, N, 2)
    _check(_last(runs / "two"), _last(run), f"2 processes resumed at step {K} vs uninterrupted")

    def strip(ms):  # the stopped run validated at its last step K too (so its next train_bits mean is shorter)
        return [{k: v for k, v in m.items() if k not in ("samples_per_s", "time", "train_bits")} for m in ms
                if m["step"] != K or "test_bits" in m]

    assert strip(_metrics(run)) == strip(_metrics(runs / "two"))  # no duplicated or missing records


def test_resume_on_one_process_from_a_two_process_checkpoint(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs / "two_k", run)
    _train(_data_of(runs), run, N, 1)
    _check(_last(runs / "one"), _last(run), f"1 process resumed from a 2-process step-{K} checkpoint vs 1 process")
    _check(_last(runs / "two"), _last(run), f"1 process resumed from a 2-process step-{K} checkpoint vs 2 processes")


def _data_of(runs: Path) -> str:
    return json.loads((runs / "one" / "config.json").read_text())["data"]


def test_a_3tier_model_trains_and_resumes_on_two_processes(data, tmp_path):
    """tiny-3tier: every tier's carried state is gathered in global batch order and split again on
    resume; 2 processes match 1, and a 2-process resume is bit-identical."""
    args = ["--preset", "tiny-3tier"]  # after ARGS: the last --preset counts
    for name, steps, nproc in (("one", 6, 1), ("two", 6, 2), ("two_k", 3, 2), ("two_k", 6, 2)):
        run_python(["-m", "fastsrnn", "train", data, "--out", tmp_path / name, "--max-steps", steps, *ARGS, *args],
                   tmp_path, nproc)
    one, two, resumed = _last(tmp_path / "one"), _last(tmp_path / "two"), _last(tmp_path / "two_k")
    assert len(two["rnn_upper"]) == 1 and two["rnn_upper"][0][0].shape[1] == 4
    _check(one, two, "3 tiers: 2 processes vs 1 after 6 steps")
    assert _max_diff(two, resumed) == (0.0, 0.0)
