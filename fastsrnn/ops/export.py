"""Export a trained SampleRNN into the inference layout of docs/DESIGN.md §3, once.

- weight norm folded into plain weights;
- T2[k, q] = W2 W1_k Emb[q]: the embedding, the first layer and W2 as one (F, Q, H) table;
- W2 folded into the upsampling: position j's conditioning is already W2 c_j + b2;
- W3, Wo as they are.
Folds are computed in float64 and rounded once. Every shape is checked with a readable error.
Nothing is transposed inside the decode loop.

Frame-tier storage: fp32, bf16, or int8 with one fp32 scale per output row (:func:`quantize_rows`;
``InferenceWeights.to(frame_dtype=torch.int8)``): y[r] = scale[r] * sum_k q[r, k] x[k] + b[r].

:func:`export_inference_cached` keeps the export of the last few models (build once, generate
many): a second generation on unchanged weights reuses it; any change to a weight re-exports.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field, fields, replace
from typing import Dict, List, Optional, Tuple

import torch

from fastsrnn.config import SampleRNNConfig
from fastsrnn.model import SampleRNN

_FRAME_MATRICES = ("w_ih", "w_hh", "skip_w", "up_w")  # stored in frame_dtype (int8: with per-row scales)
_SAMPLE_MATRICES = ("table", "w3", "wo")  # stored in dtype


def _moved(obj, device, dtype, frame_dtype) -> dict:
    """obj's fields (a TierWeights or InferenceWeights) moved to ``device``, matrices cast (biases,
    states and scales stay fp32: accumulation is fp32); ``upper`` tiers moved alike."""
    out = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        if v is None or f.name == "cfg":
            out[f.name] = v
            continue
        if f.name == "upper":
            out[f.name] = [t.to(device, frame_dtype=frame_dtype) for t in v]
            continue
        dt = frame_dtype if f.name in _FRAME_MATRICES else dtype if f.name in _SAMPLE_MATRICES else None
        conv = lambda t: t.to(device=device, dtype=dt or t.dtype).contiguous()  # noqa: E731
        out[f.name] = conv(v) if isinstance(v, torch.Tensor) else [conv(t) for t in v]
    return out


@dataclass
class TierWeights:
    """A frame tier above the bottom one (n-tier models), in the bottom tier's layout: layer 0's
    input is [cond (H), frame (S_k)] for a conditioned tier, the frame alone for the top one;
    up_w, up_b its plain upsampling (r_k positions of H, one per step of the tier below)."""

    cfg: SampleRNNConfig
    w_ih: List[torch.Tensor]  # per layer (G*H, [H +] S_k) for layer 0, (G*H, H [+ S_k]) after
    w_hh: List[torch.Tensor]  # per layer (G*H, H)
    b_ih: List[torch.Tensor]
    b_hh: List[torch.Tensor]
    h0: torch.Tensor  # (L, 1, H)
    c0: Optional[torch.Tensor]
    skip_w: List[torch.Tensor]
    skip_b: Optional[torch.Tensor]
    up_w: torch.Tensor  # (r_k*H, H)
    up_b: torch.Tensor  # (r_k*H,)
    w_ih_scale: List[torch.Tensor] = field(default_factory=list)
    w_hh_scale: List[torch.Tensor] = field(default_factory=list)
    skip_w_scale: List[torch.Tensor] = field(default_factory=list)
    up_w_scale: Optional[torch.Tensor] = None

    def to(self, device=None, dtype=None, frame_dtype: Optional[torch.dtype] = None) -> "TierWeights":
        if frame_dtype == torch.int8 and self.up_w.dtype != torch.int8:
            return _quantized(self).to(device)
        _check_frame_dtype(self, frame_dtype)
        return TierWeights(**_moved(self, device, None, frame_dtype))

    @property
    def int8(self) -> bool:
        return self.up_w.dtype == torch.int8

    def nbytes_frame_tier(self) -> int:
        return _frame_nbytes(self)


def _check_frame_dtype(w, frame_dtype) -> None:
    if frame_dtype not in (None, torch.int8) and w.up_w.dtype == torch.int8:
        raise ValueError(f"InferenceWeights.to: int8 frame weights cannot become {frame_dtype}; export again")


def _frame_nbytes(w) -> int:
    ts = w.w_ih + w.w_hh + w.skip_w + [w.up_w] + w.w_ih_scale + w.w_hh_scale + w.skip_w_scale
    ts += [w.up_w_scale] if w.up_w_scale is not None else []
    return sum(t.numel() * t.element_size() for t in ts)


@dataclass
class InferenceWeights:
    """Weights of one model in the kernel layout. G = 4 (LSTM) or 3 (GRU) gate blocks. The frame
    fields are the bottom frame tier's (layer 0's input: [cond (H), frame (F)] with n tiers);
    ``upper`` the tiers above it, from the bottom up (empty with 2 tiers)."""

    cfg: SampleRNNConfig
    w_ih: List[torch.Tensor]  # per layer (G*H, [H +] F) for layer 0, (G*H, H [+ F]) after
    w_hh: List[torch.Tensor]  # per layer (G*H, H)
    b_ih: List[torch.Tensor]  # per layer (G*H,)
    b_hh: List[torch.Tensor]  # per layer (G*H,)
    h0: torch.Tensor  # (L, 1, H) learned (or zero) initial state
    c0: Optional[torch.Tensor]  # (L, 1, H) for LSTM
    skip_w: List[torch.Tensor]  # per layer (H, H), empty without skip connections
    skip_b: Optional[torch.Tensor]  # (H,) bias of the first skip projection
    up_w: torch.Tensor  # (F*H, H): rows [jH, (j+1)H) give W2 c_j for position j
    up_b: torch.Tensor  # (F*H,): W2 u_j + b2
    table: torch.Tensor  # (F, Q, H): T2[k, q] = W2 W1_k Emb[q]
    w3: torch.Tensor  # (H, H)
    b3: torch.Tensor  # (H,)
    wo: torch.Tensor  # (Q, H)
    bo: torch.Tensor  # (Q,)
    # int8 frame weights only: the fp32 scale of each row of w_ih, w_hh, skip_w, up_w (empty/None otherwise)
    w_ih_scale: List[torch.Tensor] = field(default_factory=list)  # per layer (G*H,)
    w_hh_scale: List[torch.Tensor] = field(default_factory=list)  # per layer (G*H,)
    skip_w_scale: List[torch.Tensor] = field(default_factory=list)  # per layer (H,)
    up_w_scale: Optional[torch.Tensor] = None  # (F*H,)
    upper: List[TierWeights] = field(default_factory=list)  # n tiers: the frame tiers above, bottom up

    def to(self, device=None, dtype: Optional[torch.dtype] = None, frame_dtype: Optional[torch.dtype] = None):
        """Move every tensor; ``dtype`` for the sample tier, ``frame_dtype`` for every frame tier
        (float32, bfloat16, or int8: quantized per row from float weights, scales alongside)."""
        if frame_dtype == torch.int8 and self.up_w.dtype != torch.int8:
            return _quantized(self).to(device, dtype)
        _check_frame_dtype(self, frame_dtype)
        return InferenceWeights(**_moved(self, device, dtype, frame_dtype))

    def nbytes_sample_tier(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.w3, self.wo, self.b3, self.bo))

    def nbytes_frame_tier(self) -> int:
        """Every frame tier's matrices (and int8 scales)."""
        return _frame_nbytes(self) + sum(t.nbytes_frame_tier() for t in self.upper)

    def nbytes_per_frame(self) -> float:
        """Weight bytes one bottom frame reads on average: the sample tier, the bottom frame tier,
        and each upper tier over the bottom frames between its steps."""
        cfg = self.cfg
        upper = sum(t.nbytes_frame_tier() * cfg.frame_size / cfg.tier_samples(k + 1) for k, t in enumerate(self.upper))
        return self.nbytes_sample_tier() + _frame_nbytes(self) + upper

    @property
    def int8(self) -> bool:
        """The frame weights are int8 with per-row scales."""
        return self.up_w.dtype == torch.int8


