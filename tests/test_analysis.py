"""The listening aids tell silence, noise, a trap and music apart on synthesized clips."""
import numpy as np

from fastsrnn.quality.verdict import analyze_clip

SR = 16000


def _riff(seconds, seed, vary):
    """Notes of random pitch and length; with vary=False one bar repeats exactly (a trap)."""
    rng = np.random.default_rng(seed)
    out, bar = [], None
    while sum(len(n) for n in out) < seconds * SR:
        if bar is None or vary:
            bar = []
            for _ in range(4):
                n = int(SR * rng.uniform(0.1, 0.4))
                t = np.arange(n) / SR
                bar.append(0.5 * np.sin(2 * np.pi * rng.uniform(80, 400) * t) * np.exp(-t * rng.uniform(3, 12)))
        out.extend(bar)
    return np.concatenate(out)[: seconds * SR]


def test_verdicts():
    rng = np.random.default_rng(0)
    assert analyze_clip(np.zeros(SR * 4), SR).verdict == "silent"
    assert analyze_clip(rng.uniform(-0.5, 0.5, SR * 4), SR).verdict == "noise"
    assert analyze_clip(_riff(8, 1, vary=False), SR).verdict == "trap"
    assert analyze_clip(_riff(8, 2, vary=True), SR).verdict == "ok"


def test_metrics_plot(tmp_path):
    import json

    rows = [{"step": s, "train_bits": 8 - s / 10, "valid_bits": 7.5 - s / 10} for s in (10, 20, 30)]
    lines = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 30, "test_bits": 4.0}\n'
    (tmp_path / "metrics.jsonl").write_text(lines)
    from fastsrnn.training.plot import plot_metrics

    out = plot_metrics(tmp_path)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob("*.part"))


def test_empty_and_nan_clips_get_their_own_verdicts():
    assert analyze_clip(np.zeros(0), SR).verdict == "empty"
    rep = analyze_clip(np.array([0.1, np.nan, 0.2] * 1000), SR)
    assert rep.verdict == "invalid (NaN/Inf samples)" and rep.rms_dbfs is None
    assert analyze_clip(np.array([0.1, np.inf] * 1000), SR).verdict.startswith("invalid")


def test_cli_reports_a_bad_file_and_goes_on(tmp_path, capsys):
    import json

    import soundfile as sf

    from fastsrnn.cli import main

    sf.write(str(tmp_path / "empty.wav"), np.zeros(0, np.float32), SR)
    sf.write(str(tmp_path / "nan.wav"), np.array([0.1, np.nan] * 4000, np.float32), SR, subtype="FLOAT")
    (tmp_path / "broken.wav").write_bytes(b"RIFF" + bytes(100))
    sf.write(str(tmp_path / "music.wav"), _riff(8, 2, vary=True), SR)
    clips = [str(tmp_path / n) for n in ("empty.wav", "broken.wav", "nan.wav", "music.wav")]
    assert main(["analyze", *clips]) == 1  # the bad file is reported, the rest analyzed, status non-zero
    out, err = capsys.readouterr()
    rows = out.splitlines()
    assert [r.split()[0] for r in rows] == ["empty", "invalid", "ok"]
    assert "level" not in rows[0] + rows[1] and "nan dBFS" not in out
    assert "broken.wav" in err and "cannot read" in err and "1 of 4" in err
    assert main(["analyze", "--json", *clips]) == 1
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # valid JSON: no NaN
    assert [r["verdict"] for r in recs] == ["empty", "error", "invalid (NaN/Inf samples)", "ok"]
    assert main(["analyze", clips[3]]) == 0
