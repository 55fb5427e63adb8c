"""Loss values and gradients against the plain-PyTorch reference of tests/reference.py."""

import pytest
import torch

import reference as ref
import simper_rs

REDUCTIONS = ["mean", "sum", "none"]


def pair_logps(pairs=5, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    chosen = (-torch.rand(pairs, generator=g, dtype=torch.float64) * 3).to(dtype).requires_grad_()
    rejected = (-torch.rand(pairs, generator=g, dtype=torch.float64) * 3).to(dtype).requires_grad_()
    return chosen, rejected


def assert_same_value_and_grads(ours, theirs, inputs):
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-5, atol=1e-6)
    weights = torch.randn_like(theirs)
    g_ours = torch.autograd.grad((ours * weights).sum(), inputs)
    g_ref = torch.autograd.grad((theirs * weights).sum(), inputs)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_simper_matches_reference(reduction):
    chosen, rejected = pair_logps()
    ours = simper_rs.simper_loss(chosen, rejected, reduction=reduction)
    assert_same_value_and_grads(ours, ref.simper(chosen, rejected, reduction), (chosen, rejected))


def test_simper_is_bounded_and_negative_when_chosen_is_likelier():
    chosen = torch.tensor([-0.1, -0.2])
    rejected = torch.tensor([-3.0, -5.0])
    loss = simper_rs.simper_loss(chosen, rejected, reduction="none")
    assert (loss < 0).all() and (loss >= -1).all()


@pytest.mark.parametrize("estimator", simper_rs.ESTIMATORS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("with_reference", [False, True])
def test_dil_matches_reference(estimator, reduction, with_reference):
    chosen, rejected = pair_logps()
    refs = pair_logps(seed=1) if with_reference else (None, None)
    refs = tuple(r.detach() if r is not None else None for r in refs)
    ours = simper_rs.dil_loss(chosen, rejected, *refs, estimator=estimator, beta=0.7, reduction=reduction)
    theirs = ref.dil(chosen, rejected, *refs, estimator=estimator, beta=0.7, reduction=reduction)
    assert_same_value_and_grads(ours, theirs, (chosen, rejected))


def test_reference_log_probs_get_no_gradient():
    chosen, rejected = pair_logps()
    ref_c, ref_r = pair_logps(seed=3)
    simper_rs.dil_loss(chosen, rejected, ref_c, ref_r).backward()
    assert ref_c.grad is None and ref_r.grad is None
    assert chosen.grad is not None


def test_bfloat16_inputs_compute_in_float32():
    chosen, rejected = pair_logps(dtype=torch.bfloat16)
    loss = simper_rs.simper_loss(chosen, rejected)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref.simper(chosen.float(), rejected.float()))


@pytest.mark.parametrize("estimator", simper_rs.ESTIMATORS)
def test_dil_gradcheck_float64(estimator):
    chosen, rejected = pair_logps(pairs=3, dtype=torch.float64)
    ref_c, ref_r = (r.detach() for r in pair_logps(pairs=3, dtype=torch.float64, seed=2))
    f = lambda c, r: simper_rs.dil_loss(c, r, ref_c, ref_r, estimator=estimator, beta=1.3, reduction="none")
    assert torch.autograd.gradcheck(f, (chosen, rejected))


def test_simper_gradcheck_float64():
    chosen, rejected = pair_logps(pairs=3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda c, r: simper_rs.simper_loss(c, r, reduction="none"), (chosen, rejected))


def test_simper_module_matches_reference_end_to_end():
    logits, labels = ref.make_batch(pairs=3)
    out = simper_rs.SimPERLoss()(logits, labels)
    logps = ref.sequence_logps(logits, labels)
    expected = ref.simper(logps[:3], logps[3:])
    assert_same_value_and_grads(out.loss, expected, (logits,))
    torch.testing.assert_close(out.chosen_logps, logps[:3])
    margins = (logps[:3] - logps[3:]).detach()
    assert out.metrics["rewards/margins"] == pytest.approx(float(margins.mean()), abs=1e-6)
    assert out.metrics["rewards/accuracies"] == pytest.approx(float((margins > 0).float().mean()))
    assert out.metrics["logps/chosen"] == pytest.approx(float(logps[:3].mean()), abs=1e-6)
    assert out.metrics["logps/rejected"] == pytest.approx(float(logps[3:].mean()), abs=1e-6)
    assert all(isinstance(v, float) for v in out.metrics.values())


@pytest.mark.parametrize("estimator", simper_rs.ESTIMATORS)
def test_dil_module_with_reference_reports_log_ratio_rewards(estimator):
    logits, labels = ref.make_batch(pairs=2, seed=4)
    ref_logits, _ = ref.make_batch(pairs=2, seed=5, requires_grad=False)
    ref_logps = ref.sequence_logps(ref_logits, labels)
    out = simper_rs.DILLoss(estimator=estimator, beta=2.0)(logits, labels, ref_logps[:2], ref_logps[2:])
    logps = ref.sequence_logps(logits, labels)
    expected = ref.dil(logps[:2], logps[2:], ref_logps[:2], ref_logps[2:], estimator=estimator, beta=2.0)
    assert_same_value_and_grads(out.loss, expected, (logits,))
    u_w = logps[:2] - ref_logps[:2]
    assert out.metrics["rewards/chosen"] == pytest.approx(float(u_w.mean()), abs=1e-5)
    assert out.metrics["logps/chosen"] == pytest.approx(float(logps[:2].mean()), abs=1e-5)


def test_modules_repr_and_defaults():
    assert "lsif" in repr(simper_rs.DILLoss())
    assert simper_rs.DILLoss("cpc", beta=0.1).beta == 0.1
