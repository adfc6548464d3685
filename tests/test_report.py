"""``fastsrnn report``: the recommendation, the page's links, the pictures, the errors, and the
generation page, on run and generation folders built here (no training: a few seconds in all)."""
from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from fastsrnn.tools import report
from fastsrnn.tools.pictures import clip_picture, picture_path
from fastsrnn.tools.report import Clip, Step, checkpoint_for, recommend, write_report

SR = 16000


def tune(seconds: float = 1.0, f0: float = 220.0) -> np.ndarray:
    """A few plucked notes: not silent, not noise, not one repeated riff."""
    t = np.arange(int(seconds * SR)) / SR
    notes = f0 * np.array([1.0, 1.25, 1.5, 2.0])[(t * 3).astype(int) % 4]
    return (0.4 * np.sin(2 * np.pi * notes * t) * np.exp(-(t % (1 / 3)) * 5)).astype(np.float32)


def noise(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def make_run(root: Path) -> Path:
    """A run folder as 'fastsrnn train' leaves it, without training: steps 100-400.

    100: valid 7.0, clips recorded ok; 200: valid 6.0 (the lowest), clips recorded noise-like;
    300: valid 6.5, clips not recorded (tunes: analysed as ok); 400: valid 6.8, white noise, not
    recorded. best.pt holds step 200, last.pt step 400: the recommendation (300) is not kept."""
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": {}, "train": {"clip_seconds": 1.0, "n_clips": 2},
                                                 "data": str(root / "no-such-data")}))
    rows = []
    for step, valid, kind, verdict in ((100, 7.0, "tune", "ok"), (200, 6.0, "noise", "noise-like"),
                                       (300, 6.5, "tune", None), (400, 6.8, "noise", None)):
        rows.append({"step": step, "epoch": 0, "train_bits": valid + 0.1, "valid_bits": valid})
        files = []
        for i in range(2):
            rel = f"samples/{step:07d}/clip_{i:02d}.wav"
            (run / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(run / rel), tune(f0=200 + 50 * i) if kind == "tune" else noise(seed=step + i), SR,
                     subtype="PCM_16")
            files.append({"file": rel, "verdict": verdict, "closeness": 0.8 if verdict == "ok" else 0.0})
        if verdict is not None:
            rows.append({"event": "clip_scores", "step": step, "epoch": 0, "reference": "album", "clips": files})
    rows.append({"step": 400, "best_step": 200, "test_bits": 6.1})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, step in (("best.pt", 200), ("last.pt", 400)):
        torch.save({"format": "fastsrnn-checkpoint", "step": step}, run / "checkpoints" / name)
    return run


def make_generation(root: Path) -> Path:
    gen = root / "gen"
    gen.mkdir(parents=True)
    settings = {"format": "fastsrnn-generation", "checkpoint": str(root / "gone" / "best.pt"), "seconds": 1.0,
                "n_seq": 2, "temperature": 0.95, "h0": "random", "seed": 3, "audio_format": "flac"}
    (gen / "generation.json").write_text(json.dumps(settings))
    sf.write(str(gen / "seq_000.flac"), tune(), SR, subtype="PCM_16")
    sf.write(str(gen / "seq_001.flac"), noise(), SR, subtype="PCM_16")
    return gen


@pytest.fixture
def run(tmp_path) -> Path:
    return make_run(tmp_path)


def _step(n, valid, *verdicts):
    return Step(n, valid + 0.1, valid, n, [Clip(Path(f"c{n}_{i}.wav"), v) for i, v in enumerate(verdicts)])


def test_recommend_skips_noise_like_and_trapped_steps():
    steps = [_step(1, 7.0, "ok", "ok"), _step(2, 5.0, "ok", "noise-like"), _step(3, 5.5, "trapped"),
             _step(4, 6.0, "ok", "silent"), _step(5, 6.5, "ok")]
    best, why = recommend(steps)
    assert best.step == 4 and "6.0000" in why and "left out for their clips: 2, 3" in why


def test_recommend_says_when_no_step_qualifies():
    best, why = recommend([_step(1, 7.0, "noise-like"), _step(2, 6.0, "ok", "trapped")])
    assert best is None and why.startswith("No step qualifies")


