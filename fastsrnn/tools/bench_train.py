"""``fastsrnn bench --train``: training throughput of the plain fp32 loop and its speed variants.

Each variant (``fp32``, ``bf16`` = amp bf16 autocast, ``compile`` = torch.compile of the forward,
``bf16+compile``) trains a fresh model, seeded the same, on one synthetic in-memory batch (random
quantized chunks: no dataset files), step for step as ``fastsrnn train`` does (forward and loss
through :class:`fastsrnn.training.trainer.TrainForward`, backward, the finite-gradient check,
element-wise clipping, Adam, the RNN state carried detached across sub-sequences).

Correctness first: the first step of every variant starts from the same weights, state and batch
as fp32, and its loss must lie within a stated relative tolerance of fp32's (:data:`TOLERANCE`);
a variant that disagrees, or whose compile failed, is refused, not timed (the exit status is then
1). The first step and ``warmup`` more are untimed (compiling, cuDNN and allocator warm-up); then
``steps`` steps are timed one by one with :func:`fastsrnn.tools.bench_measure.measured` (the
project's one timing and peak-memory method): median seconds per step, samples trained per
second (B x T samples per step), the ratio against fp32 in the same process, and the peak memory
over the timed steps. Rows also count cuDNN's "not part of single contiguous chunk of memory"
warnings seen while training (0 expected: see FrameLevelRNN.run_rnn).
"""
from __future__ import annotations

import json
import statistics
import warnings
from dataclasses import asdict, dataclass
from typing import List, Optional

import torch

from fastsrnn.atomic import atomic_write_text
from fastsrnn.config import SampleRNNConfig
from fastsrnn.model import SampleRNN, cpu_autocast_lstm_ok
from fastsrnn.tools.bench_args import _check_args, _check_device
from fastsrnn.tools.bench_measure import machine_info, measured, versions

VARIANTS = {"fp32": ("off", False), "bf16": ("bf16", False), "compile": ("off", True), "bf16+compile": ("bf16", True)}
# First-step loss against fp32, relative: bf16 rounds every matmul input (8 bits of mantissa);
# compile only reorders fp32 arithmetic (fused kernels).
TOLERANCE = {"fp32": 0.0, "bf16": 2e-2, "compile": 1e-4, "bf16+compile": 2e-2}
# Per preset: chunks per batch (B) and frames per sub-sequence; dadabots-2tier is the paper's setup.
SHAPES = {"tiny": (8, 8), "tiny-3tier": (8, 8), "dadabots-2tier": (128, 64)}
DEFAULT_SHAPE = (32, 16)
RNN_LAYOUT_WARNING = "not part of single contiguous chunk of memory"


@dataclass
class TrainRow:
    preset: str
    variant: str
    batch_size: int
    samples_per_step: int
    ms_per_step: Optional[float]
    samples_per_s: Optional[float]
    vs_fp32: Optional[float]
    peak_mib: Optional[float]  # CUDA: max_memory_allocated; CPU: the process's peak RSS (VmHWM)
    first_loss_bits: Optional[float]
    loss_rel_diff: Optional[float]  # |loss - fp32 loss| / fp32 loss on the first step
    check: str  # 'reference', 'ok (rel. diff ...)', or why it was refused
    last_loss_bits: Optional[float] = None
    rnn_layout_warnings: int = 0


def _not_finite(what: str) -> None:
    raise RuntimeError(f"training step not finite: {what}")


