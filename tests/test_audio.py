"""Audio I/O: any format and rate in -> mono 16 kHz; 16-bit WAV/FLAC out, atomic; streaming
writes that survive a crash and resume."""
from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import soundfile as sf

from fastsrnn.data import audio as audio_mod
from fastsrnn.data.audio import AudioError, AudioStreamWriter, audio_info, read_audio, write_audio

# (extension, soundfile format, subtype): the formats a user's album comes in.
FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"),
           "mp3": ("MP3", "MPEG_LAYER_III")}
STEP = 1.0 / 32768  # one 16-bit step


def _sine(freq: float, seconds: float, sr: int) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def _peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1.0 / sr)[spec.argmax()])


@pytest.mark.parametrize("channels", [1, 2], ids=["mono", "stereo"])
@pytest.mark.parametrize("rate", [8000, 22050, 44100])
@pytest.mark.parametrize("ext", list(FORMATS))
def test_read_any_format_and_rate_as_mono_16k(tmp_path, ext, rate, channels):
    fmt, subtype = FORMATS[ext]
    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    x = _sine(440.0, 0.5, rate)
    path = tmp_path / f"a.{ext}"
    sf.write(str(path), np.stack([x] * channels, 1), rate, format=fmt, subtype=subtype)
    y = read_audio(path, 16000)
    assert y.dtype == np.float32 and y.ndim == 1
    assert len(y) == round(len(x) * 16000 / rate)
    assert abs(_peak_hz(y, 16000) - 440.0) < 5.0
    assert 0.35 < np.abs(y).max() < 0.65  # the level survives mixing and resampling


def test_stereo_is_mixed_by_mean_and_16k_is_not_resampled(tmp_path):
    left, right = _sine(440.0, 0.25, 16000), _sine(1000.0, 0.25, 16000)
    sf.write(str(tmp_path / "s.wav"), np.stack([left, right], 1), 16000, subtype="PCM_16")
    y = read_audio(tmp_path / "s.wav", 16000)
    np.testing.assert_allclose(y, (left + right) / 2, atol=STEP)


def test_resampled_audio_matches_the_signal(tmp_path):
    sf.write(str(tmp_path / "a.flac"), _sine(440.0, 0.5, 44100), 44100, subtype="PCM_16")
    y = read_audio(tmp_path / "a.flac", 16000)
    ref = _sine(440.0, 0.5, 16000)
    mid = slice(400, len(ref) - 400)  # away from the resampler's edges
    np.testing.assert_allclose(y[mid], ref[mid], atol=2e-3)


@pytest.mark.parametrize("content", [b"", b"RIFF\x00\x00\x00\x00WAVEjunk", bytes(range(256)) * 40],
                         ids=["empty", "truncated-header", "garbage"])
def test_unreadable_file_is_named(tmp_path, content):
    bad = tmp_path / "broken_song.wav"
    bad.write_bytes(content)
    with pytest.raises(AudioError, match="broken_song.wav"):
        read_audio(bad, 16000)
    with pytest.raises(AudioError, match="broken_song.wav"):
        audio_info(bad)


def test_zero_samples_missing_file_and_nan(tmp_path):
    sf.write(str(tmp_path / "silent.wav"), np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="silent.wav.*no audio"):
        read_audio(tmp_path / "silent.wav", 16000)
    with pytest.raises(FileNotFoundError, match="nowhere.wav"):
        read_audio(tmp_path / "nowhere.wav", 16000)
    sf.write(str(tmp_path / "nan.wav"), np.array([0.1, np.nan], np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav.*NaN"):
        read_audio(tmp_path / "nan.wav", 16000)


def test_audio_info(tmp_path):
    sf.write(str(tmp_path / "i.flac"), np.zeros((2205, 2), np.float32), 22050, subtype="PCM_16")
    info = audio_info(tmp_path / "i.flac")
    got = (info.sample_rate, info.channels, info.frames, info.format, info.subtype)
    assert got == (22050, 2, 2205, "FLAC", "PCM_16")
    assert info.seconds == pytest.approx(0.1)


@pytest.mark.parametrize("name,fmt,want", [("a.wav", None, "WAV"), ("a.flac", None, "FLAC"), ("a.FLAC", None, "FLAC"),
                                           ("a.out", "flac", "FLAC"), ("a.wav", "FLAC", "FLAC")])
def test_write_round_trip_16_bit(tmp_path, name, fmt, want):
    x = np.random.default_rng(0).uniform(-1, 1, 1000).astype(np.float32)
    path = write_audio(tmp_path / name, x, 16000, format=fmt)
    i = sf.info(str(path))
    assert (i.format, i.subtype, i.channels, i.samplerate) == (want, "PCM_16", 1, 16000)
    np.testing.assert_allclose(sf.read(str(path), dtype="float32")[0], x, atol=STEP)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind


def test_write_clips_instead_of_wrapping(tmp_path):
    write_audio(tmp_path / "c.wav", np.array([1.5, -1.5, 0.25], np.float32), 16000)
    y = sf.read(str(tmp_path / "c.wav"), dtype="float32")[0]
    assert y[0] > 0.999 and y[1] == -1.0 and y[2] == 0.25


def test_write_rejects_unknown_formats_and_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match="a.mp3"):
        write_audio(tmp_path / "a.mp3", np.zeros(4, np.float32), 16000)
    with pytest.raises(ValueError, match="'ogg'"):
        write_audio(tmp_path / "a.wav", np.zeros(4, np.float32), 16000, format="ogg")
    with pytest.raises(ValueError, match="float"):
        write_audio(tmp_path / "a.wav", np.zeros(4, np.int16), 16000)


def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = write_audio(tmp_path / "keep.wav", np.full(100, 0.5, np.float32), 16000)
    before = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(audio_mod.sf, "write", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_audio(path, np.zeros(100, np.float32), 16000)
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("ext", ["wav", "flac"])
def test_stream_writer_appends_chunks(tmp_path, ext):
    x = np.random.default_rng(1).uniform(-0.9, 0.9, 10000).astype(np.float32)
    with AudioStreamWriter(tmp_path / f"s.{ext}", 16000) as w:
        for part in np.array_split(x, 7):
            w.write(part)
        assert w.frames == len(x)
    np.testing.assert_allclose(read_audio(tmp_path / f"s.{ext}", 16000), x, atol=STEP)


@pytest.mark.parametrize("ext", ["wav", "flac"])
def test_stream_writer_resumes_after_a_crash(tmp_path, ext):
    """The file as it lay on disk when the process died (flushed, never closed) is reopened,
    cut back to the frames the saved state covers, and continued."""
    x = np.random.default_rng(2).uniform(-0.9, 0.9, 30000).astype(np.float32)
    live, crashed = tmp_path / f"live.{ext}", tmp_path / f"crashed.{ext}"
    w = AudioStreamWriter(live, 16000)
    w.write(x[:12000])
    w.flush()
    shutil.copyfile(live, crashed)  # the on-disk state at the moment of the crash
    w.close()
    with AudioStreamWriter(crashed, 16000, append=True, keep_frames=8000) as w2:
        assert w2.frames == 8000
        w2.write(x[8000:])
    np.testing.assert_allclose(read_audio(crashed, 16000), x, atol=STEP)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, crashed.name])


