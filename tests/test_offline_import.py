"""fastsrnn without the audio libraries: a GPU machine's image has torch and Triton but not
soundfile, soxr or cffi, and no network to install them. Generation to arrays, the backends,
the bench and the ops must import and run there; only reading, writing or resampling a file
needs the audio libraries, and then the error says what to install.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter in which `import soundfile` and `import soxr` raise ImportError, as
# they do where the packages are not installed (a None in sys.modules blocks the import).
NO_AUDIO_LIBRARIES = textwrap.dedent("""
    import sys
    for name in ("soundfile", "soxr"):
        sys.modules[name] = None

    import importlib

    import fastsrnn
    from fastsrnn.cli import main

    # Every module that generation, the bench, the backends and the GPU tests import.
    for module in ("fastsrnn.generation.generator", "fastsrnn.generation.cli", "fastsrnn.generation.longgen",
                   "fastsrnn.backends", "fastsrnn.backends.cli", "fastsrnn.backends.eager",
                   "fastsrnn.backends.folded", "fastsrnn.backends.graphs", "fastsrnn.backends.cpu",
                   "fastsrnn.backends.triton", "fastsrnn.backends.cuda", "fastsrnn.ops.export",
                   "fastsrnn.ops.frame_step", "fastsrnn.ops.sample_frame", "fastsrnn.ops.sampling",
                   "fastsrnn.ops.build", "fastsrnn.tools.bench", "fastsrnn.checkpoint", "fastsrnn.data.audio",
                   "fastsrnn.data.prepare"):
        importlib.import_module(module)

    model = fastsrnn.SampleRNN(fastsrnn.SampleRNNConfig.from_name("tiny"))
    audio = fastsrnn.generate(model, 40, n_seq=2, backend="folded", seed=0)  # (2, 40) float32
    assert audio.shape == (2, 40) and str(audio.dtype) == "float32", (audio.shape, audio.dtype)
    gen = fastsrnn.Generator(model, n_seq=1, backend="folded", seed=1)
    assert next(gen.stream(16, chunk_samples=16)).shape == (1, 16)

    assert main(["backends", "--device", "cpu"]) == 0
    try:
        main(["bench", "--help"])
    except SystemExit as e:
        assert e.code == 0, e.code

    from fastsrnn.data.audio import MissingAudioLibrary, read_audio, resample, write_audio

    for call in (lambda: read_audio(sys.argv[1], 16000), lambda: write_audio(sys.argv[2], audio[0], 16000),
                 lambda: resample(audio[0], 16000, 8000)):
        try:
            call()
        except MissingAudioLibrary as e:
            assert isinstance(e, ImportError) and "pip install soundfile soxr" in str(e), e
            print("clear error:", e)
        else:
            raise AssertionError("an audio file was read or written without soundfile")
    assert sys.modules["soundfile"] is None and sys.modules["soxr"] is None
    print("OK")
""")


# After NO_AUDIO_LIBRARIES, in the same interpreter (one start of Python and torch serves all three
# checks): `fastsrnn generate` without soundfile, then the collection of the GPU tests; each
# section's output between marker lines.
CLI_AND_COLLECTION = textwrap.dedent("""
    import contextlib, io, os

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["generate", "missing.pt", "--out", "gen"])
    print("=== generate: exit status", rc)
    print(err.getvalue())
    print("=== collection")
    os.chdir(sys.argv[3])
    import pytest

    rc = pytest.main(["-p", "no:cacheprovider", "--collect-only", "-q", "--continue-on-collection-errors",
                      *sys.argv[4:]])
    print("=== collection: exit status", int(rc))
""")


def _gpu_test_files():
    """The test files scripts/gpu_check.sh runs (its GPU_TESTS list), those that exist."""
    text = (ROOT / "scripts" / "gpu_check.sh").read_text()
    listed = re.search(r'^GPU_TESTS="([^"]*)"', text, re.M)
    assert listed, "scripts/gpu_check.sh no longer sets GPU_TESTS"
    return [f for f in listed.group(1).split() if (ROOT / f).is_file()]


@pytest.fixture(scope="module")
def no_audio_run(tmp_path_factory):
    """One fresh interpreter without soundfile and soxr: NO_AUDIO_LIBRARIES, then
    CLI_AND_COLLECTION. -> (folder it ran in, exit status, {section: output})."""
    tmp_path = tmp_path_factory.mktemp("no_audio")
    wav = tmp_path / "in.wav"
    wav.write_bytes(b"RIFF")  # never opened: soundfile is missing before the file is looked at
    r = subprocess.run([sys.executable, "-c", NO_AUDIO_LIBRARIES + CLI_AND_COLLECTION, str(wav),
                        str(tmp_path / "out.wav"), str(ROOT), *_gpu_test_files()],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600)
    head, _, rest = r.stdout.partition("=== generate: exit status ")
    cli, _, collection = rest.partition("=== collection\n")
    return tmp_path, r.returncode, dict(api=head, cli=cli, collection=collection, all=r.stdout + r.stderr)


def test_generation_bench_and_backends_without_audio_libraries(no_audio_run):
    tmp_path, rc, out = no_audio_run
    assert rc == 0, out["all"]
    assert out["api"].rstrip().endswith("OK"), out["all"]
    assert "'soundfile'" in out["api"] and "'soxr'" in out["api"]  # each error names the missing package
    assert not (tmp_path / "out.wav").exists()


def test_generate_cli_without_audio_libraries_names_the_fix(no_audio_run):
    """`fastsrnn generate` says what to install, before loading the model, without a traceback."""
    _, _, out = no_audio_run
    status, _, stderr = out["cli"].partition("\n")
    assert status == "1", out["all"]
    assert "pip install soundfile soxr" in stderr and "Traceback" not in stderr, out["all"]


def test_gpu_check_tests_collect_without_audio_libraries(no_audio_run):
    """The GPU machine's image lacks soundfile: the tests gpu_check.sh runs (and the conftest and
    helpers they import) must not import it at collection, only in the tests that write files."""
    _, _, out = no_audio_run
    collection = out["collection"]
    assert "=== collection: exit status" in collection and "::test_" in collection, out["all"]
    assert "soundfile" not in collection and "soxr" not in collection, (
        "collecting the GPU tests imports the audio libraries:\n" + collection)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_script_parses_and_installs_offline():
    script = ROOT / "scripts" / "gpu_check.sh"
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = script.read_text()
    assert "--no-build-isolation" in text  # offline: no build environment to download
    assert "timeout" in text and ".whl/" in text
