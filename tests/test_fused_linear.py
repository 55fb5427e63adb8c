"""Fused-linear log-probs against the materialised path (hidden @ W.T, then the reference)."""

import pytest
import torch

import reference as ref
import simper_rs
from simper_rs.ops import _linear_token_logps


def linear_batch(pairs=2, seq_len=6, hidden_size=8, vocab=23, dtype=torch.float32, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2 * pairs, seq_len, hidden_size, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    weight = (
        (torch.randn(vocab, hidden_size, generator=g, dtype=torch.float64) / hidden_size**0.5)
        .to(dtype)
        .requires_grad_()
    )
    b = (torch.randn(vocab, generator=g, dtype=torch.float64) * 0.1).to(dtype).requires_grad_() if bias else None
    _, labels = ref.make_batch(pairs=pairs, seq_len=seq_len, vocab=vocab, seed=seed, requires_grad=False)
    return hidden, weight, b, labels


def materialised(hidden, weight, bias, labels, **kw):
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    return ref.sequence_logps(logits, labels, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk_size", [None, 1, 5])
@pytest.mark.parametrize("shift", [True, False])
def test_matches_materialised_path(dtype, bias, chunk_size, shift):
    hidden, weight, b, labels = linear_batch(dtype=dtype, bias=bias)
    ours = simper_rs.linear_sequence_logps(hidden, weight, labels, b, chunk_size=chunk_size, shift=shift)
    theirs = materialised(hidden, weight, b, labels, shift=shift)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(ours, theirs, **tol)
    params = [hidden, weight] + ([b] if bias else [])
    g_ours = torch.autograd.grad(ours.sum(), params)
    g_ref = torch.autograd.grad(theirs.sum(), params)
    for a, e in zip(g_ours, g_ref):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), e.float(), **tol)


def test_token_logps_are_zero_where_ignored():
    hidden, weight, b, labels = linear_batch()
    tokens = simper_rs.linear_token_logps(hidden, weight, labels, b)
    assert (tokens[labels[:, 1:] == -100] == 0).all()
    logits = hidden @ weight.T + b
    torch.testing.assert_close(tokens, ref.token_logps(logits, labels))


def test_gradcheck_float64():
    hidden, weight, b, labels = linear_batch(pairs=1, seq_len=4, hidden_size=3, vocab=5, dtype=torch.float64)
    f = lambda h, w, bb: simper_rs.linear_sequence_logps(h, w, labels, bb, chunk_size=2)
    assert torch.autograd.gradcheck(f, (hidden, weight, b))


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(bias):
    hidden, weight, b, labels = linear_batch(bias=bias)
    for with_stats in (False, True):
        torch.library.opcheck(_linear_token_logps, (hidden, weight, b, labels, -100, True, 3, with_stats))


@pytest.mark.parametrize("estimator", [None, "lsif", "cpc"])
def test_modules_from_hidden_equal_modules_from_logits(estimator):
    hidden, weight, b, labels = linear_batch(pairs=3, seed=4)
    loss_fn = simper_rs.SimPERLoss() if estimator is None else simper_rs.DILLoss(estimator)
    from_hidden = loss_fn(hidden=hidden, lm_head_weight=weight, lm_head_bias=b, labels=labels, chunk_size=4)
    from_logits = loss_fn(hidden @ weight.T + b, labels)
    torch.testing.assert_close(from_hidden.loss, from_logits.loss)
    assert from_hidden.metrics == pytest.approx(from_logits.metrics, rel=1e-5, abs=1e-6)
    g1 = torch.autograd.grad(from_hidden.loss, (hidden, weight))
    g2 = torch.autograd.grad(from_logits.loss, (hidden, weight))
    for a, e in zip(g1, g2):
        torch.testing.assert_close(a, e)


