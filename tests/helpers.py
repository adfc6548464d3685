"""What the test modules share, in one place: test modules import from here, never from each other.

- models: :func:`random_model` and the ODD config;
- training: a learnable dataset and small configs (:func:`riff_dataset`, ...);
- where a test runs: the ``gpu`` and ``interpret`` marks (:data:`ON_GPU`, :data:`INTERPRETED`,
  :func:`need_triton`);
- op tests: random weights, a few frames of an op with poisoned outputs, the comparison of two
  generations (same integers except at a CDF near-tie), the bad-input table;
- backend tests: the same generation on several backends, teacher-forced logits.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Dict, NamedTuple, Optional, Union

import numpy as np
import pytest
import torch

from fastsrnn import SampleRNN, SampleRNNConfig
from fastsrnn.backends import DecodeState
from fastsrnn.ops.sampling import Sampling, cdf_margin
from fastsrnn.training.train_config import TrainConfig

# ---------------------------------------------------------------------------------------------
# Models

# Odd sizes everywhere (nothing a power of two or a multiple of a vector width), 3 layers.
ODD = dict(frame_size=3, dim=100, q_levels=7, emb_size=5, n_rnn=3)


def random_model(cfg, seed: int = 0, scale: float = 0.1) -> SampleRNN:
    """A SampleRNN in eval mode whose every parameter (h0 included) is perturbed by N(0, scale),
    so nothing hides behind zeros."""
    torch.manual_seed(seed)
    model = SampleRNN(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


# ---------------------------------------------------------------------------------------------
# Training, checkpoints, the demo

# Small enough that a step takes a few milliseconds on one core.
SMALL = SampleRNNConfig.from_name("tiny", dim=32, emb_size=8, n_rnn=2)


def riff_dataset(root: Path, seconds: float = 6.0, chunk_seconds: float = 0.25, sample_rate: int = 16000) -> Path:
    """A repeating riff (4 square-wave notes of 1/16 s, looped), prepared into ``root/data``.

    Periodic, so the next sample is predictable from the past: a model that learns drives the
    NLL far below the 8 bits of a uniform guess.
    """
    import soundfile as sf  # here, not at the top: the GPU machine's image has no audio libraries

    t = np.arange(int(seconds * sample_rate)) / sample_rate
    note = (t * 16).astype(int) % 4  # which of the 4 notes plays
    freq = np.array([250.0, 500.0, 1000.0, 500.0])[note]
    phase = 2 * np.pi * np.cumsum(freq) / sample_rate
    audio = (0.5 * np.sign(np.sin(phase))).astype(np.float32)
    wav = root / "riff.wav"
    sf.write(str(wav), audio, sample_rate)
    from fastsrnn.data.prepare import prepare

    prepare([wav], root / "data", sample_rate=sample_rate, chunk_seconds=chunk_seconds, seed=0, progress=False)
    return root / "data"


def small_train_config(**overrides) -> TrainConfig:
    base = dict(batch_size=4, tbptt=8, max_steps=20, checkpoint_every=5, n_clips=1, clip_seconds=0.02,
                clip_backend="eager", device="cpu")
    base.update(overrides)
    return TrainConfig(**base)


def assert_same_training_state(a: dict, b: dict) -> None:
    """Two loaded last.pt dicts hold bit-identical weights, Adam state and position."""
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"weight {k} differs"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k, v in sa[i].items():
            assert torch.equal(v, sb[i][k]), f"optimizer state {i}.{k} differs"
    for k in ("step", "epoch", "batch", "sub", "best_valid", "best_step"):
        assert a[k] == b[k], k
    for k in ("rnn_h", "rnn_c"):
        assert (a[k] is None and b[k] is None) or torch.equal(a[k], b[k]), k
    assert len(a.get("rnn_upper") or ()) == len(b.get("rnn_upper") or ())  # n tiers: the tiers above
    for ua, ub in zip(a.get("rnn_upper") or (), b.get("rnn_upper") or ()):
        assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(ua, ub)), "rnn_upper"


# ---------------------------------------------------------------------------------------------
# Where a test runs

HAS_CUDA = torch.cuda.is_available()
# Marks of a test (or a parameter) that needs a CUDA device: skipped without one.
ON_GPU = (pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device"))
# Triton fixes interpreted-or-compiled when it is first imported, so TRITON_INTERPRET=1 must be set
# before the process starts; conftest.py refuses to run `interpret` tests without it. Read once, here.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Marks of a test (or a parameter) that runs a Triton kernel on the CPU interpreter: deselected by
# the normal run (pyproject's addopts), run by `TRITON_INTERPRET=1 python -m pytest -m interpret`.
INTERPRETED = (pytest.mark.interpret,)


def need_triton():
    """The Triton kernel module, checked to run in the mode this process was started in. Under
    the interpreter a missing or broken triton fails the test (never a skip); elsewhere (a GPU
    run) an absent triton skips it (triton is Linux-only in the test extra)."""
    if not INTERPRET:
        pytest.importorskip("triton")
    from fastsrnn.kernels import sample_frame as kmod
    from fastsrnn.kernels.mode import INTERPRETED

    assert kmod.MODE_MISMATCH is None, kmod.MODE_MISMATCH
    assert INTERPRETED == INTERPRET, "triton's mode is not what TRITON_INTERPRET asked for"
    return kmod


ISA_ORDER = ("generic", "avx2", "avx512")
_ISA_PREBUILT: list = []


def isa_extension(isa: str):
    """The C++ CPU extension built for ``isa`` ('generic', 'avx2'; narrower than this CPU's: the
    fallback builds), skipping where the CPU lacks it; a failed build fails the test. The first
    call builds every narrower variant at once, each in its own process (one compiler each, so
    they share the cores instead of following one another); the on-disk build cache
    (fastsrnn/ops/build.py) then hands them to this process and every later one without compiling."""
    from fastsrnn.ops.build import cpu_extension, isa_level

    native = isa_level()[0]
    if ISA_ORDER.index(isa) > ISA_ORDER.index(native):
        pytest.skip(f"this CPU has no {isa}")  # only on a non-x86 or pre-2013 CPU
    if not _ISA_PREBUILT:
        import subprocess
        import sys

        _ISA_PREBUILT.append(True)
        code = "import sys\nfrom fastsrnn.ops.build import cpu_extension\ncpu_extension(sys.argv[1])"
        procs = [subprocess.Popen([sys.executable, "-c", code, v], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for v in ISA_ORDER[:ISA_ORDER.index(native)]]
        for proc in procs:  # a failure shows below, in this process's own build
            proc.wait()
    mod = cpu_extension(isa)
    assert mod.isa == isa
    return mod


# ---------------------------------------------------------------------------------------------
# Op tests: sample_frame's contract is in fastsrnn/ops/sample_frame.py

MARGIN = 1e-5  # a draw may differ from the reference only this close to a CDF boundary


def make_weights(F: int, Q: int, H: int, dtype=torch.float32, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Sample-tier weights (table, w3, b3, wo, bo) scaled so logits are O(1): every draw matters.
    table, w3, wo in ``dtype``; biases stay fp32 (the contract)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: torch.randn(*s, generator=g) * scale  # noqa: E731
    w = dict(table=r(F, Q, H, scale=0.3), w3=r(H, H, scale=H ** -0.5), b3=r(H, scale=0.1),
             wo=r(Q, H, scale=3 * H ** -0.5), bo=r(Q, scale=0.1))
    return {k: v.to(dtype) if k in ("table", "w3", "wo") else v for k, v in w.items()}


class Frames(NamedTuple):
    """A few frames of a generation, all on the CPU: samples (B, T) int64, logits (B, T, Q),
    the final window (B, F), the uniforms drawn from (B, T), the Sampling drawn with."""

    samples: torch.Tensor
    logits: torch.Tensor
    window: torch.Tensor
    uniforms: torch.Tensor
    sampling: Sampling


def run_frames(fn: Callable, w: dict, B: int, n_frames: int, sampling: Optional[Sampling] = None,
               forced: Union[bool, torch.Tensor, None] = None, seed: int = 1, **opts) -> Frames:
    """n_frames frames of a sample-frame op ``fn`` (any of ops/sample_frame.py's, or a wrapper
    of one) on the weights ``w``, drawing with ``sampling`` (default: temperature 1). Outputs
    are poisoned (-1, NaN) before each call, so an element the op does not write fails the
    comparison. forced: True for random forced samples, a (B, T) tensor for those samples, None
    to draw. ``seed`` fixes the initial window, cond and uniforms (the same with ``forced`` None
    or a tensor)."""
    F, Q, H = w["table"].shape
    sampling = Sampling(torch.ones(B)) if sampling is None else sampling
    g = torch.Generator().manual_seed(seed)
    window = torch.randint(0, Q, (B, F), generator=g)
    outs, logits, us = [], [], []
    for n in range(n_frames):
        cond = torch.randn(B, F, H, generator=g)
        u = torch.rand(B, F, generator=g)
        out = torch.full((B, F), -1, dtype=torch.long)
        lg = torch.full((B, F, Q), float("nan"))
        if isinstance(forced, torch.Tensor):
            frc = forced[:, n * F:(n + 1) * F].contiguous()
        else:
            frc = torch.randint(0, Q, (B, F), generator=g) if forced else None
        fn(w["table"], cond, w["w3"], w["b3"], w["wo"], w["bo"], window, u, sampling, out, frc, lg, **opts)
        outs.append(out), logits.append(lg), us.append(u)
    return Frames(torch.cat(outs, 1), torch.cat(logits, 1), window, torch.cat(us, 1), sampling)


def assert_written(run: Frames, q_levels: int) -> None:
    """Every poisoned output element was overwritten with a sample or a finite logit."""
    assert ((run.samples >= 0) & (run.samples < q_levels)).all(), "an output sample was not written"
    assert torch.isfinite(run.logits).all(), "a logit was not written"


def compare(got: Frames, want: Frames, atol: float = 1e-5) -> None:
    """Two generations from the same inputs (and the same Sampling, ``want.sampling``): the same
    integers or, per sequence, a first mismatch at a CDF near-tie (its margin reported), after
    which that sequence's inputs differ and are not compared; logits close up to and including
    that step; the same final window."""
    assert_written(got, want.logits.shape[-1])
    xs, xs_r = got.samples, want.samples
    for b in range(xs.shape[0]):
        bad = (xs[b] != xs_r[b]).nonzero()
        t = int(bad[0]) if len(bad) else xs.shape[1]
        if t < xs.shape[1]:
            m = cdf_margin(want.logits[b, t][None], want.uniforms[b, t][None], want.sampling.rows([b])).item()
            assert m < MARGIN, (f"seq {b} step {t}: drew {int(xs[b, t])}, reference {int(xs_r[b, t])}, "
                                f"CDF margin {m:.2e}")
        torch.testing.assert_close(got.logits[b, :t + 1], want.logits[b, :t + 1], rtol=1e-5, atol=atol)
        if t == xs.shape[1]:
            assert torch.equal(got.window[b], want.window[b]), f"seq {b}: final window differs"


def on_device(fn: Callable, device) -> Callable:
    """``fn`` run on ``device`` copies of CPU arguments; window, out and logits_out are copied
    back into the CPU tensors (so :func:`run_frames` drives a GPU op unchanged)."""
    if torch.device(device).type == "cpu":
        return fn

    def run(table, cond, w3, b3, wo, bo, window, u, sampling, out, forced, logits_out, **opts):
        d = lambda t: None if t is None else t.to(device)  # noqa: E731
        win, o, lg = d(window), d(out), d(logits_out)
        fn(d(table), d(cond), d(w3), d(b3), d(wo), d(bo), win, d(u), sampling.to(device), o, d(forced), lg, **opts)
        for dst, src in ((window, win), (out, o), (logits_out, lg)):
            if dst is not None:
                dst.copy_(src.cpu())

    return run


def op_inputs(F: int = 3, Q: int = 7, H: int = 100, B: int = 2) -> dict:
    """Valid keyword arguments of a sample-frame op (the base of :data:`BAD_INPUTS`)."""
    w = make_weights(F, Q, H)
    return dict(table=w["table"], cond=torch.randn(B, F, H), w3=w["w3"], b3=w["b3"], wo=w["wo"], bo=w["bo"],
                window=torch.randint(0, Q, (B, F)), uniforms=torch.rand(B, F), sampling=Sampling(torch.ones(B)),
                out=torch.empty(B, F, dtype=torch.long))


# case -> (argument, its bad value from op_inputs(), exception, message after "<op name>: ").
# Every launcher runs check_sample_frame_args, so each must raise this exception with this message.
BAD_INPUTS = {
    "cond-float64": ("cond", lambda a: a["cond"].double(), TypeError, "cond must be torch.float32, got torch.float64"),
    "cond-shape": ("cond", lambda a: a["cond"][:, :2].contiguous(), ValueError,
                   "cond must have shape (2, 3, 100), got (2, 2, 100)"),
    "cond-device": ("cond", lambda a: torch.empty(2, 3, 100, device="meta"), ValueError,
                    "cond is on meta, the table on cpu"),
    "w3-other-dtype": ("w3", lambda a: a["w3"].bfloat16(), TypeError, "w3 must be torch.float32, got torch.bfloat16"),
    "window-int32": ("window", lambda a: a["window"].int(), TypeError, "window must be torch.int64"),
    "window-range": ("window", lambda a: a["window"] + 7, ValueError, "window holds samples outside [0, 7)"),
    "forced-range": ("forced", lambda a: torch.full_like(a["window"], -2), ValueError,
                     "forced holds samples outside [0, 7): -2 at flat index 0"),
    "table-2d": ("table", lambda a: a["table"][0], ValueError, "table must be (F, Q, H), got shape (7, 100)"),
    "table-float16": ("table", lambda a: a["table"].half(), TypeError,
                      "table must be torch.float32 or torch.bfloat16, got torch.float16"),
    "uniforms-noncontig": ("uniforms", lambda a: torch.rand(3, 2).t(), ValueError, "uniforms must be contiguous"),
    "inv-temperature-shape": ("sampling", lambda a: Sampling(torch.ones(3)), ValueError,
                              "inv_temperature must have shape (2,), got (3,)"),
    "sampling-tensor": ("sampling", lambda a: torch.ones(2), TypeError,
                        "sampling must be a fastsrnn.ops.sampling.Sampling, got Tensor"),
    "out-shape": ("out", lambda a: torch.empty(2, 4, dtype=torch.long), ValueError, "out must have shape (2, 3)"),
    "logits-out-shape": ("logits_out", lambda a: torch.empty(2, 3, 8), ValueError,
                         "logits_out must have shape (2, 3, 7)"),
}


def expect_bad_input(fn: Callable, case: str) -> None:
    """``fn`` (a launcher) on op_inputs() with BAD_INPUTS[case]'s bad value must raise the case's
    exception, its message prefixed with the launcher's own name: ``<fn.__name__>: <message>``."""
    name, make, exc, msg = BAD_INPUTS[case]
    args = op_inputs()
    args[name] = make(args)
    with pytest.raises(exc, match=re.escape(f"{fn.__name__}: {msg}")):
        fn(**args)


