"""Logit transforms in every fused op: a scale (a number, a scalar tensor, one per vocabulary entry,
learnable) and a softcap c·tanh(z/c), against plain PyTorch written here: log_softmax of the
transformed logits, gradients by autograd through the transform."""

import pytest
import torch

import reference as ref
import simper_rs
from test_fused_linear import linear_batch

TRANSFORMS = [
    dict(logit_scale=0.0625),
    dict(logit_scale=-1.7),
    dict(logit_softcap=2.5),
    dict(logit_scale=3.0, logit_softcap=4.0),
]


def transformed(z, logit_scale=None, logit_softcap=None):
    """The reference transform, in z's dtype promoted to float32 as the ops accumulate."""
    z = z.double() if z.dtype == torch.float64 else z.float()
    if logit_scale is not None:
        z = z * logit_scale
    if logit_softcap is not None:
        z = logit_softcap * torch.tanh(z / logit_softcap)
    return z


def reference_token_logps(logits, labels, shift=True, **transform):
    return ref.token_logps(transformed(logits, **transform), labels, shift=shift)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("backend", ["rust", "torch"])
@pytest.mark.parametrize("vocab", [7, 300])
def test_logits_op_equals_log_softmax_of_the_transformed_logits(transform, backend, vocab):
    logits, labels = ref.make_batch(pairs=2, seq_len=6, vocab=vocab, seed=vocab)
    logits = (logits.detach() * 4).requires_grad_()
    got = simper_rs.token_logps(logits, labels, backend=backend, **transform)
    want = reference_token_logps(logits, labels, **transform)
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)
    upstream = torch.randn_like(want)
    (g_got,) = torch.autograd.grad(got, logits, upstream)
    (g_want,) = torch.autograd.grad(want, logits, upstream)
    torch.testing.assert_close(g_got, g_want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_logits_op_statistics_are_those_of_the_transformed_logits(transform):
    logits, labels = ref.make_batch(pairs=2, seq_len=6, vocab=40, seed=4, requires_grad=False)
    logits = logits * 5
    _, metrics = simper_rs.sequence_logps_with_stats(logits, labels, **transform)
    z = transformed(logits, **transform)[:, :-1]
    mask = labels[:, 1:] != -100
    p = torch.softmax(z, -1)
    entropy = -(p * torch.log_softmax(z, -1)).sum(-1)
    correct = (z.argmax(-1) == labels[:, 1:]).float()
    assert metrics["entropy"] == pytest.approx(float(entropy[mask].mean()), abs=1e-5)
    assert metrics["mean_token_accuracy"] == pytest.approx(float(correct[mask].mean()))


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_gradcheck_float64(transform):
    logits, labels = ref.make_batch(pairs=1, seq_len=4, vocab=5, dtype=torch.float64, seed=2)
    assert torch.autograd.gradcheck(lambda x: simper_rs.sequence_logps(x, labels, **transform), (logits,))
    hidden, weight, b, labels = linear_batch(pairs=1, seq_len=4, hidden_size=3, vocab=5, dtype=torch.float64, seed=2)
    assert torch.autograd.gradcheck(
        lambda h, w, bb: simper_rs.linear_sequence_logps(h, w, labels, bb, chunk_size=2, **transform),
        (hidden, weight, b),
    )


def materialised_linear(hidden, weight, bias, labels, logit_scale=None, logit_softcap=None, **kw):
    z = hidden @ weight.T
    if bias is not None:
        z = z + bias
    if isinstance(logit_scale, torch.Tensor):
        z = z * logit_scale
        logit_scale = None
    return ref.sequence_logps(transformed(z, logit_scale, logit_softcap), labels, **kw)


SCALE_TENSORS = {
    "per vocabulary entry": lambda vocab, g: 0.5 + torch.rand(vocab, generator=g, dtype=torch.float64),
    "one number": lambda vocab, g: torch.tensor([1.7], dtype=torch.float64),
    "0-dim": lambda vocab, g: torch.tensor(0.8, dtype=torch.float64),
}


@pytest.mark.parametrize("transform", TRANSFORMS + [dict()])
@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_linear_op_with_a_constant_transform(transform, chunk_size, bias):
    hidden, weight, b, labels = linear_batch(pairs=2, seq_len=6, vocab=23, bias=bias, seed=7)
    weight = (weight.detach() * 6).requires_grad_()
    got = simper_rs.linear_sequence_logps(hidden, weight, labels, b, chunk_size=chunk_size, **transform)
    want = materialised_linear(hidden, weight, b, labels, **transform)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    params = [hidden, weight] + ([b] if bias else [])
    for g_got, g_want in zip(torch.autograd.grad(got.sum(), params), torch.autograd.grad(want.sum(), params)):
        torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", list(SCALE_TENSORS))
@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("bias", [True, False])
def test_a_learnable_scale_tensor_gets_its_gradient(kind, softcap, bias):
    hidden, weight, b, labels = linear_batch(pairs=2, seq_len=6, vocab=23, bias=bias, seed=8)
    scale = SCALE_TENSORS[kind](23, torch.Generator().manual_seed(1)).float().requires_grad_()
    got = simper_rs.linear_sequence_logps(
        hidden, weight, labels, b, chunk_size=4, logit_scale=scale, logit_softcap=softcap
    )
    want = materialised_linear(hidden, weight, b, labels, logit_scale=scale, logit_softcap=softcap)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    params = [hidden, weight, scale] + ([b] if bias else [])
    upstream = torch.randn_like(want)
    for name, g_got, g_want in zip(
        ["hidden", "weight", "scale", "bias"],
        torch.autograd.grad(got, params, upstream),
        torch.autograd.grad(want, params, upstream),
    ):
        assert g_got.shape == g_want.shape, name
        torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-5, msg=name)


