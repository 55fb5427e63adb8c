"""SimPER / DIL from hidden states with the gradients computed in the forward (simper_rs.fused_loss),
against the materialised path written here: logits = hidden @ W.T + b, then the reference formulas."""

import pytest
import torch

import reference as ref
import simper_rs
from test_fused_linear import linear_batch
from test_packing import padded_and_packed

LOSSES = {
    "simper": lambda: simper_rs.SimPERLoss(),
    "lsif": lambda: simper_rs.DILLoss("lsif"),
    "bce": lambda: simper_rs.DILLoss("bce"),
    "ukl": lambda: simper_rs.DILLoss("ukl"),
    "cpc": lambda: simper_rs.DILLoss("cpc", beta=0.7),
}


def reference_loss(name, hidden, weight, bias, labels, refs=None):
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    logps = ref.sequence_logps(logits, labels)
    half = logps.shape[0] // 2
    chosen, rejected = logps[:half], logps[half:]
    if name == "simper":
        return ref.simper(chosen, rejected), logps
    return ref.dil(chosen, rejected, *(refs or (None, None)), estimator=name, beta=0.7 if name == "cpc" else 1.0), logps


def references(pairs, seed=3):
    g = torch.Generator().manual_seed(seed)
    return -1.0 - torch.rand(pairs, generator=g), -1.0 - torch.rand(pairs, generator=g)


def call(loss_fn, hidden, weight, bias, labels, refs=None, **kw):
    extra = {} if refs is None else dict(ref_chosen_logps=refs[0], ref_rejected_logps=refs[1])
    return loss_fn(hidden=hidden, lm_head_weight=weight, lm_head_bias=bias, labels=labels, **extra, **kw)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_refs", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 1, 9])
def test_loss_and_gradients_equal_the_materialised_path(name, dtype, bias, with_refs, chunk_size):
    if with_refs and name == "simper":
        pytest.skip("SimPER takes no reference")
    hidden, weight, b, labels = linear_batch(pairs=3, seq_len=7, dtype=dtype, bias=bias, seed=5)
    refs = references(3) if with_refs else None
    loss_fn = LOSSES[name]()
    out = call(loss_fn, hidden, weight, b, labels, refs, chunk_size=chunk_size)
    want, logps = reference_loss(name, hidden, weight, b, labels, refs)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out.loss.float(), want.float(), **tol)
    torch.testing.assert_close(torch.cat([out.chosen_logps, out.rejected_logps]), logps.float(), **tol)
    params = [hidden, weight] + ([b] if bias else [])
    got = torch.autograd.grad(out.loss, params)
    expected = torch.autograd.grad(want, params)
    for a, e in zip(got, expected):
        assert a.dtype == dtype and a.shape == e.shape
        torch.testing.assert_close(a.float(), e.float(), **tol)


@pytest.mark.parametrize("name", ["simper", "lsif", "cpc"])
def test_same_loss_metrics_and_gradients_as_the_log_prob_path(name):
    """The log-prob op under no loss knowledge (recomputing backward) gives the same numbers."""
    hidden, weight, b, labels = linear_batch(pairs=4, seq_len=9, seed=8)
    loss_fn = LOSSES[name]()
    fused = call(loss_fn, hidden, weight, b, labels, chunk_size=5)
    logps, stats = simper_rs.linear_sequence_logps_with_stats(hidden, weight, labels, b, chunk_size=5)
    plain = loss_fn.from_sequence_logps(logps[:4], logps[4:], metrics=stats)
    torch.testing.assert_close(fused.loss, plain.loss)
    assert fused.metrics == pytest.approx(plain.metrics, rel=1e-6, abs=1e-7)
    for a, e in zip(
        torch.autograd.grad(fused.loss, (hidden, weight, b)), torch.autograd.grad(plain.loss, (hidden, weight, b))
    ):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("name", ["simper", "bce"])
