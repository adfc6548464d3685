"""The documents hold together: every ``docs/DESIGN.md §N`` citation in the sources names a section
of docs/DESIGN.md, no citation uses the old "DESIGN.md section N" form, every repository path a
comment, docstring or document names exists, the LICENSE is there, and the version is written once
(fastsrnn.__version__, which pyproject reads)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import fastsrnn

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "DESIGN.md"
SUFFIXES = {".py", ".md", ".sh", ".cpp", ".h", ".cu", ".cuh"}
SKIP_DIRS = {".git", "build", "dist", "__pycache__", ".pytest_cache", ".benchmarks", ".whl", "gpu_check_out"}
# Built from pieces so that this file does not cite itself.
DOC = "DESIGN" + r"\.md"
CITATION = re.compile(r"(\S*)" + DOC + r"\s*§\s*(\d+)")
OLD_FORM = re.compile(DOC + r",?\s+sections?\b", re.IGNORECASE)


def _sources():
    """(path relative to the root, text) of every source and document file of the repository."""
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")
                         and not d.startswith(".venv"))
        for name in sorted(files):
            path = Path(folder) / name
            if path.suffix in SUFFIXES and path != Path(__file__).resolve():
                yield path.relative_to(ROOT), path.read_text(encoding="utf-8", errors="replace")


def _sections():
    return {int(n) for n in re.findall(r"^## (\d+)\. \S", DESIGN.read_text(), re.M)}


def test_design_sections_are_numbered_in_order():
    numbers = [int(n) for n in re.findall(r"^## (\d+)\.", DESIGN.read_text(), re.M)]
    assert numbers == list(range(1, len(numbers) + 1)), numbers
    assert len(numbers) >= 8


def test_every_design_citation_resolves():
    sections, bad = _sections(), []
    found = 0
    for rel, text in _sources():
        for m in CITATION.finditer(text):
            found += 1
            line = text.count("\n", 0, m.start()) + 1
            if not m.group(1).endswith("docs/"):
                bad.append(f"{rel}:{line}: cite it as docs/DESIGN.md §{m.group(2)}, not {m.group(0)!r}")
            elif int(m.group(2)) not in sections:
                bad.append(f"{rel}:{line}: §{m.group(2)} is not a section of docs/DESIGN.md ({sorted(sections)})")
    assert found, "no citation found: is the pattern still right?"
    assert not bad, "\n".join(bad)


def test_no_old_section_citations():
    old = [f"{rel}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}"
           for rel, text in _sources() for m in OLD_FORM.finditer(text)]
    assert not old, "cite sections as docs/DESIGN.md §N:\n" + "\n".join(old)


# A repository path: a top folder of the repository, or a subpackage of fastsrnn/ (``ops/export.py``)
# or of csrc/ (``cpu/simd.h``), then more of the path. A path with no file suffix under a subpackage
# name is a user's folder in an example (``data/album``), and one with a data suffix a user's file
# (``data/album/album_stats.json``): not checked.
TOPS = ("fastsrnn", "kernels", "csrc", "tests", "benchmarks", "docs", "scripts", ".ci")
SUBS = ("ops", "backends", "generation", "training", "tools", "data", "quality", "cpu", "cuda")
DATA_SUFFIXES = {".json", ".jsonl", ".wav", ".flac", ".mp3", ".pt", ".png", ".html", ".txt", ".csv"}
PATH = re.compile(r"(?<![\w./:-])((?:\.ci|[A-Za-z_][\w-]*)/[\w./-]*\w)(?![\w{*-])")


def _resolves(path: str, rel: Path) -> bool:
    """``path`` names a file or folder here: from the root, fastsrnn/, csrc/ or the naming file's
    folder; ``ops/frame_step.frame_step_ref`` (a module and a name in it) counts when the module
    file defines the name."""
    bases = (ROOT, ROOT / "fastsrnn", ROOT / "csrc", ROOT / rel.parent)
    if any((b / path).exists() for b in bases):
        return True
    module, _, name = path.rpartition("/")[2].partition(".")
    if not name or "." in name:
        return False
    stem = path.rpartition("/")[0] + "/" + module
    for b in bases:
        for suffix in (".py", ".cpp", ".h", ".cu", ".cuh"):
            f = b / (stem + suffix)
            defines = rf"^\s*(def|class)\s+{name}\b|^{name}\s*[:=]|\b{name}\s*\("
            if f.is_file() and re.search(defines, f.read_text(), re.M):
                return True
    return False


def test_every_repository_path_named_exists():
    bad, found = [], 0
    for rel, text in _sources():
        for m in PATH.finditer(text):
            path = m.group(1).rstrip(".")
            head, last = path.split("/")[0], path.rsplit("/", 1)[-1]
            if head not in TOPS + SUBS or (head not in TOPS and ("." not in last
                                                                 or Path(last).suffix in DATA_SUFFIXES)):
                continue
            found += 1
            if not _resolves(path, rel):
                bad.append(f"{rel}:{text.count(chr(10), 0, m.start()) + 1}: {path}")
    assert found > 100, f"only {found} paths found: is the pattern still right?"
    assert not bad, "paths named in comments and documents that do not exist:\n" + "\n".join(bad)


def test_license_is_mit():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "the fastsrnn authors" in text
    assert re.search(r'license\s*=\s*\{\s*text\s*=\s*"MIT"', (ROOT / "pyproject.toml").read_text())


def test_version_is_written_once():
    pyproject = (ROOT / "pyproject.toml").read_text()
    project = re.search(r"^\[project\]\n(.*?)(?=^\[)", pyproject, re.M | re.S).group(1)  # the [project] table
    assert re.search(r'^dynamic\s*=\s*\[[^\]]*"version"', project, re.M), "pyproject should read the version"
    assert not re.search(r"^version\s*=", project, re.M), "pyproject writes a version of its own"
    assert 'version = { attr = "fastsrnn.__version__" }' in pyproject
    assert re.fullmatch(r"\d+\.\d+\.\d+(\S*)", fastsrnn.__version__)
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("fastsrnn")
    except PackageNotFoundError:
        pytest.skip("fastsrnn is not installed (pip install -e .)")
    assert installed == fastsrnn.__version__, "reinstall (pip install -e .): the installed metadata is stale"
