"""pytest-benchmark: each fused op beside its eager twin, on the same inputs (one pair per op).

    pytest benchmarks/test_ops_bench.py --benchmark-columns=median,ops [--bench-device cuda]
        [--bench-presets tiny]

The frame-level suite (test_generation_bench.py) times whole frames per backend; this one times
the two ops a frame is made of, each implementation against the op's torch twin:

- ``sample_frame``: F sample steps (sample_frame_ref; sample_frame_cpu, _triton, _cuda);
- ``frame_step``: one frame-tier step (frame_step_ref; frame_step_cpu, _triton).

Correctness first: before timing, the implementation runs once from the same state and inputs
as the twin and must agree with it (sample_frame: the same integers and window, logits within
fp32 tolerance; frame_step: output and h, c within ~1e-5 relative), else the case fails and
nothing is timed. An implementation that does not run here (no GPU, no compiler, Triton off a
GPU) is skipped with its reason. Warm-up outside the timed region, synchronised on CUDA.
"""
from __future__ import annotations

import pytest
import torch

from fastsrnn import SampleRNN, SampleRNNConfig
from fastsrnn.model import RNNState
from fastsrnn.ops.export import export_inference
from fastsrnn.ops.frame_step import FusedFrameWeights, frame_step_cpu, frame_step_ref, frame_step_triton
from fastsrnn.ops.sample_frame import sample_frame_cpu, sample_frame_cuda, sample_frame_ref, sample_frame_triton
from fastsrnn.ops.sampling import Sampling
from fastsrnn.tools.bench_measure import sync

PRESETS = ["tiny", "dadabots-2tier"]
ROUNDS = {False: 10, True: 3}  # timed rounds of a fused op, of the eager twin (slow at dadabots-2tier on a CPU)
# op -> {implementation: (device types it runs on)}; "ref" is the eager twin of each pair.
OPS = {"sample_frame": {"ref": ("cpu", "cuda"), "cpu": ("cpu",), "triton": ("cuda",), "cuda": ("cuda",)},
       "frame_step": {"ref": ("cpu", "cuda"), "cpu": ("cpu",), "triton": ("cuda",)}}


def _available(op: str, impl: str, device: torch.device) -> None:
    """Skip an implementation that cannot run on ``device`` here, saying why."""
    if device.type not in OPS[op][impl]:
        pytest.skip(f"{op}_{impl} runs on {' or '.join(OPS[op][impl])}, not {device.type}")
    if impl == "cpu":
        from fastsrnn.ops.build import BuildError, cpu_extension

        try:
            cpu_extension()
        except BuildError as e:
            pytest.skip(str(e))
    if impl == "cuda":
        from fastsrnn.ops.build import BuildError, cuda_extension

        try:
            cuda_extension()
        except BuildError as e:
            pytest.skip(str(e))
    if impl == "triton":
        pytest.importorskip("triton")


def _model(preset: str, device):
    torch.manual_seed(0)
    model = SampleRNN(SampleRNNConfig.from_name(preset)).eval()
    return model, export_inference(model).to(device)


class _SampleFrame:
    """sample_frame's inputs for n_seq sequences, on the device; ``run(fn)`` calls fn on them
    (the window advances in place, as in generation), ``fresh()`` a copy of the starting state."""

    def __init__(self, w, n_seq: int, device):
        cfg = w.cfg
        F, Q, H = cfg.frame_size, cfg.q_levels, cfg.dim
        g = torch.Generator().manual_seed(1)
        self.args = dict(table=w.table, w3=w.w3, b3=w.b3, wo=w.wo, bo=w.bo,
                         cond=(torch.randn(n_seq, F, H, generator=g) * 0.5).to(device),
                         uniforms=torch.rand(n_seq, F, generator=g).to(device),
                         sampling=Sampling(torch.ones(n_seq)).to(device))
        self.window0 = torch.randint(0, Q, (n_seq, F), generator=g).to(device)
        self.window = self.window0.clone()
        self.out = torch.empty(n_seq, F, dtype=torch.long, device=device)
        self.logits = torch.empty(n_seq, F, Q, device=device)

    def call(self, fn, window, out, logits):
        a = self.args
        fn(a["table"], a["cond"], a["w3"], a["b3"], a["wo"], a["bo"], window, a["uniforms"], a["sampling"], out,
           None, logits)

    def check(self, fn) -> str:
        """fn and sample_frame_ref from the same window, outputs poisoned: the same draws."""
        runs = []
        for f in (fn, sample_frame_ref):
            win = self.window0.clone()
            out = torch.full_like(self.out, -1)
            lg = torch.full_like(self.logits, float("nan"))
            self.call(f, win, out, lg)
            runs.append((out.cpu(), lg.cpu(), win.cpu()))
        (out, lg, win), (out_r, lg_r, win_r) = runs
        assert torch.equal(out, out_r) and torch.equal(win, win_r), f"{fn.__name__} draws other samples than the twin"
        torch.testing.assert_close(lg, lg_r, rtol=1e-4, atol=1e-4)
        return f"same {out.numel()} samples, logits max |diff| {(lg - lg_r).abs().max().item():.2g}"

    def unit(self, fn, device):
        def step():
            self.call(fn, self.window, self.out, self.logits)
            sync(device)
        return step


