"""Differential fuzzing (hypothesis): random shapes, masks, strides, dtypes, ignore_index values,
reductions, estimators and backends; every public function against the plain-PyTorch reference,
values and gradients, and the numpy API against the torch API.

CI runs the bounded "ci" profile; a longer run by hand:
    HYPOTHESIS_PROFILE=long python -m pytest tests/test_properties.py
"""

import os

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reference as ref
import simper_rs
import simper_rs.numpy as snp

settings.register_profile("ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

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
    ignore_index = draw(st.sampled_from([-100, -1, vocab + 3]))
    labels = torch.randint(0, vocab, (batch, seq_len), generator=g)
    mask = torch.rand(batch, seq_len, generator=g) < draw(st.floats(0.0, 0.7))
    labels[mask] = ignore_index
    labels[:, -1] = torch.randint(0, vocab, (batch,), generator=g)  # at least one response token
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided_vocab", "sliced"]))
    if layout == "transposed":
        logits = logits.transpose(0, 1).contiguous().transpose(0, 1)
    elif layout == "strided_vocab":
        logits = torch.stack([logits, logits], dim=-1)[..., 0]
    elif layout == "sliced":
        logits = torch.cat([logits, logits], dim=1)[:, :seq_len]
    return logits, labels, dtype, ignore_index


@given(batches(), st.sampled_from(["rust", "torch"]), st.booleans(), st.booleans())
def test_sequence_logps_values_and_grads(data, backend, shift, average):
    logits, labels, dtype, ignore = data
    if not shift:
        labels = labels.clone()
        labels[:, 0] = labels[:, -1]  # keep a response token in each row after dropping the shift
    logits = logits.detach().requires_grad_()
    tol = DTYPES[dtype]
    ours = simper_rs.sequence_logps(logits, labels, average=average, shift=shift, backend=backend, ignore_index=ignore)
    theirs = ref.sequence_logps(logits, labels, average=average, shift=shift, ignore_index=ignore)
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol * 10)
    weights = torch.randn(ours.shape, dtype=ours.dtype)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), logits)
    (g_ref,) = torch.autograd.grad((theirs * weights).sum(), logits)
    assert g_ours.dtype == dtype
    torch.testing.assert_close(g_ours.double(), g_ref.double(), rtol=tol * 10, atol=tol * 10)


@given(batches(), st.booleans())
def test_numpy_matches_torch(data, shift):
    logits, labels, dtype, ignore = data
    if dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    x = logits.detach().numpy()
    np.testing.assert_allclose(
        snp.token_logps(x, labels.numpy(), shift=shift, ignore_index=ignore),
        simper_rs.token_logps(logits.detach(), labels, shift=shift, ignore_index=ignore).numpy(),
        rtol=1e-6,
        atol=1e-6,
    )


pair_values = st.lists(st.floats(-30.0, 5.0, allow_nan=False), min_size=1, max_size=6)


@given(
    st.data(),
    st.sampled_from(["simper", *simper_rs.ESTIMATORS]),
    st.sampled_from(["mean", "sum", "none"]),
    st.booleans(),
    st.floats(0.01, 10.0),
    st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_losses_values_and_grads(data, loss, reduction, with_reference, beta, dtype):
    n = data.draw(st.integers(1, 6))
    draw = lambda: torch.tensor(
        data.draw(st.lists(st.floats(-30.0, 0.0, allow_nan=False), min_size=n, max_size=n)), dtype=torch.float64
    )
    chosen, rejected = draw().to(dtype).requires_grad_(), draw().to(dtype).requires_grad_()
    # The reference in float64 on the same (rounded) values, with its own leaves.
    c64, r64 = chosen.detach().double().requires_grad_(), rejected.detach().double().requires_grad_()
    refs = (draw(), draw()) if with_reference and loss != "simper" else (None, None)
    if loss == "simper":
        ours = simper_rs.simper_loss(chosen, rejected, reduction=reduction)
        theirs = ref.simper(c64, r64, reduction)
        np_out = snp.simper_loss(
            chosen.detach().double().numpy(), rejected.detach().double().numpy(), reduction=reduction
        )
    else:
        ours = simper_rs.dil_loss(chosen, rejected, *refs, estimator=loss, beta=beta, reduction=reduction)
        theirs = ref.dil(c64, r64, *refs, estimator=loss, beta=beta, reduction=reduction)
        np_refs = [r.numpy() if r is not None else None for r in refs]
        np_out = snp.dil_loss(
            chosen.detach().double().numpy(),
            rejected.detach().double().numpy(),
            *np_refs,
            estimator=loss,
            beta=beta,
            reduction=reduction,
        )
    finite = torch.isfinite(theirs).all()
    if finite and theirs.abs().max() < 1e30:
        torch.testing.assert_close(ours.double(), theirs, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np_out[0], theirs.detach().numpy(), rtol=1e-9, atol=1e-12)
        g_ours = torch.autograd.grad(ours.sum(), (chosen, rejected))
        g_ref = torch.autograd.grad(theirs.sum(), (c64, r64))
        for a, b, c in zip(g_ours, g_ref, np_out[1:]):
            torch.testing.assert_close(
                a.double(), b.to(a.dtype).double(), rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-6
            )
            np.testing.assert_allclose(c, b.numpy(), rtol=1e-9, atol=1e-12)
    assert not ours.isnan().any()


@given(batches(), st.booleans(), st.integers(1, 9))
def test_fused_linear_matches_materialised(data, with_bias, chunk_size):
    logits, labels, dtype, ignore = data
    if dtype not in (torch.float32, torch.float64) or logits.shape[-1] > 1000:
        return
    g = torch.Generator().manual_seed(int(labels.sum()) % 1000)
    hidden = torch.randn(*logits.shape[:2], 5, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(logits.shape[-1], 5, generator=g, dtype=dtype, requires_grad=True)
    bias = torch.randn(logits.shape[-1], generator=g, dtype=dtype, requires_grad=True) if with_bias else None
    ours = simper_rs.linear_sequence_logps(hidden, weight, labels, bias, ignore_index=ignore, chunk_size=chunk_size)
    full = hidden @ weight.T + (bias if with_bias else 0)
    theirs = ref.sequence_logps(full, labels, ignore_index=ignore)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    params = [hidden, weight] + ([bias] if with_bias else [])
    for a, b in zip(torch.autograd.grad(ours.sum(), params), torch.autograd.grad(theirs.sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
