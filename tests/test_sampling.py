"""The sampling rule itself (fastsrnn/ops/sampling.py, docs/DESIGN.md §4): sample_ref's top-k and
top-p cut-offs against a brute-force definition written from the words of the rule, the near-tie
margin, and the checks of a Sampling's fields. The kernels are held to sample_ref in test_ops.py.
"""
import dataclasses
import math
import re

import pytest
import torch

from fastsrnn.ops.sampling import Sampling, cdf_margin, cut_mask, order_key, sample_ref

MARGIN = 1e-5  # as tests/helpers.py: a draw may differ from the rule only this close to a boundary


def brute(lg, inv_t: float, k: int, p: float, u: float):
    """The rule in plain float64 Python: (kept levels, drawn level, margin of u and of top_p).

    top-k: a level is kept when fewer than k levels have a strictly higher logit (so every level
    tied with the k-th highest is kept). top-p: among the kept levels, the smallest set of the
    highest ones (a whole tie at a time) whose mass is >= p times the kept mass. The draw: the
    first kept level whose normalised cumulative mass, in index order, exceeds u."""
    Q = len(lg)
    m = max(lg)
    e = [math.exp((x - m) * inv_t) for x in lg]
    kept = [i for i in range(Q) if k == 0 or sum(lg[j] > lg[i] for j in range(Q)) < k]
    p_margin = math.inf
    if p < 1.0:
        total = sum(e[i] for i in kept)
        for v in sorted({lg[i] for i in kept}, reverse=True):
            upper = [i for i in kept if lg[i] >= v]
            frac = sum(e[i] for i in upper) / total
            p_margin = min(p_margin, abs(frac - p))
            if frac >= p:
                kept = upper
                break
    total, acc, x, u_margin = sum(e[i] for i in kept), 0.0, None, math.inf
    for i in kept:  # index order
        acc += e[i]
        u_margin = min(u_margin, abs(acc / total - u))
        if x is None and acc / total > u:
            x = i
    return set(kept), (kept[-1] if x is None else x), u_margin, p_margin


