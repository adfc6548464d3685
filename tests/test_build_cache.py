"""The extension cache (fastsrnn/ops/build.py): one build shared by every checkout and environment
with the same sources, and a build lock that a killed process never leaves behind.

Each process is a fresh interpreter (tests/helpers.run_python's environment), so nothing is
served from a process's own cache: what the second process finds is what is on disk. A small
pybind11-only source keeps the compiles short; the last test uses the real cpu extension and a
real Generator, in two copies of the installed package.
"""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastsrnn.ops import build

REPO = Path(__file__).resolve().parents[1]
SOURCE = """#include <pybind11/pybind11.h>
int answer() { return 42; }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("answer", &answer); }
"""
LOAD = ("import sys; from fastsrnn.ops.build import load_extension; "
        "m = load_extension('probe', [sys.argv[1]]); assert m.answer() == 42; print('loaded', m.__file__)")

pytestmark = pytest.mark.skipif(bool(build.missing_tools()), reason=f"cannot build here: {build.missing_tools()}")


def _env(build_dir: Path, pythonpath: Path = REPO) -> dict:
    env = dict(os.environ, PYTHONPATH=str(pythonpath), FASTSRNN_BUILD_DIR=str(build_dir), OMP_NUM_THREADS="1")
    env.pop("FASTSRNN_BUILD_VERBOSE", None)
    return env


def _checkout(root: Path) -> Path:
    """A source file of the probe extension in its own folder, as another checkout would have it."""
    (root / "csrc").mkdir(parents=True)
    (root / "csrc" / "probe.cpp").write_text(SOURCE)
    return root / "csrc" / "probe.cpp"


def _load(src: Path, build_dir: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LOAD, str(src)], env=_env(build_dir), cwd=str(src.parent),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _finish(proc: subprocess.Popen, timeout: float = 300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out, err


def _folder(src: Path, build_dir: Path) -> Path:
    """The keyed folder load_extension('probe', [src]) builds into, with ``build_dir`` as the cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTSRNN_BUILD_DIR", str(build_dir))
        return build.extension_folder("probe", [src])


def test_two_checkouts_share_one_build(tmp_path):
    cache = tmp_path / "cache"
    a, b = _checkout(tmp_path / "a"), _checkout(tmp_path / "b")
    assert _folder(a, cache) == _folder(b, cache)  # the key is the contents, not the location
    _, err = _finish(_load(a, cache))
    assert "compiling the probe extension" in err
    folder = _folder(a, cache)
    so = folder / f"{folder.name}.so"
    before = (so.stat().st_mtime_ns, so.stat().st_ino, (folder / ".ninja_log").read_text())
    assert (folder / "src" / "csrc" / "probe.cpp").read_text() == SOURCE  # compiled from its own copy
    out, err = _finish(_load(b, cache))
    assert "compiling" not in err and str(so) in out
    assert (so.stat().st_mtime_ns, so.stat().st_ino, (folder / ".ninja_log").read_text()) == before
    b.write_text(SOURCE + "// another version\n")  # other contents: another folder (built apart)
    assert _folder(b, cache) != folder


def test_a_killed_build_never_blocks_the_next(tmp_path):
    """A build killed mid-compile (torch's own lock file left behind) costs the next process a
    build, not a wait: the flock died with its holder."""
    cache, src = tmp_path / "cache", _checkout(tmp_path / "a")
    proc = _load(src, cache, start_new_session=True)
    torch_lock = _folder(src, cache) / "lock"
    deadline = time.time() + 240
    while not torch_lock.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert torch_lock.exists(), "the first build never reached the compiler"
    os.killpg(proc.pid, signal.SIGKILL)  # the process and its compiler
    proc.communicate()
    assert torch_lock.exists() and not (torch_lock.parent / build.COMPLETE).exists()
    _, err = _finish(_load(src, cache), timeout=240)
    assert "compiling" in err and "waiting" not in err


def test_a_process_waits_for_a_live_build_and_says_for_whom(tmp_path):
    cache, src = tmp_path / "cache", _checkout(tmp_path / "a")
    folder = _folder(src, cache)
    folder.mkdir(parents=True)
    fcntl = pytest.importorskip("fcntl")
    with open(folder / build.LOCK, "a+") as held:  # this test process plays the builder
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        held.write("pid 12345 on testhost (since 00:00:00)\n")
        held.flush()
        proc = _load(src, cache)
        said = proc.stderr.readline()  # blocks until the process has found the lock held and said so
        time.sleep(1)
        assert proc.poll() is None and not (folder / "src").exists()  # it waits: it does not build beside it
    _, err = _finish(proc)
    holder = "pid 12345 on testhost (since 00:00:00)"
    assert f"waiting for {holder}, which is compiling the probe extension into {folder}" in said
    assert f"(lock: {folder / build.LOCK})" in said and "compiling the probe extension into" in err


GENERATE = """
import sys, torch, fastsrnn
from fastsrnn import Generator, SampleRNN, SampleRNNConfig
assert fastsrnn.__file__.startswith(sys.argv[1]), fastsrnn.__file__
torch.manual_seed(0)
gen = Generator(SampleRNN(SampleRNNConfig.from_name("tiny")), n_seq=1, backend="cpu", seed=1)
print("samples", gen.frames(4).shape)
"""


@pytest.mark.slow
def test_two_installs_generate_with_one_build(tmp_path):
    """Two copies of the installed package (the layout `pip install` makes: csrc/ and kernels/
    inside fastsrnn/), in two folders: the second's Generator loads the first's build."""
    cache = Path(os.environ.get("FASTSRNN_BUILD_DIR") or build.env.build_dir())  # the suite's: built once per run
    errs = []
    for name in ("one", "two"):
        site = tmp_path / name
        shutil.copytree(REPO / "fastsrnn", site / "fastsrnn", ignore=shutil.ignore_patterns("__pycache__"))
        for sub in ("csrc", "kernels"):
            shutil.copytree(REPO / sub, site / "fastsrnn" / sub, ignore=shutil.ignore_patterns("__pycache__"))
        proc = subprocess.run([sys.executable, "-c", GENERATE, str(site)], env=_env(cache, site), cwd=str(tmp_path),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "samples torch.Size([1, 64])" in proc.stdout
        errs.append(proc.stderr)
    assert "compiling" not in errs[1], errs[1]
