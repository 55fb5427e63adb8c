"""Bad input (SPEC §6): a clear ValueError/TypeError naming the argument, before any work."""
import pytest
import torch

import reference as ref
import simper_rs


def batch():
    return ref.make_batch(pairs=2, seq_len=5, vocab=7, requires_grad=False)


def with_labels(fn):
    logits, labels = batch()
    return logits, fn(labels.clone())


CASES = [
    # (id, call, exception, message fragment)
    ("logits not a tensor", lambda: simper_rs.sequence_logps([[1.0]], batch()[1]), TypeError, "logits"),
    ("labels not a tensor", lambda: simper_rs.sequence_logps(batch()[0], [1, 2]), TypeError, "labels"),
    ("logits wrong rank", lambda: simper_rs.sequence_logps(batch()[0][0], batch()[1]), ValueError, "logits must be a 3-D"),
    ("labels wrong rank", lambda: simper_rs.sequence_logps(batch()[0], batch()[1][0]), ValueError, "labels must be a 2-D"),
    ("shape mismatch", lambda: simper_rs.sequence_logps(batch()[0], batch()[1][:, :4]), ValueError, "labels shape [4, 4]"),
    ("float labels", lambda: simper_rs.sequence_logps(batch()[0], batch()[1].float()), TypeError, "labels must be an int64"),
    ("int32 labels", lambda: simper_rs.sequence_logps(batch()[0], batch()[1].int()), TypeError, "torch.int32"),
    ("integer logits", lambda: simper_rs.sequence_logps(batch()[0].long(), batch()[1]), TypeError, "logits must be a floating-point"),
    ("label above vocab", lambda: simper_rs.sequence_logps(*with_labels(lambda y: y.index_fill_(1, torch.tensor([3]), 7))), ValueError, "labels[0, 3] = 7 is outside the vocabulary [0, 7)"),
    ("negative label", lambda: simper_rs.sequence_logps(*with_labels(lambda y: y.index_fill_(1, torch.tensor([2]), -5))), ValueError, "= -5 is outside"),
    ("row without response", lambda: simper_rs.sequence_logps(*with_labels(lambda y: y.index_fill_(0, torch.tensor([2]), -100))), ValueError, "row 2 of labels has no response tokens"),
    ("seq_len 1 with shift", lambda: simper_rs.sequence_logps(batch()[0][:, :1], batch()[1][:, :1]), ValueError, "at least 2 positions"),
    ("empty vocabulary", lambda: simper_rs.token_logps(torch.zeros(2, 3, 0), torch.zeros(2, 3, dtype=torch.long)), ValueError, "vocab = 0"),
    ("different devices", lambda: simper_rs.sequence_logps(batch()[0].to("meta"), batch()[1]), ValueError, "same device"),
    ("odd batch", lambda: simper_rs.SimPERLoss()(batch()[0][:3], batch()[1][:3]), ValueError, "got batch size 3"),
    ("module logits not a tensor", lambda: simper_rs.SimPERLoss()("logits", batch()[1]), TypeError, "logits must be a torch.Tensor"),
    ("unknown estimator", lambda: simper_rs.dil_loss(torch.zeros(2), torch.zeros(2), estimator="dpo"), ValueError, "estimator must be one of"),
    ("unknown estimator (module)", lambda: simper_rs.DILLoss(estimator="dpo"), ValueError, "estimator must be one of"),
    ("unknown reduction", lambda: simper_rs.simper_loss(torch.zeros(2), torch.zeros(2), reduction="avg"), ValueError, "reduction must be one of"),
    ("bad beta", lambda: simper_rs.dil_loss(torch.zeros(2), torch.zeros(2), estimator="cpc", beta=-1.0), ValueError, "beta must be a positive"),
    ("ref wrong shape", lambda: simper_rs.dil_loss(torch.zeros(2), torch.zeros(2), torch.zeros(3), torch.zeros(2)), ValueError, "ref_chosen_logps must have the same shape"),
    ("ref wrong shape (module)", lambda: simper_rs.DILLoss()(*batch(), torch.zeros(2), torch.zeros(1)), ValueError, "ref_rejected_logps must have the same shape"),
    ("only one ref", lambda: simper_rs.dil_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2)), ValueError, "given together"),
    ("ref on another device", lambda: simper_rs.dil_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2, device="meta"), torch.zeros(2)), ValueError, "same device"),
    ("chosen/rejected mismatch", lambda: simper_rs.simper_loss(torch.zeros(2), torch.zeros(3)), ValueError, "rejected_logps must have the same shape"),
    ("empty pair batch", lambda: simper_rs.simper_loss(torch.zeros(0), torch.zeros(0)), ValueError, "chosen_logps is empty"),
    ("integer chosen logps", lambda: simper_rs.simper_loss(torch.zeros(2, dtype=torch.long), torch.zeros(2)), TypeError, "chosen_logps must be a floating-point"),
    ("2-D chosen logps", lambda: simper_rs.simper_loss(torch.zeros(2, 2), torch.zeros(2, 2)), ValueError, "chosen_logps must be a 1-D"),
    ("loss input not a tensor", lambda: simper_rs.simper_loss([0.0], torch.zeros(1)), TypeError, "chosen_logps"),
]


@pytest.mark.parametrize("call, exc, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_clear_error(call, exc, fragment):
    with pytest.raises(exc) as info:
        call()
    assert fragment in str(info.value)


def test_bad_input_leaves_inputs_unchanged():
    logits, labels = batch()
    labels[1] = -100  # no response tokens in row 1
    before = (logits.clone(), labels.clone())
    with pytest.raises(ValueError):
        simper_rs.SimPERLoss()(logits, labels)
    assert torch.equal(logits, before[0]) and torch.equal(labels, before[1])


def test_nan_logits_propagate_like_torch():
    logits, labels = batch()
    logits[0, 2, 0] = float("nan")
    out = simper_rs.sequence_logps(logits, labels)
    expected = ref.sequence_logps(logits, labels)
    assert torch.equal(out.isnan(), expected.isnan())
