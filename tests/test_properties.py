"""Property-based tests (hypothesis): random shapes, masks, dtypes, strides and backends
against the plain-PyTorch reference, values and gradients."""
import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reference as ref
import simper_rs
import simper_rs.numpy as snp

settings.register_profile("ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")

DTYPES = {torch.float32: 1e-5, torch.bfloat16: 2e-3, torch.float16: 2e-3, torch.float64: 1e-10}


@st.composite
def batches(draw):
    batch = draw(st.integers(1, 4))
    seq_len = draw(st.integers(2, 9))
    vocab = draw(st.one_of(st.integers(1, 40), st.sampled_from([1000, 50_000])))
    if vocab >= 1000:
        batch, seq_len = 1, min(seq_len, 3)
    dtype = draw(st.sampled_from(list(DTYPES)))
    scale = draw(st.sampled_from([0.01, 1.0, 30.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, seq_len, vocab, generator=g, dtype=torch.float64) * scale).to(dtype)
    labels = torch.randint(0, vocab, (batch, seq_len), generator=g)
    mask = torch.rand(batch, seq_len, generator=g) < draw(st.floats(0.0, 0.7))
    labels[mask] = -100
    labels[:, -1] = torch.randint(0, vocab, (batch,), generator=g)  # at least one response token
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided_vocab", "sliced"]))
    if layout == "transposed":
        logits = logits.transpose(0, 1).contiguous().transpose(0, 1)
    elif layout == "strided_vocab":
        logits = torch.stack([logits, logits], dim=-1)[..., 0]
    elif layout == "sliced":
        logits = torch.cat([logits, logits], dim=1)[:, :seq_len]
    return logits, labels, dtype


@given(batches(), st.sampled_from(["rust", "torch"]), st.booleans(), st.booleans())
def test_sequence_logps_values_and_grads(data, backend, shift, average):
    logits, labels, dtype = data
    if not shift:
        labels = labels.clone()
        labels[:, 0] = labels[:, -1]  # keep a response token in each row after dropping the shift
    logits = logits.detach().requires_grad_()
    tol = DTYPES[dtype]
    ours = simper_rs.sequence_logps(logits, labels, average=average, shift=shift, backend=backend)
    theirs = ref.sequence_logps(logits, labels, average=average, shift=shift)
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol * 10)
    weights = torch.randn(ours.shape, dtype=ours.dtype)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), logits)
    (g_ref,) = torch.autograd.grad((theirs * weights).sum(), logits)
    assert g_ours.dtype == dtype
    torch.testing.assert_close(g_ours.double(), g_ref.double(), rtol=tol * 10, atol=tol * 10)


@given(batches())
def test_numpy_matches_torch(data):
    logits, labels, dtype = data
    if dtype not in (torch.float32, torch.float64):
        return
    x = logits.detach().numpy()
    np.testing.assert_allclose(
        snp.token_logps(x, labels.numpy()), simper_rs.token_logps(logits.detach(), labels).numpy(), rtol=1e-6, atol=1e-6
    )
