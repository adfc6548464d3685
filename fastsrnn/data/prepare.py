"""``fastsrnn prepare``: audio files or folders -> mono FLAC chunks split train/valid/test.

The split is leak-free. The album's timeline (files in sorted order, end to end) is cut into
blocks; the blocks are shuffled with the seed and dealt to train/valid/test by the fractions;
adjacent blocks of one split inside one file merge into runs, and chunks are windows cut
inside runs. So no sample of valid or test audio is in any train chunk, even with overlapping
windows (a hop shorter than the chunk), and no chunk crosses a file or split boundary.

Level is set once per source file (peak 0.9) or once for the whole dataset, never per chunk:
per-chunk normalization would teach the model a loudness that the music does not have.

Layout: DATA/{train,valid,test}/NNNNNN.flac (16-bit PCM, mono) and DATA/manifest.json,
written last. DATA/.prepare.json records the preparation before any chunk is written, so
that a re-run with the same sources and options finishes an interrupted one (chunks already written
with the right checksum are kept untouched) and a different preparation is refused.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from fastsrnn.atomic import atomic_path, atomic_write_text
from fastsrnn.data.audio import AudioError, encode_audio, read_audio
from fastsrnn.data.manifest import FORMAT, MANIFEST_FILE, PLAN_FILE, SPLITS, VERSION, file_sha256
from fastsrnn.data.sources import find_sources
from fastsrnn.outlock import LOCK_NAME, locked_output

NORMALIZE = ("file", "dataset", "none")
PEAK = 0.9
# The manifest fields that say what a preparation is; equal fields -> the same chunks.
IDENTITY = ("sample_rate", "chunk_samples", "hop_samples", "block_samples", "seed", "normalize", "splits")
MIN_RATE, MAX_RATE = 1000, 384000  # sample rates accepted for the chunks, Hz


class OutputNotWritable(PermissionError, RuntimeError):
    """The output folder cannot be created or written (read-only, no permission, disk full)."""


def _load(paths: List[Path], sr: int, skip_bad: bool, progress: bool) -> Tuple[List[dict], List[np.ndarray]]:
    """Read every source as mono at ``sr`` with its DC removed -> (source records, audio (T,) each)."""
    from tqdm import tqdm

    records, audios, seen = [], [], {}
    for path in tqdm(paths, desc="reading", unit="file", disable=not progress):
        try:
            try:
                sha = file_sha256(path)
            except OSError as e:
                raise AudioError(f"{path}: cannot read the file ({e.strerror or e})") from e
            if sha in seen:  # the same bytes twice would put the same audio in train and in valid/test
                warnings.warn(f"skipping {path}: the same file as {seen[sha]} (sha256 {sha[:12]}...); "
                              "each distinct file is read once", stacklevel=3)
                continue
            audio = read_audio(path, sr)
        except AudioError as e:
            if not skip_bad:
                raise AudioError(f"{e} (pass --skip-bad / skip_bad=True to leave it out)") from e
            warnings.warn(f"skipping {path}: {e}", stacklevel=3)
            continue
        seen[sha] = path
        audios.append((audio - audio.mean(dtype=np.float64)).astype(np.float32))
        records.append({"path": str(path), "sha256": sha, "samples": int(audio.shape[0])})
    if not audios:
        raise ValueError("none of the sources could be read")
    return records, audios


def _gains(audios: List[np.ndarray], normalize: str) -> List[float]:
    """One gain per source: its own peak to 0.9 ('file'), one for all ('dataset'), or 1 ('none')."""
    peaks = [float(np.abs(a).max()) for a in audios]
    if normalize == "none":
        return [1.0] * len(audios)
    if normalize == "dataset":
        top = max(peaks)
        return [PEAK / top if top > 0 else 1.0] * len(audios)
    return [PEAK / p if p > 0 else 1.0 for p in peaks]


# ---------------------------------------------------------------- the plan

def _deal_blocks(lengths: List[int], block: int, fractions: Sequence[float], seed: int) -> np.ndarray:
    """Shuffle the timeline's blocks and deal them: (n_blocks,) int, 0/1/2 = train/valid/test.

    valid and test get at least one block each and draw only whole blocks (a full block
    inside one file), so each is sure to hold a chunk; train takes all the rest.
    """
    starts = np.concatenate([[0], np.cumsum(lengths)])  # file boundaries on the timeline
    n_blocks = math.ceil(starts[-1] / block)
    first = np.arange(n_blocks) * block
    last = np.minimum(first + block, starts[-1]) - 1
    whole = (last - first + 1 == block) & (
        np.searchsorted(starts, first, "right") == np.searchsorted(starts, last, "right"))
    want = [max(1, round(f * n_blocks)) for f in fractions[1:]]
    if whole.sum() < sum(want) + 1:
        raise ValueError(
            f"not enough audio: {starts[-1]} samples in {len(lengths)} file(s) hold {int(whole.sum())} whole "
            f"block(s) of {block} samples inside a file, but valid, test and train need at least {sum(want) + 1} "
            f"(about {(sum(want) + 1) * block} samples of audio in files of at least one block each); "
            f"add audio or lower --chunk-seconds / --block-seconds")
    order = np.random.default_rng(seed).permutation(n_blocks)
    split = np.zeros(n_blocks, dtype=np.int64)
    dealt = [b for b in order if whole[b]]
    split[dealt[:want[0]]] = 1
    split[dealt[want[0]:want[0] + want[1]]] = 2
    return split


def _runs(lengths: List[int], block: int, split: np.ndarray) -> List[Tuple[int, int, int, int]]:
    """Maximal stretches of one split inside one file: (split, source, start, end), file-local."""
    runs, t0 = [], 0
    for src, n in enumerate(lengths):
        b = t0 // block
        start = 0
        while start < n:
            end = min(n, (b + 1) * block - t0)  # the end of block b, or of the file
            if runs and runs[-1][1] == src and runs[-1][0] == split[b]:
                runs[-1] = (runs[-1][0], src, runs[-1][2], end)
            else:
                runs.append((int(split[b]), src, start, end))
            start, b = end, b + 1
        t0 += n
    return runs


def plan_chunks(lengths: List[int], chunk: int, hop: int, block: int, fractions: Sequence[float],
                seed: int) -> List[dict]:
    """The chunks of a preparation, in their shuffled order, with their file names.

    lengths: samples of each source. Returns [{"file", "split", "source", "offset", "length"}].
    """
    split = _deal_blocks(lengths, block, fractions, seed)
    chunks = [{"split": SPLITS[s], "source": src, "offset": off, "length": chunk}
              for s, src, start, end in _runs(lengths, block, split)
              for off in range(start, end - chunk + 1, hop)]
    order = np.random.default_rng([seed, 1]).permutation(len(chunks))  # a stream apart from the blocks'
    chunks = [chunks[i] for i in order]
    count = dict.fromkeys(SPLITS, 0)
    for c in chunks:
        c["file"] = f"{c['split']}/{count[c['split']]:06d}.flac"
        count[c["split"]] += 1
    for s in SPLITS:
        if count[s] == 0:
            raise ValueError(f"the plan gives no {s} chunk; add audio or lower --chunk-seconds")
    return [{k: c[k] for k in ("file", "split", "source", "offset", "length")} for c in chunks]


# ---------------------------------------------------------------- writing

def _identity(m: dict) -> dict:
    return {**{k: m.get(k) for k in IDENTITY}, "sources": [s.get("sha256") for s in m.get("sources", [])]}


def _check_out_dir(out: Path, header: dict) -> None:
    """Refuse to write into a folder that holds something else than this same preparation."""
    for name in (MANIFEST_FILE, PLAN_FILE):
        path = out / name
        if path.exists():
            try:
                old = _identity(json.loads(path.read_text()))
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as e:
                raise ValueError(f"{path}: not a readable fastsrnn preparation record ({e}); use another --out") from e
            new = _identity(header)
            if old != new:
                diff = ", ".join(k for k in new if old.get(k) != new[k])
                raise FileExistsError(f"{out} holds a different preparation (differs in: {diff}); nothing was "
                                      f"overwritten. Use another --out, or delete {out} to start over")
            return
    if out.exists() and any(not p.name.endswith(".part") and p.name != LOCK_NAME for p in out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds no fastsrnn dataset; nothing was overwritten. "
                              f"Use an empty or new folder for --out")


def _write_chunk(out: Path, c: dict, audio: np.ndarray, gain: float, sr: int) -> Tuple[str, bool]:
    """Write one chunk unless the same bytes are already there -> (sha256, written?)."""
    data = encode_audio(audio[c["offset"]:c["offset"] + c["length"]] * gain, sr, "flac")
    sha = hashlib.sha256(data).hexdigest()
    path = out / c["file"]
    if path.is_file() and file_sha256(path) == sha:
        return sha, False
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return sha, True


def _write_if_changed(path: Path, text: str) -> None:
    """Atomic write, skipped when the file already says the same (a re-run changes no mtime)."""
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)


def _option(name: str) -> str:
    return f"{name} (--{name.replace('_', '-')})"


def _finite(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{_option(name)} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{_option(name)} must be a finite number, got {value}")
    return v


def _seconds_to_samples(name: str, seconds: Optional[float], default: int, sr: int) -> int:
    if seconds is None:
        return default
    n = int(round(_finite(name, seconds) * sr))
    if n < 1:
        raise ValueError(f"{_option(name)} must be positive (at least one sample), got {seconds}")
    return n


def _check_options(sample_rate: int, splits, normalize: str) -> Tuple[float, float, float]:
    rate = _finite("sample_rate", sample_rate)
    if rate != int(rate) or not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"{_option('sample_rate')} must be a whole number of Hz from {MIN_RATE} to {MAX_RATE}, "
                         f"got {sample_rate}")
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
    fr = tuple(_finite("splits", f) for f in splits)
    if len(fr) != 3 or min(fr) <= 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"splits must be three positive fractions (train, valid, test) summing to 1, got {splits}")
    return fr


def _check_out_path(out: Path) -> None:
    """--out must be a folder (or not exist yet), not a file."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise FileExistsError(f"--out {out}: {p} is a file, not a folder; choose a folder for the dataset")
            return


