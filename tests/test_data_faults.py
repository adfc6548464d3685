"""Faults around dataset preparation and loading: old datasets and duplicate files among the sources,
one path as the sources, a locked / bad / unwritable output folder, non-finite options, and manifests
that point outside their folder or chunks whose bytes changed. Each prepare takes ~0.1 s."""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from fastsrnn.cli import main as cli_main
from fastsrnn.data.manifest import read_manifest, split_files
from fastsrnn.data.prepare import prepare
from fastsrnn.outlock import LOCK_NAME, OutputLocked, locked_output

prep = importlib.import_module("fastsrnn.data.prepare")  # the module: fastsrnn.data.prepare is also the function

OPTS = dict(sample_rate=16000, chunk_seconds=0.25, progress=False)
ARGS = ["--chunk-seconds", "0.25", "--no-progress"]


@pytest.fixture
def src(tmp_path, album) -> Path:
    """A writable copy of the 3-song album."""
    folder = tmp_path / "album"
    shutil.copytree(album[0].parent, folder)
    return folder


def _chunk_shas(m: dict, split: str) -> set:
    return {c["sha256"] for c in m["chunks"] if c["split"] == split}


# ---------------------------------------------------------------- 1. what is read as a source

def test_a_dataset_inside_a_source_folder_is_not_read_as_songs(src, tmp_path):
    first = prepare([src], src / "data", **OPTS)
    assert len(first["sources"]) == 3
    with pytest.warns(UserWarning, match=r"album/data \(holds a fastsrnn dataset\)"):
        m = prepare([src], tmp_path / "d2", **OPTS)
    assert [Path(s["path"]).name for s in m["sources"]] == ["song_00.wav", "song_01.wav", "song_02.wav"]
    assert m["chunks"] == first["chunks"]  # the same songs give the same chunks
    assert not _chunk_shas(m, "train") & (_chunk_shas(m, "valid") | _chunk_shas(m, "test"))
    # an interrupted preparation (only .prepare.json) is a dataset too
    shutil.copytree(src / "data", src / "half")
    (src / "half" / "manifest.json").unlink()
    with pytest.warns(UserWarning, match=r"album/half \(holds a fastsrnn dataset\)"):
        assert len(prepare([src], tmp_path / "d3", **OPTS)["sources"]) == 3
    # a dataset folder given as the only source: nothing to read, and the message says why
    with pytest.raises(ValueError, match=r"no audio files found.*skipped .*data \(holds a fastsrnn dataset\)"), \
            pytest.warns(UserWarning, match="not reading"):
        prepare([src / "data"], tmp_path / "d4", **OPTS)


def test_identical_files_are_read_once_naming_both(src, tmp_path):
    shutil.copy(src / "song_01.wav", src / "song_01_copy.wav")
    (src / "more").mkdir()
    shutil.copy(src / "song_00.wav", src / "more" / "again.wav")
    with pytest.warns(UserWarning) as record:
        m = prepare([src], tmp_path / "d", **OPTS)
    same = [str(w.message) for w in record if "the same file as" in str(w.message)]
    assert len(same) == 2  # each names the file left out and the one read (the first in sorted order)
    assert "song_00.wav: the same file as" in same[0] and "more/again.wav" in same[0]
    assert "song_01_copy.wav: the same file as" in same[1] and "song_01.wav " in same[1]
    assert len(m["sources"]) == 3 and len({s["sha256"] for s in m["sources"]}) == 3
    assert not _chunk_shas(m, "train") & (_chunk_shas(m, "valid") | _chunk_shas(m, "test"))


# ---------------------------------------------------------------- 2. one path is one source

@pytest.mark.parametrize("kind", [str, Path])
def test_one_path_is_one_source(src, tmp_path, kind):
    m = prepare(kind(src), tmp_path / "d", **OPTS)
    assert len(m["sources"]) == 3
    assert len(prepare(kind(src / "song_00.wav"), tmp_path / "one", **{**OPTS, "splits": (0.5, 0.25, 0.25)})
               ["sources"]) == 1


# ---------------------------------------------------------------- 4. the output folder is locked

def test_a_second_prepare_into_the_same_out_is_refused(src, tmp_path, capsys):
    out = tmp_path / "d"
    with locked_output(out, "fastsrnn prepare"):  # another run holds it (flock: a second open file conflicts)
        with pytest.raises(OutputLocked, match=f"{out} is in use by pid {os.getpid()}"):
            prepare([src], out, **OPTS)
        assert cli_main(["prepare", str(src), "--out", str(out), *ARGS]) == 1
        assert "in use" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()
    m = prepare([src], out, **OPTS)  # released: the lock file left behind does not make the folder "not empty"
    assert (out / LOCK_NAME).exists() and read_manifest(out) == m


# ---------------------------------------------------------------- 5. output folder faults

def test_out_equal_to_the_source_is_named(src, capsys):
    with pytest.raises(ValueError, match="output folder .* is the source folder"):
        prepare([src], src, **OPTS)
    assert cli_main(["prepare", str(src), "--out", str(src), *ARGS]) == 1
    assert "is the source folder" in capsys.readouterr().err
    assert sorted(p.name for p in src.iterdir()) == ["song_00.wav", "song_01.wav", "song_02.wav"]