def test_stream_writer_append_checks(tmp_path):
    path = write_audio(tmp_path / "a.wav", np.zeros(100, np.float32), 16000)
    with AudioStreamWriter(path, 16000, append=True) as w:  # keep everything, append after it
        w.write(np.full(50, 0.5, np.float32))
    assert sf.info(str(path)).frames == 150
    with pytest.raises(AudioError, match="a.wav.*holds only 150"):
        AudioStreamWriter(path, 16000, append=True, keep_frames=151)
    with pytest.raises(AudioError, match="a.wav.*16000 Hz"):
        AudioStreamWriter(path, 8000, append=True)
    with pytest.raises(FileNotFoundError, match="gone.flac"):
        AudioStreamWriter(tmp_path / "gone.flac", 16000, append=True, keep_frames=10)


def test_flac_append_refused_leaves_no_copy_behind(tmp_path):
    path = write_audio(tmp_path / "a.flac", np.zeros(100, np.float32), 16000)
    with pytest.raises(AudioError, match="a.flac.*16000 Hz"):
        AudioStreamWriter(path, 8000, append=True, keep_frames=50)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.flac"]  # no .a.flac.resume.flac left
    with pytest.raises(AudioError, match="a.flac.*could read only 100"):
        AudioStreamWriter(path, 16000, append=True, keep_frames=101)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.flac"]  # no .a.flac.resume.flac left
    assert sf.info(str(path)).frames == 100


def test_synth_album_is_seeded_music_not_noise(tmp_path):
    from fastsrnn.data.synth import synth_song, write_album

    x = synth_song(3.0, 16000, seed=5)
    assert x.dtype == np.float32 and x.shape == (48000,)
    assert np.abs(x).max() == pytest.approx(0.9, abs=1e-6)
    assert np.array_equal(x, synth_song(3.0, 16000, seed=5)) and not np.array_equal(x, synth_song(3.0, 16000, seed=6))
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / 16000)
    assert power[freqs < 1000].sum() > 0.8 * power.sum()  # white noise would put 1/8 below 1 kHz
    flatness = np.exp(np.mean(np.log(power + 1e-12))) / power.mean()
    assert flatness < 0.05  # tonal: peaks at the notes' harmonics, not a flat spectrum
    paths = write_album(tmp_path, n_songs=2, seconds=1.0, sample_rate=8000, format="flac")
    assert [p.name for p in paths] == ["song_00.flac", "song_01.flac"]
    assert sf.info(str(paths[1])).samplerate == 8000 and sf.info(str(paths[1])).frames == 8000


def test_truncated_mp3_warns_naming_the_file_and_how_much_was_read(tmp_path):
    from fastsrnn.data.audio import TruncatedAudioWarning

    full = tmp_path / "whole.mp3"
    sf.write(str(full), _sine(440, 4.0, 16000), 16000, format="MP3", subtype="MPEG_LAYER_III")
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncatedAudioWarning)
        assert read_audio(full, 16000).shape[0] == 64000  # a whole file: no warning
    cut = tmp_path / "cut_short.mp3"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.warns(TruncatedAudioWarning, match=r"cut_short.mp3: decoded only \d+ of the 64000 frames"):
        x = read_audio(cut, 16000)
    assert 20000 < x.shape[0] < 40000


def test_truncated_ogg_is_an_error_that_says_so(tmp_path):
    full = tmp_path / "whole.ogg"
    sf.write(str(full), _sine(440, 4.0, 16000), 16000, format="OGG", subtype="VORBIS")
    cut = tmp_path / "cut_short.ogg"
    for frac in (0.5, 0.8):
        cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * frac)])
        with pytest.raises(AudioError, match="cut_short.ogg"):
            read_audio(cut, 16000)
