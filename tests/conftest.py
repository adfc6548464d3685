"""Shared fixtures and the `interpret` rule. Keep this small: fixtures used by one test file
belong in that file, helpers used by several in helpers.py."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

import pytest
from helpers import INTERPRET


def pytest_configure(config):
    """Under pytest-xdist (``-n N``, as scripts/gpu_check.sh runs the GPU tests) each worker gets
    its share of the cores for torch's CPU threads. N workers with a full-size OpenMP pool each
    oversubscribe the cores many times over, and the pools' spinning threads slowed the CPU
    references of tests/test_ops.py past a 40 s timeout on a 16-core H100 host with 16 workers."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(scope="session")
def album(tmp_path_factory) -> List[Path]:
    """A synthesized album: 3 songs of 4 s, 16 kHz mono 16-bit WAV (read-only: copy to modify)."""
    from fastsrnn.data.synth import write_album

    return write_album(tmp_path_factory.mktemp("album"), n_songs=3, seconds=4.0, sample_rate=16000, seed=0)


@pytest.hookimpl(trylast=True)  # after `-m` has deselected what it deselects
def pytest_collection_modifyitems(config, items):
    """Tests marked `interpret` run Triton kernels on the CPU interpreter, which Triton enables
    only when TRITON_INTERPRET=1 is set before it is imported: the normal run deselects them
    (pyproject's addopts, -m "not interpret"); selecting one without the variable is an error."""
    if INTERPRET:
        return
    chosen = [item.nodeid for item in items if item.get_closest_marker("interpret")]
    if chosen:
        raise pytest.UsageError(
            f"{len(chosen)} selected tests (e.g. {chosen[0]}) are marked `interpret` and need TRITON_INTERPRET=1 "
            "set before pytest starts: TRITON_INTERPRET=1 python -m pytest -m interpret tests")
