"""simper_rs on numpy arrays: the fused log-prob kernel and the loss formulas, no torch tensors.

Logits are read straight from the array's memory (float32 or float64, any batch and position
strides; a copy is made only when the vocabulary axis is not contiguous). The loss functions
return ``(loss, grad_chosen, grad_rejected)``: the gradients of the (reduced) loss with respect
to the chosen and rejected average log-probs, for use in a hand-written backward pass.

    import numpy as np, simper_rs.numpy as snp
    logps = snp.sequence_logps(logits, labels)              # [B] float32
    loss, g_w, g_l = snp.simper_loss(logps[:P], logps[P:])
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np

from . import _core

__all__ = ["token_logps", "sequence_logps", "simper_loss", "dil_loss"]

LossAndGrads = Tuple[Union[float, np.ndarray], np.ndarray, np.ndarray]


def _labels(labels) -> np.ndarray:
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"labels must be a numpy.ndarray of int64 token ids, got {type(labels).__name__}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be an integer array of token ids, got dtype {labels.dtype}")
    return labels.astype(np.int64, copy=False)


def token_logps(logits: np.ndarray, labels: np.ndarray, *, ignore_index: int = -100, shift: bool = True) -> np.ndarray:
    """Per-token log-probs ``[B, T-1]`` (``[B, T]`` without shift), 0 where ignored."""
    return _core.numpy_token_logps(logits, _labels(labels), ignore_index, shift)


def sequence_logps(
    logits: np.ndarray, labels: np.ndarray, *, average: bool = True, ignore_index: int = -100, shift: bool = True
) -> np.ndarray:
    """Per-sequence average (or, with ``average=False``, summed) log-probs ``[B]``."""
    return _core.numpy_sequence_logps(logits, _labels(labels), average, ignore_index, shift)


def _pairs(name: str, values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array [pairs], got shape {list(array.shape)}")
    return array


def simper_loss(chosen_logps, rejected_logps, *, reduction: str = "mean") -> LossAndGrads:
    """SimPER ``-exp(ℓ_w) + exp(ℓ_l)`` and its gradients; see :func:`simper_rs.simper_loss`."""
    return _core.numpy_simper_loss(
        _pairs("chosen_logps", chosen_logps), _pairs("rejected_logps", rejected_logps), reduction
    )


def dil_loss(
    chosen_logps,
    rejected_logps,
    ref_chosen_logps: Optional[np.ndarray] = None,
    ref_rejected_logps: Optional[np.ndarray] = None,
    *,
    estimator: str = "lsif",
    beta: float = 1.0,
    reduction: str = "mean",
) -> LossAndGrads:
    """DIL and its gradients; see :func:`simper_rs.dil_loss`."""
    refs = [
        None if r is None else _pairs(n, r)
        for n, r in (("ref_chosen_logps", ref_chosen_logps), ("ref_rejected_logps", ref_rejected_logps))
    ]
    return _core.numpy_dil_loss(
        _pairs("chosen_logps", chosen_logps),
        _pairs("rejected_logps", rejected_logps),
        *refs,
        estimator,
        float(beta),
        reduction,
    )
