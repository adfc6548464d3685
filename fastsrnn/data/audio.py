"""Audio files in and out: read anything soundfile reads as mono float32 at one sample rate,
write 16-bit WAV or FLAC atomically, or stream a long file chunk by chunk (and resume it).

Reading: WAV, FLAC, OGG (Vorbis/Opus), MP3 (libsndfile >= 1.1), AIFF and the rest of
``soundfile.available_formats()``. Channels are mixed to mono by their mean; a file at another
rate is resampled with soxr's 'HQ' quality, giving ``round(T * sample_rate / file_rate)``
samples. Writing: WAV or FLAC, 16-bit PCM, mono (or (T, C)); samples are clipped to [-1, 1]
first, since libsndfile's float -> int conversion does not clip by default.

soundfile and soxr are imported only where a file is read, written or resampled
(:func:`require_soundfile`, :func:`require_soxr`), so that generation to arrays, the bench, the
backends and the GPU tests run on a machine without them; there, touching a file raises
:class:`MissingAudioLibrary` naming the package and ``pip install soundfile soxr``.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from fastsrnn.atomic import atomic_path

PathLike = Union[str, os.PathLike]

# Extensions (lower case, with the dot) -> the formats we write; reading accepts more.
WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
# What `fastsrnn prepare` picks up when it walks a folder.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")


class AudioError(ValueError):
    """An audio file that cannot be read or written; the message names the file."""


class MissingAudioLibrary(ImportError, RuntimeError):
    """soundfile or soxr is not installed (or libsndfile cannot be loaded): audio files cannot be used.

    An ImportError for code that catches those, and a RuntimeError so that the CLI prints the
    message (which says what to install) without a traceback.
    """

    def __init__(self, package: str, cause: Exception):
        super().__init__(f"reading, writing or resampling audio files needs the '{package}' package, which cannot be "
                         f"imported here ({cause}); install the audio libraries with: pip install soundfile soxr",
                         name=package)


def require_soundfile():
    """The soundfile module, imported on first use; raises MissingAudioLibrary if it is absent."""
    try:
        import soundfile
    except (ImportError, OSError) as e:  # OSError: soundfile is there but libsndfile cannot be loaded
        raise MissingAudioLibrary("soundfile", e) from e
    return soundfile


def __getattr__(name: str):
    # ``fastsrnn.data.audio.sf``, the name soundfile had here when it was imported eagerly (tests patch it).
    if name == "sf":
        return require_soundfile()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def require_soxr():
    """The soxr module (resampling), imported on first use; raises MissingAudioLibrary if it is absent."""
    try:
        import soxr
    except ImportError as e:
        raise MissingAudioLibrary("soxr", e) from e
    return soxr


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    sample_rate: int
    channels: int
    frames: int      # samples per channel
    format: str      # libsndfile's name: 'WAV', 'FLAC', 'OGG', 'MP3', ...
    subtype: str     # 'PCM_16', 'VORBIS', ...

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def _open_error(path: Path, e: Exception) -> AudioError:
    return AudioError(f"{path}: cannot read audio ({e}); is it a complete, uncorrupted audio file?")


def audio_info(path: PathLike) -> AudioInfo:
    """Header facts of an audio file without decoding it. Raises AudioError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such audio file")
    sf = require_soundfile()
    try:
        i = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise _open_error(path, e) from e
    return AudioInfo(path, int(i.samplerate), int(i.channels), int(i.frames), i.format, i.subtype)


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """audio: (T,) float32 at from_rate -> (round(T * to_rate / from_rate),) float32 (soxr 'HQ')."""
    if from_rate == to_rate:
        return audio
    soxr = require_soxr()  # imported here: only files at another rate need it
    return soxr.resample(audio, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


def read_audio(path: PathLike, sample_rate: int) -> np.ndarray:
    """Read one file as mono float32 at ``sample_rate``: returns (T,) float32, T >= 1.

    Raises FileNotFoundError for a missing file and AudioError (naming the file) for one that
    is unreadable, corrupt, empty or holds NaN/inf samples. A file that decodes to noticeably
    fewer frames than its header announces (a truncated MP3) gives a :class:`TruncatedAudioWarning`
    naming the file and how much was read.
    """
    path = Path(path)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such audio file")
    sf = require_soundfile()
    try:
        with sf.SoundFile(str(path)) as f:
            announced, fmt = int(f.frames), f.format
            data = f.read(dtype="float32", always_2d=True)  # (T, C)
            rate = f.samplerate
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, MemoryError) as e:
        raise _open_error(path, e) from e
    if data.shape[0] == 0 or data.shape[1] == 0:
        hint = "; an OGG file cut short reads as empty: is it truncated?" if fmt == "OGG" else ""
        raise AudioError(f"{path}: the file holds no audio (0 samples){hint}")
    _check_complete(path, data.shape[0], announced)
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]  # (T,)
    if not np.isfinite(mono).all():
        raise AudioError(f"{path}: the file holds NaN or infinite samples")
    out = resample(np.ascontiguousarray(mono), int(rate), int(sample_rate))
    if out.shape[0] == 0:
        raise AudioError(f"{path}: too short to resample from {rate} Hz to {sample_rate} Hz")
    return out


