"""One process per output folder: a second one is refused, a killed holder leaves no stale lock."""
import os
import signal
import subprocess
import sys
import time

import pytest

from fastsrnn.outlock import LOCK_NAME, OutputLocked, is_lock_file, locked_output

HOLD = "import sys, time\nfrom fastsrnn.outlock import locked_output\nwith locked_output(sys.argv[1], 'holder'):\n" \
       "    print('held', flush=True)\n    time.sleep(60)\n"


def test_second_process_is_refused_and_a_killed_holder_frees_the_folder(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLocked, match=rf"{out} is in use by pid {holder.pid} \(holder"):
            with locked_output(out):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    time.sleep(0.05)
    with locked_output(out, "next"):  # SIGKILL released it
        assert (out / LOCK_NAME).read_text().startswith(f"pid {os.getpid()}")
    assert is_lock_file(out / LOCK_NAME) and not is_lock_file(out / "seq_000.wav")


def test_a_file_is_not_an_output_folder(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    with pytest.raises(NotADirectoryError, match="notes.txt: --out must be a folder"):
        with locked_output(f):
            pass
    assert f.read_text() == "mine"


def test_cli_train_into_a_file_is_a_clear_error(tmp_path, capsys):
    """An OSError of the library (here: --out is a file) is a one-line error, not a traceback."""
    from helpers import riff_dataset

    from fastsrnn.cli import main

    (tmp_path / "src").mkdir()
    data = riff_dataset(tmp_path / "src")
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    assert main(["train", str(data), "--preset", "tiny", "--out", str(f), "--max-steps", "1"]) == 1
    assert "fastsrnn train: error:" in capsys.readouterr().err and f.read_text() == "mine"