class _Trainer:
    """One variant's model, Adam and carried state on the synthetic batch: ``step()`` is one
    optimizer step exactly as the trainer's (the same fastsrnn.training.trainer.optimizer_step)."""

    def __init__(self, cfg: SampleRNNConfig, variant: str, x: torch.Tensor, tbptt: int, device):
        from fastsrnn.training.train_config import tbptt_samples
        from fastsrnn.training.trainer import TrainForward, optimizer_step

        amp, compile = VARIANTS[variant]
        torch.manual_seed(0)
        self.model = SampleRNN(cfg).to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.forward = TrainForward(self.model, device, amp, compile)
        self.params, self._step = list(self.model.parameters()), optimizer_step
        self.cfg, self.x, self.T = cfg, x, tbptt_samples(tbptt, cfg)  # the trainer's rule (whole top frames)
        self.n_sub = (x.shape[1] - cfg.lookback) // self.T
        self.sub, self.state = 0, None

    def step(self) -> float:
        S = self.cfg.lookback
        state = self.state if self.state is not None else self.model.initial_state(self.x.shape[0])
        inp = self.x[:, self.sub * self.T: self.sub * self.T + S + self.T]  # (B, S + T)
        loss, new_state = self._step(self.forward, self.opt, self.params, inp, state, S, 1.0, _not_finite)
        self.sub = (self.sub + 1) % self.n_sub
        self.state = None if self.sub == 0 else new_state
        return loss


