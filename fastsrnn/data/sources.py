"""The sources of ``fastsrnn prepare``: files and folders -> the sorted audio files to read
(folders walked recursively; folders holding a fastsrnn dataset and the output folder skipped)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import List, Optional

from fastsrnn.data.audio import AUDIO_EXTENSIONS
from fastsrnn.data.manifest import holds_dataset


def _as_source_list(sources) -> list:
    """One str / PathLike is one source (not a sequence of characters)."""
    if isinstance(sources, (str, bytes, os.PathLike)):
        return [sources]
    return list(sources)


def _walk(top: Path, exclude: Optional[Path], skipped: List[str]) -> List[Path]:
    """Audio files under ``top``, leaving out (and noting in ``skipped``) dataset folders and ``exclude``."""
    found = []
    for root, dirs, files in os.walk(top):
        here = Path(root)
        if exclude is not None and here.resolve() == exclude:
            skipped.append(f"{here} (the output folder)")
            dirs[:] = []
            continue
        if holds_dataset(here):
            skipped.append(f"{here} (holds a fastsrnn dataset)")
            dirs[:] = []
            continue
        dirs.sort()
        found.extend(here / f for f in files if Path(f).suffix.lower() in AUDIO_EXTENSIONS)
    return [f for f in found if f.is_file()]


def find_sources(sources, exclude: Optional[Path] = None) -> List[Path]:
    """Files and folders (walked recursively for audio extensions) -> sorted unique files.

    ``sources``: one path or a sequence of them. Folders that hold a fastsrnn dataset (a manifest
    or a ``.prepare.json``) are not walked: their chunks are the output of an earlier preparation,
    not music. ``exclude``: a folder whose files are never picked up (the output, if it lies inside
    a source folder, so that a re-run does not read its own chunks). Skipped folders are named in
    a warning.
    """
    sources = _as_source_list(sources)
    ex = Path(exclude).resolve() if exclude is not None else None
    found, skipped = set(), []
    for s in sources:
        p = Path(os.fsdecode(s))
        if p.is_dir():
            if ex is not None and p.resolve() == ex:
                raise ValueError(f"the output folder {exclude} is the source folder {p}: the chunks would be "
                                 "written among the songs; choose an --out outside it (or a subfolder of it)")
            found.update(f.resolve() for f in _walk(p, ex, skipped))
        elif p.is_file():
            found.add(p.resolve())
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    if ex is not None:
        found = {f for f in found if ex not in f.parents}
    if skipped:
        warnings.warn("not reading the audio files in " + ", ".join(skipped), stacklevel=3)
    if not found:
        raise ValueError(f"no audio files found in {', '.join(os.fsdecode(s) for s in sources)} "
                         f"(looked for {', '.join(AUDIO_EXTENSIONS)}"
                         + (f"; skipped {', '.join(skipped)}" if skipped else "") + ")")
    return sorted(found, key=str)