# ---------------------------------------------------------------------------------------------
# Backend tests


def generate_and_compare(backends, model, B: int, n_frames: int, seed: int = 0, atol: float = 1e-4,
                         top_k: int = 0, top_p: float = 1.0):
    """The same generation (same window, uniforms, temperatures, cut-offs) on several backends on
    the model's device, compared frame by frame with the first's (:func:`compare`); returns their
    DecodeStates. A near-tie mismatch would make the states differ: the seeds avoid one."""
    F, Q, dev = model.cfg.frame_size, model.cfg.q_levels, next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    window = torch.randint(0, Q, (B, F), generator=g).to(dev)
    states = [DecodeState.begin(model.cfg, model.initial_state(B), window.clone()) for _ in backends]
    sampling = Sampling(torch.linspace(0.8, 1.25, B), top_k=top_k, top_p=top_p)
    for _ in range(n_frames):
        u = torch.rand(B, F, generator=g)
        runs = []
        for be, st in zip(backends, states):
            lg = torch.full((B, F, Q), float("nan"), device=dev)  # poisoned
            xs = be.step_frame(st, u.to(dev), sampling.to(dev), logits_out=lg)
            runs.append(Frames(xs.cpu(), lg.cpu(), st.window.cpu(), u, sampling))
        for other in runs[1:]:
            compare(other, runs[0], atol=atol)
            assert torch.equal(other.samples, runs[0].samples), "a near-tie changed a draw: the states would differ"
    return states