def synthetic_batch(cfg: SampleRNNConfig, batch_size: int, tbptt: int, n_sub: int = 2, seed: int = 1) -> torch.Tensor:
    """Random quantized chunks with their (top) frame of context: (B, S + n_sub * tbptt * F) int64."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.q_levels, (batch_size, cfg.lookback + cfg.frame_size * n_sub * tbptt), generator=g)


def bench_train_preset(preset: str, variants: List[str], device, steps: int = 20, warmup: int = 3,
                       batch_size: Optional[int] = None, tbptt: Optional[int] = None,
                       progress: bool = False) -> List[TrainRow]:
    """The rows of one preset, fp32 first; a refused variant's row has no timing. progress: a line
    per variant as it finishes (a run cut short by a timeout still shows the rows done)."""
    device = torch.device(device)
    cfg = SampleRNNConfig.from_name(preset)
    B0, T0 = SHAPES.get(preset, DEFAULT_SHAPE)
    B, tb = batch_size or B0, tbptt or T0
    x = synthetic_batch(cfg, B, tb).to(device)
    per_step = B * tb * cfg.frame_size
    rows, ref_loss, ref_time = [], None, None
    for variant in ["fp32"] + [v for v in dict.fromkeys(variants) if v != "fp32"]:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            row = _bench_variant(preset, variant, cfg, x, tb, device, steps, warmup, B, per_step, ref_loss, ref_time)
        row.rnn_layout_warnings = sum(RNN_LAYOUT_WARNING in str(w.message) for w in seen)
        for w in seen:  # show the others as they would have been shown
            if RNN_LAYOUT_WARNING not in str(w.message):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if variant == "fp32":
            ref_loss, ref_time = row.first_loss_bits, row.ms_per_step
        rows.append(row)
        if progress:
            speed = "not timed" if row.samples_per_s is None else f"{row.samples_per_s:,.0f} samples/s"
            print(f"{preset} {variant}: {speed}; {row.check}", flush=True)
    return rows


def _bench_variant(preset, variant, cfg, x, tbptt, device, steps, warmup, B, per_step, ref_loss, ref_time):
    trainer = _Trainer(cfg, variant, x, tbptt, device)
    row = TrainRow(preset, variant, B, per_step, None, None, None, None, None, None, "")
    try:
        row.first_loss_bits = trainer.step()  # from the same weights, state and batch as fp32's first step
    except Exception as e:
        row.check = f"refused: the first step failed ({type(e).__name__}: {e})"
        return row
    if trainer.forward.compile_error:
        row.check = f"refused: torch.compile failed ({trainer.forward.compile_error})"
        return row
    if ref_loss is None:
        row.check, row.loss_rel_diff = "reference", 0.0
    else:
        row.loss_rel_diff = abs(row.first_loss_bits - ref_loss) / abs(ref_loss)
        tol = TOLERANCE[variant]
        if not row.loss_rel_diff <= tol:  # NaN fails too
            row.check = (f"refused: first-step loss {row.first_loss_bits:.5f} bits vs fp32 {ref_loss:.5f} "
                         f"(rel. diff {row.loss_rel_diff:.1e} > {tol:.0e})")
            return row
        row.check = f"ok (rel. diff {row.loss_rel_diff:.1e} <= {tol:.0e})"
    for _ in range(warmup):
        trainer.step()
    times = []
    with measured(device) as total:
        for _ in range(steps):
            with measured(device, memory=False) as m:
                row.last_loss_bits = trainer.step()
            times.append(m.seconds)
    t = statistics.median(times)
    row.ms_per_step, row.samples_per_s, row.peak_mib = t * 1e3, per_step / t, total.peak_mib
    row.vs_fp32 = (ref_time / row.ms_per_step) if ref_time else (1.0 if variant == "fp32" else None)
    return row


def format_train_table(rows: List[TrainRow]) -> str:
    lines = ["| preset | variant | B | samples/step | ms/step | samples/s | vs fp32 | peak MiB | first-step loss "
             "| check |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)
    for r in rows:
        ratio = "-" if r.vs_fp32 is None else f"{r.vs_fp32:.2f}x"
        lines.append(f"| {r.preset} | {r.variant} | {r.batch_size} | {r.samples_per_step:,} "
                     f"| {f(r.ms_per_step, '.1f')} | {f(r.samples_per_s, ',.0f')} | {ratio} "
                     f"| {f(r.peak_mib, ',.0f')} | {f(r.first_loss_bits, '.4f')} | {r.check} |")
    return "\n".join(lines)


def run_train(args) -> int:
    """``fastsrnn bench --train``: the table, the JSON; exit 1 when a variant was refused."""
    device = _check_device(args.device)  # TF32 settings left at torch's defaults, as 'fastsrnn train' runs
    presets = args.presets or (["dadabots-2tier"] if device.type == "cuda" else ["tiny"])
    args.presets = presets
    variants = args.variants or ["fp32", "bf16", "compile"]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"fastsrnn bench --train: --variants {unknown}: choose from {', '.join(VARIANTS)}")
    for flag, v in (("--steps", args.steps), ("--warmup", args.warmup + 1),
                    ("--batch-size", args.batch_size or 1), ("--tbptt", args.tbptt or 1)):
        if v < 1:
            raise SystemExit(f"fastsrnn bench --train: {flag} must be >= {1 if flag != '--warmup' else 0}")
    _check_args(args, [], [1])
    rows = []
    for preset in presets:
        rows += bench_train_preset(preset, variants, device, args.steps, args.warmup, args.batch_size, args.tbptt,
                                   progress=True)
    print(f"training throughput on {device} (median of {args.steps} steps after {args.warmup} warm-up; "
          "ratios against fp32 in this process)")
    print(format_train_table(rows))
    if any(r.rnn_layout_warnings for r in rows):
        print("warning: cuDNN compacted scattered RNN weights (its 'single contiguous chunk' warning) in: "
              + ", ".join(f"{r.preset} {r.variant}" for r in rows if r.rnn_layout_warnings))
    if args.json:
        payload = {"kind": "train", "machine": machine_info(device), "versions": versions(),
                   "config": {"presets": presets, "variants": variants, "steps": args.steps, "warmup": args.warmup,
                              "batch_size": args.batch_size, "tbptt": args.tbptt, "device": str(device),
                              "tolerance": TOLERANCE,
                              # False: this CPU's bf16 rows ran their LSTM layers in fp32 (model.py)
                              "cpu_bf16_lstm": device.type != "cpu" or cpu_autocast_lstm_ok()},
                   "rows": [asdict(r) for r in rows]}
        atomic_write_text(args.json, json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    refused = [r for r in rows if r.check.startswith("refused")]
    return 1 if refused else 0
