"""SimPER and DIL from hidden states with the gradients computed in the forward.

The fused-linear log-prob op (:func:`simper_rs.linear_token_logps`) knows nothing of the loss, so
its backward recomputes every chunk's logits. The loss modules know more: every loss here is a
function of each pair's two average log-probs, so the Rust side (``src/bindings/fused_linear_loss.rs``)
processes chunks of whole pairs and, while a chunk's logits are still in memory, takes the loss
gradient of its tokens and the hidden / weight / bias (and logit-scale) gradients: three matmuls
per chunk instead of four, and no logits recomputed. The autograd function below returns those
gradients from its backward, scaled by the incoming gradient of the loss.

Used by :class:`~simper_rs.SimPERLoss` and :class:`~simper_rs.DILLoss` when they are given
``hidden`` (with ``lm_head_weight`` or ``lm_head``) and a gradient is needed; under
``torch.no_grad()`` (evaluation) they run the plain fused-linear forward instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch

from . import _core
from .head import HeadTransform, head_weight_owner, run_as_head_forward
from .ops import (
    LogitTransform,
    check_chunk_size,
    linear_cuda_stream,
    reduce_with_stats,
    require_storage,
    split_transform,
)


class _GradientInForward(torch.autograd.Function):
    """(loss, per-sequence average log-probs [2P]) of a [chosen; rejected] batch from hidden states.

    The gradient of ``loss`` is computed in the forward; a gradient reaching the sequence
    log-probs directly (another term built on ``chosen_logps``) goes through the fused-linear
    op's recomputing backward.
    """

    @staticmethod
    def forward(
        ctx, hidden, weight, bias, scale, labels, position_ids, ref_chosen, ref_rejected, loss_fn, options, side
    ):
        ignore_index, shift, chunk_size, return_stats, with_means, logit_scale, logit_softcap = options
        needs = tuple(bool(n) for n in ctx.needs_input_grad[:4])
        kind, estimator, beta = loss_fn.fused_loss_spec()
        with torch.autocast(hidden.device.type, enabled=False):  # the op picks its own precision
            tokens, lse, entropy, correct, means, *grads = _core.linear_pair_loss_forward(
                hidden,
                weight,
                bias,
                labels,
                position_ids,
                kind,
                estimator,
                beta,
                ref_chosen,
                ref_rejected,
                ignore_index,
                shift,
                chunk_size,
                return_stats,
                needs,
                linear_cuda_stream(hidden),
                logit_scale=logit_scale,
                logit_scale_tensor=scale,
                logit_softcap=logit_softcap,
                with_means=with_means,
            )
        # The loss and metrics from the token log-probs exactly as the log-prob path computes them.
        logps, metrics = reduce_with_stats(
            tokens, (entropy, correct) if return_stats else None, labels, ignore_index, shift, True, position_ids
        )
        half = logps.shape[0] // 2
        loss = loss_fn.pair_loss(logps[:half], logps[half:], ref_chosen, ref_rejected)
        side.update(
            metrics=metrics,
            token_logps=tokens,
            entropy=entropy,
            correct=correct,
            mean_logits=means if with_means else None,
        )
        ctx.set_materialize_grads(False)
        ctx.grads = grads  # hidden, weight, bias, scale
        ctx.save_for_backward(hidden, weight, bias, scale, labels, position_ids, lse, logps, ref_chosen, ref_rejected)
        ctx.options, ctx.loss_fn = options, loss_fn
        return loss, logps

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, grad_logps):
        hidden, weight, bias, scale, labels, position_ids, lse, logps, ref_chosen, ref_rejected = ctx.saved_tensors
        grads = [None, None, None, None]
        if grad_loss is not None and ctx.grads is not None:
            # Handed over (not kept) so that autograd can store them as .grad without a copy; scaled in place.
            grads, ctx.grads = list(ctx.grads), None
            for g in grads:
                if g is not None:
                    g.mul_(grad_loss)
        elif grad_loss is not None:
            # A second backward through the same graph (retain_graph=True, gradcheck): the forward's
            # gradients are spent, so the loss's gradient goes through the recomputing path below.
            with torch.enable_grad():
                leaf = logps.detach().requires_grad_()
                half = leaf.shape[0] // 2
                loss = ctx.loss_fn.pair_loss(leaf[:half], leaf[half:], ref_chosen, ref_rejected)
                (from_loss,) = torch.autograd.grad(loss, leaf, grad_loss)
            grad_logps = from_loss if grad_logps is None else grad_logps + from_loss
        if grad_logps is not None:
            ignore_index, shift, chunk_size, _, _, logit_scale, logit_softcap = ctx.options
            for name, tensor in (("hidden", hidden), ("weight", weight), ("bias", bias), ("logit_scale", scale)):
                if tensor is not None:
                    require_storage(name, tensor)
            # Per-token gradients through the same reduction as the forward, then the op's backward.
            with torch.enable_grad():
                tokens = torch.zeros(lse.shape, dtype=lse.dtype, device=lse.device, requires_grad=True)
                reduced, _ = reduce_with_stats(tokens, None, labels, ignore_index, shift, True, position_ids)
                (grad_tokens,) = torch.autograd.grad(reduced, tokens, grad_logps)
            with torch.autocast(hidden.device.type, enabled=False):
                extra = torch.ops.simper_rs.linear_token_logps_backward(
                    grad_tokens,
                    hidden,
                    weight,
                    bias,
                    labels,
                    lse,
                    ignore_index,
                    shift,
                    chunk_size,
                    scale,
                    logit_scale,
                    logit_softcap,
                )
            present = (True, True, bias is not None, scale is not None)
            for i, needed in enumerate(ctx.needs_input_grad[:4]):
                if needed and present[i]:
                    grads[i] = extra[i] if grads[i] is None else grads[i] + extra[i]
        return (*grads, None, None, None, None, None, None, None)


def _needs_gradient(*tensors: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


@dataclass
class FusedPairLoss:
    """What :func:`fused_pair_loss` returns: the loss, the per-sequence average log-probs ``[2P]``
    (chosen ones first; both with gradient), the token metrics, and per-token values ``[B, T']``
    without gradient: log-probs, entropy and argmax == label (empty without the loss's
    ``return_stats``), and the mean logit over the vocabulary when asked."""

    loss: torch.Tensor
    logps: torch.Tensor
    metrics: Dict[str, float]
    token_logps: torch.Tensor
    entropy: torch.Tensor
    correct: torch.Tensor
    mean_logits: Optional[torch.Tensor] = None


@torch.compiler.disable
def fused_pair_loss(
    loss_fn,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    *,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    lm_head: Optional[torch.nn.Module] = None,
    position_ids: Optional[torch.Tensor] = None,
    ref_chosen: Optional[torch.Tensor] = None,
    ref_rejected: Optional[torch.Tensor] = None,
    chunk_size: Optional[int] = None,
    mean_logits: bool = False,
    transform: HeadTransform = LogitTransform(),
    vocab_limit: Optional[int] = None,
) -> Optional[FusedPairLoss]:
    """``loss_fn`` (a SimPERLoss or DILLoss) from hidden states, with the gradients computed in
    the forward; ``None`` when no gradient is needed (the caller then runs the plain fused-linear
    forward, which is cheaper).

    The output projection is ``weight`` (+ ``bias``), or the ``lm_head`` module, in whose own
    forward the op then runs (see :mod:`simper_rs.head`); ``transform`` is what the model does to
    the projection's logits (a scale, a softcap; a scale tensor gets its gradient too), and
    ``vocab_limit`` (with ``lm_head``) keeps only the first vocabulary entries.
    """
    check_chunk_size(chunk_size)
    if lm_head is not None:
        owner = head_weight_owner(lm_head)
        weight, bias = owner.weight, getattr(owner, "bias", None)
        resolved = transform(owner) if callable(transform) else transform
    else:
        resolved = transform
    scale = resolved.scale if isinstance(resolved.scale, torch.Tensor) else None
    if not _needs_gradient(hidden, weight, bias, scale):
        return None

    def compute(hidden, weight, bias, resolved):
        scale_tensor, logit_scale, logit_softcap = split_transform(hidden, resolved)
        options = (
            loss_fn.ignore_index,
            loss_fn.shift,
            chunk_size,
            loss_fn.return_stats,
            mean_logits,
            logit_scale,
            logit_softcap,
        )
        side: Dict[str, object] = {}
        loss, logps = _GradientInForward.apply(
            hidden, weight, bias, scale_tensor, labels, position_ids, ref_chosen, ref_rejected, loss_fn, options, side
        )
        return FusedPairLoss(loss=loss, logps=logps, **side)

    if lm_head is not None:
        return run_as_head_forward(lm_head, hidden, compute, transform, vocab_limit)
    return compute(hidden, weight, bias, resolved)