def test_recommend_by_nll_alone_without_clips():
    best, why = recommend([_step(1, 7.0), _step(2, 6.5), _step(3, 6.9)])
    assert best.step == 2 and "by NLL alone" in why
    assert recommend([]) == (None, "No step has a validation NLL yet, so there is nothing to recommend.")


def test_checkpoint_for_maps_the_step_to_a_kept_file(tmp_path):
    kept = {"best.pt": 200, "last.pt": 400}
    cmd, where = checkpoint_for(tmp_path, 400, kept, 4.0, 3)
    assert cmd.startswith(f"fastsrnn generate {tmp_path / 'checkpoints' / 'last.pt'} --seconds 4 --n-seq 3 --out ")
    assert where.endswith("last.pt holds step 400.")
    cmd, where = checkpoint_for(tmp_path, 250, kept)
    assert "best.pt" in cmd and "weights of step 250 are not kept" in where
    assert "closest kept checkpoint is best.pt" in where
    assert checkpoint_for(tmp_path, 250, {})[0] is None


def _links(html: str):
    return [urllib.parse.unquote(m) for m in re.findall(r'(?:src|href)="([^"#]+)"', html)]


def test_run_page(run, capsys):
    out = write_report(run, progress=False)
    assert out == run / "report.html"
    html = out.read_text()
    assert "Recommended: step 300." in html and "weights of step 300 are not kept" in html
    assert f"fastsrnn generate {run / 'checkpoints' / 'best.pt'} --seconds 1 --n-seq 2" in html
    assert html.count("<audio controls") == 8 and html.count('<img src="samples/') == 8
    assert "http://" not in html and "https://" not in html and "<link" not in html
    links = _links(html)
    assert links and all(not Path(p).is_absolute() and (out.parent / p).is_file() for p in links), links
    assert "metrics.png" in links  # drawn from metrics.jsonl when the run has none
    # step 300 (not recorded) is analysed here; step 400's white noise is judged noise
    assert re.search(r'id="step-400".*?v-bad">noise<', html, re.S)
    assert re.search(r'id="step-300".*?v-ok">ok<', html, re.S)


def test_a_line_cut_short_is_skipped(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "valid_bits": 7.5}\n{"step": 2, "val')
    assert report.read_metrics(tmp_path) == [{"step": 1, "valid_bits": 7.5}]


def test_report_elsewhere_links_back(run, tmp_path):
    out = write_report(run, out=tmp_path / "pages" / "r.html", progress=False)
    links = _links(out.read_text())
    assert all(p.startswith("../run/") and (out.parent / p).is_file() for p in links), links


def test_pictures_are_kept_until_the_clip_changes(tmp_path):
    clip = tmp_path / "a.wav"
    sf.write(str(clip), tune(0.5), SR)
    pic = clip_picture(clip)
    assert pic == picture_path(clip) and pic.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert Image.open(pic).size == (800, 400)
    stamp = pic.stat().st_mtime_ns
    assert clip_picture(clip).stat().st_mtime_ns == stamp  # fresh: not redrawn
    import os

    os.utime(clip, ns=(stamp + 10**9, stamp + 10**9))
    assert clip_picture(clip).stat().st_mtime_ns != stamp
    sf.write(str(tmp_path / "short.wav"), tune(0.01), SR)  # shorter than one FFT frame
    assert clip_picture(tmp_path / "short.wav").is_file()


def test_generation_page(tmp_path):
    gen = make_generation(tmp_path)
    html = write_report(gen, progress=False).read_text()
    assert html.count("<audio controls") == 2 and "seq_000.flac" in html and "seq_001.png" in html
    assert "temperature" in html and "0.95" in html and "v-bad\">noise<" in html
    assert all((gen / p).is_file() for p in _links(html))


def test_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such folder"):
        write_report(tmp_path / "nowhere")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match=f"{tmp_path} is neither a training run .* nor a generation folder"):
        write_report(tmp_path)
    from fastsrnn.cli import main

    assert main(["report", str(tmp_path)]) == 1