def test_out_that_is_a_file_is_named(src, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    for out in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "data"):
        with pytest.raises(FileExistsError, match="notes.txt is a file, not a folder"):
            prepare([src], out, **OPTS)
        assert cli_main(["prepare", str(src), "--out", str(out), *ARGS]) == 1
        assert "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_unwritable_out_is_named_without_a_traceback(src, tmp_path, monkeypatch, capsys):
    real = prep.locked_output

    def read_only(folder, what):
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(prep, "locked_output", read_only)
    with pytest.raises(prep.OutputNotWritable, match=r"cannot write the dataset in .*ro.*Permission denied"):
        prepare([src], tmp_path / "ro" / "d", **OPTS)
    assert cli_main(["prepare", str(src), "--out", str(tmp_path / "ro"), *ARGS]) == 1
    err = capsys.readouterr().err
    assert "cannot write the dataset in" in err and "Traceback" not in err
    monkeypatch.setattr(prep, "locked_output", real)

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device", str(tmp_path / "full" / "train" / "000000.flac"))

    monkeypatch.setattr(prep, "_write_chunk", full_disk)
    with pytest.raises(prep.OutputNotWritable, match="full.*No space left"):
        prepare([src], tmp_path / "full", **OPTS)
    monkeypatch.undo()

    def no_read(path):  # a source that cannot be read is the source's fault, not the output's
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(prep, "file_sha256", no_read)
    with pytest.raises(prep.AudioError, match=r"song_00.wav: cannot read the file \(Permission denied\).*skip-bad"):
        prepare([src], tmp_path / "fine", **OPTS)
    monkeypatch.undo()
    if os.geteuid() != 0:  # root writes anywhere: the real read-only folder only tells for a normal user
        (tmp_path / "locked").mkdir(mode=0o555)
        with pytest.raises(prep.OutputNotWritable, match="locked"):
            prepare([src], tmp_path / "locked" / "d", **OPTS)


# ---------------------------------------------------------------- 5. options

@pytest.mark.parametrize("option", ["--chunk-seconds", "--hop-seconds", "--block-seconds", "--splits"])
@pytest.mark.parametrize("value", ["nan", "inf"])  # "-inf" reads as an option to argparse: see the next test
def test_non_finite_options_are_named(src, tmp_path, capsys, option, value):
    values = [value, "0.5", "0.5"] if option == "--splits" else [value]
    assert cli_main(["prepare", str(src), "--out", str(tmp_path / "d"), *ARGS, option, *values]) == 1
    err = capsys.readouterr().err
    assert option in err and ("finite" in err or "positive" in err)
    assert not (tmp_path / "d" / "manifest.json").exists()


@pytest.mark.parametrize("name", ["chunk_seconds", "hop_seconds", "block_seconds", "splits"])
def test_non_finite_options_are_named_by_the_library(src, tmp_path, name):
    for value in (float("nan"), float("inf"), float("-inf")):
        kw = {name: (value, 0.5, 0.5) if name == "splits" else value}
        with pytest.raises(ValueError, match=f"{name} \\(--{name.replace('_', '-')}\\) must be"):
            prepare([src], tmp_path / "d", **{**OPTS, **kw})


@pytest.mark.parametrize("rate", [10 ** 9, 999, 384001, 0, -16000, float("nan"), 16000.5])
def test_sample_rate_is_bounded(src, tmp_path, rate):
    with pytest.raises(ValueError, match=r"--sample-rate.*1000 to 384000|--sample-rate.*finite"):
        prepare([src], tmp_path / "d", **{**OPTS, "sample_rate": rate})


def test_sample_rate_bound_from_the_cli(src, tmp_path, capsys):
    assert cli_main(["prepare", str(src), "--out", str(tmp_path / "d"), *ARGS, "--sample-rate", "1000000000"]) == 1
    assert "--sample-rate" in capsys.readouterr().err


# ---------------------------------------------------------------- 5. manifests read for training

@pytest.fixture
def dataset(src, tmp_path):
    out = tmp_path / "d"
    return out, prepare([src], out, **OPTS)


@pytest.mark.parametrize("bad", ["/etc/passwd", "../album/song_00.wav", "train/../../album/song_00.wav"])
def test_manifest_entries_outside_the_dataset_are_refused(dataset, bad):
    out, m = dataset
    chunks = [dict(c) for c in m["chunks"]]
    i = next(i for i, c in enumerate(chunks) if c["split"] == "valid")
    chunks[i]["file"] = bad
    (out / "manifest.json").write_text(json.dumps({**m, "chunks": chunks}))
    with pytest.raises(ValueError, match=rf"chunk {i} names '{bad}', which is outside the dataset folder"):
        read_manifest(out)
    with pytest.raises(ValueError, match="outside the dataset"):
        split_files(out, "valid")


def test_a_chunk_whose_bytes_changed_is_named(dataset):
    from fastsrnn.config import SampleRNNConfig
    from fastsrnn.data.chunks import load_split

    out, m = dataset
    assert len(split_files(out, "train")) == Counter(c["split"] for c in m["chunks"])["train"]
    c = next(c for c in m["chunks"] if c["split"] == "test")
    path = out / c["file"]
    other = out / next(x["file"] for x in m["chunks"] if x["split"] == "train")
    shutil.copy(other, path)  # a valid FLAC, but not this chunk
    assert hashlib.sha256(path.read_bytes()).hexdigest() != c["sha256"]
    with pytest.raises(ValueError, match=rf"{c['file']}: the chunk's sha256 differs from the one in the manifest"):
        split_files(out, "test")
    with pytest.raises(ValueError, match="sha256 differs"):
        load_split(out, "test", SampleRNNConfig(dim=64, n_rnn=1, emb_size=16))
    assert len(split_files(out, "test", verify=False)) == Counter(c["split"] for c in m["chunks"])["test"]
    assert len(split_files(out, "train")) > 0  # the other splits still load
    prepare(Path(m["sources"][0]["path"]).parent, out, **OPTS)  # a re-run restores it
    assert split_files(out, "test")
