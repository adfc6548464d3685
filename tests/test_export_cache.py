"""The export cache (build once, generate many; ops/export.py export_inference_cached).

- a cached export equals a fresh one bit for bit, and a second call reuses it (no export);
- any change to the weights re-exports: an optimizer step (weight-norm originals), a write
  through ``p.data`` (which no version counter sees), ``load_state_dict``, a new buffer value;
- the cache holds its models weakly (a dropped model frees its entry) and at most a few;
- on dadabots-2tier, a second ``fastsrnn.generate`` builds its backend in under 0.1 s.
"""
from __future__ import annotations

import gc
import time
import weakref
from dataclasses import fields

import pytest
import torch
from helpers import ODD, random_model

import fastsrnn
import fastsrnn.generation.generator as generator_mod
import fastsrnn.ops.export as export_mod
from fastsrnn import SampleRNN, SampleRNNConfig
from fastsrnn.backends import make_backend
from fastsrnn.ops.export import CACHE_MAX_MODELS, clear_export_cache, export_inference, export_inference_cached


@pytest.fixture(autouse=True)
def _empty_cache():
    clear_export_cache()
    yield
    clear_export_cache()


@pytest.fixture
def count_exports(monkeypatch):
    """How many times the cache called export_inference."""
    calls = []
    real = export_mod.export_inference

    def counted(model):
        calls.append(model)
        return real(model)

    monkeypatch.setattr(export_mod, "export_inference", counted)
    return calls


def assert_bitwise_equal(a, b):
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "cfg" or x is None:
            assert x == y, f.name
            continue
        xs, ys = (x, y) if isinstance(x, list) else ([x], [y])
        assert len(xs) == len(ys), f.name
        for s, t in zip(xs, ys):
            assert s.dtype == t.dtype and s.shape == t.shape and s.device == t.device, f.name
            assert torch.equal(s.view(torch.int32), t.view(torch.int32)) if s.dtype == torch.float32 \
                else torch.equal(s, t), f.name


def odd_model(seed=0, **kw):
    return random_model(SampleRNNConfig(**{**ODD, **kw}), seed=seed)


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
def test_cached_equals_fresh_and_is_reused(rnn, count_exports):
    model = odd_model(rnn_type=rnn)
    first = export_inference_cached(model)
    assert_bitwise_equal(first, export_inference(model))
    assert export_inference_cached(model) is first
    assert len(count_exports) == 1
    half = export_inference_cached(model, "cpu", torch.bfloat16, torch.bfloat16)
    assert_bitwise_equal(half, export_inference(model).to("cpu", torch.bfloat16, torch.bfloat16))
    assert export_inference_cached(model, "cpu", torch.bfloat16, torch.bfloat16) is half
    assert half.w3.dtype == torch.bfloat16 and half.w_hh[0].dtype == torch.bfloat16
    q8 = export_inference_cached(model, "cpu", None, torch.int8)  # int8 frame weights + per-row scales
    assert_bitwise_equal(q8, export_inference(model).to("cpu", None, torch.int8))
    assert export_inference_cached(model, "cpu", None, torch.int8) is q8
    assert q8.up_w.dtype == torch.int8 and len(q8.w_hh_scale) == model.cfg.n_rnn and q8.w3.dtype == torch.float32
    assert len(count_exports) == 1  # one export per weights version, whatever the dtypes asked


def _optimizer_step(model):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randint(0, model.cfg.q_levels, (2, 4 * model.cfg.frame_size + model.cfg.frame_size))
    model.train()
    logits, _ = model(x)
    loss = logits.float().square().mean()
    loss.backward()
    opt.step()
    model.eval()


def _data_write(model):
    p = model.mlp.w3.bias
    p.data.add_(0.25)  # .data has its own version counter: only the bits show the change


def _data_write_weight_norm(model):
    p = model.frame_rnn.rnns[0].parametrizations.weight_hh_l0.original1
    p.data[3, 2] += 1.0  # one element of a weight-norm direction


def _load_state_dict(model):
    model.load_state_dict(odd_model(seed=1).state_dict())


