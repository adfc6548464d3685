"""Dataset preparation: leak-free 88/6/6 split, checksums, untouched sources, resumable runs,
clear errors. Albums are a few seconds long with 0.25 s chunks, so each prepare takes ~0.1 s."""
from __future__ import annotations

import hashlib
import importlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fastsrnn.cli import main as cli_main
from fastsrnn.data.audio import AudioError, read_audio
from fastsrnn.data.manifest import read_manifest, split_files
from fastsrnn.data.prepare import plan_chunks, prepare
from fastsrnn.outlock import LOCK_NAME

prep = importlib.import_module("fastsrnn.data.prepare")  # the module: fastsrnn.data.prepare is also the function

CHUNK = 0.25  # seconds; 4000 samples at 16 kHz
OPTS = dict(sample_rate=16000, chunk_seconds=CHUNK, progress=False)


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _snapshot(folder: Path) -> dict:
    """name -> (mtime_ns, sha256) of every file under ``folder`` (but the output lock, rewritten by each run)."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, _sha(p))
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_NAME}


def _intervals(m: dict, split: str) -> list:
    return [(c["source"], c["offset"], c["offset"] + c["length"]) for c in m["chunks"] if c["split"] == split]


def _assert_no_leak(m: dict) -> None:
    """No train chunk shares a sample of a source with a valid or test chunk."""
    train = _intervals(m, "train")
    for split in ("valid", "test"):
        for src, a, b in _intervals(m, split):
            hits = [t for t in train if t[0] == src and t[1] < b and a < t[2]]
            assert not hits, f"{split} chunk {src}:{a}-{b} overlaps train chunks {hits}"


@pytest.fixture(scope="module")
def mixed_album(tmp_path_factory, album):
    """The album in several formats, rates and channel counts (the input of a real album)."""
    folder = tmp_path_factory.mktemp("mixed")
    forms = [("song_a.flac", 44100, 2, "FLAC", "PCM_16"), ("sub/song_b.ogg", 22050, 1, "OGG", "VORBIS"),
             ("song_c.wav", 8000, 2, "WAV", "PCM_16"), ("song_d.mp3", 16000, 1, "MP3", "MPEG_LAYER_III")]
    for (name, rate, ch, fmt, sub), src in zip(forms, album + album[:1]):
        x = read_audio(src, rate)
        (folder / name).parent.mkdir(exist_ok=True)
        sf.write(str(folder / name), np.stack([x] * ch, 1), rate, format=fmt, subtype=sub)
    return folder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, mixed_album):
    out = tmp_path_factory.mktemp("prepared") / "data"
    before = _snapshot(mixed_album)
    m = prepare([mixed_album], out, **OPTS)
    assert _snapshot(mixed_album) == before, "preparation modified its sources"
    return out, m


def test_split_is_88_6_6_and_leak_free(prepared):
    out, m = prepared
    counts = Counter(c["split"] for c in m["chunks"])
    total = sum(counts.values())  # 16 s in whole 0.25 s blocks: one chunk per block
    assert total == 64 and counts["valid"] == counts["test"] == round(0.06 * 64)
    assert len({c["file"] for c in m["chunks"]}) == total
    assert all(c["file"].startswith(c["split"] + "/") for c in m["chunks"])
    assert all(c["length"] == 4000 and c["offset"] + c["length"] <= m["sources"][c["source"]]["samples"]
               for c in m["chunks"])
    _assert_no_leak(m)
    assert [c["source"] for c in m["chunks"]] != sorted(c["source"] for c in m["chunks"]), "chunk order not shuffled"


def test_sources_are_read_sorted_with_their_rates(prepared, mixed_album):
    _, m = prepared
    names = [Path(s["path"]).name for s in m["sources"]]
    assert names == ["song_a.flac", "song_c.wav", "song_d.mp3", "song_b.ogg"]  # sorted by path: sub/ last
    assert all(s["samples"] == 64000 for s in m["sources"])  # 4 s at 16 kHz, whatever the file's rate
    assert all(s["sha256"] == _sha(s["path"]) for s in m["sources"])


def test_chunks_hold_the_source_audio_at_its_offset(prepared):
    out, m = prepared
    for c in m["chunks"][:6]:
        src = m["sources"][c["source"]]
        x = read_audio(src["path"], 16000)
        want = (x - x.mean(dtype=np.float64)) * src["gain"]
        got, sr = sf.read(str(out / c["file"]), dtype="float32")
        info = sf.info(str(out / c["file"]))
        assert (sr, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
        np.testing.assert_allclose(got, want[c["offset"]:c["offset"] + c["length"]], atol=2 / 32768)


def test_manifest_checksums_and_reading_back(prepared):
    out, m = prepared
    assert read_manifest(out) == m
    assert all(_sha(out / c["file"]) == c["sha256"] for c in m["chunks"])
    for split in ("train", "valid", "test"):
        files = split_files(out, split)
        assert files == [out / c["file"] for c in m["chunks"] if c["split"] == split] and files
    assert (m["format"], m["version"], m["chunk_samples"], m["hop_samples"]) == ("fastsrnn-dataset", 1, 4000, 4000)


def test_hop_gives_more_train_chunks_still_leak_free(tmp_path, album, prepared):
    m = prepare(album, tmp_path / "hop", hop_seconds=CHUNK / 4, block_seconds=1.0, **OPTS)
    plain = prepare(album, tmp_path / "plain", block_seconds=1.0, **OPTS)

    def n(mm, s):
        return sum(c["split"] == s for c in mm["chunks"])

    assert n(m, "train") > 3 * n(plain, "train")
    assert n(m, "valid") > n(plain, "valid")  # overlap inside the valid runs too, never across splits
    _assert_no_leak(m)


def test_normalization_is_per_file_or_dataset_never_per_chunk(tmp_path):
    t = np.arange(32000) / 16000
    loud = 0.5 * np.sin(2 * np.pi * 220 * t)
    loud[16000:] *= 0.1  # a quiet second half must stay quiet
    sf.write(str(tmp_path / "a.wav"), loud, 16000)
    sf.write(str(tmp_path / "b.wav"), 0.2 * np.sin(2 * np.pi * 330 * t), 16000)
    srcs = [tmp_path / "a.wav", tmp_path / "b.wav"]
    per_file = prepare(srcs, tmp_path / "f", normalize="file", **OPTS)
    peaks = [float(np.abs(sf.read(str(tmp_path / "f" / c["file"]))[0]).max()) for c in per_file["chunks"]]
    assert max(peaks) == pytest.approx(0.9, abs=1e-3) and min(peaks) < 0.1
    gains = [s["gain"] for s in per_file["sources"]]
    assert gains[0] == pytest.approx(0.9 / 0.5, rel=1e-3) and gains[1] == pytest.approx(0.9 / 0.2, rel=1e-3)
    whole = prepare(srcs, tmp_path / "d", normalize="dataset", **OPTS)
    assert [s["gain"] for s in whole["sources"]] == pytest.approx([0.9 / 0.5] * 2, rel=1e-3)
    assert [s["gain"] for s in prepare(srcs, tmp_path / "n", normalize="none", **OPTS)["sources"]] == [1.0, 1.0]


def test_rerun_keeps_chunks_and_folder_outputs_are_not_read_back(tmp_path, album):
    folder = tmp_path / "album"
    shutil.copytree(album[0].parent, folder)
    out = folder / "data"  # inside the source folder: a re-run must not read its own chunks
    m = prepare([folder], out, **OPTS)
    before = _snapshot(out)
    with pytest.warns(UserWarning, match="data.*the output folder"):
        assert prepare([folder], out, **OPTS) == m
    assert _snapshot(out) == before  # same files, same bytes, same mtimes


def test_interrupted_run_is_finished(tmp_path, album):
    ref = prepare(album, tmp_path / "ref", **OPTS)
    out = tmp_path / "data"
    shutil.copytree(tmp_path / "ref", out)
    (out / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="re-run"):
        read_manifest(out)
    gone, corrupt, kept = (out / c["file"] for c in ref["chunks"][:3])
    gone.unlink()
    corrupt.write_bytes(b"half a chunk")
    (corrupt.parent / f".{kept.name}.x.flac.part").write_bytes(b"left by a kill")
    kept_mtime = kept.stat().st_mtime_ns
    assert prepare(album, out, **OPTS) == ref
    assert _sha(gone) == ref["chunks"][0]["sha256"] and _sha(corrupt) == ref["chunks"][1]["sha256"]
    assert kept.stat().st_mtime_ns == kept_mtime
    assert _snapshot(out).keys() == _snapshot(tmp_path / "ref").keys()


def test_crash_mid_run_then_rerun(tmp_path, album, monkeypatch):
    ref = prepare(album, tmp_path / "ref", **OPTS)
    real, calls = prep._write_chunk, []

    def dies_on_the_tenth(*a, **k):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(prep, "_write_chunk", dies_on_the_tenth)
    with pytest.raises(KeyboardInterrupt):
        prepare(album, tmp_path / "data", **OPTS)
    monkeypatch.setattr(prep, "_write_chunk", real)
    out = tmp_path / "data"
    assert not (out / "manifest.json").exists() and len(list(out.rglob("*.flac"))) == 9
    first = _snapshot(out)
    assert prepare(album, out, **OPTS) == ref
    after = _snapshot(out)
    assert all(after[k] == v for k, v in first.items() if k.endswith(".flac"))


def test_corrupt_source_is_named_or_skipped(tmp_path, album):
    folder = tmp_path / "album"
    shutil.copytree(album[0].parent, folder)
    (folder / "broken.wav").write_bytes(b"RIFF" + bytes(500))
    with pytest.raises(AudioError, match="broken.wav.*skip-bad"):
        prepare([folder], tmp_path / "data", **OPTS)
    assert not (tmp_path / "data" / "manifest.json").exists()
    with pytest.warns(UserWarning, match="broken.wav"):
        m = prepare([folder], tmp_path / "data", skip_bad=True, **OPTS)
    assert [Path(s["path"]).name for s in m["sources"]] == ["song_00.wav", "song_01.wav", "song_02.wav"]


def test_too_short_input_says_how_much_is_needed(tmp_path):
    sf.write(str(tmp_path / "short.wav"), np.random.default_rng(0).uniform(-.5, .5, 8000), 16000)
    with pytest.raises(ValueError, match=r"not enough audio.*12000 samples"):
        prepare([tmp_path / "short.wav"], tmp_path / "data", **OPTS)  # 0.5 s: needs 3 blocks of 0.25 s


def test_a_different_preparation_is_refused(tmp_path, album):
    out = tmp_path / "data"
    prepare(album, out, **OPTS)
    before = _snapshot(out)
    with pytest.raises(FileExistsError, match="seed"):
        prepare(album, out, seed=1, **OPTS)
    with pytest.raises(FileExistsError, match="sources"):
        prepare(album[:2], out, **OPTS)
    with pytest.raises(FileExistsError, match="chunk_samples"):
        prepare(album, out, **{**OPTS, "chunk_seconds": 0.5})
    assert _snapshot(out) == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        prepare(album, tmp_path / "other", **OPTS)


def test_an_undecodable_record_in_out_is_named(tmp_path, album):
    out = tmp_path / "data"
    out.mkdir()
    (out / "manifest.json").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ValueError, match="manifest.json: not a readable fastsrnn preparation record"):
        prepare(album, out, **OPTS)


def test_bad_options_and_manifests_are_named(tmp_path, album):
    with pytest.raises(ValueError, match="splits"):
        prepare(album, tmp_path / "x", splits=(0.9, 0.2, 0.1), **OPTS)
    with pytest.raises(ValueError, match="normalize"):
        prepare(album, tmp_path / "x", normalize="chunk", **OPTS)
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        prepare([tmp_path / "missing.wav"], tmp_path / "x", **OPTS)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json.*JSON"):
        read_manifest(tmp_path / "m")
    (tmp_path / "m" / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="manifest.json.*fastsrnn-dataset"):
        read_manifest(tmp_path / "m")
    with pytest.raises(ValueError, match="'dev'"):
        split_files(tmp_path / "m", "dev")


@pytest.mark.parametrize("seed", range(12))
def test_plan_is_leak_free_for_odd_lengths(seed):
    rng = np.random.default_rng(seed)
    lengths = [int(n) for n in rng.integers(300, 5000, size=rng.integers(1, 6))]
    chunk, hop, block = 100, int(rng.integers(20, 150)), int(rng.integers(100, 400))
    try:
        chunks = plan_chunks(lengths, chunk, hop, block, (0.8, 0.1, 0.1), seed)
    except ValueError as e:
        assert "not enough audio" in str(e) or "no " in str(e)
        return
    _assert_no_leak({"chunks": chunks})
    assert all(c["offset"] >= 0 and c["offset"] + chunk <= lengths[c["source"]] for c in chunks)
    assert plan_chunks(lengths, chunk, hop, block, (0.8, 0.1, 0.1), seed) == chunks  # deterministic


def test_cli_help_and_run(tmp_path, album, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["prepare", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--chunk-seconds" in text and "--skip-bad" in text and "leak" in text
    assert cli_main(["prepare", *map(str, album), "--out", str(tmp_path / "d"), "--chunk-seconds", "0.25",
                     "--no-progress"]) == 0
    assert "train" in capsys.readouterr().out and read_manifest(tmp_path / "d")["chunk_samples"] == 4000
    assert cli_main(["prepare", *map(str, album), "--out", str(tmp_path / "h"), "--chunk-seconds", "0.25",
                     "--hop-seconds", "0.125", "--block-seconds", "0.5", "--no-progress"]) == 0
    m = read_manifest(tmp_path / "h")
    assert (m["hop_samples"], m["block_samples"]) == (2000, 8000)
    assert cli_main(["prepare", str(album[0]), "--out", str(tmp_path / "d"), "--no-progress"]) == 1
    assert "different preparation" in capsys.readouterr().err