def test_gradcheck_float64(name):
    hidden, weight, b, labels = linear_batch(pairs=2, seq_len=4, hidden_size=3, vocab=5, dtype=torch.float64)
    loss_fn = LOSSES[name]()
    f = lambda h, w, bb: call(loss_fn, h, w, bb, labels, chunk_size=2).loss
    # gradcheck runs backward repeatedly on one graph: after the first, the forward's gradients are
    # spent and the recomputing path answers, equal up to rounding (hence nondet_tol).
    assert torch.autograd.gradcheck(f, (hidden, weight, b), nondet_tol=1e-12)


def test_incoming_gradient_scales_the_forward_gradients():
    hidden, weight, b, labels = linear_batch(pairs=2, seed=1)
    loss_fn = simper_rs.SimPERLoss()
    once = torch.autograd.grad(call(loss_fn, hidden, weight, b, labels).loss, (hidden, weight, b))
    scaled = torch.autograd.grad(-0.375 * call(loss_fn, hidden, weight, b, labels).loss, (hidden, weight, b))
    for a, e in zip(scaled, once):
        torch.testing.assert_close(a, -0.375 * e)


def test_a_second_term_on_the_sequence_logps_gets_its_gradient_too():
    """An SFT-style term on chosen_logps reaches hidden and weight through the recomputing backward."""
    hidden, weight, b, labels = linear_batch(pairs=2, seed=2)
    out = call(simper_rs.SimPERLoss(), hidden, weight, b, labels, chunk_size=3)
    total = out.loss - 0.5 * out.chosen_logps.mean()
    want_loss, logps = reference_loss("simper", hidden, weight, b, labels)
    want = want_loss - 0.5 * logps[:2].mean()
    for a, e in zip(
        torch.autograd.grad(total, (hidden, weight, b)),
        torch.autograd.grad(want, (hidden, weight, b), retain_graph=True),
    ):
        torch.testing.assert_close(a, e)
    # the sequence log-probs alone, with the loss unused
    out = call(simper_rs.SimPERLoss(), hidden, weight, b, labels)
    got = torch.autograd.grad(out.rejected_logps.sum(), (hidden, weight))
    expected = torch.autograd.grad(logps[2:].sum(), (hidden, weight))
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e)


def test_frozen_weight_and_no_grad():
    hidden, weight, b, labels = linear_batch(pairs=2, seed=6)
    frozen_w, frozen_b = weight.detach(), b.detach()
    out = call(simper_rs.DILLoss("bce"), hidden, frozen_w, frozen_b, labels)
    want, _ = reference_loss("bce", hidden, frozen_w, frozen_b, labels)
    (got,) = torch.autograd.grad(out.loss, hidden)
    torch.testing.assert_close(got, torch.autograd.grad(want, hidden)[0])
    with torch.no_grad():  # evaluation: the plain forward, same loss
        evaluated = call(simper_rs.DILLoss("bce"), hidden, weight, b, labels)
    assert evaluated.loss.grad_fn is None
    torch.testing.assert_close(evaluated.loss, out.loss.detach())


