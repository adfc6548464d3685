"""``fastsrnn report FOLDER``: one static HTML page to audition a training run or a generation.

For a training run (``fastsrnn train --out RUN``): the training curves (RUN/metrics.png), then per
checkpoint step its train and valid NLL and each clip (RUN/samples/<step>/clip_XX.wav) with a
player, a picture (:mod:`fastsrnn.tools.pictures`), its verdict and closeness to the album
(:mod:`fastsrnn.quality.verdict`), and the recommended checkpoint: the lowest validation NLL among
the steps whose clips are neither noise-like nor trapped, mapped to the checkpoint file that holds
it (only best.pt and last.pt are kept). For a generation folder (``fastsrnn generate --out GEN``):
each sequence with its player, picture and verdict, and the settings of generation.json.

The page needs no server and no network: CSS inline, no fonts, and audio and pictures linked by
relative paths, so it works opened in place (file://) and moved together with the folder.

It reads and writes only inside the folder: every clip path, recorded in metrics.jsonl or found
in the folder, and every picture beside a clip must resolve inside it (the manifest's rule,
:func:`fastsrnn.data.manifest.path_inside`); any other is skipped with a warning that names it,
never read or written, and the page lists it.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import quote

from fastsrnn.atomic import atomic_write_text
from fastsrnn.data.manifest import path_inside
from fastsrnn.tools.report_html import generation_html, run_html

REPORT_NAME = "report.html"
BAD = ("noise-like", "trapped", "noise", "trap", "empty", "invalid (NaN/Inf samples)")  # disqualify a step
AUDIO = (".wav", ".flac")


@dataclass
class Clip:
    path: Path  # the audio file
    verdict: str  # analysis.ClipReport.verdict, or "missing" when the file is gone
    closeness: Optional[float] = None  # against an album: 1 = like its chunks
    picture: Optional[Path] = None


@dataclass
class Step:
    step: int
    train_bits: Optional[float] = None  # the nearest training record's
    valid_bits: Optional[float] = None  # the nearest validation record's ...
    valid_step: Optional[int] = None  # ... and the step it was measured at
    clips: List[Clip] = field(default_factory=list)

    @property
    def bad(self) -> List[Clip]:
        return [c for c in self.clips if c.verdict in BAD]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Write one HTML page to listen to and look at a training run's clips (or a generation's "
        "sequences) and pick a checkpoint. Open it in any browser: it needs no server and no network. "
        "Example: fastsrnn report runs/album  (then open runs/album/report.html)")
    p.add_argument("folder", metavar="RUN_OR_GEN",
                   help="a training run folder (fastsrnn train --out RUN) or a generation folder "
                        "(fastsrnn generate --out GEN)")
    p.add_argument("--out", default=None, help=f"the HTML file to write [default: FOLDER/{REPORT_NAME}]")
    p.add_argument("--against", metavar="DATA", default=None,
                   help="a prepared dataset (fastsrnn prepare) to judge the clips against [default: the "
                        "dataset the run records in RUN/config.json, when it still exists]")
    p.add_argument("--quiet", action="store_true", help="no progress messages")


def run(args: argparse.Namespace) -> int:
    out = write_report(args.folder, out=args.out, against=args.against, progress=not args.quiet)
    print(f"report: {out}\nopen it in a browser: {out.resolve().as_uri()}")
    return 0


def folder_kind(folder) -> str:
    """'run' or 'generation'; an error naming ``folder`` when it is neither."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder" if not folder.exists() else f"{folder} is a file, "
                                "not a folder; give a training run folder or a generation folder")
    if (folder / "generation.json").is_file():
        return "generation"
    run_files = (folder / "metrics.jsonl").is_file() or (folder / "checkpoints").is_dir()
    if (folder / "config.json").is_file() and run_files:
        return "run"
    raise ValueError(f"{folder} is neither a training run (no config.json and metrics.jsonl, as 'fastsrnn train "
                     "--out RUN' writes) nor a generation folder (no generation.json, as 'fastsrnn generate "
                     "--out GEN' writes)")


