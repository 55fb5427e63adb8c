"""Log-prob reductions from causal-LM logits and labels.

Conventions (those of HuggingFace and TRL):

* ``logits`` is ``[B, T, V]`` as the model returns it; ``labels`` is int64 ``[B, T]`` with
  ``ignore_index`` (default -100) on prompt and padding positions.
* With ``shift=True`` (the default) the logits at position ``t`` predict the label at ``t + 1``;
  the shift is a view, the logits are never copied. Use ``shift=False`` for aligned inputs.
* Log-probs are float32 (float64 for float64 logits); accumulation is always in float32 or wider.
"""
from __future__ import annotations

import torch

from . import _core

__all__ = ["token_logps", "sequence_logps"]


def token_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    shift: bool = True,
) -> torch.Tensor:
    """Per-token log-probabilities ``log softmax(logits)[label]``, 0 where the label is ignored.

    Returns ``[B, T-1]`` with ``shift=True`` (entry ``t`` is the log-prob of ``labels[:, t+1]``),
    else ``[B, T]``. Differentiable with respect to ``logits``.
    """
    return _core.token_logps_torch(logits, labels, ignore_index=ignore_index, shift=shift)


def sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    average: bool = True,
    ignore_index: int = -100,
    shift: bool = True,
) -> torch.Tensor:
    """Per-sequence log-probabilities ``[B]`` over the response tokens.

    ``average=True`` gives ℓ(y) = (1/|y|) Σ_t log π(y_t | x, y_<t), the quantity SimPER and DIL
    use; ``average=False`` gives the sum. A row with no response tokens has no average and
    raises ``ValueError`` naming the row.
    """
    _core.check_logps_inputs(logits, labels, ignore_index=ignore_index, shift=shift, require_tokens=average)
    tokens = token_logps(logits, labels, ignore_index=ignore_index, shift=shift)
    return _core.reduce_sequence_logps(tokens, labels, ignore_index=ignore_index, shift=shift, average=average)
