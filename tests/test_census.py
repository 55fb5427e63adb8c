"""The bad-input census (docs/design.md, "Bad input", and what users hit): one row per malformed input class.

Each row builds its inputs, calls a public function, and asserts the exception type and message
(or, for inputs that are valid but unusual, the documented behaviour), and that no input tensor
was changed. `python tests/test_census.py` prints the table kept in tests/README.md.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch

import reference as ref
import simper_rs
import simper_rs.numpy as snp


def batch(pairs=2, seq_len=5, vocab=7):
    return ref.make_batch(pairs=pairs, seq_len=seq_len, vocab=vocab, requires_grad=False)


def labels_with(fn):
    logits, labels = batch()
    return logits, fn(labels.clone())


def seq(*args, **kw):
    return simper_rs.sequence_logps, args, kw


def z(*shape, **kw):
    return torch.zeros(*shape, **kw)


# (name, build -> (function, args, kwargs), exception or None, message fragment)
CASES = [
    ("logits not a tensor", lambda: seq([[1.0]], batch()[1]), TypeError, "logits must be a torch.Tensor, got list"),
    ("labels not a tensor", lambda: seq(batch()[0], [1, 2]), TypeError, "argument 'labels': expected a torch.Tensor"),
    ("logits of rank 2", lambda: seq(batch()[0][0], batch()[1]), ValueError, "logits must be a 3-D tensor"),
    ("labels of rank 1", lambda: seq(batch()[0], batch()[1][0]), ValueError, "labels must be a 2-D tensor"),
    (
        "logits/labels shape mismatch",
        lambda: seq(batch()[0], batch()[1][:, :4]),
        ValueError,
        "labels shape [4, 4] must equal the first two dimensions of logits [4, 5]",
    ),
    (
        "float labels",
        lambda: seq(batch()[0], batch()[1].float()),
        TypeError,
        "labels must be an int64 (torch.long) tensor of token ids, got torch.float32",
    ),
    ("int32 labels", lambda: seq(batch()[0], batch()[1].int()), TypeError, "got torch.int32"),
    ("integer logits", lambda: seq(batch()[0].long(), batch()[1]), TypeError, "logits must be a floating-point tensor"),
    (
        "complex logits",
        lambda: seq(batch()[0].to(torch.complex64), batch()[1]),
        TypeError,
        "logits must be a floating-point tensor",
    ),
    (
        "label >= vocab",
        lambda: seq(*labels_with(lambda y: y.index_fill_(1, torch.tensor([3]), 7))),
        ValueError,
        "labels[0, 3] = 7 is outside the vocabulary [0, 7) and is not ignore_index (-100)",
    ),
    (
        "negative label (not ignore_index)",
        lambda: seq(*labels_with(lambda y: y.index_fill_(1, torch.tensor([2]), -5))),
        ValueError,
        "= -5 is outside the vocabulary",
    ),
    (
        "row with no response tokens",
        lambda: seq(*labels_with(lambda y: y.index_fill_(0, torch.tensor([2]), -100))),
        ValueError,
        "row 2 of labels has no response tokens",
    ),
    (
        "empty batch (sequence_logps)",
        lambda: seq(z(0, 5, 7), torch.zeros(0, 5, dtype=torch.long)),
        None,
        "returns an empty [0] tensor",
    ),
    (
        "empty batch (loss module)",
        lambda: (simper_rs.SimPERLoss(), (z(0, 5, 7), torch.zeros(0, 5, dtype=torch.long)), {}),
        ValueError,
        "got batch size 0",
    ),
    (
        "T = 1 with shift",
        lambda: seq(batch()[0][:, :1], batch()[1][:, :1]),
        ValueError,
        "with shift=True each sequence needs at least 2 positions",
    ),
    (
        "V = 0",
        lambda: (simper_rs.token_logps, (z(2, 3, 0), torch.zeros(2, 3, dtype=torch.long)), {}),
        ValueError,
        "vocab = 0",
    ),
    ("V = 1", lambda: seq(z(2, 3, 1), torch.zeros(2, 3, dtype=torch.long)), None, "log-prob 0 for every token"),
    (
        "logits and labels on different devices",
        lambda: seq(batch()[0].to("meta"), batch()[1]),
        ValueError,
        "logits and labels must be on the same device",
    ),
    (
        "odd batch for a chosen/rejected split",
        lambda: (simper_rs.SimPERLoss(), (batch()[0][:3], batch()[1][:3]), {}),
        ValueError,
        "an even, non-zero batch size), got batch size 3",
    ),
    (
        "unknown estimator",
        lambda: (simper_rs.dil_loss, (z(2), z(2)), {"estimator": "dpo"}),
        ValueError,
        "estimator must be one of ['lsif', 'bce', 'ukl', 'cpc'], got 'dpo'",
    ),
    (
        "unknown reduction",
        lambda: (simper_rs.simper_loss, (z(2), z(2)), {"reduction": "avg"}),
        ValueError,
        "reduction must be one of ['mean', 'sum', 'none'], got 'avg'",
    ),
    (
        "unknown backend",
        lambda: seq(*batch(), backend="cuda"),
        ValueError,
        "backend must be one of ['auto', 'rust', 'torch']",
    ),
    (
        "backend='rust' on a non-CPU tensor",
        lambda: (simper_rs.token_logps, (batch()[0].to("meta"), batch()[1].to("meta")), {"backend": "rust"}),
        ValueError,
        "backend='rust' runs on CPU and CUDA tensors",
    ),
    (
        "non-positive beta",
        lambda: (simper_rs.dil_loss, (z(2), z(2)), {"estimator": "cpc", "beta": 0.0}),
        ValueError,
        "beta must be a positive finite number",
    ),
    (
        "reference log-probs of the wrong shape",
        lambda: (simper_rs.dil_loss, (z(2), z(2), z(3), z(2)), {}),
        ValueError,
        "ref_chosen_logps must have the same shape as chosen_logps [2], got [3]",
    ),
    (
        "only one reference given",
        lambda: (simper_rs.dil_loss, (z(2), z(2), z(2)), {}),
        ValueError,
        "must be given together",
    ),
    (
        "reference on another device",
        lambda: (simper_rs.dil_loss, (z(2), z(2), z(2, device="meta"), z(2)), {}),
        ValueError,
        "ref_chosen_logps must be on the same device as chosen_logps",
    ),
    (
        "reference that requires grad",
        lambda: (simper_rs.dil_loss, (z(2, requires_grad=True), z(2), z(2, requires_grad=True), z(2)), {}),
        None,
        "accepted and detached: no gradient reaches it",
    ),
    (
        "chosen/rejected length mismatch",
        lambda: (simper_rs.simper_loss, (z(2), z(3)), {}),
        ValueError,
        "rejected_logps must have the same shape as chosen_logps",
    ),
    ("empty pair vectors", lambda: (simper_rs.simper_loss, (z(0), z(0)), {}), ValueError, "chosen_logps is empty"),
    (
        "integer log-probs",
        lambda: (simper_rs.simper_loss, (torch.zeros(2, dtype=torch.long), z(2)), {}),
        TypeError,
        "chosen_logps must be a floating-point tensor",
    ),
    (
        "NaN in the logits",
        lambda: seq(*labels_with(lambda y: y), backend="rust"),
        None,
        "propagates: NaN exactly where log_softmax gives NaN",
    ),
    (
        "inf in the logits",
        lambda: seq(*labels_with(lambda y: y), backend="rust"),
        None,
        "+inf: NaN for that row as in log_softmax; -inf: probability 0",
    ),
    (
        "hidden/weight size mismatch (fused linear)",
        lambda: (simper_rs.linear_sequence_logps, (z(2, 4, 8), z(11, 5), torch.zeros(2, 4, dtype=torch.long)), {}),
        ValueError,
        "weight is [vocab, hidden_size] = [11, 5], but hidden has hidden_size 8",
    ),
    (
        "hidden/weight dtype mismatch (fused linear)",
        lambda: (
            simper_rs.linear_sequence_logps,
            (z(2, 4, 8), z(11, 8, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.long)),
            {},
        ),
        TypeError,
        "weight dtype torch.float64 must equal hidden dtype torch.float32",
    ),
    (
        "numpy: float16 logits",
        lambda: (snp.token_logps, (np.zeros((1, 2, 3), np.float16), np.zeros((1, 2), np.int64)), {}),
        TypeError,
        "logits must be a float32 or float64 array",
    ),
    (
        "numpy: labels out of range",
        lambda: (snp.token_logps, (np.zeros((1, 2, 3), np.float32), np.array([[0, 3]])), {}),
        ValueError,
        "labels[0, 1] = 3 is outside the vocabulary [0, 3)",
    ),
]


def snapshot(values):
    return [
        v.clone()
        if isinstance(v, torch.Tensor) and v.device.type != "meta"
        else v.copy()
        if isinstance(v, np.ndarray)
        else None
        for v in values
    ]


def unchanged(before, values):
    """Every input tensor / array holds what it held before the call (NaN where it held NaN)."""
    for b, v in zip(before, values):
        if isinstance(v, torch.Tensor) and b is not None:
            torch.testing.assert_close(
                v.detach(), b.detach(), rtol=0, atol=0, equal_nan=True, msg="an input tensor was modified"
            )
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(b, v)


CHECKS = {
    "empty batch (sequence_logps)": lambda out, args: out.shape == (0,),
    "V = 1": lambda out, args: bool((out == 0).all()),
    "reference that requires grad": lambda out, args: (
        out.backward(),
        args[2].grad is None and args[0].grad is not None,
    )[1],
}


def nan_and_inf_behaviour(name):
    logits, labels = batch()
    if name.startswith("NaN"):
        logits[0, 2, 0] = float("nan")
    else:
        logits[1, 1, 3], logits[2, 2, 4] = float("inf"), float("-inf")
    before = snapshot([logits, labels])
    ours = simper_rs.token_logps(logits, labels, backend="rust")
    unchanged(before, [logits, labels])
    theirs = ref.token_logps(logits, labels)
    assert torch.equal(ours.isnan(), theirs.isnan())
    finite = ~theirs.isnan()
    torch.testing.assert_close(ours[finite], theirs[finite])


@pytest.mark.parametrize("build, exc, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_census(request, build, exc, fragment):
    name = request.node.callspec.id
    if name.startswith(("NaN", "inf")):
        return nan_and_inf_behaviour(name)
    fn, args, kwargs = build()
    values = list(args) + list(kwargs.values())
    before = snapshot(values)
    if exc is None:
        out = fn(*args, **kwargs)
        assert CHECKS[name](out, args)
    else:
        with pytest.raises(exc) as info:
            fn(*args, **kwargs)
        assert fragment in str(info.value), str(info.value)
    unchanged(before, values)


def test_saved_tensor_modified_between_forward_and_backward():
    logits, labels = ref.make_batch(pairs=1)
    y = logits * 1.0  # a non-leaf the op saves
    out = simper_rs.sequence_logps(y, labels, backend="rust").sum()
    with torch.no_grad():
        y.add_(1.0)  # modified in place after the forward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


@pytest.mark.parametrize("op", ["logits", "fused_linear"])
def test_saved_tensor_freed_between_forward_and_backward(op):
    logits, labels = ref.make_batch(pairs=1)
    if op == "logits":
        y = logits * 1.0
        out = simper_rs.sequence_logps(y, labels, backend="rust").sum()
    else:
        y = torch.randn(2, logits.shape[1], 4, requires_grad=True) * 1.0
        out = simper_rs.linear_sequence_logps(y, torch.randn(logits.shape[2], 4), labels).sum()
    y.untyped_storage().resize_(0)  # what FSDP-style storage freeing does
    with pytest.raises(RuntimeError, match="was freed or resized after the forward"):
        out.backward()


def test_wrong_torch_version_is_an_import_error():
    code = (
        "import torch; torch.__version__ = '1.13.0'\n"
        "try:\n    import simper_rs\nexcept ImportError as e:\n    print('ImportError:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    built = ".".join(simper_rs._core.TORCH_VERSION.split(".")[:2])
    assert f"ImportError: simper_rs was built for torch {built}.x but torch 1.13.0 is installed" in out.stdout, (
        out.stderr
    )


def table() -> str:
    rows = ["| input | result |", "| --- | --- |"]
    for name, _, exc, fragment in CASES:
        result = f"`{exc.__name__}`: {fragment}" if exc else f"accepted: {fragment}"
        rows.append(f"| {name} | {result.replace('|', '/')} |")
    rows.append(
        "| saved input modified in place before backward | `RuntimeError` from autograd: ... modified by an inplace operation |"
    )
    rows.append(
        "| saved input's storage freed or resized before backward | "
        "`RuntimeError`: logits saved for backward was freed or resized after the forward |"
    )
    rows.append(
        "| torch other than the release it was built for (2.13, 2.14 or 2.15) | "
        "`ImportError`: simper_rs was built for torch 2.N.x but torch X is installed |"
    )
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