def prepare(sources: Sequence, out_dir, *, sample_rate: int = 16000, chunk_seconds: float = 8.0,
            hop_seconds: Optional[float] = None, block_seconds: Optional[float] = None,
            splits: Sequence[float] = (0.88, 0.06, 0.06), seed: int = 0, normalize: str = "file",
            skip_bad: bool = False, progress: bool = True) -> dict:
    """Prepare ``sources`` (audio files and folders) into ``out_dir``; returns the manifest.

    Chunks are ``chunk_seconds`` long, one every ``hop_seconds`` (default: no overlap) inside
    the runs of ``block_seconds`` blocks (default: the chunk length) dealt to the splits.
    Re-running with the same arguments finishes an interrupted run; see the module docstring.
    ``sources`` may be one path. The output folder is locked for the run: a second preparation
    into it is refused (:class:`fastsrnn.outlock.OutputLocked`).
    """
    out = Path(out_dir)
    fractions = _check_options(sample_rate, splits, normalize)
    sr = int(float(sample_rate))
    chunk = _seconds_to_samples("chunk_seconds", chunk_seconds, 0, sr)
    hop = _seconds_to_samples("hop_seconds", hop_seconds, chunk, sr)
    block = _seconds_to_samples("block_seconds", block_seconds, chunk, sr)
    if chunk_seconds is None or int(seed) < 0:
        raise ValueError(f"chunk_seconds must be given and seed must be non-negative, got {chunk_seconds} and {seed}")
    if block < chunk:
        raise ValueError(f"block_seconds ({block / sr} s) must be at least chunk_seconds ({chunk / sr} s)")
    _check_out_path(out)
    paths = find_sources(sources, exclude=out)
    try:
        with locked_output(out, "fastsrnn prepare"):
            return _prepare_locked(paths, out, sr, chunk, hop, block, fractions, int(seed), normalize, skip_bad,
                                   progress)
    except OSError as e:
        full = e.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT)
        if _about_output(e, out) and (isinstance(e, PermissionError) or full):
            where = e.filename or out
            raise OutputNotWritable(e.errno, f"cannot write the dataset in {out} ({where}: {e.strerror}); "
                                    "choose a writable --out folder") from None
        raise