def test_cli_help_and_run(run, capsys):
    from fastsrnn.cli import main

    with pytest.raises(SystemExit) as e:
        main(["report", "--help"])
    assert e.value.code == 0 and "RUN_OR_GEN" in capsys.readouterr().out
    assert main(["report", str(run), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(f"report: {run / 'report.html'}\nopen it in a browser: file://")
    assert "report" in report.__doc__ and "report" in main.__globals__["COMMANDS"]


def _outside_files(root: Path):
    """Every file outside the run folder, with its bytes and mtime (the victims must keep both)."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and "run" not in p.relative_to(root).parts[:1]
            and "gen" not in p.relative_to(root).parts[:1]}


def test_paths_that_leave_the_run_are_skipped_never_read_or_written(run, tmp_path):
    """Issue 20: a clip record (or a clip found in the folder) naming '../x', an absolute path or a
    symlink out is skipped with a warning naming it; nothing outside is read into the page or written."""
    import os

    old = 10**9 * 1_000_000_000  # 2001: older than any clip, so a picture here would be redrawn
    sf.write(str(tmp_path / "victim.wav"), tune(0.3), SR)
    (tmp_path / "victim.png").write_bytes(b"precious")
    (tmp_path / "abs").mkdir()
    sf.write(str(tmp_path / "abs" / "song.wav"), tune(0.3), SR)
    (tmp_path / "linked").mkdir()
    sf.write(str(tmp_path / "linked" / "real.wav"), tune(0.3), SR)
    (tmp_path / "linked" / "pic.png").write_bytes(b"precious too")
    (tmp_path / "album").mkdir()
    sf.write(str(tmp_path / "album" / "clip_00.wav"), tune(0.3), SR)
    for p in (tmp_path / "victim.png", tmp_path / "linked" / "pic.png"):
        os.utime(p, ns=(old, old))
    step = run / "samples" / "0000500"
    step.mkdir()
    (step / "clip_00.wav").symlink_to(tmp_path / "linked" / "real.wav")
    sf.write(str(step / "clip_01.wav"), tune(0.3), SR)
    (step / "clip_01.png").symlink_to(tmp_path / "linked" / "pic.png")  # the clip is fine, its picture is not
    (run / "samples" / "0000600").symlink_to(tmp_path / "album", target_is_directory=True)
    clips = [{"file": "../victim.wav"}, {"file": str(tmp_path / "abs" / "song.wav"), "verdict": "ok"},
             {"file": "samples/0000500/clip_00.wav"}, {"file": "samples/0000500/clip_01.wav", "verdict": "ok"},
             {"file": 5, "verdict": "ok"}]
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"event": "clip_scores", "step": 500, "clips": clips}) + "\n")
    before = _outside_files(tmp_path)
    with pytest.warns(RuntimeWarning) as caught:
        out = write_report(run, progress=False)
    said = [str(w.message) for w in caught]
    assert len(said) == 6 and re.search(r"metrics.jsonl: the clip record .*\.\./victim\.wav.* of step 500", said[0])
    assert _outside_files(tmp_path) == before  # bytes and mtimes: nothing outside was written
    assert not (tmp_path / "abs" / "song.png").exists() and not (tmp_path / "album" / "clip_00.png").exists()
    assert not (tmp_path / "linked" / "real.png").exists()
    html = out.read_text()
    assert "Skipped 6 path(s) outside this folder" in html
    for named in ("../victim.wav", str(tmp_path / "abs" / "song.wav"), "samples/0000500/clip_00.wav",
                  "clip_01.png", "0000600/clip_00.wav", "5 is not a file name"):
        assert named in urllib.parse.unquote(html).replace("&#x27;", "'"), named
    links = _links(html)
    assert all(run.resolve() in (out.parent / p).resolve().parents for p in links), links
    assert re.search(r'id="step-500".*?clip_01\.wav', html, re.S) and "samples/0000500/clip_01.wav" in links
    assert "Recommended: step 300." in html  # the rest of the page as before


def test_generation_files_that_leave_the_folder_are_skipped(tmp_path):
    gen = make_generation(tmp_path)
    sf.write(str(tmp_path / "outside.flac"), tune(0.3), SR)
    (gen / "seq_002.flac").symlink_to(tmp_path / "outside.flac")
    with pytest.warns(RuntimeWarning, match="seq_002.flac: .*outside"):
        html = write_report(gen, progress=False).read_text()
    assert html.count("<audio controls") == 2 and "Skipped 1 path(s)" in html
    assert not (tmp_path / "outside.png").exists()
