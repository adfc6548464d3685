"""Verdicts against an album: a synthesized album is prepared, its statistics cached, and clips
made from it (held-out chunks, white noise, silence, a looped riff, music under noise) must get
the right verdict. Thresholds were calibrated on real music (Debian's asc-music) by hand."""
import json

import numpy as np
import pytest

from fastsrnn.data.audio import read_audio
from fastsrnn.data.manifest import split_files
from fastsrnn.data.prepare import prepare
from fastsrnn.quality.album_reference import STATS_FILE, album_reference
from fastsrnn.quality.verdict import analyze_clip

SR = 16000


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from fastsrnn.data.synth import write_album

    root = tmp_path_factory.mktemp("album_ref")
    songs = write_album(root / "songs", n_songs=4, seconds=24.0, sample_rate=SR, seed=3)
    prepare(songs, root / "data", sample_rate=SR, chunk_seconds=4.0, splits=(0.7, 0.1, 0.2), progress=False)
    return root / "data"


@pytest.fixture(scope="module")
def ref(data):
    return album_reference(data, progress=False)


@pytest.fixture(scope="module")
def held_out(data):
    return [read_audio(f, SR) for f in split_files(data, "test")]


def _with_noise(music, snr_db, seed):
    noise = np.random.default_rng(seed).standard_normal(len(music))
    noise *= np.sqrt(np.mean(music ** 2) / np.mean(noise ** 2)) * 10 ** (-snr_db / 20)
    return (music + noise).astype(np.float32)


def test_held_out_chunks_are_ok_and_close(ref, held_out):
    assert len(held_out) >= 3 and ref.splits == ["train", "valid"]
    reps = [analyze_clip(a, SR, ref) for a in held_out]
    assert [r.verdict for r in reps] == ["ok"] * len(reps)
    assert min(r.closeness for r in reps) > 0.5 and np.median([r.closeness for r in reps]) > 0.7


def test_failure_cases_get_their_verdicts(ref, held_out):
    rng = np.random.default_rng(1)
    T = len(held_out[0])
    white = analyze_clip(rng.uniform(-0.5, 0.5, T), SR, ref)
    assert white.verdict == "noise-like" and white.closeness < 0.05 and white.z["log_flatness"] > 3
    assert analyze_clip(np.zeros(T), SR, ref).verdict == "silent"
    assert analyze_clip(1e-4 * rng.standard_normal(T), SR, ref).verdict == "silent"
    riff = held_out[1][SR: SR + SR // 2]  # half a second, looped
    trap = analyze_clip(np.tile(riff, 2 * T // len(riff))[:2 * T], SR, ref)
    assert trap.verdict == "trapped" and trap.closeness < 0.1


# The synthesized album is clean and tonal (log10 flatness ~ -3.7), so hiss 30 dB down is
# already far flatter than any of its chunks; on asc-music the turn comes near 10-20 dB SNR.
@pytest.mark.parametrize("snr_db,verdict", [(0, "noise-like"), (30, "noise-like"), (50, "ok"), (60, "ok")])
def test_noise_under_music_turns_noise_like_at_low_snr(ref, held_out, snr_db, verdict):
    reps = [analyze_clip(_with_noise(a, snr_db, i), SR, ref) for i, a in enumerate(held_out)]
    assert [r.verdict for r in reps] == [verdict] * len(reps)
    louder = [analyze_clip(_with_noise(a, snr_db - 10, i), SR, ref) for i, a in enumerate(held_out)]
    assert all(n.closeness <= r.closeness for n, r in zip(louder, reps))  # more noise, further away


def test_statistics_are_cached_and_follow_the_manifest(data, ref, tmp_path):
    import shutil

    cached = json.loads((data / STATS_FILE).read_text())
    assert cached["n_chunks"] == ref.n_chunks and set(cached["stats"]) >= {"log_flatness", "repetition_nines"}
    assert album_reference(data, progress=False) == ref  # read back from the cache
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / STATS_FILE).write_text(json.dumps({**cached, "n_chunks": -1}))
    assert album_reference(copy, progress=False).n_chunks == -1  # same manifest: the cache is used
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))  # another manifest: recomputed
    assert album_reference(copy, progress=False).n_chunks == ref.n_chunks
    assert json.loads((copy / STATS_FILE).read_text())["n_chunks"] == ref.n_chunks
    (copy / STATS_FILE).write_text("{not json")  # a damaged cache is recomputed too
    assert album_reference(copy, progress=False) == album_reference(data, progress=False).__class__(
        **{**ref.__dict__, "key": album_reference(copy, progress=False).key})
    assert not list(copy.glob("*.part"))


def test_not_a_dataset_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        album_reference(tmp_path / "nope")
    (tmp_path / "manifest.json").write_text("[]")
    with pytest.raises(ValueError, match="manifest.json"):
        album_reference(tmp_path)


def test_cli_against(data, held_out, tmp_path, capsys):
    import soundfile as sf

    from fastsrnn.cli import main

    sf.write(str(tmp_path / "music.wav"), held_out[0], SR)
    sf.write(str(tmp_path / "noise.wav"), np.random.default_rng(2).uniform(-0.5, 0.5, 4 * SR), 22050)
    (tmp_path / "broken.wav").write_bytes(b"RIFF" + bytes(100))
    clips = [str(tmp_path / n) for n in ("music.wav", "noise.wav", "broken.wav")]
    assert main(["analyze", "--against", str(data), *clips]) == 1
    out, err = capsys.readouterr()
    rows = out.splitlines()
    assert [r.split()[0] for r in rows] == ["ok", "noise-like"] and "closeness" in rows[0] and "z " in rows[0]
    assert "broken.wav" in err
    assert main(["analyze", "--json", "--against", str(data), clips[0]]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["verdict"] == "ok" and 0 <= rec["closeness"] <= 1 and "log_flatness" in rec["z"]
    assert main(["analyze", "--against", str(tmp_path), clips[0]]) == 1
    assert str(tmp_path) in capsys.readouterr().err