def write_report(folder, out=None, against=None, progress: bool = True) -> Path:
    """Write the report of the run or generation ``folder`` to ``out`` (default FOLDER/report.html)."""
    folder = Path(folder)
    kind = folder_kind(folder)
    out = Path(out) if out is not None else folder / REPORT_NAME
    if out.is_dir():
        out = out / REPORT_NAME
    say = print if progress else (lambda *a, **k: None)
    if kind == "run":
        html = _run_page(folder, out, against, say)
    else:
        html = _generation_page(folder, out, against, say)
    atomic_write_text(out, html)
    return out


# ---- a training run ----

def read_metrics(run: Path) -> List[dict]:
    """RUN/metrics.jsonl as dicts; a line cut short by a kill is skipped."""
    path, rows = run / "metrics.jsonl", []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
    return rows


def _nearest(rows: List[dict], key: str, step: int) -> Tuple[Optional[float], Optional[int]]:
    have = [r for r in rows if isinstance(r.get(key), (int, float))]
    if not have:
        return None, None
    r = min(have, key=lambda r: (abs(r["step"] - step), -r["step"]))
    return float(r[key]), r["step"]


def run_steps(run: Path, rows: List[dict], reference: "_Reference", say=print,
              skipped: Optional[List[str]] = None) -> List[Step]:
    """One Step per step with a validation NLL or clips: NLLs from ``rows``, clips from the clip records
    of metrics.jsonl where there are some, else from RUN/samples/<step>/ analysed here. A clip whose
    path leaves ``run`` is skipped (:func:`_skip`, added to ``skipped``)."""
    skipped = [] if skipped is None else skipped
    recorded = {r["step"]: r["clips"] for r in rows if isinstance(r.get("clips"), list)}
    folders = {}
    for d in sorted((run / "samples").glob("*")) if (run / "samples").is_dir() else []:
        if d.is_dir() and d.name.isdigit():
            folders[int(d.name)] = d
    numbers = sorted({r["step"] for r in rows if "valid_bits" in r} | set(recorded) | set(folders))
    steps = []
    for n in numbers:
        s = Step(n, _nearest(rows, "train_bits", n)[0], *_nearest(rows, "valid_bits", n))
        if n in recorded:
            clips = [_recorded_clip(run, n, c, reference, skipped) for c in recorded[n]
                     if isinstance(c, dict) and c.get("file")]
            s.clips = [c for c in clips if c is not None]
        elif n in folders:
            files = _inside(run, sorted(p for p in folders[n].glob("clip_*") if p.suffix in AUDIO), skipped)
            if files:
                say(f"[report] step {n}: analysing {len(files)} clips", flush=True)
            s.clips = [analyse(p, reference.get()) for p in files]
        steps.append(s)
    return steps


def _recorded_clip(run: Path, step: int, rec: dict, reference, skipped: List[str]) -> Optional[Clip]:
    try:
        path = path_inside(run, rec["file"])
    except ValueError as e:
        _skip(skipped, f"{run / 'metrics.jsonl'}: the clip record {json.dumps(rec)[:300]} of step {step}: {e}")
        return None
    if "verdict" not in rec:
        return analyse(path, reference.get())
    return Clip(path, str(rec["verdict"]) if path.is_file() else "missing", rec.get("closeness"))


def _skip(skipped: List[str], what: str) -> None:
    """Warn of a path that leaves the folder (never read or written) and keep it for the page."""
    warnings.warn(f"fastsrnn report: skipped {what}; the report reads and writes only inside its folder",
                  RuntimeWarning, stacklevel=3)
    skipped.append(what)


def _inside(folder: Path, paths: List[Path], skipped: List[str]) -> List[Path]:
    """The ``paths`` (each under ``folder``) that resolve inside ``folder``; the others skipped."""
    kept = []
    for p in paths:
        try:
            kept.append(path_inside(folder, p.relative_to(folder).as_posix()))
        except ValueError as e:
            _skip(skipped, f"{p}: {e}")
    return kept


