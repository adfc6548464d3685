"""The prepared dataset's format, for its readers: DATA/manifest.json checked, the chunk files of a
split (checksums verified), whether a folder holds a dataset. fastsrnn/data/prepare.py writes it.

Layout: DATA/{train,valid,test}/NNNNNN.flac (16-bit PCM, mono) and DATA/manifest.json, written
last; DATA/.prepare.json records a preparation in progress.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import List

FORMAT, VERSION = "fastsrnn-dataset", 1
SPLITS = ("train", "valid", "test")
PLAN_FILE, MANIFEST_FILE = ".prepare.json", "manifest.json"


def holds_dataset(folder: Path) -> bool:
    """Whether ``folder`` holds a fastsrnn dataset (finished or interrupted): its chunks are never sources."""
    if (folder / PLAN_FILE).is_file():
        return True
    try:
        m = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and m.get("format") == FORMAT


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def path_inside(folder, name) -> Path:
    """``folder / name`` when a record's file name stays inside ``folder``; a ValueError saying why not.

    The one rule for every path read from a record (a manifest's chunks, the clips of a run's
    metrics.jsonl): a relative path (a str) that, with ``..`` and symlinks followed, resolves below
    the resolved ``folder``. No absolute path, no ``..`` out, no symlink out of the folder."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{name!r} is not a file name")
    if Path(name).is_absolute():
        raise ValueError(f"{name!r} is an absolute path; a record may only name files inside its folder")
    root = Path(folder).resolve()
    try:
        target = (root / name).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise ValueError(f"{name!r} cannot be resolved ({e})") from None
    if root not in target.parents:
        raise ValueError(f"{name!r} resolves to {target}, outside {root} (through '..' or a symlink)")
    return Path(folder) / name


_FIELDS = {"sample_rate": int, "chunk_samples": int, "hop_samples": int, "block_samples": int, "seed": int,
           "normalize": str, "splits": dict, "sources": list, "chunks": list}
_CHUNK_FIELDS = {"file": str, "split": str, "source": int, "offset": int, "length": int, "sha256": str}


def read_manifest(data_dir) -> dict:
    """DATA/manifest.json, checked: raises FileNotFoundError / ValueError naming the file."""
    path = Path(data_dir) / MANIFEST_FILE
    if not path.is_file():
        hint = " (an interrupted preparation: re-run the same 'fastsrnn prepare' to finish it)" \
            if (Path(data_dir) / PLAN_FILE).exists() else " (make one with 'fastsrnn prepare SOURCES --out DIR')"
        raise FileNotFoundError(f"{path}: no prepared dataset here{hint}")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} manifest of version {VERSION}")
    for k, t in _FIELDS.items():
        if not isinstance(m.get(k), t):
            raise ValueError(f"{path}: field {k!r} is missing or not a {t.__name__}")
    root = Path(data_dir).resolve()
    for i, c in enumerate(m["chunks"]):
        bad = [k for k, t in _CHUNK_FIELDS.items() if not isinstance(c.get(k), t)] if isinstance(c, dict) else ["all"]
        if bad or c["split"] not in SPLITS or not 0 <= c["source"] < len(m["sources"]):
            raise ValueError(f"{path}: chunk {i} is malformed (check {', '.join(bad) or 'split/source'})")
        try:
            path_inside(root, c["file"])
        except ValueError:
            raise ValueError(f"{path}: chunk {i} names {c['file']!r}, which is outside the dataset folder {root}; "
                             "a manifest may only name files inside its own folder") from None
    return m


def split_files(data_dir, split: str, verify: bool = True) -> List[Path]:
    """The chunk files of one split, in manifest order; each is checked to exist and, with
    ``verify``, to have the sha256 the manifest records (about 1 ms per 8-second FLAC)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    chunks = [c for c in read_manifest(data_dir)["chunks"] if c["split"] == split]
    files = [Path(data_dir) / c["file"] for c in chunks]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: chunk listed in the manifest is missing "
                                f"({len(missing)} missing in all); "
                                f"re-run 'fastsrnn prepare' with the same options to restore them")
    if verify:
        changed = [f for f, c in zip(files, chunks) if file_sha256(f) != c["sha256"]]
        if changed:
            raise ValueError(f"{changed[0]}: the chunk's sha256 differs from the one in the manifest "
                             f"({len(changed)} {split} chunk(s) differ in all): it was modified or damaged; "
                             "re-run 'fastsrnn prepare' with the same options to restore it")
    return files
