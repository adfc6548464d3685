"""The training curves of a run as a picture: RUN/metrics.jsonl -> RUN/metrics.png (matplotlib,
the optional 'plot' extra). The trainer draws it at the end of a run; ``fastsrnn report`` shows it.
"""
from __future__ import annotations

import json
from pathlib import Path

from fastsrnn.atomic import atomic_path


def plot_metrics(run_dir) -> Path:
    """RUN/metrics.jsonl -> RUN/metrics.png: train and valid bits per sample against step, a dotted
    line at each checkpoint, and (right axis) the median closeness of each checkpoint's clips to
    the album (its ``clip_scores`` records, :mod:`fastsrnn.training.clip_scores`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("train_bits", "valid_bits"):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), label=key.replace("_bits", ""), marker="." if key == "valid_bits" else None)
    # Checkpoints are known from their clips' records (scored or failed); a run without clips has none.
    checkpoints = sorted({r["step"] for r in rows if r.get("event") in ("clip_scores", "clips_failed")})
    for i, step in enumerate(checkpoints):
        ax.axvline(step, color="0.6", linestyle=":", linewidth=1, label="checkpoint" if i == 0 else None)
    scored = [(r["step"], r["closeness_median"]) for r in rows
              if r.get("event") == "clip_scores" and r.get("closeness_median") is not None]
    handles, labels = ax.get_legend_handles_labels()
    if scored:
        ax2 = ax.twinx()
        line, = ax2.plot(*zip(*scored), color="tab:green", marker="o", linestyle="--", linewidth=1)
        handles, labels = handles + [line], labels + ["clips: closeness"]
        noisy = [r["step"] for r in rows if r.get("event") == "clip_scores" and r.get("noise_warning")]
        for i, step in enumerate(noisy):  # the checkpoints whose restart warning fired
            red = ax2.axvline(step, color="tab:red", alpha=0.4, linewidth=2)
            handles, labels = (handles + [red], labels + ["clips all noise"]) if i == 0 else (handles, labels)
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("clip closeness to the album (median)")
    ax.set_xlabel("step")
    ax.set_ylabel("NLL (bits / sample)")
    ax.legend(handles, labels, loc="upper right", fontsize="small")
    ax.grid(alpha=0.3)
    out = run_dir / "metrics.png"
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out
