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
from typing import Dict, Optional, Union

import torch

from . import _core
from .fused_loss import fused_pair_loss
from .head import head_sequence_logps_with_stats
from .ops import LogitTransform, check_packed_inputs, linear_sequence_logps_with_stats, sequence_logps_with_stats

__all__ = [
    "simper_loss",
    "dil_loss",
    "SimPERLoss",
    "DILLoss",
    "PreferenceLossOutput",
    "ESTIMATORS",
    "check_dil_options",
]

#: The DIL estimators' names (defined once, in the Rust core).
ESTIMATORS = tuple(_core.ESTIMATORS)


def check_dil_options(estimator, beta) -> None:
    """Check DIL's options as every DIL entry point does (the rule lives in the Rust core):
    ``estimator`` one of :data:`ESTIMATORS`, ``beta`` a positive finite number; ``ValueError``
    or ``TypeError`` naming the argument otherwise."""
    if not isinstance(estimator, str):
        raise TypeError(f"estimator must be a string, one of {list(ESTIMATORS)}, got {type(estimator).__name__}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"beta must be a number, got {type(beta).__name__}")
    _core.check_dil_options(estimator, float(beta))


@torch.compiler.disable  # a libtorch call made from Rust: opaque to torch.compile
def simper_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """SimPER loss ``-exp(ℓ_w) + exp(ℓ_l)`` from average log-probs ``[P]`` of chosen and rejected.

    ``reduction`` is ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-pair losses ``[P]``).
    """
    return _core.simper_loss(chosen_logps, rejected_logps, reduction=reduction)


@torch.compiler.disable
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


class _PreferenceLoss(torch.nn.Module):
    def __init__(
        self, *, ignore_index: int = -100, shift: bool = True, backend: str = "auto", return_stats: bool = True
    ) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.shift = bool(shift)
        self.backend = backend
        self.return_stats = bool(return_stats)

    def check_pair_batch(self, source, name, labels, position_ids=None) -> None:
        """Check that ``source`` (logits or hidden, called ``name`` in messages) with ``labels``
        holds a [chosen; rejected] batch: an even number of rows, or of packed sequences with
        ``position_ids``. Raises before any work is done."""
        if not isinstance(source, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(source).__name__}")
        batch = source.shape[0] if source.dim() > 0 else 0
        if position_ids is None and (batch == 0 or batch % 2):
            raise ValueError(
                f"{name} must hold a [chosen; rejected] batch: the P chosen sequences then the P rejected ones "
                f"(an even, non-zero batch size), got batch size {batch}"
            )
        if position_ids is not None:
            sequences = check_packed_inputs(labels, position_ids, ignore_index=self.ignore_index, shift=self.shift)
            if sequences == 0 or sequences % 2:
                raise ValueError(
                    f"position_ids hold {sequences} packed sequences; a [chosen; rejected] batch needs an even number: "
                    "the P chosen sequences, then the P rejected ones"
                )

    def _split_pairs(
        self, logits, labels, hidden, lm_head_weight, lm_head_bias, chunk_size, lm_head, position_ids, transform
    ):
        """Average log-probs of a [chosen; rejected] batch, split into halves, and token stats.

        From ``logits``, or (fused linear, no logits materialised) from ``hidden`` and either
        ``lm_head_weight`` (+ optional ``lm_head_bias``) or the ``lm_head`` module itself.
        """
        if hidden is not None:
            if logits is not None:
                raise ValueError("pass either logits, or hidden with lm_head_weight (or lm_head), not both")
            self._check_fused_linear_arguments(lm_head_weight, lm_head_bias, lm_head)
            source, name = hidden, "hidden"
        else:
            if logits is None:
                raise TypeError("the loss needs logits, or hidden and lm_head_weight")
            source, name = logits, "logits"
        self.check_pair_batch(source, name, labels, position_ids)
        options = dict(
            average=True,
            ignore_index=self.ignore_index,
            shift=self.shift,
            return_stats=self.return_stats,
            position_ids=position_ids,
        )
        transform_args = dict(logit_scale=transform.scale, logit_softcap=transform.softcap)
        if lm_head is not None:
            logps, stats = head_sequence_logps_with_stats(
                lm_head, hidden, labels, chunk_size=chunk_size, transform=transform, **options
            )
        elif hidden is not None:
            logps, stats = linear_sequence_logps_with_stats(
                hidden, lm_head_weight, labels, lm_head_bias, chunk_size=chunk_size, **options, **transform_args
            )
        else:
            logps, stats = sequence_logps_with_stats(logits, labels, backend=self.backend, **options, **transform_args)
        half = logps.shape[0] // 2
        return logps[:half], logps[half:], stats

    def _loss(
        self,
        logits,
        labels,
        ref_chosen,
        ref_rejected,
        hidden,
        lm_head_weight,
        lm_head_bias,
        chunk_size,
        lm_head,
        position_ids,
        transform,
    ):
        if hidden is not None and logits is None:
            # From hidden states with a gradient to take: the gradients are computed in the forward
            # (simper_rs.fused_loss), after the same checks as the log-prob path.
            self._check_fused_linear_arguments(lm_head_weight, lm_head_bias, lm_head)
            self.check_pair_batch(hidden, "hidden", labels, position_ids)
            fused = fused_pair_loss(
                self,
                hidden,
                labels,
                weight=lm_head_weight,
                bias=lm_head_bias,
                lm_head=lm_head,
                position_ids=position_ids,
                ref_chosen=ref_chosen,
                ref_rejected=ref_rejected,
                chunk_size=chunk_size,
                transform=transform,
            )
            if fused is not None:
                half = fused.logps.shape[0] // 2
                return self.build_output(
                    fused.loss, fused.logps[:half], fused.logps[half:], fused.metrics, ref_chosen, ref_rejected
                )
        chosen, rejected, stats = self._split_pairs(
            logits, labels, hidden, lm_head_weight, lm_head_bias, chunk_size, lm_head, position_ids, transform
        )
        return self.from_sequence_logps(chosen, rejected, ref_chosen, ref_rejected, metrics=stats)

    @staticmethod
    def _check_fused_linear_arguments(lm_head_weight, lm_head_bias, lm_head) -> None:
        if (lm_head_weight is None) == (lm_head is None):
            raise ValueError(
                "hidden needs exactly one of lm_head_weight (the [vocab, hidden_size] output projection) "
                "and lm_head (the output projection module)"
            )
        if lm_head is not None and lm_head_bias is not None:
            raise ValueError("lm_head_bias goes with lm_head_weight; with lm_head the module's own bias is used")

    def fused_loss_spec(self):
        """(loss, estimator, beta): this loss as the Rust gradient-in-forward op
        (``src/bindings/fused_linear_loss.rs``) names it."""
        raise NotImplementedError

    def from_sequence_logps(
        self,
        chosen_logps: torch.Tensor,
        rejected_logps: torch.Tensor,
        ref_chosen_logps: Optional[torch.Tensor] = None,
        ref_rejected_logps: Optional[torch.Tensor] = None,
        *,
        metrics: Optional[Dict[str, float]] = None,
    ) -> PreferenceLossOutput:
        """The loss and metrics from per-sequence average log-probs ``[P]`` computed elsewhere
        (e.g. :func:`simper_rs.sequence_logps` over your own batch layout); ``metrics`` are
        extra entries for the output (such as ``entropy``)."""
        loss = self.pair_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
        return self.build_output(
            loss, chosen_logps, rejected_logps, metrics or {}, ref_chosen_logps, ref_rejected_logps
        )

    def pair_loss(self, chosen, rejected, ref_chosen=None, ref_rejected=None) -> torch.Tensor:
        """The batch loss (mean over pairs) from average log-probs ``[P]`` (and reference ones)."""
        raise NotImplementedError

    @torch.compiler.disable
    def build_output(self, loss, chosen, rejected, stats, ref_chosen=None, ref_rejected=None) -> PreferenceLossOutput:
        """The :class:`PreferenceLossOutput` of a computed ``loss``: the TRL metrics of the average
        log-probs ``chosen`` / ``rejected`` ``[P]`` (log-ratios with references) plus ``stats``."""
        metrics = _core.preference_metrics(chosen, rejected, ref_chosen, ref_rejected)
        metrics.update(stats)
        return PreferenceLossOutput(loss=loss, metrics=metrics, chosen_logps=chosen, rejected_logps=rejected)


class SimPERLoss(_PreferenceLoss):
    """SimPER on a ``[chosen; rejected]`` batch straight from a causal LM.

    ``forward(logits, labels)`` takes logits ``[2P, T, V]`` and labels ``[2P, T]`` (the P chosen
    sequences, then the P rejected ones) and returns a :class:`PreferenceLossOutput` whose
    ``loss`` is the mean over pairs of ``-exp(ℓ_w) + exp(ℓ_l)``.

    Options (keyword-only, shared with :class:`DILLoss`): ``ignore_index`` (-100), ``shift``
    (True), ``backend`` ("auto", "rust" or "torch") and ``return_stats`` (True: adds ``entropy``
    and ``mean_token_accuracy`` to the metrics, computed in the same pass over the logits).

    Fused linear: ``loss_fn(hidden=h, lm_head_weight=W, labels=labels)`` (optionally
    ``lm_head_bias`` and ``chunk_size``) takes the last hidden states ``[2P, T, H]`` instead of the
    logits and never materialises the ``[2P, T, V]`` logits; same loss and metrics. Under a
    sharding engine (FSDP, DeepSpeed ZeRO-3) pass the module instead, ``lm_head=model.lm_head``:
    the op then runs as the module's forward, where the engine has gathered the weight.

    Packed (padding-free) batches: ``position_ids`` (the shape of ``labels``, restarting at 0 at
    each sequence) with all chosen sequences before all rejected ones; same loss and metrics as
    the padded batch.

    Models that transform their logits after the projection: ``logit_scale`` (a number, or with
    ``hidden`` a tensor of one number or one per vocabulary entry, which gets its gradient) and
    ``logit_softcap`` (``c·tanh(z/c)``, after the scale), as :func:`simper_rs.token_logps` takes them.
    """

    def forward(
        self,
        logits: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        *,
        hidden: Optional[torch.Tensor] = None,
        lm_head_weight: Optional[torch.Tensor] = None,
        lm_head_bias: Optional[torch.Tensor] = None,
        chunk_size: Optional[int] = None,
        lm_head: Optional[torch.nn.Module] = None,
        position_ids: Optional[torch.Tensor] = None,
        logit_scale: Union[float, torch.Tensor, None] = None,
        logit_softcap: Optional[float] = None,
    ) -> PreferenceLossOutput:
        transform = LogitTransform(logit_scale, logit_softcap)
        return self._loss(
            logits,
            labels,
            None,
            None,
            hidden,
            lm_head_weight,
            lm_head_bias,
            chunk_size,
            lm_head,
            position_ids,
            transform,
        )

    def fused_loss_spec(self):
        return "simper", "lsif", 1.0

    def pair_loss(self, chosen, rejected, ref_chosen=None, ref_rejected=None) -> torch.Tensor:
        if ref_chosen is not None or ref_rejected is not None:
            raise ValueError("SimPER uses no reference log-probs; pass only chosen_logps and rejected_logps")
        return simper_loss(chosen, rejected)


class DILLoss(_PreferenceLoss):
    """DIL on a ``[chosen; rejected]`` batch, with ``estimator`` in ``("lsif", "bce", "ukl", "cpc")``.

    ``forward(logits, labels, ref_chosen_logps=None, ref_rejected_logps=None)``: the optional
    reference average log-probs ``[P]`` (e.g. precomputed with :func:`sequence_logps` under
    ``torch.no_grad()``) turn the rewards into log-ratios u = ℓ_θ - ℓ_ref.
    """

    def __init__(
        self,
        estimator: str = "lsif",
        beta: float = 1.0,
        *,
        ignore_index: int = -100,
        shift: bool = True,
        backend: str = "auto",
        return_stats: bool = True,
    ) -> None:
        super().__init__(ignore_index=ignore_index, shift=shift, backend=backend, return_stats=return_stats)
        check_dil_options(estimator, beta)
        self.estimator = estimator
        self.beta = float(beta)

    def forward(
        self,
        logits: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        ref_chosen_logps: Optional[torch.Tensor] = None,
        ref_rejected_logps: Optional[torch.Tensor] = None,
        *,
        hidden: Optional[torch.Tensor] = None,
        lm_head_weight: Optional[torch.Tensor] = None,
        lm_head_bias: Optional[torch.Tensor] = None,
        chunk_size: Optional[int] = None,
        lm_head: Optional[torch.nn.Module] = None,
        position_ids: Optional[torch.Tensor] = None,
        logit_scale: Union[float, torch.Tensor, None] = None,
        logit_softcap: Optional[float] = None,
    ) -> PreferenceLossOutput:
        transform = LogitTransform(logit_scale, logit_softcap)
        return self._loss(
            logits,
            labels,
            ref_chosen_logps,
            ref_rejected_logps,
            hidden,
            lm_head_weight,
            lm_head_bias,
            chunk_size,
            lm_head,
            position_ids,
            transform,
        )

    def fused_loss_spec(self):
        return "dil", self.estimator, self.beta

    def pair_loss(self, chosen, rejected, ref_chosen=None, ref_rejected=None) -> torch.Tensor:
        return dil_loss(chosen, rejected, ref_chosen, ref_rejected, estimator=self.estimator, beta=self.beta)

    def extra_repr(self) -> str:
        return f"estimator={self.estimator!r}, beta={self.beta}"