def _about_output(e: OSError, out: Path) -> bool:
    """Whether an error names the output folder, a folder above it or a file in it (not a source)."""
    if e.filename is None:
        return True
    p, o = Path(os.fsdecode(e.filename)).resolve(), out.resolve()
    return p == o or p in o.parents or o in p.parents


def _prepare_locked(paths: List[Path], out: Path, sr: int, chunk: int, hop: int, block: int, fractions,
                    seed: int, normalize: str, skip_bad: bool, progress: bool) -> dict:
    from tqdm import tqdm

    records, audios = _load(paths, sr, skip_bad, progress)
    for r, g in zip(records, _gains(audios, normalize)):
        r["gain"] = g
    header = {"format": FORMAT, "version": VERSION, "sample_rate": sr, "chunk_samples": chunk, "hop_samples": hop,
              "block_samples": block, "seed": seed, "normalize": normalize,
              "splits": dict(zip(SPLITS, fractions)), "sources": records}
    _check_out_dir(out, header)
    chunks = plan_chunks([r["samples"] for r in records], chunk, hop, block, fractions, seed)
    _write_if_changed(out / PLAN_FILE, json.dumps(header, indent=1) + "\n")
    for stale in (p for s in SPLITS for p in (out / s).glob(".*.part")):
        stale.unlink()  # temporary files of ours left by a process that was killed mid-write
    for c in tqdm(chunks, desc="writing", unit="chunk", disable=not progress):
        c["sha256"], _ = _write_chunk(out, c, audios[c["source"]], records[c["source"]]["gain"], sr)
    manifest = {**header, "chunks": chunks}
    _write_if_changed(out / MANIFEST_FILE, json.dumps(manifest, indent=1) + "\n")
    return manifest


