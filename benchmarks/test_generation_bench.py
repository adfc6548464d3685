"""pytest-benchmark: one frame step (frame tier + F fused sample steps) per backend and preset.

    pytest benchmarks --benchmark-columns=median,ops [--bench-device cuda] [--bench-presets tiny]

State is allocated and the uniforms drawn once, outside the timed function; each round is one
``step_frame`` (synchronised on CUDA), after two warm-up rounds. Backends that do not work here
are skipped; the table runner (``fastsrnn bench``) checks correctness first and gives the units
that matter (samples/s, real-time factor, fraction of the floor).
"""
import pytest
import torch

from fastsrnn import SampleRNN, SampleRNNConfig
from fastsrnn.backends import backend_status, make_backend
from fastsrnn.tools.bench import _fresh_state, _parse_variant

BACKENDS = ["eager", "ref", "cpu", "cpu:bf16", "triton", "triton:bf16", "cuda", "cuda:nograph"]


@pytest.mark.parametrize("n_seq", [1, 8, 32])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("preset", ["tiny", "dadabots-2tier"])
def test_frame_step(benchmark, bench_device, preset, backend, n_seq):
    name, kw = _parse_variant(backend)
    ok, why = backend_status(name, bench_device)
    if not ok:
        pytest.skip(why)
    torch.manual_seed(0)
    model = SampleRNN(SampleRNNConfig.from_name(preset)).eval().to(bench_device)
    be = make_backend(name, model, bench_device, **kw)
    state = _fresh_state(model, n_seq, bench_device, 0)
    u = torch.rand(n_seq, model.cfg.frame_size, device=bench_device)
    inv_t = torch.ones(n_seq, device=bench_device)

    def step():
        be.step_frame(state, u, inv_t)
        if bench_device.type == "cuda":
            torch.cuda.synchronize(bench_device)

    benchmark.extra_info.update(samples_per_frame=n_seq * model.cfg.frame_size, backend=backend,
                                device=str(bench_device))
    slow = name in ("eager", "ref")
    benchmark.pedantic(step, warmup_rounds=2, rounds=5 if slow else 20, iterations=1)