def test_gradcheck_of_a_learnable_scale_in_float64():
    hidden, weight, b, labels = linear_batch(pairs=1, seq_len=4, hidden_size=3, vocab=5, dtype=torch.float64, seed=3)
    scale = (0.5 + torch.rand(5, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda h, w, bb, s: simper_rs.linear_sequence_logps(
            h, w, labels, bb, chunk_size=2, logit_scale=s, logit_softcap=2.0
        ),
        (hidden, weight, b, scale),
    )


LOSSES = {
    "simper": lambda: simper_rs.SimPERLoss(),
    "cpc": lambda: simper_rs.DILLoss("cpc", beta=0.7),
    "bce": lambda: simper_rs.DILLoss("bce"),
}


def reference_pair_loss(name, logps):
    half = logps.shape[0] // 2
    if name == "simper":
        return ref.simper(logps[:half], logps[half:])
    return ref.dil(logps[:half], logps[half:], estimator=name, beta=0.7 if name == "cpc" else 1.0)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("scale", ["number", "tensor"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_in_forward_losses_take_the_transform(name, scale, dtype):
    hidden, weight, b, labels = linear_batch(pairs=3, seq_len=7, vocab=31, dtype=dtype, seed=9)
    weight = (weight.detach() * 5).requires_grad_()
    logit_scale = (
        0.7
        if scale == "number"
        else (0.5 + torch.rand(31, generator=torch.Generator().manual_seed(2))).to(dtype).requires_grad_()
    )
    out = LOSSES[name]()(
        hidden=hidden, lm_head_weight=weight, lm_head_bias=b, labels=labels, logit_scale=logit_scale, logit_softcap=2.0
    )
    want = reference_pair_loss(
        name, materialised_linear(hidden, weight, b, labels, logit_scale=logit_scale, logit_softcap=2.0)
    )
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(out.loss.float(), want.float(), **tol)
    params = [hidden, weight, b] + ([logit_scale] if scale == "tensor" else [])
    for g_got, g_want in zip(torch.autograd.grad(out.loss, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(g_got.float(), g_want.float(), **tol)


def test_a_second_backward_through_the_gradient_in_forward_loss_keeps_the_scale_gradient():
    hidden, weight, b, labels = linear_batch(pairs=2, seq_len=6, vocab=13, seed=4)
    scale = (0.5 + torch.rand(13)).requires_grad_()
    out = simper_rs.SimPERLoss()(
        hidden=hidden, lm_head_weight=weight, lm_head_bias=b, labels=labels, logit_scale=scale, logit_softcap=2.0
    )
    first = torch.autograd.grad(out.loss, [scale], retain_graph=True)[0]
    second = torch.autograd.grad(out.loss, [scale])[0]  # the recomputing path
    want = torch.autograd.grad(
        reference_pair_loss(
            "simper", materialised_linear(hidden, weight, b, labels, logit_scale=scale, logit_softcap=2.0)
        ),
        [scale],
    )[0]
    torch.testing.assert_close(first, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(second, want, rtol=1e-4, atol=1e-6)


def test_bfloat16_softcap_matches_float32_reference_within_bfloat16_rounding():
    hidden, weight, b, labels = linear_batch(pairs=2, seq_len=8, vocab=257, dtype=torch.bfloat16, seed=6)
    got = simper_rs.linear_sequence_logps(hidden, weight * 8, labels, b, logit_softcap=5.0)
    want = materialised_linear(hidden.float(), (weight * 8).float(), b.float(), labels, logit_softcap=5.0)
    torch.testing.assert_close(got, want, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda logits, y: simper_rs.token_logps(logits, y, logit_softcap=0.0),
            ValueError,
            "logit_softcap must be a positive finite number, got 0",
        ),
        (
            lambda logits, y: simper_rs.token_logps(logits, y, logit_softcap=-2.0),
            ValueError,
            "logit_softcap must be a positive finite number",
        ),
        (
            lambda logits, y: simper_rs.token_logps(logits, y, logit_scale=float("nan")),
            ValueError,
            "logit_scale must be a finite number",
        ),
        (
            lambda logits, y: simper_rs.token_logps(logits, y, logit_scale="2"),
            TypeError,
            "logit_scale must be a number or None, got str",
        ),
        (
            lambda logits, y: simper_rs.token_logps(logits, y, logit_scale=torch.tensor(2.0)),
            TypeError,
            "logit_scale of the logits ops is a number",
        ),
        (
            lambda logits, y: simper_rs.sequence_logps(logits, y, logit_softcap=True),
            TypeError,
            "logit_softcap must be a number or None, got bool",
        ),
    ],
)
def test_bad_transform_arguments_are_refused_by_name(call, error, message):
    logits, labels = ref.make_batch(pairs=1, seq_len=4, vocab=5, requires_grad=False)
    with pytest.raises(error, match=message.replace("(", r"\(")):
        call(logits, labels)


@pytest.mark.parametrize(
    "scale, error, message",
    [
        (
            torch.ones(4),
            ValueError,
            r"a logit_scale tensor must hold one number or one per vocabulary entry \(\[23\]\), got shape \[4\]",
        ),
        (torch.ones(23, dtype=torch.long), TypeError, "logit_scale must be a floating-point tensor"),
    ],
)
def test_bad_scale_tensors_are_refused_by_name(scale, error, message):
    hidden, weight, b, labels = linear_batch(vocab=23)
    with pytest.raises(error, match=message):
        simper_rs.linear_sequence_logps(hidden, weight, labels, b, logit_scale=scale)