# A decoded file may fall short of its header's frame count by this much before we call it truncated
# (MP3 lengths without an exact Xing/LAME count are estimates; a real truncation loses far more).
SHORT_TOLERANCE = 0.01


class TruncatedAudioWarning(UserWarning):
    """A file decoded to fewer frames than its header announces (cut short or damaged)."""


def _check_complete(path: Path, read: int, announced: int) -> None:
    """Warn, naming the file, when decoding gave noticeably fewer frames than the header announces."""
    if announced > 0 and announced - read > max(SHORT_TOLERANCE * announced, 2304):  # 2304: two MP3 frames
        warnings.warn(f"{path}: decoded only {read} of the {announced} frames its header announces "
                      f"({100 * read / announced:.1f}%); it looks "
                      "truncated or damaged, and only the part that could be read is used",
                      TruncatedAudioWarning, stacklevel=3)


def _write_format(path: Path, format: Optional[str]) -> str:
    if format is not None:
        fmt = format.upper().lstrip(".")
        if fmt not in WRITE_FORMATS.values():
            raise ValueError(f"format must be 'wav' or 'flac', got {format!r}")
        return fmt
    fmt = WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: cannot tell the format from the extension; use .wav or .flac, or pass format=")
    return fmt


def _as_frames(audio: np.ndarray, what: str) -> np.ndarray:
    """(T,) or (T, C) float -> the same, float32, clipped to [-1, 1]."""
    a = np.asarray(audio)
    if a.ndim not in (1, 2) or not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{what}: expected a (T,) or (T, C) float array, got {a.dtype} of shape {a.shape}")
    return np.clip(a, -1.0, 1.0).astype(np.float32, copy=False)


def write_audio(path: PathLike, audio: np.ndarray, sample_rate: int, format: Optional[str] = None) -> Path:
    """Write audio: (T,) (or (T, C)) float in [-1, 1] as 16-bit PCM WAV or FLAC, atomically.

    The format comes from ``format`` ('wav' / 'flac') or else the extension. Returns the path.
    """
    path = Path(path)
    fmt = _write_format(path, format)
    frames = _as_frames(audio, str(path))
    sf = require_soundfile()
    with atomic_path(path, suffix="." + fmt.lower()) as tmp:
        sf.write(str(tmp), frames, int(sample_rate), subtype="PCM_16", format=fmt)
    return path


def encode_audio(audio: np.ndarray, sample_rate: int, format: str = "flac") -> bytes:
    """The bytes :func:`write_audio` would write (libsndfile's encoders are deterministic)."""
    import io

    buf = io.BytesIO()
    fmt = _write_format(Path("x"), format)
    require_soundfile().write(buf, _as_frames(audio, "audio"), int(sample_rate), subtype="PCM_16", format=fmt)
    return buf.getvalue()