# ---------------------------------------------------------------- CLI

def add_arguments(p) -> None:
    p.description = ("Read audio (WAV, FLAC, OGG, MP3, AIFF; files or folders, walked recursively), mix to "
                     "mono, resample, cut into chunks and split them train/valid/test without leakage: "
                     "the split is made on blocks of the album's timeline before chunks are cut, so no "
                     "valid/test audio is ever in a train chunk. Writes OUT/{train,valid,test}/*.flac and "
                     "OUT/manifest.json. Sources are never modified. Re-run the same command to finish an "
                     "interrupted run.")
    p.epilog = "example: fastsrnn prepare album/ bonus.mp3 --out data/album"
    p.add_argument("sources", nargs="+", metavar="SOURCES", help="audio files and/or folders")
    p.add_argument("--out", required=True, metavar="DIR", default=argparse.SUPPRESS,
                   help="output folder (new, empty, or an earlier run of the same command)")
    p.add_argument("--sample-rate", type=int, default=16000, help="sample rate of the chunks, Hz")
    p.add_argument("--chunk-seconds", type=float, default=8.0, help="length of each chunk")
    p.add_argument("--hop-seconds", type=float, default=argparse.SUPPRESS,
                   help="step between chunk starts; shorter than the chunk for overlapping train chunks "
                        "(default: the chunk length)")
    p.add_argument("--block-seconds", type=float, default=argparse.SUPPRESS,
                   help="size of the timeline blocks dealt to the splits (default: the chunk length)")
    p.add_argument("--splits", type=float, nargs=3, default=(0.88, 0.06, 0.06), metavar=("TRAIN", "VALID", "TEST"),
                   help="fractions of the blocks per split")
    p.add_argument("--seed", type=int, default=0, help="seed of the block and chunk shuffles")
    p.add_argument("--normalize", choices=NORMALIZE, default="file",
                   help="peak 0.9 per source file, one gain for the whole dataset, or none")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable files with a warning instead of stopping")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    m = prepare(args.sources, args.out, sample_rate=args.sample_rate, chunk_seconds=args.chunk_seconds,
                hop_seconds=getattr(args, "hop_seconds", None), block_seconds=getattr(args, "block_seconds", None),
                splits=tuple(args.splits),
                seed=args.seed, normalize=args.normalize, skip_bad=args.skip_bad, progress=not args.no_progress)
    counts = {s: sum(c["split"] == s for c in m["chunks"]) for s in SPLITS}
    minutes = sum(s["samples"] for s in m["sources"]) / m["sample_rate"] / 60
    print(f"{len(m['sources'])} file(s), {minutes:.1f} min of audio -> "
          f"{counts['train']} train / {counts['valid']} valid / "
          f"{counts['test']} test chunks of {m['chunk_samples'] / m['sample_rate']:g} s in {args.out}")
    return 0
