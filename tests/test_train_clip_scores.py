"""The clips of each checkpoint are judged against the album during training: one clip_scores
record per checkpoint in metrics.jsonl, a restart warning for a run still making only noise after
the first epochs (never before, never fatal), an unusable album only warns, metrics.png marks
the checkpoints."""
import json
import warnings

import pytest
from helpers import SMALL, riff_dataset, small_train_config

from fastsrnn.quality import verdict as verdicts
from fastsrnn.quality.verdict import ClipReport
from fastsrnn.training import clip_scores
from fastsrnn.training.plot import plot_metrics
from fastsrnn.training.trainer import train


@pytest.fixture(scope="module")
def riff(tmp_path_factory):
    # train chunks of 4,000 samples, 4 per batch: with tbptt=64 (1,024 samples) 20 steps an epoch
    return riff_dataset(tmp_path_factory.mktemp("riff"))


# Quick: 1,024 samples a step, validation only at the end; clips too short to analyze (0.02 s)
# where the analysis is replaced anyway.
QUICK = dict(tbptt=64, valid_every=1000, clip_seconds=0.02)


def _scores(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return rows, [r for r in rows if r.get("event") == "clip_scores"]


def _train_warned(data, run, **cfg):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train(data, run, SMALL, small_train_config(**{**QUICK, **cfg}), progress=False)
    return [str(w.message) for w in seen if issubclass(w.category, RuntimeWarning)]


def _fake_verdict(monkeypatch, verdict, closeness=0.05):
    monkeypatch.setattr(verdicts, "analyze_clip",
                        lambda audio, sr, reference=None: ClipReport(-12.0, 0.9, 0.1, verdict, closeness))


def test_each_checkpoint_records_its_clip_scores_against_the_album(riff, tmp_path):
    run = tmp_path / "run"
    cfg = small_train_config(**{**QUICK, "max_steps": 4, "checkpoint_every": 2, "n_clips": 2, "clip_seconds": 0.07})
    train(riff, run, SMALL, cfg, progress=False)  # 0.07 s = 1,120 samples: enough to analyze
    rows, scores = _scores(run)
    assert [r["step"] for r in scores] == [2, 4]
    for r in scores:
        assert r["reference"] == "album" and r["epoch"] == 0 and r["noise_warning"] is False
        assert [c["file"] for c in r["clips"]] == [f"samples/{r['step']:07d}/clip_{i:02d}.wav" for i in range(2)]
        assert all((run / c["file"]).is_file() for c in r["clips"])
        assert all(c["verdict"] in ("ok", "silent", "noise-like", "trapped") for c in r["clips"])
        assert all(0.0 <= c["closeness"] <= 1.0 for c in r["clips"])
        assert sum(r["clip_verdicts"].values()) == 2
        close = [c["closeness"] for c in r["clips"]]
        assert min(close) <= r["closeness_median"] <= max(close)
    # the existing records are as they were
    valid = [r for r in rows if "valid_bits" in r]
    assert [r["step"] for r in valid] == [4] and set(valid[0]) == {"step", "epoch", "train_bits", "valid_bits",
                                                                   "samples_per_s", "time"}
    assert "test_bits" in rows[-1]
    assert (riff / "album_stats.json").is_file()  # computed once, cached with the dataset
    assert (run / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_noise_after_the_first_epochs_warns_to_restart_and_goes_on(riff, tmp_path, monkeypatch):
    _fake_verdict(monkeypatch, "noise-like")
    # 20 steps an epoch: the rule (3 epochs, 3 checkpoints) made quicker, 1 epoch and 2 checkpoints
    monkeypatch.setattr(clip_scores, "NOISE_AFTER_EPOCHS", 1)
    monkeypatch.setattr(clip_scores, "NOISE_AFTER_CHECKPOINTS", 2)
    monkeypatch.setattr(clip_scores, "NOISE_AFTER_STEPS", 20)
    run = tmp_path / "run"
    msgs = _train_warned(riff, run, max_steps=25, checkpoint_every=5)
    _, scores = _scores(run)
    assert [(r["step"], r["epoch"]) for r in scores] == [(5, 0), (10, 0), (15, 0), (20, 1), (25, 1)]  # went on
    due = [20, 25]  # steps 10 and 15 are late enough in checkpoints but still in the first epoch
    assert [r["step"] for r in scores if r["noise_warning"]] == due
    noisy = [m for m in msgs if "consider restarting" in m]
    assert len(noisy) == len(due)
    for step, m in zip(due, noisy):
        assert m.startswith(f"clips of step {step} (epoch 1) are all noise") and "1 noise-like" in m
        assert "closeness to the album 0.05" in m
        assert "--seed" in m and "Training goes on" in m


def test_all_silent_counts_as_noise_but_a_mix_with_ok_does_not(tmp_path):
    scorer = clip_scores.ClipScorer(tmp_path, tmp_path, checkpoint_every=1000)
    assert scorer.noise_rule(5000, 3, [{"verdict": "silent"}, {"verdict": "noise-like"}])
    assert not scorer.noise_rule(5000, 3, [{"verdict": "ok"}, {"verdict": "noise-like"}])
    assert not scorer.noise_rule(5000, 2, [{"verdict": "noise-like"}])  # too few epochs
    assert not scorer.noise_rule(2000, 5, [{"verdict": "noise-like"}])  # too few checkpoints (a tiny album)
    short = clip_scores.ClipScorer(tmp_path, tmp_path, checkpoint_every=200)  # the demo: 800 steps, 25 epochs
    assert not short.noise_rule(800, 25, [{"verdict": "noise-like"}])  # too few steps to judge
    assert short.noise_rule(2000, 60, [{"verdict": "noise-like"}])


def test_trapped_clips_warn_once(riff, tmp_path, monkeypatch):
    _fake_verdict(monkeypatch, "trapped", closeness=0.4)
    msgs = _train_warned(riff, tmp_path / "run", max_steps=6, checkpoint_every=2)
    trapped = [m for m in msgs if "trapped" in m]
    assert len(trapped) == 1 and trapped[0].startswith("clips of step 2 (epoch 0): 1 of 1 are trapped")
    assert not [m for m in msgs if "consider restarting" in m]


def test_an_unusable_album_reference_only_warns(riff, tmp_path, monkeypatch):
    from fastsrnn.quality import album_reference

    def broken(*a, **k):
        raise ValueError("no chunks to compare against")

    monkeypatch.setattr(album_reference, "album_reference", broken)
    run = tmp_path / "run"
    msgs = _train_warned(riff, run, max_steps=6, checkpoint_every=2)
    bad = [m for m in msgs if "cannot be computed" in m]
    assert len(bad) == 1 and "no chunks to compare against" in bad[0]  # once per run, not per checkpoint
    _, scores = _scores(run)
    assert [r["step"] for r in scores] == [2, 4, 6]
    assert all(r["reference"] == "none" and r["closeness_median"] is None for r in scores)
    assert all(c["verdict"] in ("ok", "silent", "noise", "trap") and c["closeness"] is None
               for r in scores for c in r["clips"])
    assert (run / "metrics.png").is_file() and (run / "summary.json").is_file()


def test_metrics_plot_marks_the_checkpoints(tmp_path, monkeypatch):
    import matplotlib.axes

    rows = [{"step": s, "epoch": 0, "train_bits": 8 - s / 10, "valid_bits": 7.5 - s / 10} for s in (10, 20, 30)]
    rows += [{"event": "clip_scores", "step": s, "epoch": 0, "clips": [], "clip_verdicts": {},
              "closeness_median": c, "noise_warning": w} for s, c, w in ((10, 0.1, False), (20, 0.05, True))]
    rows += [{"event": "clips_failed", "step": 30, "error": "x"}, {"step": 30, "best_step": 30, "test_bits": 4.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines, real = [], matplotlib.axes.Axes.axvline

    def axvline(self, x=0, *a, **k):
        lines.append(x)
        return real(self, x, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "axvline", axvline)
    out = plot_metrics(tmp_path)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert lines == [10, 20, 30, 20]  # the 3 checkpoints (2 scored, 1 failed), then the one that warned