def analyse(path: Path, reference=None) -> Clip:
    """The verdict of one audio file (against the album ``reference`` when given)."""
    from fastsrnn.data.audio import require_soundfile
    from fastsrnn.quality.verdict import analyze_clip

    if not path.is_file():
        return Clip(path, "missing")
    try:
        audio, sr = require_soundfile().read(str(path), dtype="float32", always_2d=True)  # (T, C)
    except Exception as e:  # an unreadable clip is shown as such; the rest of the page goes on
        return Clip(path, f"unreadable ({type(e).__name__})")
    rep = analyze_clip(audio.mean(axis=1), sr, reference=reference)
    return Clip(path, rep.verdict, rep.closeness)


def recommend(steps: List[Step]) -> Tuple[Optional[Step], str]:
    """The step to generate from and why: the lowest validation NLL among the steps that have clips
    and none of them noise-like or trapped; without clips anywhere, the lowest validation NLL."""
    measured = [s for s in steps if s.valid_bits is not None and s.valid_step == s.step]
    if not measured:
        return None, "No step has a validation NLL yet, so there is nothing to recommend."
    if not any(s.clips for s in steps):
        best = min(measured, key=lambda s: (s.valid_bits, s.step))
        return best, (f"Step {best.step} has the lowest validation NLL ({best.valid_bits:.4f} bits/sample). "
                      "No step has clips to listen to, so this is by NLL alone.")
    ok = [s for s in measured if s.clips and not s.bad]
    if not ok:
        return None, ("No step qualifies: every step with clips has a noise-like or trapped clip (or no "
                      "validation NLL). Listen to the clips below, train longer, or lower the temperature.")
    best = min(ok, key=lambda s: (s.valid_bits, s.step))
    skipped = [s.step for s in measured if s.bad and s.valid_bits < best.valid_bits]
    why = (f"Step {best.step} has the lowest validation NLL ({best.valid_bits:.4f} bits/sample) among the steps "
           "whose clips are neither noise-like nor trapped.")
    if skipped:
        why += f" Lower-NLL steps left out for their clips: {', '.join(map(str, skipped))}."
    return best, why


def kept_checkpoints(run: Path) -> Dict[str, int]:
    """{'best.pt': step, 'last.pt': step} for the checkpoints on disk whose step can be read."""
    import torch

    kept = {}
    for name in ("best.pt", "last.pt"):
        path = run / "checkpoints" / name
        try:
            step = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("step")
        except Exception:  # missing or damaged: not offered
            continue
        if isinstance(step, int):
            kept[name] = step
    return kept


def checkpoint_for(run: Path, step: int, kept: Dict[str, int], seconds: float = 30.0,
                   n_seq: int = 10) -> Tuple[Optional[str], str]:
    """(the 'fastsrnn generate' command for ``step``'s weights or the closest kept ones, what it says)."""
    if not kept:
        return None, f"No checkpoint of this run can be read in {run / 'checkpoints'}."
    exact = [n for n, s in kept.items() if s == step]
    name = exact[0] if exact else min(kept, key=lambda n: (abs(kept[n] - step), n))
    path = run / "checkpoints" / name
    cmd = (f"fastsrnn generate {shlex.quote(str(path))} --seconds {seconds:g} --n-seq {n_seq} "
           f"--out {shlex.quote(str(Path('gen') / f'{run.resolve().name}-step{kept[name]}'))}")
    if exact:
        return cmd, f"{path} holds step {step}."
    held = ", ".join(f"{n} holds step {s}" for n, s in sorted(kept.items()))
    return cmd, (f"The weights of step {step} are not kept (only best.pt and last.pt are: {held}). "
                 f"The closest kept checkpoint is {name} (step {kept[name]}); listen to its clips before "
                 "trusting it.")


def _run_page(run: Path, out: Path, against, say) -> str:
    rows = read_metrics(run)
    data = Path(against) if against else _recorded_data(run)
    reference, skipped = _Reference(data, say), []
    steps = run_steps(run, rows, reference, say, skipped)
    _draw_pictures(run, [c for s in steps for c in s.clips], say, skipped)
    best, why = recommend(steps)
    kept = kept_checkpoints(run)
    cmd, where = checkpoint_for(run, best.step, kept, *_clip_settings(run)) if best else (None, "")
    curves = run / "metrics.png"
    if not curves.is_file() and rows:
        curves = _plot(run)
    return run_html(run, rel=lambda p: _rel(p, out), steps=steps, best=best, why=why, where=where, cmd=cmd,
                         kept=kept, curves=curves if curves and curves.is_file() else None,
                         against=_against_text(data, reference, [c for s in steps for c in s.clips]), skipped=skipped)


