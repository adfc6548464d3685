"""The decisive model test: step-by-step generation fed the true samples gives the same logits
as the parallel training forward (mamba's test_generation), for the eager reference and the
folded ``ref`` fused backend."""
import pytest
import torch
from model_helpers import random_model

from fastsrnn import SampleRNNConfig
from fastsrnn.backends import DecodeState, make_backend

ODD = dict(frame_size=3, dim=100, q_levels=7, emb_size=5, n_rnn=3)


def _cases():
    for rnn in ("lstm", "gru"):
        for skip in (True, False):
            for batch in (1, 3):
                yield pytest.param(rnn, skip, batch, id=f"{rnn}-{'skip' if skip else 'noskip'}-B{batch}")



@pytest.mark.parametrize("rnn,skip,batch", list(_cases()))
@pytest.mark.parametrize("backend", ["eager", "folded"])
def test_step_logits_match_parallel_forward(rnn, skip, batch, backend):
    cfg = SampleRNNConfig(rnn_type=rnn, skip=skip, **ODD)
    model = random_model(cfg)
    F, Q, n_frames = cfg.frame_size, cfg.q_levels, 5
    x = torch.randint(0, Q, (batch, F * (n_frames + 1)))
    with torch.no_grad():
        ref_logits, ref_state = model(x, model.initial_state(batch))
    be = make_backend(backend, model, "cpu")
    state = DecodeState(model.initial_state(batch), x[:, :F].clone())
    got = torch.full((batch, n_frames * F, Q), float("nan"))  # poisoned: unwritten fails
    inv_t = torch.ones(batch)
    for n in range(n_frames):
        tgt = x[:, F * (n + 1): F * (n + 2)]
        logits = torch.full((batch, F, Q), float("nan"))
        drawn = be.step_frame(state, torch.rand(batch, F), inv_t, forced=tgt, logits_out=logits)
        assert torch.equal(drawn, tgt)
        got[:, n * F:(n + 1) * F] = logits
    torch.testing.assert_close(got, ref_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(state.rnn.h, ref_state.h, rtol=1e-4, atol=1e-5)
    if rnn == "lstm":
        torch.testing.assert_close(state.rnn.c, ref_state.c, rtol=1e-4, atol=1e-5)
    assert torch.equal(state.window, x[:, -F:])