LINEAR_BAD = [
    (
        "hidden not a tensor",
        lambda h, w, b, y: simper_rs.linear_sequence_logps([1.0], w, y),
        TypeError,
        "hidden must be a torch.Tensor, got list",
    ),
    ("hidden rank", lambda h, w, b, y: simper_rs.linear_sequence_logps(h[0], w, y), ValueError, "hidden must be a 3-D"),
    ("weight rank", lambda h, w, b, y: simper_rs.linear_sequence_logps(h, w[0], y), ValueError, "weight must be a 2-D"),
    (
        "hidden size mismatch",
        lambda h, w, b, y: simper_rs.linear_sequence_logps(h, w[:, :5], y),
        ValueError,
        "hidden_size 8",
    ),
    (
        "dtype mismatch",
        lambda h, w, b, y: simper_rs.linear_sequence_logps(h, w.double(), y),
        TypeError,
        "weight dtype torch.float64 must equal hidden dtype torch.float32",
    ),
    (
        "integer hidden",
        lambda h, w, b, y: simper_rs.linear_sequence_logps(h.long(), w, y),
        TypeError,
        "hidden must be a floating-point",
    ),
    (
        "bias shape",
        lambda h, w, b, y: simper_rs.linear_sequence_logps(h, w, y, b[:3]),
        ValueError,
        "bias must be a 1-D tensor [vocab] = [23]",
    ),
    ("bias dtype", lambda h, w, b, y: simper_rs.linear_sequence_logps(h, w, y, b.double()), TypeError, "bias dtype"),
    (
        "labels shape",
        lambda h, w, b, y: simper_rs.linear_sequence_logps(h, w, y[:, :3]),
        ValueError,
        "first two dimensions of hidden",
    ),
    (
        "label out of range",
        lambda h, w, b, y: simper_rs.linear_sequence_logps(h, w, y.index_fill(1, torch.tensor([4]), 23)),
        ValueError,
        "is outside the vocabulary [0, 23)",
    ),
    (
        "empty row",
        lambda h, w, b, y: simper_rs.linear_sequence_logps(h, w, y.index_fill(0, torch.tensor([1]), -100)),
        ValueError,
        "row 1 of labels has no response tokens",
    ),
    (
        "bad chunk size",
        lambda h, w, b, y: simper_rs.linear_sequence_logps(h, w, y, chunk_size=0),
        ValueError,
        "chunk_size must be a positive",
    ),
    (
        "different devices",
        lambda h, w, b, y: simper_rs.linear_sequence_logps(h, w.detach().to("meta"), y),
        ValueError,
        "weight is on",
    ),
    (
        "logits and hidden",
        lambda h, w, b, y: simper_rs.SimPERLoss()(h @ w.T, y, hidden=h, lm_head_weight=w),
        ValueError,
        "not both",
    ),
    (
        "hidden without weight",
        lambda h, w, b, y: simper_rs.SimPERLoss()(hidden=h, labels=y),
        ValueError,
        "needs exactly one of lm_head_weight",
    ),
    (
        "weight and module",
        lambda h, w, b, y: simper_rs.SimPERLoss()(hidden=h, lm_head_weight=w, lm_head=torch.nn.Linear(8, 11), labels=y),
        ValueError,
        "needs exactly one of",
    ),
    (
        "module and bias",
        lambda h, w, b, y: simper_rs.SimPERLoss()(hidden=h, lm_head=torch.nn.Linear(8, 11), lm_head_bias=b, labels=y),
        ValueError,
        "lm_head_bias goes with lm_head_weight",
    ),
    (
        "odd batch",
        lambda h, w, b, y: simper_rs.SimPERLoss()(hidden=h[:3], lm_head_weight=w, labels=y[:3]),
        ValueError,
        "hidden must hold a [chosen; rejected] batch",
    ),
]


@pytest.mark.parametrize("call, exc, fragment", [c[1:] for c in LINEAR_BAD], ids=[c[0] for c in LINEAR_BAD])
def test_bad_input(call, exc, fragment):
    hidden, weight, b, labels = linear_batch()
    with pytest.raises(exc) as info:
        call(hidden.detach(), weight.detach(), b.detach(), labels)
    assert fragment in str(info.value)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("loss_fn", [simper_rs.SimPERLoss(), simper_rs.DILLoss("bce")], ids=["simper", "dil-bce"])
def test_lm_head_module_gives_the_weight_path(loss_fn, bias):
    """loss(hidden=h, lm_head=module) runs the op as the module's forward: same loss, metrics, gradients."""
    hidden, weight, b, labels = linear_batch(bias=bias)
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    with torch.no_grad():
        head.weight.copy_(weight)
        if bias:
            head.bias.copy_(b)
    calls = []
    head.register_forward_pre_hook(lambda module, args: calls.append(1))  # where engines gather the weight
    by_module = loss_fn(hidden=hidden, lm_head=head, labels=labels)
    by_weight = loss_fn(hidden=hidden, lm_head_weight=weight, lm_head_bias=b, labels=labels)
    assert calls == [1] and "forward" not in head.__dict__  # the module's own forward is back
    torch.testing.assert_close(by_module.loss, by_weight.loss)
    assert by_module.metrics == pytest.approx(by_weight.metrics)
    got = torch.autograd.grad(by_module.loss, [hidden, head.weight] + ([head.bias] if bias else []))
    want = torch.autograd.grad(by_weight.loss, [hidden, weight] + ([b] if bias else []))
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e)


def test_from_sequence_logps_matches_the_formulas():
    chosen, rejected = torch.tensor([-1.0, -2.0], requires_grad=True), torch.tensor([-1.5, -1.0])
    out = simper_rs.SimPERLoss().from_sequence_logps(chosen, rejected, metrics={"entropy": 1.5})
    torch.testing.assert_close(out.loss, ref.simper(chosen, rejected))
    assert out.metrics["entropy"] == 1.5 and out.metrics["rewards/accuracies"] == 0.5
    refs = torch.tensor([-1.2, -1.8]), torch.tensor([-1.4, -1.1])
    dil = simper_rs.DILLoss("lsif").from_sequence_logps(chosen, rejected, *refs)
    torch.testing.assert_close(dil.loss, ref.dil(chosen, rejected, *refs, estimator="lsif"))
    with pytest.raises(ValueError, match="SimPER uses no reference log-probs"):
        simper_rs.SimPERLoss().from_sequence_logps(chosen, rejected, *refs)
