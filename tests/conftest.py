"""Shared fixtures. Keep this small: fixtures used by one test file belong in that file."""
from __future__ import annotations

from pathlib import Path
from typing import List

import pytest


@pytest.fixture(scope="session")
def album(tmp_path_factory) -> List[Path]:
    """A synthesized album: 3 songs of 4 s, 16 kHz mono 16-bit WAV (read-only: copy to modify)."""
    from fastsrnn.data.synth import write_album

    return write_album(tmp_path_factory.mktemp("album"), n_songs=3, seconds=4.0, sample_rate=16000, seed=0)