def _set_h0(model):
    with torch.no_grad():
        model.frame_rnn.h0.mul_(2.0)


@pytest.mark.parametrize("change", [_optimizer_step, _data_write, _data_write_weight_norm, _load_state_dict, _set_h0])
def test_any_change_reexports(change, count_exports):
    model = odd_model()
    before = export_inference_cached(model)
    old = export_inference(model)
    change(model)
    after = export_inference_cached(model)
    assert after is not before and len(count_exports) == 2
    fresh = export_inference(model)
    assert_bitwise_equal(after, fresh)
    assert_bitwise_equal(before, old)  # what an earlier caller holds is left as it was
    assert any(not torch.equal(getattr(old, n), getattr(fresh, n)) if not isinstance(getattr(old, n), list)
               else any(not torch.equal(s, t) for s, t in zip(getattr(old, n), getattr(fresh, n)))
               for n in ("table", "w3", "b3", "h0", "w_hh", "w_ih", "up_w", "bo"))
    assert export_inference_cached(model) is after and len(count_exports) == 2


def test_optimizer_step_bumps_weight_norm_originals():
    """The fingerprint sees an optimizer step through the version counters alone (no bit compare)."""
    model = odd_model()
    fp = export_mod._fingerprint(model)
    names = [n for n, _ in model.named_parameters()]
    assert any("parametrizations" in n and n.endswith("original0") for n in names)
    _optimizer_step(model)
    assert export_mod._fingerprint(model) != fp


def test_unchanged_model_moves_keep_the_cache(count_exports):
    model = odd_model()
    first = export_inference_cached(model)
    model.to("cpu").eval()  # what Generator does before building the backend
    assert export_inference_cached(model) is first
    b1, b2 = make_backend("folded", model, torch.device("cpu")), make_backend("folded", model, torch.device("cpu"))
    assert b1.w is b2.w and len(count_exports) == 1


def test_dropped_model_frees_its_entry():
    model = odd_model()
    export_inference_cached(model)
    assert len(export_mod._cache) == 1
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None  # the cache holds no strong reference to the model
    assert len(export_mod._cache) == 0


def test_at_most_a_few_models(count_exports):
    models = [odd_model(seed=i) for i in range(CACHE_MAX_MODELS + 2)]
    for m in models:
        export_inference_cached(m)
    assert len(export_mod._cache) == CACHE_MAX_MODELS
    assert models[0] not in export_mod._cache and models[-1] in export_mod._cache  # least recently used first
    export_inference_cached(models[-1])
    assert len(count_exports) == CACHE_MAX_MODELS + 2


@pytest.mark.slow
def test_second_generate_builds_fast(monkeypatch, count_exports):
    """Issue 11 item 6: a second generate on the same dadabots-2tier model builds in under 0.1 s.

    A warm build is one pass comparing the weights with the cache's copy (~0.5 GB read: ~20 ms on
    two idle cores). Other processes may share the machine's memory bandwidth: the best of three
    warm builds is timed, against 0.1 s or, on a loaded machine, twice what that pass takes now."""
    torch.manual_seed(0)
    model = SampleRNN(SampleRNNConfig.from_name("dadabots-2tier"))
    builds = []
    real = generator_mod.make_backend

    def timed(*args, **kw):
        t = time.perf_counter()
        backend = real(*args, **kw)
        builds.append(time.perf_counter() - t)
        return backend

    monkeypatch.setattr(generator_mod, "make_backend", timed)
    first = fastsrnn.generate(model, 16, backend="folded", device="cpu")
    for _ in range(3):
        assert (fastsrnn.generate(model, 16, backend="folded", device="cpu") == first).all()
    assert len(count_exports) == 1  # exported once, whatever the timings
    snapshot = export_mod._cache[model].snapshot
    passes = []
    for _ in range(3):
        t = time.perf_counter()
        assert export_mod._unchanged(model, snapshot)
        passes.append(time.perf_counter() - t)
    budget = max(0.1, 2 * min(passes))
    assert len(builds) == 4 and min(builds[1:]) < budget, (builds, passes)
    assert builds[0] > 5 * min(builds[1:]), builds
