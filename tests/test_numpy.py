"""simper_rs.numpy against the torch API and the plain-PyTorch reference."""

import numpy as np
import pytest
import torch

import reference as ref
import simper_rs
import simper_rs.numpy as snp


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shift", [True, False])
def test_logps_match_torch(dtype, shift):
    logits, labels = ref.make_batch(pairs=3, seq_len=6, vocab=17, dtype=torch.float64, requires_grad=False)
    x, y = logits.numpy().astype(dtype), labels.numpy()
    tokens = snp.token_logps(x, y, shift=shift)
    assert tokens.dtype == dtype
    expected = ref.token_logps(torch.from_numpy(x), labels, shift=shift)
    np.testing.assert_allclose(tokens, expected.numpy(), rtol=1e-5, atol=1e-6)
    for average in (True, False):
        seq = snp.sequence_logps(x, y, average=average, shift=shift)
        np.testing.assert_allclose(
            seq,
            simper_rs.sequence_logps(torch.from_numpy(x), labels, average=average, shift=shift).numpy(),
            rtol=1e-5,
            atol=1e-6,
        )


def test_strided_and_reversed_arrays():
    logits, labels = ref.make_batch(pairs=2, seq_len=5, vocab=8, requires_grad=False)
    x = logits.numpy()
    wide = np.zeros((8, 5, 16), dtype=np.float32)
    wide[::2, :, ::2] = x
    expected = snp.sequence_logps(x, labels.numpy())
    np.testing.assert_array_equal(snp.sequence_logps(wide[::2, :, ::2], labels.numpy()), expected)  # copied
    np.testing.assert_array_equal(snp.sequence_logps(wide[::2, :, ::2].copy(), labels.numpy()), expected)
    np.testing.assert_array_equal(snp.sequence_logps(x[::-1].copy()[::-1], labels.numpy()), expected)
    np.testing.assert_array_equal(snp.sequence_logps(x, np.asfortranarray(labels.numpy())), expected)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "estimator, with_reference", [(None, False)] + [(e, r) for e in simper_rs.ESTIMATORS for r in (False, True)]
)
def test_losses_and_grads_match_torch_autograd(reduction, estimator, with_reference):
    g = torch.Generator().manual_seed(1)
    c = (-torch.rand(4, generator=g, dtype=torch.float64) * 2).requires_grad_()
    r = (-torch.rand(4, generator=g, dtype=torch.float64) * 2).requires_grad_()
    refs = [-torch.rand(4, generator=g, dtype=torch.float64) for _ in range(2)] if with_reference else [None, None]
    if estimator is None:
        expected = ref.simper(c, r, reduction)
        loss, g_c, g_r = snp.simper_loss(c.detach().numpy(), r.detach().numpy(), reduction=reduction)
    else:
        expected = ref.dil(c, r, *refs, estimator=estimator, beta=0.8, reduction=reduction)
        np_refs = [x.numpy() if x is not None else None for x in refs]
        loss, g_c, g_r = snp.dil_loss(
            c.detach().numpy(), r.detach().numpy(), *np_refs, estimator=estimator, beta=0.8, reduction=reduction
        )
    np.testing.assert_allclose(loss, expected.detach().numpy(), rtol=1e-12, atol=1e-12)
    want_c, want_r = torch.autograd.grad(expected.sum(), (c, r))
    np.testing.assert_allclose(g_c, want_c.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g_r, want_r.numpy(), rtol=1e-12, atol=1e-12)


BAD = [
    (
        "logits not an array",
        lambda: snp.token_logps([[[0.0]]], np.zeros((1, 1), np.int64), shift=False),
        TypeError,
        "logits must be a numpy.ndarray",
    ),
    (
        "logits wrong rank",
        lambda: snp.token_logps(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.int64)),
        ValueError,
        "3-D",
    ),
    (
        "integer logits",
        lambda: snp.token_logps(np.zeros((1, 2, 3), np.int64), np.zeros((1, 2), np.int64)),
        TypeError,
        "float32 or float64",
    ),
    (
        "float labels",
        lambda: snp.token_logps(np.zeros((1, 2, 3), np.float32), np.zeros((1, 2))),
        TypeError,
        "labels must be an integer array",
    ),
    (
        "labels shape",
        lambda: snp.token_logps(np.zeros((1, 2, 3), np.float32), np.zeros((1, 3), np.int64)),
        ValueError,
        "labels shape",
    ),
    (
        "label out of range",
        lambda: snp.token_logps(np.zeros((1, 2, 3), np.float32), np.array([[0, 3]])),
        ValueError,
        "labels[0, 1] = 3 is outside",
    ),
    (
        "empty row",
        lambda: snp.sequence_logps(np.zeros((1, 2, 3), np.float32), np.array([[0, -100]])),
        ValueError,
        "row 0 of labels has no response tokens",
    ),
    (
        "shift needs 2",
        lambda: snp.token_logps(np.zeros((1, 1, 3), np.float32), np.array([[0]])),
        ValueError,
        "at least 2 positions",
    ),
    ("unknown estimator", lambda: snp.dil_loss([0.0], [0.0], estimator="x"), ValueError, "estimator must be one of"),
    ("unknown reduction", lambda: snp.simper_loss([0.0], [0.0], reduction="x"), ValueError, "reduction must be one of"),
    (
        "length mismatch",
        lambda: snp.simper_loss([0.0], [0.0, 1.0]),
        ValueError,
        "rejected_logps must have the same shape",
    ),
    ("empty", lambda: snp.simper_loss([], []), ValueError, "chosen_logps is empty"),
    ("2-D pairs", lambda: snp.simper_loss([[0.0]], [[0.0]]), ValueError, "chosen_logps must be a 1-D"),
    ("one reference", lambda: snp.dil_loss([0.0], [0.0], [0.0]), ValueError, "given together"),
    (
        "reference length",
        lambda: snp.dil_loss([0.0], [0.0], [0.0, 1.0], [0.0]),
        ValueError,
        "ref_chosen_logps must have the same shape",
    ),
]


@pytest.mark.parametrize("call, exc, fragment", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input(call, exc, fragment):
    with pytest.raises(exc) as info:
        call()
    assert fragment in str(info.value)
