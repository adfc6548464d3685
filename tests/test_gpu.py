"""GPU checks of the triton and cuda backends (skipped without CUDA; run by scripts/gpu_check.sh).

- each kernel against sample_frame_ref on odd and preset shapes: the same integers (or a first
  mismatch at a CDF near-tie), logits within fp32 tolerance, the same window;
- each backend against the eager model on the GPU, fp32, frame by frame, state included;
- bf16 weights: the logits error against the fp32 model at most twice plain PyTorch's error in
  the same precision (the `ref` backend on the same bf16 weights), flash-attention's rule;
- CUDA graphs on and off draw the same integers and leave the same state.
"""
import pytest
import torch
from model_helpers import random_model
from test_triton_backend import _compare, _forced_logits, _run_frames, _weights

from fastsrnn import SampleRNN, SampleRNNConfig
from fastsrnn.backends import DecodeState, make_backend, resolve_backend
from fastsrnn.ops.sample_frame import sample_frame_ref

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
ODD = dict(frame_size=3, dim=100, q_levels=7, emb_size=5, n_rnn=3)
SHAPES = {"odd": (3, 7, 100), "odd-H5": (5, 3, 5), "tiny": (16, 256, 128), "paper": (16, 256, 1024)}
BACKENDS = ["triton", "cuda"]


@pytest.fixture(autouse=True)
def no_tf32():
    """The eager oracle in true fp32: cuDNN's RNNs may otherwise use TF32 on Ampere and later."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _kernel(name):
    if name == "triton":
        from fastsrnn.kernels.sample_frame import sample_frame_triton

        return sample_frame_triton
    from fastsrnn.backends.cuda import sample_frame_cuda

    return sample_frame_cuda


def _on_gpu(fn):
    """fn on CUDA copies of CPU arguments; window, out and logits_out are copied back in place."""
    def run(table, cond, w3, b3, wo, bo, window, u, inv_t, argmax, out, forced, logits_out):
        d = lambda t: None if t is None else t.cuda()  # noqa: E731
        win, o, lg = d(window), d(out), d(logits_out)
        fn(d(table), d(cond), d(w3), d(b3), d(wo), d(bo), win, d(u), d(inv_t), argmax, o, d(forced), lg)
        for dst, src in ((window, win), (out, o), (logits_out, lg)):
            dst.copy_(src.cpu())
    return run


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("B", [1, 3, 9, 200])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", BACKENDS)
def test_kernel_matches_reference(name, shape, B, dtype):
    """B = 9 spans two sequence tiles of the cuda kernel; B = 200 more sequences than blocks."""
    F, Q, H = SHAPES[shape]
    w = _weights(F, Q, H, torch.float32 if dtype == "fp32" else torch.bfloat16)
    inv_t = torch.linspace(0.5, 2.0, B)
    got, u = _run_frames(_on_gpu(_kernel(name)), w, B, 3, inv_t=inv_t)
    want, _ = _run_frames(sample_frame_ref, w, B, 3, inv_t=inv_t)
    _compare(got, want, u, inv_t, atol=1e-4)
    assert (got[0] >= 0).all() and not got[1].isnan().any()


@pytest.mark.parametrize("mode", ["argmax", "forced"])
@pytest.mark.parametrize("name", BACKENDS)
def test_kernel_argmax_and_forced(name, mode):
    w = _weights(*SHAPES["tiny"], seed=3)
    kw = dict(argmax=mode == "argmax", inv_t=torch.tensor([0.7, 1.0, 1.9]), forced=mode == "forced")
    (xs, lg, win), _ = _run_frames(_on_gpu(_kernel(name)), w, 3, 3, **kw)
    (xs_r, lg_r, win_r), _ = _run_frames(sample_frame_ref, w, 3, 3, **kw)
    assert torch.equal(xs, xs_r) and torch.equal(win, win_r)
    torch.testing.assert_close(lg, lg_r, rtol=1e-4, atol=1e-4)


def _generate(backends, model, B, n_frames, seed=0):
    """The same generation on several backends (on the model's device), compared frame by
    frame with the first; returns their states."""
    F, Q, dev = model.cfg.frame_size, model.cfg.q_levels, next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    window = torch.randint(0, Q, (B, F), generator=g).to(dev)
    states = [DecodeState(model.initial_state(B), window.clone()) for _ in backends]
    inv_t = torch.linspace(0.8, 1.25, B).to(dev)
    for _ in range(n_frames):
        u = torch.rand(B, F, generator=g).to(dev)
        runs = []
        for be, st in zip(backends, states):
            lg = torch.full((B, F, Q), float("nan"), device=dev)
            runs.append(tuple(t.cpu() for t in (be.step_frame(st, u, inv_t, logits_out=lg), lg, st.window)))
        for other in runs[1:]:
            _compare(other, runs[0], u.cpu(), inv_t.cpu(), atol=1e-4)
            assert torch.equal(other[0], runs[0][0]), "a near-tie changed a draw: the states would differ"
    return states


@pytest.mark.parametrize("preset,rnn,B", [("tiny", "lstm", 1), ("tiny", "gru", 5), ("dadabots-2tier", "lstm", 2)])
@pytest.mark.parametrize("name", BACKENDS)
def test_backend_matches_eager_fp32(name, preset, rnn, B):
    cfg = SampleRNNConfig.from_name(preset, rnn_type=rnn)
    model = random_model(cfg).cuda() if preset == "tiny" else SampleRNN(cfg).eval().cuda()
    states = _generate([make_backend("eager", model, "cuda"), make_backend(name, model, "cuda")], model, B, 4)
    assert torch.equal(states[0].window, states[1].window)
    torch.testing.assert_close(states[1].rnn.h, states[0].rnn.h, rtol=1e-4, atol=1e-4)


def _forced_error(be, model, x, exact):
    got, _ = _forced_logits(be, model, x, x.shape[0])
    return (got - exact).abs().max().item()


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_bf16_error_at_most_twice_plain_pytorch(name):
    cfg = SampleRNNConfig.from_name("tiny", n_rnn=3)
    model = random_model(cfg, seed=5).cuda()
    B = 4
    x = torch.randint(0, cfg.q_levels, (B, cfg.frame_size * 5), device="cuda")
    with torch.no_grad():
        exact = model(x, model.initial_state(B))[0]
    opts = dict(dtype=torch.bfloat16, frame_dtype=torch.bfloat16)
    err = _forced_error(make_backend(name, model, "cuda", **opts), model, x, exact)
    err_ref = _forced_error(make_backend("ref", model, "cuda", **opts), model, x, exact)
    assert 0 < err <= 2 * err_ref + 1e-6, f"{name} bf16 error {err:.2e} vs plain PyTorch's {err_ref:.2e}"


@pytest.mark.parametrize("name", BACKENDS)
def test_graphs_on_and_off_agree(name):
    """Graph replay (including a second state object, a second capture) equals plain launches."""
    cfg = SampleRNNConfig.from_name("tiny")
    model = random_model(cfg).cuda()
    on, off = make_backend(name, model, "cuda", graphs=True), make_backend(name, model, "cuda", graphs=False)
    assert on.graphs and not off.graphs
    for B in (1, 3):
        states = _generate([off, on], model, B, 5, seed=B)
        assert torch.equal(states[0].window, states[1].window)
        torch.testing.assert_close(states[1].rnn.h, states[0].rnn.h, rtol=1e-6, atol=1e-6)
    assert on.graphs, "capture failed and fell back to plain launches"


def test_auto_picks_a_gpu_backend():
    assert resolve_backend("auto", "cuda") in ("cuda", "triton")