def close_rel(got, want, what: str, rtol: float = 1e-5) -> None:
    """|got - want| <= rtol * (|want| + max|want| / 10) elementwise: ~1e-5 relative, absolute near
    zeros; the shapes must be equal. The frame-step tests' comparison."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, want {tuple(want.shape)}"
    tol = rtol * (want.abs() + want.abs().max() / 10)
    bad = (got - want).abs() > tol
    assert not bad.any(), f"{what}: max abs error {(got - want).abs().max():.3g}, max |ref| {want.abs().max():.3g}"


def tier_of(cfg, w, k: int):
    """Frame tier k's (weights, window width S_k, n_out, conditioned) from a model's exported
    InferenceWeights ``w`` (k = 0: the bottom tier; above it w.upper[k - 1])."""
    return (w if k == 0 else w.upper[k - 1], cfg.tier_samples(k), cfg.frame_sizes[k],
            k + 1 < len(cfg.frame_sizes))


def frame_step_kernels():
    """kernels/frame_step.py, checked to run in the mode this process was started in."""
    if not INTERPRET:
        pytest.importorskip("triton")
    from fastsrnn.kernels import frame_step as k
    from fastsrnn.kernels.mode import INTERPRETED

    assert k.MODE_MISMATCH is None, k.MODE_MISMATCH
    assert INTERPRETED == INTERPRET, "triton's mode is not what TRITON_INTERPRET asked for"
    return k


def record_launches(k, run: bool = True):
    """Patch k.launch (a kernels module's launcher) to record (kernel, grid, args, kwargs) and
    (run=True) launch; returns (calls, restore), restore() undoes the patch."""
    calls, launch = [], k.launch

    def rec(kern, grid, *a, **kw):
        calls.append((kern, grid, a, kw))
        if run:
            launch(kern, grid, *a, **kw)

    k.launch = rec
    return calls, lambda: setattr(k, "launch", launch)


_PTR = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.int64: "*i64"}


def launch_signature(kern, args, kwargs):
    """signature, constexprs, num_warps, num_stages of a recorded Triton launch, as Triton's JIT
    would specialise it (an int equal to 1 becomes a constexpr, unless the kernel says not to)."""
    sig, const = {}, {}
    for name, v in zip(kern.arg_names, args):
        if isinstance(v, torch.Tensor):
            sig[name] = _PTR[v.dtype]
        elif isinstance(v, float):
            sig[name] = "fp32"
        elif v == 1 and name not in (kern.do_not_specialize or ()):
            const[name] = 1
        else:
            sig[name] = "i32"
    kw = dict(kwargs)
    warps, stages = kw.pop("num_warps"), kw.pop("num_stages")
    return sig, dict(const, **kw), warps, stages


def compile_problems(calls, arch: int, label: str, seen: set) -> list:
    """Compile each distinct recorded launch (kern, grid, args, kwargs) through Triton's whole
    compiler for sm_<arch> (fastsrnn.tools.gpu_compile); its resources are printed, its problems
    (spills, shared memory over the limit) returned. ``seen``: launches already compiled."""
    from fastsrnn.tools.gpu_compile import triton_resources

    problems = []
    for kern, grid, args, kwargs in calls:
        sig, const, warps, stages = launch_signature(kern, args, kwargs)
        key = (kern.fn.__name__, tuple(sig.items()), tuple(const.items()))
        if key in seen:
            continue
        seen.add(key)
        res = triton_resources(kern, sig, const, arch, warps, stages)
        print(f"{label} sm_{arch} {key[0]} grid={grid} regs={res.registers} shared={res.shared} "
              f"spills={res.spill_stores}")
        problems += res.problems()
    return problems


def fresh_pair(model, B: int, n_frames: int, seed: int = 0):
    """Two equal DecodeStates (random h0 and window) on the model's device, uniforms (n_frames, B,
    F) and a Sampling (per-sequence temperatures) there: for comparing step_frames of two backends."""
    F, Q, dev = model.cfg.frame_size, model.cfg.q_levels, next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    state = DecodeState.begin(model.cfg, model.initial_state(B, "random", g),
                              torch.randint(0, Q, (B, F), generator=g)).to(dev)
    u = torch.rand(n_frames, B, F, generator=g).to(dev)
    return state, state.clone(), u, Sampling(torch.linspace(0.8, 1.25, B).to(dev))


def forced_logits(be, model, x: torch.Tensor):
    """Teacher-forced logits (B, T, Q) of backend ``be`` on samples x (B, S + T) (S = lookback, F
    with 2 tiers; on the model's device), written into slices (views) of one poisoned buffer; also
    the final DecodeState. Checks that every frame returns the forced samples and the window ends
    on x's last F."""
    B = x.shape[0]
    F, S, Q, dev = model.cfg.frame_size, model.cfg.lookback, model.cfg.q_levels, x.device
    state = DecodeState.begin(model.cfg, model.initial_state(B), x[:, S - F:S].clone(), history=x[:, :S].clone())
    got = torch.full((B, x.shape[1] - S, Q), float("nan"), device=dev)
    for n in range((x.shape[1] - S) // F):
        tgt = x[:, S + F * n: S + F * (n + 1)]
        drawn = be.step_frame(state, torch.rand(B, F, device=dev), Sampling(torch.ones(B, device=dev)), forced=tgt,
                              logits_out=got[:, n * F:(n + 1) * F])
        assert torch.equal(drawn, tgt)
    assert torch.equal(state.window, x[:, -F:])
    return got, state


def run_python(args: list, cwd: Path, nproc: int = 1, timeout: int = 180) -> None:
    """``python ARGS`` (``-m fastsrnn ...`` or a script) in a fresh process, under torch.distributed.run
    with ``nproc`` CPU processes when nproc > 1 (on 127.0.0.1 and a free port: no network needed),
    one thread each; fails the test with the output unless it exits 0."""
    import os
    import socket
    import subprocess
    import sys

    cmd = [sys.executable]
    if nproc > 1:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd += ["-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
                "--master-port", str(port)]
    cmd += [str(a) for a in args]
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", FASTSRNN_NUM_THREADS="1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # no network needed, nor a resolvable hostname
    proc = subprocess.run(cmd, env=env, cwd=str(cwd), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def find_op_impls(op: str):
    """({impl: function} for every ``<op>_<impl>`` defined in a module of fastsrnn/ops,
    {module: error} for the modules that failed to import): how the op tests find every
    implementation, so that a new one is tested without being listed."""
    import importlib
    import inspect
    import pkgutil

    import fastsrnn.ops

    found, broken = {}, {}
    for info in pkgutil.iter_modules(fastsrnn.ops.__path__):
        name = f"fastsrnn.ops.{info.name}"
        try:
            mod = importlib.import_module(name)
        except Exception as e:  # reported by the tests' module-import checks
            broken[name] = f"{type(e).__name__}: {e}"
            continue
        for attr, fn in vars(mod).items():
            if attr.startswith(op + "_") and inspect.isfunction(fn) and fn.__module__ == name:
                found[attr[len(op) + 1:]] = fn
    return found, broken