def test_packed_sequences_equal_padded():
    padded, labels, packed, packed_labels, position_ids = padded_and_packed(hidden_size=6)
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(13, 6, generator=g).requires_grad_()
    loss_fn = simper_rs.DILLoss("lsif")
    refs = references(labels.shape[0] // 2)
    got = loss_fn(
        hidden=packed,
        lm_head_weight=weight,
        labels=packed_labels,
        position_ids=position_ids,
        chunk_size=4,
        ref_chosen_logps=refs[0],
        ref_rejected_logps=refs[1],
    )
    want = loss_fn(
        hidden=padded, lm_head_weight=weight, labels=labels, ref_chosen_logps=refs[0], ref_rejected_logps=refs[1]
    )
    torch.testing.assert_close(got.loss, want.loss)
    assert got.metrics == pytest.approx(want.metrics, rel=1e-6, abs=1e-7)
    (g_packed, g_weight) = torch.autograd.grad(got.loss, (packed, weight))
    (g_padded, g_weight_padded) = torch.autograd.grad(want.loss, (padded, weight))
    torch.testing.assert_close(g_weight, g_weight_padded)
    from test_packing import back_to_padded

    torch.testing.assert_close(back_to_padded(g_packed), g_padded)


def test_lm_head_module_runs_it_in_the_module_forward():
    hidden, weight, b, labels = linear_batch(pairs=2, seed=7)
    head = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(b)
    calls = []
    head.register_forward_pre_hook(lambda module, args: calls.append(1))
    out = simper_rs.SimPERLoss()(hidden=hidden, lm_head=head, labels=labels)
    assert calls == [1]
    want, _ = reference_loss("simper", hidden, weight, b, labels)
    torch.testing.assert_close(out.loss, want)
    got = torch.autograd.grad(out.loss, (hidden, head.weight, head.bias))
    for a, e in zip(got, torch.autograd.grad(want, (hidden, weight, b))):
        torch.testing.assert_close(a, e)


def test_autocast_bf16_master_weights():
    """A float32 lm_head under bfloat16 autocast (hidden states in bfloat16): the op runs in
    bfloat16 inside the head's forward and the gradient reaches the float32 weight."""
    hidden, weight, b, labels = linear_batch(pairs=2, seed=9)
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        head.weight.copy_(weight)
    h16 = hidden.detach().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = simper_rs.SimPERLoss()(hidden=h16, lm_head=head, labels=labels)
    out.loss.backward()
    assert head.weight.grad.dtype == torch.float32 and h16.grad.dtype == torch.bfloat16
    w16 = weight.detach().bfloat16().requires_grad_()
    want, _ = reference_loss("simper", h16.detach().requires_grad_(), w16, None, labels)
    torch.testing.assert_close(out.loss, want, rtol=2e-2, atol=2e-2)
    (want_w,) = torch.autograd.grad(want, w16)
    torch.testing.assert_close(head.weight.grad, want_w.float(), rtol=2e-2, atol=2e-2)


def test_second_backward_with_retain_graph_recomputes():
    """The forward's gradients are handed over on the first backward; a second one (retain_graph)
    goes through the recomputing path and gives the same gradients."""
    hidden, weight, b, labels = linear_batch(pairs=2)
    out = call(simper_rs.DILLoss("cpc"), hidden, weight, b, labels, refs=references(2))
    first = torch.autograd.grad(out.loss, (hidden, weight, b), retain_graph=True)
    second = torch.autograd.grad(2.0 * out.loss, (hidden, weight, b))
    for a, e in zip(second, first):
        torch.testing.assert_close(a, 2.0 * e)


@pytest.mark.parametrize(
    "kwargs, exc, fragment",
    [
        (
            dict(ref_chosen_logps=torch.zeros(3), ref_rejected_logps=torch.zeros(3)),
            ValueError,
            "ref_chosen_logps must be a 1-D tensor [pairs] = [2]",
        ),
        (dict(ref_chosen_logps=torch.zeros(2)), ValueError, "must be given together"),
        (
            dict(ref_chosen_logps=torch.zeros(2, dtype=torch.long), ref_rejected_logps=torch.zeros(2)),
            TypeError,
            "ref_chosen_logps must be a floating-point",
        ),
    ],
)
def test_bad_references(kwargs, exc, fragment):
    hidden, weight, b, labels = linear_batch(pairs=2)
    with pytest.raises(exc) as info:
        simper_rs.DILLoss()(hidden=hidden, lm_head_weight=weight, labels=labels, **kwargs)
    assert fragment in str(info.value)


def test_odd_batch_is_refused_before_any_work():
    hidden, weight, b, labels = linear_batch(pairs=2)
    with pytest.raises(ValueError, match=r"hidden must hold a \[chosen; rejected\] batch"):
        simper_rs.SimPERLoss()(hidden=hidden[:3], lm_head_weight=weight, labels=labels[:3])