def _logits(B: int, Q: int, g: torch.Generator) -> torch.Tensor:
    """Half the rows on a coarse grid (many exact ties, +0.0 only), half random normal."""
    grid = torch.randint(-4, 5, (B // 2, Q), generator=g).float() * 0.5
    return torch.cat([grid, torch.randn(B - B // 2, Q, generator=g) * 2])


CUTS = [(3, 1.0), (1, 1.0), (0, 0.6), (0, 0.95), (4, 0.7), (7, 0.3), (20, 0.999)]


@pytest.mark.parametrize("k,p", CUTS, ids=[f"k{k}-p{p}" for k, p in CUTS])
def test_cut_and_draw_match_the_brute_force_rule(k, p):
    B, Q = 64, 16
    g = torch.Generator().manual_seed(k * 100 + int(p * 1000))
    logits = _logits(B, Q, g)
    inv_t = torch.rand(B, generator=g) * 2 + 0.25
    u = torch.rand(B, generator=g)
    s = Sampling(inv_t, top_k=k, top_p=p)
    mask, drawn = cut_mask(logits, s), sample_ref(logits, u, s)
    checked = 0
    for b in range(B):
        p32 = float(torch.tensor(p, dtype=torch.float32))
        kept, x, u_margin, p_margin = brute(logits[b].tolist(), float(inv_t[b]), k, p32, float(u[b]))
        if p_margin < MARGIN:  # float32 weights against float64: the set may differ only here
            continue
        assert set(mask[b].nonzero().flatten().tolist()) == kept, f"row {b}: kept levels"
        if u_margin >= MARGIN:
            assert int(drawn[b]) == x, f"row {b}: drew {int(drawn[b])}, the rule {x}"
            checked += 1
    assert checked >= B * 3 // 4, f"only {checked} of {B} rows away from a near-tie"


def test_ties_at_the_cut_are_kept():
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0, 2.0, 0.0]])
    one = torch.ones(1)
    assert cut_mask(logits, Sampling(one, top_k=1)).tolist() == [[False, True, False, True, False, False]]
    assert cut_mask(logits, Sampling(one, top_k=3)).tolist() == [[False, True, True, True, True, False]]
    # top-p (inv_t 1): the two 3.0 hold 2 / (2 + 2/e + 1/e^2 + 1/e^3) = 0.685 of the mass, with
    # the two 2.0 0.937
    assert cut_mask(logits, Sampling(one, top_p=0.68)).tolist() == [[False, True, False, True, False, False]]
    assert cut_mask(logits, Sampling(one, top_p=0.69)).tolist() == [[False, True, True, True, True, False]]
    assert cut_mask(logits, Sampling(one, top_p=0.94)).tolist() == [[True, True, True, True, True, False]]


def test_off_and_wide_cuts_keep_every_level():
    g = torch.Generator().manual_seed(0)
    logits, u, inv_t = torch.randn(32, 9, generator=g), torch.rand(32, generator=g), torch.ones(32)
    off = sample_ref(logits, u, Sampling(inv_t))
    for s in (Sampling(inv_t, top_k=9), Sampling(inv_t, top_k=1000), Sampling(inv_t, top_p=1.0)):
        assert cut_mask(logits, s).all()
        assert torch.equal(sample_ref(logits, u, s), off)


def test_top1_is_the_maximum_and_draws_stay_in_the_kept_set():
    g = torch.Generator().manual_seed(1)
    logits, u, inv_t = torch.randn(64, 11, generator=g), torch.rand(64, generator=g), torch.full((64,), 0.3)
    assert torch.equal(sample_ref(logits, u, Sampling(inv_t, top_k=1)), logits.argmax(-1))
    s = Sampling(inv_t, top_k=5, top_p=0.5)
    x = sample_ref(logits, u, s)
    assert cut_mask(logits, s).gather(1, x[:, None]).all()


def test_order_key_orders_the_floats():
    x = torch.tensor([-math.inf, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, math.inf])
    k = order_key(x[None])[0]
    assert (k[1:] > k[:-1]).all() and int(k.min()) >= 0 and int(k.max()) < 2 ** 32


def test_margin_flags_a_cut_near_tie():
    """Logits a hair apart at the k-th place, or a mass fraction at top_p, are near-ties."""
    inv_t, u = torch.ones(1), torch.tensor([0.5])
    logits = torch.tensor([[2.0, 1.0, 1.0 + 1e-6, -1.0]])
    assert cdf_margin(logits, u, Sampling(inv_t, top_k=2)).item() < MARGIN
    assert cdf_margin(logits, u, Sampling(inv_t, top_k=1)).item() > 1e-2
    half = torch.tensor([[math.log(2.0), 0.0, 0.0]])  # weights 1, 1/2, 1/2: the top level holds half
    assert cdf_margin(half, torch.tensor([0.2]), Sampling(inv_t, top_p=0.5)).item() < MARGIN
    assert cdf_margin(half, torch.tensor([0.2]), Sampling(inv_t, top_p=0.4)).item() > 1e-2


@pytest.mark.parametrize("field,value,exc,msg", [
    ("top_k", -1, ValueError, "top_k must be >= 0"), ("top_k", 2.0, TypeError, "top_k must be an integer"),
    ("top_k", True, TypeError, "top_k must be an integer"), ("top_p", 0.0, ValueError, r"top_p must be in \(0, 1\]"),
    ("top_p", 1.5, ValueError, r"top_p must be in \(0, 1\]"), ("top_p", math.nan, ValueError, "top_p must be in"),
    ("top_p", "0.9", TypeError, "top_p must be a number"), ("argmax", 1, TypeError, "argmax must be a bool"),
])
def test_bad_fields_are_refused(field, value, exc, msg):
    with pytest.raises(exc, match=msg):
        Sampling(torch.ones(2), **{field: value})


def test_key_is_what_a_kernel_takes_by_value():
    s = Sampling(torch.ones(3), top_k=4, top_p=0.5)
    assert s.key() == (False, 4, 0.5) and s.cut
    assert s.rows([1]).inv_temperature.shape == (1,) and s.rows([1]).key() == s.key()
    assert not Sampling(torch.ones(3)).cut


def test_every_field_reaches_every_kernel():
    """A new Sampling field (a new rule, docs/DESIGN.md §9) fails here until the C++ and CUDA
    SamplingParams declare and read it and the Triton kernels are passed it; the rule itself is
    then held to sample_ref by test_ops.py and test_backends.py."""
    from fastsrnn.kernels.sample_frame import sampling_args
    from fastsrnn.ops.build import csrc_dir

    def struct(text: str) -> str:
        start = text.index("struct SamplingParams {")
        return text[start:text.index("};", start)]

    cpu = (csrc_dir() / "cpu" / "sampling.h").read_text()
    cuh = (csrc_dir() / "cuda" / "sample_frame.cuh").read_text()
    triton = sampling_args(Sampling(torch.ones(1), top_k=2, top_p=0.5))
    for name in [f.name for f in dataclasses.fields(Sampling)]:
        for path, text in (("csrc/cpu/sampling.h", cpu), ("csrc/cuda/sample_frame.cuh", cuh)):
            assert re.search(rf"\b{name}\b", struct(text)), f"{path}: SamplingParams has no {name}"
        assert f'attr("{name}")' in cpu, f"csrc/cpu/sampling.h: sampling_params does not read {name}"
        assert name == "inv_temperature" or f'get("{name}"' in cuh, \
            f"csrc/cuda/sample_frame.cuh: read_sampling does not read {name}"
        arg = "inv_t" if name == "inv_temperature" else name
        assert arg in triton or arg.upper() in triton, \
            f"kernels/sample_frame.py: sampling_args does not pass Sampling.{name}"
