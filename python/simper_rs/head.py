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

A logit transform that reads the head's own parameters (a learnable logit scale inside the
lm_head) is given as a function of the module that owns the weight and evaluated there too.
This module knows nothing of transformers: :mod:`simper_rs.integrations` builds on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Dict, Optional, Tuple, Union

import torch

from .ops import (
    LinearLogps,
    LogitTransform,
    check_linear_inputs,
    check_packed_inputs,
    linear_logps_and_stats,
    reduce_with_stats,
)

__all__ = [
    "head_token_logps",
    "head_sequence_logps_with_stats",
    "run_as_head_forward",
    "head_weight_owner",
    "HeadTransform",
]

#: A transform, or a function of the module owning the lm_head weight that returns one (for a
#: scale that is a parameter of the head: it is read where the engines have gathered it).
HeadTransform = Union[LogitTransform, Callable[[torch.nn.Module], LogitTransform]]


def _is_dtensor(tensor: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        return False
    return isinstance(tensor, DTensor)


def _innermost(head: torch.nn.Module) -> torch.nn.Module:
    """The module that owns ``weight``: FSDP1 and DDP-style wrappers keep it as ``.module``."""
    while not isinstance(getattr(head, "weight", None), torch.Tensor) and isinstance(
        getattr(head, "module", None), torch.nn.Module
    ):
        head = head.module
    return head


@contextlib.contextmanager
def forward_replaced(module: torch.nn.Module, forward):
    """``module.forward`` is ``forward`` inside the block (restored after, whatever happens)."""
    previous = module.__dict__.get("forward")  # an instance-level forward someone installed, if any
    module.forward = forward
    try:
        yield
    finally:
        if previous is None:
            del module.forward
        else:
            module.forward = previous


def head_weight_owner(head: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``head`` (possibly wrapped) that owns the lm_head weight."""
    owner = _innermost(head)
    if not isinstance(getattr(owner, "weight", None), torch.Tensor):
        raise ValueError(f"the lm_head ({type(head).__name__}) has no weight tensor for the fused-linear op")
    return owner


def run_as_head_forward(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    compute,
    transform: HeadTransform = LogitTransform(),
    vocab_limit: Optional[int] = None,
):
    """``compute(hidden, weight, bias, transform)`` run as ``head``'s forward, where the engines
    have materialised the weight, with weight and bias in the hidden states' dtype (as autocast
    would run the lm_head's matmul), and only their first ``vocab_limit`` rows when given (a
    model whose embedding is padded beyond its vocabulary)."""
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
        if vocab_limit is not None:
            weight, bias = weight[:vocab_limit], bias[:vocab_limit] if bias is not None else None
        resolved = transform(owner) if callable(transform) else transform
        result = compute(hidden, weight.to(hidden.dtype), bias.to(hidden.dtype) if bias is not None else None, resolved)
        # The engines' forward hooks attach their backward hooks (ZeRO-3's parameter fetch,
        # FSDP2's unshard) to the tensors of the module's output, found by walking tuples,
        # lists and dicts: a dataclass is handed over as a tuple of its fields.
        if dataclasses.is_dataclass(result):
            kind[0] = type(result)
            return tuple(getattr(result, f.name) for f in dataclasses.fields(result))
        return result

    kind = [None]
    with forward_replaced(owner, fused_forward):
        out = head(hidden)
    return kind[0](*out) if kind[0] is not None else out


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
    transform: HeadTransform = LogitTransform(),
    vocab_limit: Optional[int] = None,
) -> LinearLogps:
    """Per-token log-probs ``[B, T-1]`` of ``labels`` under ``t(head(hidden))``, the logits never
    built, as a :class:`~simper_rs.ops.LinearLogps` (statistics empty without ``with_stats``, the
    mean logit over the vocabulary only with ``mean_logits``).

    ``head`` is the output projection module (``model.get_output_embeddings()``, possibly wrapped
    by FSDP1, or a ``fully_shard`` unit, or under ZeRO-3); ``transform`` what the model does to
    its logits after the projection; ``vocab_limit`` keeps only the first vocabulary entries.
    """

    def compute(hidden, weight, bias, resolved):
        check_linear_inputs(
            hidden, weight, bias, labels, ignore_index, shift, require_tokens=require_tokens, transform=resolved
        )
        return linear_logps_and_stats(
            hidden, weight, labels, bias, ignore_index, shift, chunk_size, with_stats, resolved, mean_logits
        )

    return run_as_head_forward(head, hidden, compute, transform, vocab_limit)


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
    transform: HeadTransform = LogitTransform(),
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """:func:`simper_rs.linear_sequence_logps_with_stats` with the lm_head module instead of its
    weight, computed inside the module's forward (see the module docstring)."""
    if position_ids is not None:
        check_packed_inputs(labels, position_ids, ignore_index=ignore_index, shift=shift, require_tokens=average)
    out = head_token_logps(
        head,
        hidden,
        labels,
        ignore_index=ignore_index,
        shift=shift,
        chunk_size=chunk_size,
        with_stats=return_stats,
        require_tokens=average and position_ids is None,
        transform=transform,
    )
    stats = (out.entropy, out.correct) if return_stats else None
    return reduce_with_stats(out.token_logps, stats, labels, ignore_index, shift, average, position_ids)
