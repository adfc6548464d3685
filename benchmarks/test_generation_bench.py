"""pytest-benchmark: one frame step (frame tier + F fused sample steps) per backend and preset.

    pytest benchmarks --benchmark-columns=median,ops [--bench-device cuda] [--bench-presets tiny]

The measuring is ``fastsrnn bench``'s (fastsrnn/tools/bench_measure.py): the backend is checked
against eager first and refused if it disagrees (``check_backend``), the state comes from
``fresh_state``, and the timed unit is ``frame_stepper`` (one ``step_frame``, synchronised on
CUDA), after two warm-up rounds. pytest-benchmark only repeats that unit and keeps the
statistics; ``fastsrnn bench`` gives the units that matter (samples/s, real-time factor, fraction
of the floor, peak memory, predictions on a known GPU).
"""
import pytest
import torch

from fastsrnn import SampleRNN, SampleRNNConfig
from fastsrnn.backends import backend_status, make_backend
from fastsrnn.ops.sampling import Sampling
from fastsrnn.tools.bench_measure import check_backend, frame_stepper, fresh_state, parse_variant

BACKENDS = ["eager", "folded", "cpu", "cpu:bf16", "triton", "triton:bf16", "cuda", "cuda:nograph"]


@pytest.mark.parametrize("n_seq", [1, 8, 32])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("preset", ["tiny", "dadabots-2tier"])
def test_frame_step(benchmark, bench_device, preset, backend, n_seq):
    name, kw = parse_variant(backend)
    ok, why = backend_status(name, bench_device)
    if not ok:
        pytest.skip(why)
    torch.manual_seed(0)
    model = SampleRNN(SampleRNNConfig.from_name(preset)).eval().to(bench_device)
    eager = make_backend("eager", model, bench_device)
    be = eager if name == "eager" else make_backend(name, model, bench_device, **kw)
    check = check_backend(model, be, eager, backend, n_seq, bench_device)  # raises: not timed
    state = fresh_state(model, n_seq, bench_device, 0)
    u = torch.rand(n_seq, model.cfg.frame_size, device=bench_device)
    sampling = Sampling(torch.ones(n_seq, device=bench_device))
    benchmark.extra_info.update(samples_per_frame=n_seq * model.cfg.frame_size, backend=backend,
                                device=str(bench_device), check=check)
    slow = name in ("eager", "folded")
    benchmark.pedantic(frame_stepper(be, state, u, sampling, bench_device), warmup_rounds=2,
                       rounds=5 if slow else 20, iterations=1)
