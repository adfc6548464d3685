"""The listening aids tell silence, noise, a trap and music apart on synthesized clips."""
import numpy as np

from fastsrnn.tools.analysis import analyze_clip

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
    from fastsrnn.tools.analysis import plot_metrics

    out = plot_metrics(tmp_path)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob("*.part"))