def _recorded_data(run: Path) -> Optional[Path]:
    try:
        data = json.loads((run / "config.json").read_text()).get("data")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(data) if data and (Path(data) / "manifest.json").is_file() else None


def _clip_settings(run: Path) -> Tuple[float, int]:
    """The run's clip length and count, the generate command's defaults otherwise."""
    try:
        train = json.loads((run / "config.json").read_text())["train"]
        return float(train.get("clip_seconds") or 30.0), int(train.get("n_clips") or 10)
    except (OSError, ValueError, KeyError, TypeError):
        return 30.0, 10


def _against_text(data: Optional[Path], reference: "_Reference", clips: List[Clip]) -> Optional[str]:
    """What the verdicts were judged against, in words (None: absolute verdicts)."""
    if reference.used or (data is not None and any(c.closeness is not None for c in clips)):
        return str(data)
    recorded = any(c.closeness is not None for c in clips)
    return "of this run's dataset (as the trainer recorded them in metrics.jsonl)" if recorded else None


class _Reference:
    """The album to judge clips against, loaded when a clip first needs it (``get()``; None without one)."""

    def __init__(self, data: Optional[Path], say):
        self.data, self.say, self.ref, self.used = data, say, None, False

    def get(self):
        if self.data is not None and self.ref is None:
            from fastsrnn.quality.album_reference import album_reference

            self.say(f"[report] album reference: {self.data}", flush=True)
            self.ref = album_reference(self.data, progress=False)
        self.used = self.used or self.ref is not None
        return self.ref


def _plot(run: Path) -> Optional[Path]:
    from fastsrnn.training.plot import plot_metrics

    try:
        return plot_metrics(run)
    except (ValueError, KeyError, OSError):  # curves are a nicety: the page goes on without them
        return None


def _draw_pictures(folder: Path, clips: List[Clip], say, skipped: List[str]) -> None:
    """Each clip's picture beside it, only where that path resolves inside ``folder``."""
    from fastsrnn.tools.pictures import clip_picture, picture_path

    fine = set(_inside(folder, [picture_path(c.path) for c in clips if c.path.is_file()], skipped))
    todo = [c for c in clips if picture_path(c.path) in fine]
    if todo:
        say(f"[report] pictures of {len(todo)} clips (kept when already drawn)", flush=True)
    for c in todo:
        try:
            c.picture = clip_picture(c.path)
        except Exception as e:  # an undrawable clip gets no picture, not a failed report
            say(f"[report] no picture of {c.path}: {e}")


def _rel(path: Path, out: Path) -> str:
    """``path`` as a URL relative to the folder of the page ``out``."""
    rel = os.path.relpath(Path(path).resolve(), out.resolve().parent)
    return quote(Path(rel).as_posix())


# ---- a generation folder ----

def _generation_page(gen: Path, out: Path, against, say) -> str:
    settings = json.loads((gen / "generation.json").read_text())
    if against:
        data = Path(against)
    else:
        from fastsrnn.generation.precision import recorded_dataset

        data = recorded_dataset(settings["checkpoint"]) if settings.get("checkpoint") else None
    reference, skipped = _Reference(data, say), []
    files = sorted(p for p in gen.glob("seq_*") if p.suffix in AUDIO and ".part" not in p.name)
    in_progress = not files
    if in_progress:
        files = sorted(p for p in gen.glob("seq_*.part.wav"))
    clips = [analyse(p, reference.get()) for p in _inside(gen, files, skipped)]
    _draw_pictures(gen, clips, say, skipped)
    return generation_html(gen, rel=lambda p: _rel(p, out), clips=clips, settings=settings,
                           in_progress=in_progress, against=str(data) if reference.used else None, skipped=skipped)


# ---- HTML ----