class _FrameStep:
    """frame_step's inputs: the bottom tier's weights (fn's own layout), a window, a random state."""

    def __init__(self, model, w, n_seq: int, device):
        cfg = model.cfg
        g = torch.Generator().manual_seed(2)
        self.w = w
        self.window = torch.randint(0, cfg.q_levels, (n_seq, cfg.frame_size), generator=g).to(device)
        st = model.frame_rnn.initial_state(n_seq, "random", g)
        self.state0 = RNNState(st.h.to(device), None if st.c is None else st.c.to(device))
        self.state = self.state0.clone()

    def fn(self, impl: str):
        if impl == "ref":
            return frame_step_ref, self.w
        if impl == "cpu":
            return (lambda w, window, rnn: frame_step_cpu(w, window, rnn, 0)), self.w
        return frame_step_triton, FusedFrameWeights.from_inference(self.w)

    def check(self, impl: str) -> str:
        """One step of impl and of frame_step_ref from the same state: output and h, c close."""
        fn, w = self.fn(impl)
        got, ref = self.state0.clone(), self.state0.clone()
        out = fn(w, self.window, got).clone()
        want = frame_step_ref(self.w, self.window, ref)
        worst = 0.0
        for name, g, r in (("output", out, want), ("h", got.h, ref.h), ("c", got.c, ref.c)):
            if r is None:
                continue
            tol = 1e-5 * (r.abs() + r.abs().max() / 10)
            assert not ((g - r).abs() > tol).any(), f"frame_step_{impl}: {name} differs from frame_step_ref"
            worst = max(worst, (g - r).abs().max().item())
        return f"output, h, c within 1e-5 relative (max |diff| {worst:.2g})"

    def unit(self, impl: str, device):
        fn, w = self.fn(impl)

        def step():
            fn(w, self.window, self.state)
            sync(device)
        return step


_SAMPLE_FRAME = {"ref": sample_frame_ref, "cpu": sample_frame_cpu, "triton": sample_frame_triton,
                 "cuda": sample_frame_cuda}


@pytest.mark.parametrize("n_seq", [1, 8])
@pytest.mark.parametrize("impl", list(OPS["sample_frame"]))
@pytest.mark.parametrize("preset", PRESETS)
def test_sample_frame(benchmark, bench_device, preset, impl, n_seq):
    _available("sample_frame", impl, bench_device)
    model, w = _model(preset, bench_device)
    op = _SampleFrame(w, n_seq, bench_device)
    fn = _SAMPLE_FRAME[impl]
    check = op.check(fn) if impl != "ref" else "the twin"  # raises: not timed
    benchmark.extra_info.update(op="sample_frame", impl=impl, device=str(bench_device), check=check,
                                samples_per_call=n_seq * model.cfg.frame_size)
    benchmark.pedantic(op.unit(fn, bench_device), warmup_rounds=1, rounds=ROUNDS[impl == "ref"], iterations=1)


@pytest.mark.parametrize("n_seq", [1, 8])
@pytest.mark.parametrize("impl", list(OPS["frame_step"]))
@pytest.mark.parametrize("preset", PRESETS)
def test_frame_step(benchmark, bench_device, preset, impl, n_seq):
    _available("frame_step", impl, bench_device)
    model, w = _model(preset, bench_device)
    op = _FrameStep(model, w, n_seq, bench_device)
    check = op.check(impl) if impl != "ref" else "the twin"  # raises: not timed
    benchmark.extra_info.update(op="frame_step", impl=impl, device=str(bench_device), check=check,
                                samples_per_call=n_seq * model.cfg.frame_size)
    benchmark.pedantic(op.unit(impl, bench_device), warmup_rounds=1, rounds=ROUNDS[impl == "ref"], iterations=1)
