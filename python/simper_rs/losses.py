"""SimPER and DIL preference losses, as functions and as ``torch.nn.Module`` s.

The formulas live in Rust (``src/losses.rs``) and run through libtorch, so autograd works on any
device. Inputs are per-sequence *average* log-probs ℓ of the policy (see :func:`sequence_logps`).

SimPER (no hyperparameters, no reference model), per pair::

    L = -exp(ℓ_w) + exp(ℓ_l)

DIL, with u = ℓ_θ - ℓ_ref (u = ℓ_θ without a reference model), per pair::

    lsif  L = -exp(u_w) + ½·exp(2·u_l)          (default)
    bce   L = softplus(-u_w) + softplus(u_l)
    ukl   L = -ℓ_θ(y_w) + exp(u_l)
    cpc   L = -log σ(β·(u_w - u_l))               (DPO on length-normalised log-ratios)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch

from . import _core
from .ops import sequence_logps

__all__ = ["simper_loss", "dil_loss", "SimPERLoss", "DILLoss", "PreferenceLossOutput", "ESTIMATORS"]

ESTIMATORS = ("lsif", "bce", "ukl", "cpc")


def simper_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """SimPER loss ``-exp(ℓ_w) + exp(ℓ_l)`` from average log-probs ``[P]`` of chosen and rejected.

    ``reduction`` is ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-pair losses ``[P]``).
    """
    return _core.simper_loss(chosen_logps, rejected_logps, reduction=reduction)


def dil_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: Optional[torch.Tensor] = None,
    ref_rejected_logps: Optional[torch.Tensor] = None,
    *,
    estimator: str = "lsif",
    beta: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """DIL loss with density-ratio ``estimator`` in ``("lsif", "bce", "ukl", "cpc")``.

    Reference log-probs are optional (reference-free when omitted), must be given together, and
    are treated as constants (detached). ``beta`` is used by ``cpc`` only.
    """
    return _core.dil_loss(
        chosen_logps,
        rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        estimator=estimator,
        beta=float(beta),
        reduction=reduction,
    )


@dataclass
class PreferenceLossOutput:
    """What the loss modules return.

    ``loss`` is the scalar to back-propagate; ``metrics`` holds detached floats under TRL's names
    (``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``,
    ``logps/chosen``, ``logps/rejected``); ``chosen_logps`` and ``rejected_logps`` are the
    per-sequence average log-probs ``[P]`` (with gradient).
    """

    loss: torch.Tensor
    metrics: Dict[str, float] = field(default_factory=dict)
    chosen_logps: Optional[torch.Tensor] = None
    rejected_logps: Optional[torch.Tensor] = None


def _split_pairs(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, shift: bool):
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    batch = logits.shape[0] if logits.dim() > 0 else 0
    if batch == 0 or batch % 2:
        raise ValueError(
            f"logits must hold a [chosen; rejected] batch: the P chosen sequences then the P rejected ones "
            f"(an even, non-zero batch size), got batch size {batch}"
        )
    logps = sequence_logps(logits, labels, average=True, ignore_index=ignore_index, shift=shift)
    return logps[: batch // 2], logps[batch // 2 :]


class _PreferenceLoss(torch.nn.Module):
    def __init__(self, *, ignore_index: int = -100, shift: bool = True) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.shift = bool(shift)

    def _output(self, loss, chosen, rejected, ref_chosen=None, ref_rejected=None) -> PreferenceLossOutput:
        metrics = _core.preference_metrics(chosen, rejected, ref_chosen, ref_rejected)
        return PreferenceLossOutput(loss=loss, metrics=metrics, chosen_logps=chosen, rejected_logps=rejected)


class SimPERLoss(_PreferenceLoss):
    """SimPER on a ``[chosen; rejected]`` batch straight from a causal LM.

    ``forward(logits, labels)`` takes logits ``[2P, T, V]`` and labels ``[2P, T]`` (the P chosen
    sequences, then the P rejected ones) and returns a :class:`PreferenceLossOutput` whose
    ``loss`` is the mean over pairs of ``-exp(ℓ_w) + exp(ℓ_l)``.
    """

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> PreferenceLossOutput:
        chosen, rejected = _split_pairs(logits, labels, self.ignore_index, self.shift)
        return self._output(simper_loss(chosen, rejected), chosen, rejected)


class DILLoss(_PreferenceLoss):
    """DIL on a ``[chosen; rejected]`` batch, with ``estimator`` in ``("lsif", "bce", "ukl", "cpc")``.

    ``forward(logits, labels, ref_chosen_logps=None, ref_rejected_logps=None)``: the optional
    reference average log-probs ``[P]`` (e.g. precomputed with :func:`sequence_logps` under
    ``torch.no_grad()``) turn the rewards into log-ratios u = ℓ_θ - ℓ_ref.
    """

    def __init__(self, estimator: str = "lsif", beta: float = 1.0, *, ignore_index: int = -100, shift: bool = True) -> None:
        super().__init__(ignore_index=ignore_index, shift=shift)
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {list(ESTIMATORS)}, got {estimator!r}")
        if not (isinstance(beta, (int, float)) and beta > 0 and beta != float("inf")):
            raise ValueError(f"beta must be a positive finite number, got {beta!r}")
        self.estimator = estimator
        self.beta = float(beta)

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        ref_chosen_logps: Optional[torch.Tensor] = None,
        ref_rejected_logps: Optional[torch.Tensor] = None,
    ) -> PreferenceLossOutput:
        chosen, rejected = _split_pairs(logits, labels, self.ignore_index, self.shift)
        loss = dil_loss(
            chosen, rejected, ref_chosen_logps, ref_rejected_logps, estimator=self.estimator, beta=self.beta
        )
        return self._output(loss, chosen, rejected, ref_chosen_logps, ref_rejected_logps)

    def extra_repr(self) -> str:
        return f"estimator={self.estimator!r}, beta={self.beta}"