@torch.no_grad()
def quantize_rows(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """w (N, K) float -> q (N, K) int8, scale (N,) fp32: symmetric per row, scale = max|row| / 127,
    q = round(w / scale) (to nearest, ties to even), so |w - scale * q| <= scale / 2. Computed in
    float64 from w's values and the fp32 scale; a zero row gets scale 0 and q 0 (it stays exact)."""
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"quantize_rows: w must be a 2-d float tensor, got {tuple(w.shape)} {w.dtype}")
    w64 = w.detach().double()
    scale = (w64.abs().amax(dim=1) / 127).float()  # (N,)
    s64 = scale.double().clamp_min(torch.finfo(torch.float64).tiny)  # a zero row: 0 / tiny = 0
    q = torch.round(w64 / s64[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def _quantized(w):
    """w (InferenceWeights or TierWeights) with its frame-tier matrices quantized to int8
    (quantize_rows), the upper tiers' too, everything else as is."""
    if w.up_w.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"InferenceWeights.to: int8 is quantized from float32 frame weights, not {w.up_w.dtype}")
    pairs = {n: [quantize_rows(t) for t in getattr(w, n)] for n in ("w_ih", "w_hh", "skip_w")}
    q_up, s_up = quantize_rows(w.up_w)
    kw = {n: [q for q, _ in p] for n, p in pairs.items()}
    kw.update({f"{n}_scale": [s for _, s in p] for n, p in pairs.items()})
    if isinstance(w, InferenceWeights):
        kw["upper"] = [_quantized(t) for t in w.upper]
    return replace(w, up_w=q_up, up_w_scale=s_up, **kw)


def _check(name: str, t: torch.Tensor, shape) -> torch.Tensor:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"export_inference: {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"export_inference: {name} holds NaN or Inf; the checkpoint is damaged")
    return t


def _d(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


def _f32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.to(torch.float32).contiguous()


def _export_tier(fr, prefix: str) -> dict:
    """A frame tier's (FrameLevelRNN's) RNN, skip and h0 (c0) weights in float64, shapes and finiteness checked,
    and its plain upsampling (up_w (n_out*H, H), up_b)."""
    cfg = fr.cfg
    F, H, L, G = fr.n_in, cfg.dim, cfg.n_rnn, cfg.gates
    w_ih, w_hh, b_ih, b_hh = [], [], [], []
    for i, rnn in enumerate(fr.rnns):
        in_size = (F + (H if fr.conditioned else 0)) if i == 0 else (H + F if fr.use_skip else H)
        w_ih.append(_check(f"{prefix}rnn[{i}].weight_ih", _d(rnn.weight_ih_l0), (G * H, in_size)))
        w_hh.append(_check(f"{prefix}rnn[{i}].weight_hh", _d(rnn.weight_hh_l0), (G * H, H)))
        b_ih.append(_check(f"{prefix}rnn[{i}].bias_ih", _d(rnn.bias_ih_l0), (G * H,)))
        b_hh.append(_check(f"{prefix}rnn[{i}].bias_hh", _d(rnn.bias_hh_l0), (G * H,)))
    skip_w = [_check(f"{prefix}skip_proj[{i}].weight", _d(p.weight), (H, H)) for i, p in enumerate(fr.skip_proj)]
    skip_b = _check(f"{prefix}skip_proj[0].bias", _d(fr.skip_proj[0].bias), (H,)) if skip_w else None
    return dict(w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, skip_w=skip_w, skip_b=skip_b,
                h0=_check(f"{prefix}h0", _d(fr.h0), (L, 1, H)),
                c0=_check(f"{prefix}c0", _d(fr.c0), (L, 1, H)) if fr.c0 is not None else None,
                up_w=_check(f"{prefix}upsample.weight", _d(fr.upsample.weight), (fr.n_out * H, H)),
                up_b=_check(f"{prefix}upsample.bias", _d(fr.upsample.bias), (fr.n_out * H,)))


def _rounded(tier: dict) -> dict:
    return {k: [_f32(t) for t in v] if isinstance(v, list) else _f32(v) for k, v in tier.items()}


@torch.no_grad()
def export_inference(model: SampleRNN, frame_dtype: Optional[torch.dtype] = None) -> InferenceWeights:
    """Fold a SampleRNN (any device) into fp32 :class:`InferenceWeights` on the CPU; ``frame_dtype``
    (bfloat16, int8) stores the frame tiers so (``InferenceWeights.to``)."""
    if frame_dtype not in (None, torch.float32):
        return export_inference(model).to(frame_dtype=frame_dtype)
    cfg = model.cfg
    F, E, H, Q = cfg.frame_size, cfg.emb_size, cfg.dim, cfg.q_levels
    mlp = model.mlp
    bottom = _export_tier(model.frame_rnn, "")

    w2 = _check("mlp.w2.weight", _d(mlp.w2.weight), (H, H))
    b2 = _check("mlp.w2.bias", _d(mlp.w2.bias), (H,))
    up_w = bottom.pop("up_w").view(F, H, H)
    up_b = bottom.pop("up_b").view(F, H)
    up_w2 = torch.matmul(w2, up_w).reshape(F * H, H)  # (F, H, H): W2 U_j
    up_b2 = (up_b @ w2.T + b2).reshape(F * H)  # (F, H): W2 u_j + b2

    emb = _check("mlp.embedding.weight", _d(mlp.embedding.weight), (Q, E))
    w1 = _check("mlp.w1.weight", _d(mlp.w1.weight), (H, F * E)).view(H, F, E)
    t1 = torch.einsum("qe,hke->kqh", emb, w1)  # (F, Q, H): W1_k Emb[q]
    table = t1 @ w2.T  # (F, Q, H): W2 W1_k Emb[q]

    upper = [TierWeights(cfg=cfg, **_rounded(_export_tier(fr, f"upper_rnns[{k}].")))
             for k, fr in enumerate(model.upper_rnns)]
    return InferenceWeights(
        cfg=cfg, **_rounded(bottom),
        up_w=_f32(up_w2), up_b=_f32(up_b2), table=_f32(table),
        w3=_f32(_check("mlp.w3.weight", _d(mlp.w3.weight), (H, H))),
        b3=_f32(_check("mlp.w3.bias", _d(mlp.w3.bias), (H,))),
        wo=_f32(_check("mlp.out.weight", _d(mlp.out.weight), (Q, H))),
        bo=_f32(_check("mlp.out.bias", _d(mlp.out.bias), (Q,))),
        upper=upper,
    )


# --- the export cache: build once, generate many ----------------------------------------------

CACHE_MAX_MODELS = 2  # models whose latest export is kept (each costs its export + a copy of its weights)
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _named_weights(model: SampleRNN) -> List[Tuple[str, torch.Tensor]]:
    """Every parameter and buffer (weight-norm originals included), in a fixed order."""
    return ([(n, t) for n, t in model.named_parameters(remove_duplicate=False)]
            + [(n, t) for n, t in model.named_buffers(remove_duplicate=False) if t is not None])


def _fingerprint(model: SampleRNN) -> tuple:
    """What identifies the weights' current version without reading them: per parameter and
    buffer (weight-norm originals included) its name, object, autograd version counter (bumped by
    optimizer steps, load_state_dict, in-place ops under no_grad), storage, layout and dtype."""
    def one(name, t):
        return (name, id(t), t._version, t.data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(),
                t.dtype, t.device)

    return (id(model.cfg), model.cfg, tuple(one(n, t) for n, t in _named_weights(model)))


def _bits(t: torch.Tensor, width: int) -> torch.Tensor:
    """t's bits as integers of ``width`` bytes (-0.0 != 0.0 and NaN == NaN, as a bitwise copy)."""
    t = t.detach()
    if width == t.element_size() and not (t.is_floating_point() or t.is_complex()):
        return t
    return t.view(_INT_VIEW[width]) if width == t.element_size() else t.reshape(-1).view(_INT_VIEW[width])


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
        return False
    if a.is_contiguous() and b.is_contiguous() and (a.numel() * a.element_size()) % 8 == 0:
        try:  # the widest integers compare fastest (the check reads every weight twice)
            return torch.equal(_bits(a, 8), _bits(b, 8))
        except RuntimeError:  # a storage offset that int64 cannot view
            pass
    if a.element_size() in _INT_VIEW:
        return torch.equal(_bits(a, a.element_size()), _bits(b, b.element_size()))
    return torch.equal(_bits(a, 1), _bits(b, 1))


def _snapshot(model: SampleRNN) -> List[torch.Tensor]:
    """A copy of every weight (on its own device): what ``p.data.add_()`` changes unseen by the
    version counters (``.data`` has a counter of its own) shows up as a difference from it."""
    return [t.detach().clone() for _, t in _named_weights(model)]


def _unchanged(model: SampleRNN, snapshot: List[torch.Tensor]) -> bool:
    ts = [t for _, t in _named_weights(model)]
    return len(ts) == len(snapshot) and all(_same_bits(a, b) for a, b in zip(ts, snapshot))


class _Entry:
    __slots__ = ("fingerprint", "snapshot", "weights", "moved", "used")

    def __init__(self, fingerprint, snapshot, weights, used):
        self.fingerprint, self.snapshot, self.weights, self.used = fingerprint, snapshot, weights, used
        self.moved: Dict[Tuple, InferenceWeights] = {}


_cache: "weakref.WeakKeyDictionary[SampleRNN, _Entry]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()
_clock = [0]


def _tick() -> int:
    _clock[0] += 1
    return _clock[0]


def export_inference_cached(model: SampleRNN, device=None, dtype: Optional[torch.dtype] = None,
                            frame_dtype: Optional[torch.dtype] = None) -> InferenceWeights:
    """:func:`export_inference` (then ``.to(device, dtype, frame_dtype)``; frame_dtype float32,
    bfloat16 or int8), reused while the weights are unchanged: bit for bit what a fresh export gives.

    The cache holds the latest export of the last :data:`CACHE_MAX_MODELS` models, by weak
    reference (a dropped model frees its entry), with a copy of the weights to compare against
    (on the weights' device: a cached model costs its export plus one copy of its parameters).
    It is reused when every parameter and buffer is the same tensor at the same version
    (optimizer steps, ``load_state_dict`` and in-place ops bump it) and holds the same bits (which
    catches writes through ``.data``); anything else re-exports. The tensors returned are shared
    by every caller: read them, never write them in place.
    """
    fp = _fingerprint(model)
    with _lock:
        entry = _cache.get(model)
    if entry is None or entry.fingerprint != fp or not _unchanged(model, entry.snapshot):
        with _lock:  # only the latest version is kept: free the stale one before building anew
            _cache.pop(model, None)
        snapshot = _snapshot(model)  # before the export: a write during it makes the next call re-export
        entry = _Entry(fp, snapshot, export_inference(model), 0)
        with _lock:
            _cache[model] = entry
    key = (None if device is None else torch.device(device), dtype, frame_dtype)
    with _lock:
        entry.used = _tick()
        while len(_cache) > CACHE_MAX_MODELS:
            del _cache[min(_cache.items(), key=lambda kv: kv[1].used)[0]]
        moved = entry.moved.get(key)
    if moved is None:
        moved = entry.weights if key == (None, None, None) else entry.weights.to(device, dtype, frame_dtype)
        with _lock:
            entry.moved[key] = moved
    return moved


def clear_export_cache() -> None:
    """Forget every cached export (their memory goes with the last backend that uses them)."""
    with _lock:
        _cache.clear()
