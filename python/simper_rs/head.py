"""The fused-linear op run as the ``lm_head`` module's own forward.

Sharding engines materialise a module's parameters only inside its forward: FSDP2 unshards a
``fully_shard`` unit in its pre-forward hook and reshards after, DeepSpeed ZeRO-3 gathers the
partitioned weight in its pre-forward hook and releases it after, FSDP1 unshards its flat
parameter around the wrapped module's forward. Outside, ``lm_head.weight`` is a shard, a DTensor
or an empty placeholder. So the op is not given the weight from outside; it is run *as* the
head's forward (``head(hidden)`` through ``Module.__call__``), where every engine's hooks have
materialised the weight, and where they also register the backward hooks that re-gather the
weight for the op's backward and reduce its gradient exactly as for the layer's usual matmul.
Gathering explicitly instead (``DTensor.full_tensor()``) bypasses that gradient reduction.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .ops import (
    _check_linear_inputs,
    _check_logps_inputs,
    _check_packed_inputs,
    _linear_logps_and_stats,
    _reduce_with_stats,
    _token_logps_and_stats,
)

__all__ = ["head_token_logps", "head_sequence_logps_with_stats", "add_logps_forward", "TokenLogpsOutput"]

# Config attributes by which some model families scale or cap the logits; the log-prob ops here
# compute plain log_softmax(h·Wᵀ + b), so such models are refused rather than silently mis-scored.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


def _is_dtensor(tensor: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        return False
    return isinstance(tensor, DTensor)


def _innermost(head: torch.nn.Module) -> torch.nn.Module:
    """The module that owns ``weight``: FSDP1 and DDP-style wrappers keep it as ``.module``."""
    while not isinstance(getattr(head, "weight", None), torch.Tensor) and isinstance(getattr(head, "module", None), torch.nn.Module):
        head = head.module
    return head


@contextlib.contextmanager
def _forward_replaced(module: torch.nn.Module, forward):
    previous = module.__dict__.get("forward")  # an instance-level forward someone installed, if any
    module.forward = forward
    try:
        yield
    finally:
        if previous is None:
            del module.forward
        else:
            module.forward = previous


def head_token_logps(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    shift: bool = True,
    chunk_size: Optional[int] = None,
    with_stats: bool = True,
    require_tokens: bool = False,
    mean_logits: bool = False,
) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor], Optional[torch.Tensor]]:
    """Per-token log-probs ``[B, T-1]`` of ``labels`` under ``head(hidden)``, the logits never built.

    ``head`` is the output projection module (``model.get_output_embeddings()``, possibly wrapped
    by FSDP1, or a ``fully_shard`` unit, or under ZeRO-3). Returns ``(logps, (entropy, correct),
    mean_logits)``: the per-token statistics (0 where ignored, zero-size without ``with_stats``)
    and, with ``mean_logits``, the mean over the vocabulary of each position's logits (no
    gradient), else None.
    """
    def compute(hidden, weight, bias):
        _check_linear_inputs(hidden, weight, bias, labels, ignore_index, shift, require_tokens=require_tokens)
        logps, (entropy, correct) = _linear_logps_and_stats(hidden, weight, labels, bias, ignore_index, shift, chunk_size, with_stats)
        return logps, entropy, correct, vocabulary_mean_logits(hidden, weight, bias, shift) if mean_logits else None

    logps, entropy, correct, means = run_as_head_forward(head, hidden, compute)
    return logps, (entropy, correct), means


@torch.no_grad()
def vocabulary_mean_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], shift: bool = True) -> torch.Tensor:
    """The mean over the vocabulary of each position's logits h·Wᵀ + b, as h·mean(W) + mean(b),
    float32 ``[B, T']``: TRL's ``logits/*`` metrics without the logits."""
    positions = hidden[:, :-1] if shift else hidden
    means = (positions @ weight.mean(0, dtype=torch.float32).to(hidden.dtype)).float()
    if bias is not None:
        means += bias.mean(dtype=torch.float32)
    return means


def head_weight_owner(head: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``head`` (possibly wrapped) that owns the lm_head weight."""
    owner = _innermost(head)
    if not isinstance(getattr(owner, "weight", None), torch.Tensor):
        raise ValueError(f"the lm_head ({type(head).__name__}) has no weight tensor for the fused-linear op")
    return owner


def run_as_head_forward(head: torch.nn.Module, hidden: torch.Tensor, compute):
    """``compute(hidden, weight, bias)`` run as ``head``'s forward, where the engines have
    materialised the weight, with weight and bias in the hidden states' dtype (as autocast would
    run the lm_head's matmul)."""
    owner = head_weight_owner(head)

    def fused_forward(hidden: torch.Tensor):
        weight = owner.weight
        if _is_dtensor(weight):
            raise ValueError(
                "lm_head.weight is still a sharded DTensor inside the lm_head's forward (tensor parallelism, or an "
                "FSDP2 layout whose unit holding the lm_head is not unsharded here); the fused-linear op needs the "
                "whole weight: use fused_linear=False"
            )
        bias = getattr(owner, "bias", None)
        return compute(hidden, weight.to(hidden.dtype), bias.to(hidden.dtype) if bias is not None else None)

    with _forward_replaced(owner, fused_forward):
        return head(hidden)


def head_sequence_logps_with_stats(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    *,
    average: bool = True,
    ignore_index: int = -100,
    shift: bool = True,
    chunk_size: Optional[int] = None,
    return_stats: bool = True,
    position_ids: Optional[torch.Tensor] = None,
):
    """:func:`simper_rs.linear_sequence_logps_with_stats` with the lm_head module instead of its
    weight, computed inside the module's forward (see the module docstring)."""
    if position_ids is not None:
        _check_packed_inputs(labels, position_ids, ignore_index=ignore_index, shift=shift, require_tokens=average)
    tokens, stats, _ = head_token_logps(
        head, hidden, labels, ignore_index=ignore_index, shift=shift, chunk_size=chunk_size, with_stats=return_stats,
        require_tokens=average and position_ids is None,
    )
    return _reduce_with_stats(tokens, stats if return_stats else None, labels, ignore_index, shift, average, position_ids)


def _model_output_base():
    try:
        from transformers.utils import ModelOutput
    except ImportError:  # pragma: no cover - transformers is installed with the trainers
        return object
    return ModelOutput


@dataclass
class TokenLogpsOutput(_model_output_base()):
    """What ``model(..., simper_rs_labels=labels)`` returns (see :func:`add_logps_forward`):
    per-token values ``[B, T-1]``, 0 where the label is ignored. ``correct`` is argmax == label as
    0/1; ``mean_logits`` the mean of the logits over the vocabulary (no gradient). With
    ``simper_rs_loss``, when a gradient is taken: ``loss`` and the per-sequence average log-probs
    ``sequence_logps`` ``[2P]`` (both with gradient; the per-token values then have none)."""

    token_logps: Optional[torch.Tensor] = None
    entropy: Optional[torch.Tensor] = None
    correct: Optional[torch.Tensor] = None
    mean_logits: Optional[torch.Tensor] = None
    loss: Optional[torch.Tensor] = None
    sequence_logps: Optional[torch.Tensor] = None


def _check_plain_lm_head(model) -> None:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value is not None and value != 1.0:
            raise ValueError(
                f"{type(model).__name__} transforms its logits ({name}={value}); simper_rs computes log-probs of "
                "plain lm_head logits, so it would train on the wrong distribution. This model is not supported."
            )


def add_logps_forward(model: torch.nn.Module) -> None:
    """Let ``model(..., simper_rs_labels=labels)`` return a :class:`TokenLogpsOutput` computed by
    this package inside the model's own forward (idempotent).

    ``model`` is a HuggingFace causal LM (``base_model`` gives the last hidden states,
    ``get_output_embeddings()`` the lm_head). Called through its wrapper (DDP, FSDP, DeepSpeed,
    Accelerate), everything happens inside the wrapped forward, as the engines expect; with
    ``simper_rs_fused_linear=True`` (default) the log-probs come from the fused-linear op run as
    the lm_head's forward (:func:`head_token_logps`), else from the lm_head's logits and the fused
    kernel. With ``simper_rs_loss=loss_fn`` (a SimPERLoss or DILLoss; ``simper_rs_refs`` =
    (ref_chosen, ref_rejected) for DIL against a reference), fused linear and a gradient to take,
    the output also holds the loss, its gradients computed in the forward (simper_rs.fused_loss).
    Calls without ``simper_rs_labels`` go to the previous forward unchanged (generation).
    """
    if getattr(model, "_simper_rs_logps_forward", False):
        return
    if not (hasattr(model, "base_model") and hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None):
        raise ValueError(
            f"the fused log-probs need a HuggingFace causal LM (base_model and get_output_embeddings()), got {type(model).__name__}"
        )
    _check_plain_lm_head(model)
    previous = model.forward

    @functools.wraps(previous)
    def forward(*args, simper_rs_labels=None, simper_rs_fused_linear=True, simper_rs_loss=None, simper_rs_refs=None, **kwargs):
        if simper_rs_labels is None:
            return previous(*args, **kwargs)
        kwargs["use_cache"] = False
        hidden = model.base_model(*args, **kwargs).last_hidden_state
        labels = simper_rs_labels
        # Prompt-learning PEFT prepends virtual tokens: keep the positions of the real tokens.
        hidden = hidden[:, -labels.shape[1] :]
        head = model.get_output_embeddings()
        labels = labels.to(hidden.device)
        position_ids = kwargs.get("position_ids")
        if simper_rs_loss is not None and simper_rs_fused_linear:
            # The loss itself, run in the lm_head's forward with its gradients computed there.
            from .fused_loss import fused_pair_loss

            packed = position_ids.to(labels.device) if position_ids is not None else None
            simper_rs_loss._check_pair_batch(hidden, "hidden", labels, packed)
            ref_chosen, ref_rejected = simper_rs_refs if simper_rs_refs is not None else (None, None)
            fused = fused_pair_loss(
                simper_rs_loss, hidden, labels, lm_head=head, position_ids=packed, ref_chosen=ref_chosen,
                ref_rejected=ref_rejected, mean_logits=True,
            )
            if fused is not None:
                return TokenLogpsOutput(
                    token_logps=fused.token_logps, entropy=fused.entropy, correct=fused.correct, mean_logits=fused.mean_logits,
                    loss=fused.loss, sequence_logps=fused.logps,
                )
        # Packed rows (position_ids restarting at 0): every packed sequence needs a response token.
        if position_ids is not None:
            _check_packed_inputs(labels, position_ids.to(labels.device), ignore_index=-100, shift=True, require_tokens=True)
        per_row = position_ids is None
        if simper_rs_fused_linear:
            logps, (entropy, correct), mean_logits = head_token_logps(head, hidden, labels, require_tokens=per_row, mean_logits=True)
        else:
            logits = head(hidden)
            _check_logps_inputs(logits, labels, ignore_index=-100, shift=True, require_tokens=per_row)
            logps, (entropy, correct) = _token_logps_and_stats(logits, labels, -100, True, "auto", True)
            with torch.no_grad():
                mean_logits = logits[:, :-1].mean(-1, dtype=torch.float32)
        return TokenLogpsOutput(token_logps=logps, entropy=entropy, correct=correct, mean_logits=mean_logits)

    model.forward = forward
    model._simper_rs_logps_forward = True