class AudioStreamWriter:
    """Append mono chunks to a 16-bit WAV or FLAC file as they are produced (long generations).

    ``AudioStreamWriter(path, sr, 'wav')`` creates (or replaces) the file. It is written in
    place, not atomically: after :meth:`flush` a WAV's header is up to date, so the file is a
    valid WAV of every sample written so far even if the process dies later. A FLAC that was
    never closed has no length in its header; its first frames can still be read back with an
    explicit frame count, which is what ``append=True`` does.

    ``append=True`` reopens an existing file to continue after a resume: the first
    ``keep_frames`` frames (default: all) are kept, anything after them is dropped, and writing
    continues from there.
    - WAV: opened in libsndfile's read/write mode ('r+'), sought to ``keep_frames`` and
      truncated there; no copy.
    - FLAC: libsndfile cannot open FLAC (nor OGG, MP3) in read/write mode, so the kept frames
      are copied into a new file beside it, which then atomically replaces the old one before
      writing goes on. That costs one read and re-encode of the kept audio per resume.
    """

    def __init__(self, path: PathLike, sample_rate: int, format: Optional[str] = None, *,
                 append: bool = False, keep_frames: Optional[int] = None):
        self.path = Path(path)
        self.sample_rate = int(sample_rate)
        self.format = _write_format(self.path, format)
        sf = require_soundfile()
        if append and self.path.exists():
            self._file, self.frames = self._reopen(keep_frames)
        else:
            if append and keep_frames:
                raise FileNotFoundError(f"{self.path}: cannot append after {keep_frames} frames, the file is missing")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = sf.SoundFile(str(self.path), "w", self.sample_rate, 1, "PCM_16", format=self.format)
            self.frames = 0

    def _reopen(self, keep: Optional[int]):
        if self.format == "WAV":
            f = require_soundfile().SoundFile(str(self.path), "r+")
            self._check_same(f)
            keep = f.frames if keep is None else int(keep)
            if keep > f.frames:
                f.close()
                raise AudioError(f"{self.path}: asked to keep {keep} frames but the file holds only {f.frames}")
            f.seek(keep)
            f.truncate(keep)
            return f, keep
        return self._copy_prefix(keep)

    def _copy_prefix(self, keep: Optional[int]):
        """Copy the first ``keep`` frames into a new file that replaces the old one (FLAC)."""
        tmp = self.path.with_name(f".{self.path.name}.resume.{self.format.lower()}")
        sf = require_soundfile()
        out = sf.SoundFile(str(tmp), "w", self.sample_rate, 1, "PCM_16", format=self.format)
        copied = 0
        try:
            with sf.SoundFile(str(self.path)) as src:
                self._check_same(src)
                # An unclosed FLAC reports a bogus length and fails past its last whole block, so
                # without keep_frames we read until the decoder stops.
                want = int(keep) if keep is not None else None
                while want is None or copied < want:
                    try:
                        block = src.read(65536 if want is None else min(65536, want - copied), dtype="float32")
                    except sf.LibsndfileError:
                        block = ()
                    if len(block) == 0:
                        break
                    out.write(block)
                    copied += len(block)
            if want is not None and copied < want:
                raise AudioError(f"{self.path}: asked to keep {want} frames but could read only {copied}")
            out.flush()
            os.replace(tmp, self.path)  # the open handle follows the file to its new name
        except BaseException:  # the original is untouched: drop the half-made copy and its handle
            out.close()
            tmp.unlink(missing_ok=True)
            raise
        return out, copied

    def _check_same(self, f) -> None:  # f: an open soundfile.SoundFile
        if f.samplerate != self.sample_rate or f.channels != 1:
            f.close()
            raise AudioError(f"{self.path}: cannot append, the file is {f.channels} channel(s) at {f.samplerate} Hz, "
                             f"not mono at {self.sample_rate} Hz")

    def write(self, audio: np.ndarray) -> None:
        """audio: (T,) float in [-1, 1], appended after what is already written."""
        a = _as_frames(audio, str(self.path))
        if a.ndim != 1:
            raise ValueError(f"{self.path}: expected a (T,) chunk, got shape {a.shape}")
        self._file.write(a)
        self.frames += a.shape[0]

    def flush(self) -> None:
        """Push written samples to the OS (and, for WAV, update the header's length)."""
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "AudioStreamWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
