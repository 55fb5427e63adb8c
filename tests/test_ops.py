"""token_logps / sequence_logps against the plain-PyTorch reference of tests/reference.py."""

import pytest
import torch

import reference as ref
import simper_rs

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
BACKENDS = ["rust", "torch"]


def tolerance(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype in (torch.float32, torch.float64) else dict(rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shift", [True, False])
def test_token_logps_values_and_grads(dtype, shift, backend):
    logits, labels = ref.make_batch(dtype=dtype)
    ours = simper_rs.token_logps(logits, labels, shift=shift, backend=backend)
    theirs = ref.token_logps(logits, labels, shift=shift)
    assert ours.dtype == torch.float32
    assert ours.shape == (logits.shape[0], logits.shape[1] - int(shift))
    torch.testing.assert_close(ours, theirs, **tolerance(dtype))
    weights = torch.randn_like(theirs)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), logits)
    (g_ref,) = torch.autograd.grad((theirs * weights).sum(), logits)
    assert g_ours.dtype == dtype
    torch.testing.assert_close(g_ours.float(), g_ref.float(), **tolerance(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("average", [True, False])
@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sequence_logps_values_and_grads(average, shift, dtype, backend):
    logits, labels = ref.make_batch(dtype=dtype, seed=7)
    ours = simper_rs.sequence_logps(logits, labels, average=average, shift=shift, backend=backend)
    theirs = ref.sequence_logps(logits, labels, average=average, shift=shift)
    torch.testing.assert_close(ours, theirs, **tolerance(dtype))
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    (g_ref,) = torch.autograd.grad(theirs.sum(), logits)
    torch.testing.assert_close(g_ours.float(), g_ref.float(), **tolerance(dtype))


def test_custom_ignore_index():
    logits, labels = ref.make_batch(seed=3)
    labels = torch.where(labels == -100, torch.full_like(labels, -1), labels)
    ours = simper_rs.sequence_logps(logits, labels, ignore_index=-1)
    torch.testing.assert_close(ours, ref.sequence_logps(logits, labels, ignore_index=-1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs_are_honoured(backend):
    logits, labels = ref.make_batch(seed=9, requires_grad=False)
    wide = torch.randn(logits.shape[0], logits.shape[1], logits.shape[2] * 2)
    strided = wide[:, :, ::2].copy_(logits).requires_grad_(False)
    transposed = logits.transpose(0, 1).contiguous().transpose(0, 1)
    for view in (strided, transposed):
        assert not view.is_contiguous()
        torch.testing.assert_close(
            simper_rs.sequence_logps(view, labels, backend=backend), ref.sequence_logps(logits, labels)
        )
    # non-contiguous labels too
    wide_labels = torch.stack([labels, labels], dim=-1)[..., 0]
    assert not wide_labels.is_contiguous()
    torch.testing.assert_close(
        simper_rs.sequence_logps(logits, wide_labels, backend=backend), ref.sequence_logps(logits, labels)
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_ignored_final_position_and_prompt_get_zero_gradient(backend):
    logits, labels = ref.make_batch(seed=2)
    simper_rs.sequence_logps(logits, labels, backend=backend).sum().backward()
    assert (logits.grad[:, -1] == 0).all()  # the last position predicts nothing
    ignored_rows = labels[:, 1:] == -100
    assert (logits.grad[:, :-1][ignored_rows] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    logits, labels = ref.make_batch(pairs=1, seq_len=4, vocab=5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: simper_rs.sequence_logps(x, labels, backend=backend), (logits,))
    assert torch.autograd.gradcheck(lambda x: simper_rs.token_logps(x, labels, shift=False, backend=backend), (logits,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_logits_give_float64_logps(backend):
    logits, labels = ref.make_batch(dtype=torch.float64)
    assert simper_rs.sequence_logps(logits, labels, backend=backend).dtype == torch.float64
