"""Padding-free (packed) batches: position_ids restarting at 0 per sequence give the results of
the padded batch, for the ops, the losses, the collator and a trainer step."""

import pytest
import torch

import reference as ref
import simper_rs
from simper_rs.data import PreferenceCollator, load_default_data

LENGTHS = [7, 1 + 1, 12, 3, 5, 9]  # very unequal, and a sequence of 2 positions (one scored token)


def padded_and_packed(lengths=LENGTHS, vocab=13, hidden_size=None, seed=0, dtype=torch.float32):
    """The same sequences as a padded [B, T] batch and as one packed row."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    feature = (vocab,) if hidden_size is None else (hidden_size,)
    rows = [torch.randn(n, *feature, generator=g, dtype=torch.float64).to(dtype) for n in lengths]
    tokens = [torch.randint(0, vocab, (n,), generator=g) for n in lengths]
    for t in tokens:
        t[0] = -100  # a sequence's first label is never scored (no previous position of its own)
    padded = torch.zeros(len(lengths), width, *feature, dtype=dtype)
    labels = torch.full((len(lengths), width), -100)
    for i, (x, y) in enumerate(zip(rows, tokens)):
        padded[i, : len(x)] = x
        labels[i, : len(y)] = y
    packed = torch.cat(rows).unsqueeze(0)
    packed_labels = torch.cat(tokens).unsqueeze(0)
    position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    return padded.requires_grad_(), labels, packed.detach().requires_grad_(), packed_labels, position_ids


def back_to_padded(grad_packed, lengths=LENGTHS):
    rows, start = [], 0
    width = max(lengths)
    for n in lengths:
        row = torch.zeros(width, *grad_packed.shape[2:], dtype=grad_packed.dtype)
        row[:n] = grad_packed[0, start : start + n]
        rows.append(row)
        start += n
    return torch.stack(rows)


@pytest.mark.parametrize("backend", ["rust", "torch"])
@pytest.mark.parametrize("average", [True, False])
def test_sequence_logps_packed_equal_padded(backend, average):
    padded, labels, packed, packed_labels, position_ids = padded_and_packed()
    want = ref.sequence_logps(padded, labels, average=average)
    got = simper_rs.sequence_logps(packed, packed_labels, position_ids=position_ids, average=average, backend=backend)
    assert got.shape == (len(LENGTHS),)
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-6)
    weights = torch.arange(1.0, len(LENGTHS) + 1)
    (grad_padded,) = torch.autograd.grad((want.float() * weights).sum(), padded)
    (grad_packed,) = torch.autograd.grad((got * weights).sum(), packed)
    torch.testing.assert_close(back_to_padded(grad_packed), grad_padded, rtol=1e-5, atol=1e-6)


def test_gradcheck_float64_packed():
    _, _, packed, packed_labels, position_ids = padded_and_packed(lengths=[3, 2, 4], vocab=5, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: simper_rs.sequence_logps(x, packed_labels, position_ids=position_ids), (packed,)
    )


@pytest.mark.parametrize("bias", [True, False])
def test_linear_sequence_logps_packed_equal_padded(bias):
    padded, labels, packed, packed_labels, position_ids = padded_and_packed(hidden_size=6)
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(13, 6, generator=g, requires_grad=True)
    b = (torch.randn(13, generator=g) * 0.1).requires_grad_() if bias else None
    want = simper_rs.linear_sequence_logps(padded, weight, labels, b)
    got, stats = simper_rs.linear_sequence_logps_with_stats(
        packed, weight, packed_labels, b, position_ids=position_ids, chunk_size=4
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    _, stats_padded = simper_rs.linear_sequence_logps_with_stats(padded, weight, labels, b)
    assert stats == pytest.approx(stats_padded, rel=1e-5)
    params = [weight] + ([b] if bias else [])
    grads_padded = torch.autograd.grad(want.sum(), [padded] + params)
    grads_packed = torch.autograd.grad(got.sum(), [packed] + params)
    torch.testing.assert_close(back_to_padded(grads_packed[0]), grads_padded[0], rtol=1e-5, atol=1e-6)
    for a, e in zip(grads_packed[1:], grads_padded[1:]):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "loss_fn",
    [simper_rs.SimPERLoss(), simper_rs.DILLoss("bce"), simper_rs.DILLoss("cpc", beta=0.5)],
    ids=["simper", "bce", "cpc"],
)
def test_losses_packed_equal_padded(loss_fn):
    padded, labels, packed, packed_labels, position_ids = padded_and_packed()
    want = loss_fn(padded, labels)
    got = loss_fn(packed, packed_labels, position_ids=position_ids)
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-6)
    assert got.metrics == pytest.approx(want.metrics, rel=1e-5, abs=1e-7)
    (grad_padded,) = torch.autograd.grad(want.loss, padded)
    (grad_packed,) = torch.autograd.grad(got.loss, packed)
    torch.testing.assert_close(back_to_padded(grad_packed), grad_padded, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "position_ids, labels, message",
    [
        ([[1, 2, 3, 0]], [[-100, 1, 2, -100]], r"position_ids\[0, 0\] = 1: every packed row must start"),
        ([[0, 1, 3, 0]], [[-100, 1, 2, -100]], r"position_ids\[0, 2\] = 3 follows 1"),
        ([[0, 1, 1, 2]], [[-100, 1, 2, 3]], r"position_ids\[0, 2\] = 1 follows 1"),
        ([[0, 1, 0, 1]], [[-100, 1, 2, 3]], r"labels\[0, 2\] = 2 is the first token of a packed sequence"),
        (
            [[0, 1, 0, 1]],
            [[-100, 1, -100, -100]],
            r"packed sequence 1 \(row 0, positions 2..4\) has no response tokens",
        ),
        ([[0, 1, 2]], [[-100, 1, 2, 3]], r"position_ids must have the shape of labels"),
        ([[0.0, 1.0, 0.0, 1.0]], [[-100, 1, -100, 3]], r"position_ids must be an integer tensor"),
    ],
)
def test_bad_position_ids_are_clear_errors(position_ids, labels, message):
    logits = torch.randn(1, 4, 5)
    exc = TypeError if "integer" in message else ValueError
    with pytest.raises(exc, match=message):
        simper_rs.sequence_logps(logits, torch.tensor(labels), position_ids=torch.tensor(position_ids))


def test_odd_number_of_packed_sequences_is_refused():
    _, _, packed, packed_labels, position_ids = padded_and_packed(lengths=[3, 4, 5])
    with pytest.raises(
        ValueError, match="position_ids hold 3 packed sequences; a \\[chosen; rejected\\] batch needs an even number"
    ):
        simper_rs.SimPERLoss()(packed, packed_labels, position_ids=position_ids)


@pytest.fixture(scope="module")
def tiny():
    transformers = pytest.importorskip("transformers")  # noqa: F841
    from simper_rs.cli.tiny import build_tiny_model, build_tokenizer

    data = load_default_data()
    tokenizer = build_tokenizer(data["train"])
    return data, tokenizer, build_tiny_model


def test_collator_packs_into_one_row(tiny):
    data, tokenizer, _ = tiny
    records = data["train"][:3]
    padded = PreferenceCollator(tokenizer, 32, 16)(records)
    packed = PreferenceCollator(tokenizer, 32, 16, padding_free=True)(records)
    lengths = padded["attention_mask"].sum(1).tolist()
    assert set(packed) == {"input_ids", "labels", "position_ids"}
    assert packed["input_ids"].shape == (1, sum(lengths))
    starts = torch.nonzero(packed["position_ids"][0] == 0).flatten().tolist()
    assert starts == [sum(lengths[:i]) for i in range(len(lengths))]
    for i, (start, n) in enumerate(zip(starts, lengths)):  # chosen sequences first, then rejected, each unpadded
        assert packed["input_ids"][0, start : start + n].tolist() == padded["input_ids"][i, :n].tolist()
        assert packed["labels"][0, start] == -100
        assert packed["labels"][0, start + 1 : start + n].tolist() == padded["labels"][i, 1:n].tolist()


@pytest.mark.parametrize("rows", [None, 40], ids=["one-row", "rows-of-40"])
@pytest.mark.parametrize("fused_linear", [False, True], ids=["logits", "fused-linear"])
def test_trainer_step_packed_equals_padded(tiny, fused_linear, rows):
    from simper_rs.trainer import make_loss, preference_loss

    data, tokenizer, build_tiny_model = tiny
    model = build_tiny_model(tokenizer, seed=5)
    records = data["train"][:4]
    padded = PreferenceCollator(tokenizer, 32, 16)(records)
    packed = PreferenceCollator(tokenizer, 32, 16, padding_free=True, max_tokens_per_row=rows)(records)
    assert packed["input_ids"].shape[0] == (1 if rows is None else 4)
    for loss in (make_loss("simper"), make_loss("dil", "lsif")):
        want = preference_loss(model, padded, loss, fused_linear=fused_linear)
        got = preference_loss(model, packed, loss, fused_linear=fused_linear)
        torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-7)
        assert got.metrics == pytest.approx(want.metrics, rel=1e-4, abs=1e-6)
        grads_want = torch.autograd.grad(want.loss, list(model.parameters()))
        grads_got = torch.autograd.grad(got.loss, list(model.parameters()))
        for (name, _), a, e in zip(model.named_parameters(), grads_got, grads_want):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-7, msg=name)


def test_torch_compile_of_the_packed_reduction():
    """The packed path compiles like the per-row one (a clean graph break at the Rust reduction)."""
    _, _, packed, packed_labels, position_ids = padded_and_packed()
    eager = simper_rs.sequence_logps(packed, packed_labels, position_ids=position_ids)
    compiled = torch.compile(
        lambda x: simper_rs.sequence_logps(x, packed_labels, position_ids=position_ids), backend="eager"
    )(packed)
    torch.testing.assert_close(compiled, eager)


def test_pack_rows_fills_rows_in_order_within_the_budget():
    from simper_rs.data import pack_rows

    sequences = [([1] * n, [-100] + [7] * (n - 1)) for n in (3, 4, 9, 2, 2)]
    rows = pack_rows(sequences, pad_token_id=0, max_tokens_per_row=8)
    # 3+4 fit in 8; 9 is longer than the budget and gets its own row; 2+2 share the last
    assert rows["input_ids"].shape == (3, 9)
    assert rows["position_ids"].tolist() == [
        [0, 1, 2, 0, 1, 2, 3, 4, 5],  # the fill continues the row's last sequence
        [0, 1, 2, 3, 4, 5, 6, 7, 8],
        [0, 1, 0, 1, 2, 3, 4, 5, 6],
    ]
    assert rows["labels"][0].tolist() == [-100, 7, 7, -100, 7, 7, 7, -100, -100]
    assert rows["input_ids"][2].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0]
    logps = simper_rs.sequence_logps(
        torch.zeros(3, 9, 5), rows["labels"].clamp(max=4), position_ids=rows["position_ids"], average=False
    )
    assert logps.shape == (5,)  # five sequences: the fill adds none
    with pytest.raises(ValueError, match="max_tokens_per_row must be a positive int and goes with padding_free=True"):
        PreferenceCollator(_Tok(), max_tokens_per_row=8)


class _Tok:
    pad_token_id = eos_token_id = bos_token_id = 0
