"""HuggingFace causal LMs: this package's log-probs computed inside the model's own forward.

:func:`add_logps_forward` lets ``model(..., simper_rs_labels=labels)`` return per-token log-probs
(and, given a loss, the loss with its gradients computed in the forward). The fused-linear path
runs the model's **own** forward with the ``lm_head`` replaced by a stand-in that records its
input and returns an empty tensor: whatever the forward does before the projection (head
transforms such as BERT's ``cls.predictions.transform``, hidden-state scaling, prompt tokens, a
base model that returns a causal-LM output) happens as usual, and no ``[B, T, V]`` logits are
built. The recorded input then goes through the real lm_head module, whose forward runs the
fused op (:mod:`simper_rs.head`, so sharding engines gather and reduce its weight), with the
logit transforms of :mod:`simper_rs.integrations.transforms`.

Nothing else is assumed. On the first fused step of a model, :func:`verify_fused_head` runs the
unmodified forward on one sequence and compares a few positions' fused log-probs with
``log_softmax`` of the model's own logits; a difference beyond float tolerance is an error naming
the model and the size of the difference. Mixture-of-Experts models return their router
load-balancing loss as ``aux_loss`` when called with ``output_router_logits=True``.
See docs/design.md.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from ..fused_loss import fused_pair_loss
from ..head import head_token_logps, head_weight_owner
from ..ops import check_logps_inputs, check_packed_inputs, token_logps_and_stats
from .transforms import ModelTransform, model_transform

__all__ = ["add_logps_forward", "verify_fused_head", "TokenLogpsOutput", "FusedHeadMismatch", "CHECK_ENV"]

#: Set to ``off`` to skip the first-step comparison with the model's own logits.
CHECK_ENV = "SIMPER_RS_FUSED_CHECK"


class FusedHeadMismatch(ValueError):
    """The fused log-probs of a model disagree with ``log_softmax`` of its own logits."""


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
    0/1; ``mean_logits`` the mean of the model's logits over the vocabulary (no gradient). With
    ``simper_rs_loss``, when a gradient is taken: ``loss`` and the per-sequence average log-probs
    ``sequence_logps`` ``[2P]`` (both with gradient; the per-token values then have none).
    ``aux_loss`` is the model's router load-balancing loss (Mixture-of-Experts models called with
    ``output_router_logits=True``), else None."""

    token_logps: Optional[torch.Tensor] = None
    entropy: Optional[torch.Tensor] = None
    correct: Optional[torch.Tensor] = None
    mean_logits: Optional[torch.Tensor] = None
    loss: Optional[torch.Tensor] = None
    sequence_logps: Optional[torch.Tensor] = None
    aux_loss: Optional[torch.Tensor] = None


# -- the lm_head


def _resolve_head(head: torch.nn.Module) -> torch.nn.Module:
    """The module whose forward computes the logits: PEFT's ``modules_to_save`` wrapper routes to
    the active trained copy; an adapter *on* the head (LoRA) is not a plain projection."""
    if hasattr(head, "modules_to_save") and hasattr(head, "original_module"):
        active = [a for a in getattr(head, "active_adapters", []) if a in head.modules_to_save]
        if getattr(head, "disable_adapters", False) or not active:
            return head.original_module
        return head.modules_to_save[active[0]]
    if hasattr(head, "base_layer") and any(
        hasattr(head, n) for n in ("lora_A", "lora_embedding_A", "lora_magnitude_vector")
    ):
        raise ValueError(
            f"the lm_head is adapted by PEFT ({type(head).__name__}): the fused-linear op computes h·Wᵀ with the base "
            "weight only. Leave the lm_head out of target_modules, or use fused_linear=False (use_fused_linear=False)"
        )
    return head


def _output_head(model) -> torch.nn.Module:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise ValueError(
            "the fused log-probs need a HuggingFace causal LM with an output projection (get_output_embeddings()), "
            f"got {type(model).__name__}"
        )
    return head


def _head_location(model, head) -> Tuple[torch.nn.Module, str]:
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is head:
                return parent, name
    raise ValueError(
        f"{type(model).__name__}.get_output_embeddings() ({type(head).__name__}) is not a submodule of the model"
    )


class _HeadInputRecorder(torch.nn.Module):
    """Stands in for the lm_head inside the model's forward: records the input, returns an empty
    ``[..., 0]`` tensor (the model's own post-processing of it costs nothing), and forwards any
    attribute read (``lm_head.weight.dtype`` and the like) to the real head."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.__dict__["_real_head"] = head
        self.__dict__["inputs"] = []

    def forward(self, hidden, *args, **kwargs):
        self.inputs.append(hidden)
        return hidden.new_zeros(hidden.shape[:-1] + (0,))

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_real_head"], name)


class _FusedUnavailable(Exception):
    """The model's forward cannot run with the lm_head replaced (the reason is the message)."""


@contextlib.contextmanager
def _recording_head_input(model, head):
    parent, name = _head_location(model, head)
    recorder = _HeadInputRecorder(head)
    parent._modules[name] = recorder  # no __setattr__: nothing is registered, the structure is restored after
    try:
        yield recorder
    finally:
        parent._modules[name] = head


def _head_input(model, previous, args, kwargs, spec: ModelTransform, length: int):
    """(the lm_head's input for the last ``length`` positions [B, length, H], the model's output)
    from the model's own forward, the projection skipped."""
    head = _output_head(model)
    try:
        with _recording_head_input(model, head) as recorder:
            outputs = previous(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - any failure means the fused path does not fit this forward
        raise _FusedUnavailable(
            f"its forward fails when the lm_head returns no logits ({type(err).__name__}: {err})"
        ) from err
    if len(recorder.inputs) != 1:
        raise _FusedUnavailable(
            f"its forward calls the lm_head {len(recorder.inputs)} times"
            if recorder.inputs
            else "its forward computes the logits without calling the lm_head module"
        )
    hidden = recorder.inputs[0]
    if spec.first_stream:
        hidden = hidden[:, 0]
    if hidden.dim() != 3:
        raise _FusedUnavailable(f"the lm_head's input has shape {list(hidden.shape)}, not [batch, positions, hidden]")
    # Prompt-learning PEFT prepends virtual tokens: keep the positions of the real tokens.
    return hidden[:, -length:], outputs


def _fused_tokens(model, spec, hidden, labels, *, require_tokens, with_stats=True, mean_logits=True, shift=True):
    head = _resolve_head(_output_head(model))
    return head_token_logps(
        head,
        hidden,
        labels,
        shift=shift,
        with_stats=with_stats,
        require_tokens=require_tokens,
        mean_logits=mean_logits,
        transform=spec.transform,
        vocab_limit=spec.vocab_limit,
    )


def _check_head_parameters(model, head, spec: ModelTransform) -> None:
    """Refuse an lm_head with parameters besides its weight and bias that the transform table
    does not read: the fused op would give them no gradient (and at their initial values the
    first-step check cannot tell, a learned scale of 1 changing nothing)."""
    try:
        owner = head_weight_owner(_resolve_head(head))
    except ValueError:
        # an adapted head is refused with its own message on the first fused call; a head that
        # is no projection (a ModuleList of per-codebook heads) is never called as one, so the
        # first fused call falls back to the model's own logits
        return
    known = {"weight", "bias", *spec.head_attributes}
    unknown = [name for name, _ in owner.named_parameters() if name not in known and not name.startswith("_")]
    if unknown:
        raise ValueError(
            f"the lm_head of {type(model).__name__} ({type(owner).__name__}) has parameters besides its weight and bias "
            f"that simper_rs's logit-transform table does not know ({', '.join(unknown)}): the fused-linear path would "
            "give them no gradient. Use fused_linear=False (use_fused_linear=False in SimPERConfig / DILConfig)."
        )


# -- the first-step check


def _first_sequence(args, kwargs, labels) -> Tuple[tuple, dict, torch.Tensor]:
    """The inputs and labels of one sequence of the batch: row 0, or the first packed sequence."""
    batch, length = labels.shape
    position_ids = kwargs.get("position_ids")
    stop = length
    if position_ids is not None and batch == 1:
        starts = (position_ids[0] == 0).nonzero().flatten().tolist()
        if len(starts) > 1:
            stop = starts[1]

    def cut(value):
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == batch:
            value = value[:1]
            if value.dim() >= 2 and value.shape[1] == length and stop < length:
                value = value[:, :stop]
        return value

    return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}, labels[:1, :stop]


def _tolerance(dtype: torch.dtype, magnitude: float) -> float:
    """How far fused and reference log-probs may be apart for logits of this dtype and magnitude:
    a few roundings of the logits (16-bit: the two sides round the matmul and the softcap
    differently), plus the float32 kernel's own error."""
    if dtype in (torch.bfloat16, torch.float16):
        return 6 * torch.finfo(dtype).eps * (magnitude + 1.0)
    return 1e-4 * (magnitude + 1.0)


def verify_fused_head(
    model, previous=None, args=(), kwargs=None, labels=None, *, positions: int = 16
) -> Dict[str, float]:
    """Compare the fused log-probs of one sequence of a batch with ``log_softmax`` of the model's
    own logits on up to ``positions`` labelled positions; raise :class:`FusedHeadMismatch` (naming
    the model, the transform used and the size of the difference) beyond float tolerance.

    One no-grad forward of the unmodified model on that sequence (the whole batch where the
    model's inputs cannot be cut to one sequence), with its logits only for the chosen positions
    where the model takes ``logits_to_keep``, and the random state restored after.
    Returns ``{"max_difference", "tolerance", "positions"}``.
    """
    kwargs = dict(kwargs or {})
    previous = previous or model.forward
    spec = model_transform(model)
    one = _first_sequence(args, kwargs, labels)
    try:
        reference, fused, logits, dtype = _guard_forward(model, previous, spec, *one, positions)
    except FusedHeadMismatch:
        raise
    except _FusedUnavailable:
        raise
    except Exception:  # noqa: BLE001 - inputs that do not cut to one sequence (images per batch, ...)
        reference, fused, logits, dtype = _guard_forward(model, previous, spec, args, kwargs, labels, positions)
    if reference is None:
        return {"max_difference": 0.0, "tolerance": 0.0, "positions": 0}
    got, want = fused.double(), reference.double()
    both = torch.isfinite(got) & torch.isfinite(want)
    # -inf where the label has probability 0, NaN where the logits hold NaN: both sides alike
    alike = both | (got == want) | (got.isnan() & want.isnan())
    values = logits.float()
    values = values[torch.isfinite(values)]
    magnitude = float(values.abs().max()) if values.numel() else 0.0
    tolerance = _tolerance(dtype, magnitude)
    difference = float((got - want)[both].abs().max()) if both.any() else 0.0
    if not alike.all():
        difference = float("inf")
    if not difference <= tolerance:
        raise FusedHeadMismatch(
            f"simper_rs's fused log-probs for {type(model).__name__} (model type {spec.model_type!r}) differ from log_softmax of "
            f"the model's own logits by up to {difference:.3g} (tolerance {tolerance:.3g} for {dtype} logits of magnitude "
            f"{magnitude:.3g}) on {len(want)} positions. The logit transform simper_rs applies for this model type is: "
            f"{spec.describe()}; its forward does something else to the logits after the lm_head. Train with "
            "fused_linear=False (use_fused_linear=False in SimPERConfig / DILConfig), which reduces the model's own "
            "logits, and report the model type at the simper_rs issue tracker."
        )
    return {"max_difference": difference, "tolerance": tolerance, "positions": int(len(want))}


def _guard_forward(model, previous, spec, args, kwargs, labels, positions):
    """(reference log-probs, fused log-probs, the model's logits at those positions, the head
    input's dtype) for up to ``positions`` labelled positions of row 0; Nones without any."""
    labelled = (labels[0, 1:] != -100).nonzero().flatten()
    if labelled.numel() == 0:
        return None, None, None, None
    pick = labelled[torch.linspace(0, labelled.numel() - 1, min(positions, labelled.numel())).round().long().unique()]
    targets = labels[0, pick + 1]
    offset = _input_length(args, kwargs, labels.shape[1]) - labels.shape[1]  # virtual tokens of prompt-learning PEFT
    at = pick + offset
    head = _output_head(model)
    captured: List[Tuple[torch.Tensor, torch.dtype]] = []
    hook = head.register_forward_hook(
        lambda module, inputs, output: captured.append((inputs[0], getattr(output, "dtype", inputs[0].dtype)))
    )
    devices = [labels.device] if labels.device.type == "cuda" else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            keep = _accepts(previous, "logits_to_keep")
            try:
                outputs = previous(*args, **kwargs, **({"logits_to_keep": at} if keep else {}))
            except (TypeError, IndexError, RuntimeError):
                if not keep:
                    raise
                keep = False
                captured.clear()
                outputs = previous(*args, **kwargs)
            if len(captured) != 1:
                raise _FusedUnavailable(f"its forward calls the lm_head {len(captured)} times")
            hidden, head_dtype = captured[0]
            hidden = (hidden[:, 0] if spec.first_stream else hidden)[:1]
            logits = outputs.logits[0]
            if not (keep and logits.shape[0] == at.numel()):
                logits, hidden = logits[at], hidden[:, at]
            reference = torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None].to(logits.device)).squeeze(-1)
            fused = _fused_tokens(
                model,
                spec,
                hidden,
                targets[None].to(hidden.device),
                require_tokens=False,
                with_stats=False,
                mean_logits=False,
                shift=False,
            )
    finally:
        hook.remove()
    # The tolerance follows the coarsest precision the model's own logits went through (autocast
    # runs the lm_head in bfloat16 on float32 hidden states, which the fused op computes in float32).
    coarse = max((hidden.dtype, head_dtype, outputs.logits.dtype), key=lambda dtype: torch.finfo(dtype).eps)
    return reference, fused.token_logps[0].to(reference.device), logits, coarse


def _input_length(args, kwargs, default: int) -> int:
    for value in (kwargs.get("input_ids"), kwargs.get("inputs_embeds"), args[0] if args else None):
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return value.shape[1]
    return default


@functools.lru_cache(maxsize=None)
def _signature_names(function) -> Tuple[frozenset, bool]:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return frozenset(), True
    names = frozenset(p.name for p in parameters)
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _accepts(function, name: str, *, through_kwargs: bool = False) -> bool:
    names, var_keyword = _signature_names(getattr(function, "__func__", function))
    return name in names or (through_kwargs and var_keyword)


# -- the forward


def add_logps_forward(model: torch.nn.Module) -> None:
    """Let ``model(..., simper_rs_labels=labels)`` return a :class:`TokenLogpsOutput` computed by
    this package inside the model's own forward (idempotent).

    ``model`` is a HuggingFace causal LM. Called through its wrapper (DDP, FSDP, DeepSpeed,
    Accelerate), everything happens inside the wrapped forward, as the engines expect. With
    ``simper_rs_fused_linear=True`` (default) the log-probs come from the fused-linear op on the
    lm_head's input as the model's own forward computes it (see the module docstring), with the
    model family's logit transform; the first such call checks the result against the model's
    own logits once (:func:`verify_fused_head`; ``SIMPER_RS_FUSED_CHECK=off`` skips it). Where the
    forward cannot run with the lm_head replaced (it calls the head more than once, or computes
    its logits without it), one warning says why and the model's own logits are reduced instead.
    ``simper_rs_fused_linear=False`` reduces the model's own logits with the fused kernel.

    With ``simper_rs_loss=loss_fn`` (a SimPERLoss or DILLoss; ``simper_rs_refs`` =
    (ref_chosen, ref_rejected) for DIL against a reference), fused linear and a gradient to take,
    the output also holds the loss, its gradients computed in the forward (simper_rs.fused_loss).
    Calls without ``simper_rs_labels`` go to the previous forward unchanged (generation). Other
    keyword arguments (``output_router_logits=True`` for the MoE load-balancing loss) reach the
    model's forward.
    """
    if getattr(model, "_simper_rs_logps_forward", False):
        return
    head = _output_head(model)
    spec = model_transform(model)  # a malformed table entry fails here, not at the first step
    _check_head_parameters(model, head, spec)
    previous = model.forward
    state = {
        "checked": os.environ.get(CHECK_ENV, "").strip().lower() in ("off", "0", "no", "false"),
        "unavailable": None,
    }
    takes_use_cache = _accepts(previous, "use_cache", through_kwargs=True)

    @functools.wraps(previous)
    def forward(
        *args, simper_rs_labels=None, simper_rs_fused_linear=True, simper_rs_loss=None, simper_rs_refs=None, **kwargs
    ):
        if simper_rs_labels is None:
            return previous(*args, **kwargs)
        if takes_use_cache:
            kwargs["use_cache"] = False
        labels = simper_rs_labels
        spec = model_transform(model)
        position_ids = kwargs.get("position_ids")  # given with packed rows (restarting at 0 per sequence)
        if simper_rs_fused_linear and state["unavailable"] is None:
            try:
                if not state["checked"]:
                    verify_fused_head(model, previous, args, kwargs, labels)
                    state["checked"] = True
                hidden, outputs = _head_input(model, previous, args, kwargs, spec, labels.shape[1])
            except _FusedUnavailable as why:
                state["unavailable"] = str(why)
                warnings.warn(
                    f"simper_rs: the fused-linear path cannot run on {type(model).__name__}: {why}. Its own logits are "
                    "reduced instead (the same loss and gradients, with the [batch, positions, vocabulary] logits in memory)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            else:
                return _fused_output(model, spec, hidden, labels, outputs, position_ids, simper_rs_loss, simper_rs_refs)
        outputs = previous(*args, **kwargs)
        return _logits_output(outputs, labels, position_ids)

    model.forward = forward
    model._simper_rs_logps_forward = True


def _fused_output(model, spec, hidden, labels, outputs, position_ids, loss_fn, refs) -> TokenLogpsOutput:
    labels = labels.to(hidden.device)
    aux_loss = getattr(outputs, "aux_loss", None)
    packed = position_ids.to(labels.device) if position_ids is not None else None
    if loss_fn is not None:
        # The loss itself, run in the lm_head's forward with its gradients computed there.
        loss_fn.check_pair_batch(hidden, "hidden", labels, packed)
        ref_chosen, ref_rejected = refs if refs is not None else (None, None)
        head = _resolve_head(_output_head(model))
        fused = fused_pair_loss(
            loss_fn,
            hidden,
            labels,
            lm_head=head,
            position_ids=packed,
            ref_chosen=ref_chosen,
            ref_rejected=ref_rejected,
            mean_logits=True,
            transform=spec.transform,
            vocab_limit=spec.vocab_limit,
        )
        if fused is not None:
            return TokenLogpsOutput(
                token_logps=fused.token_logps,
                entropy=fused.entropy,
                correct=fused.correct,
                mean_logits=fused.mean_logits,
                loss=fused.loss,
                sequence_logps=fused.logps,
                aux_loss=aux_loss,
            )
    # Packed rows (position_ids restarting at 0): every packed sequence needs a response token.
    if packed is not None:
        check_packed_inputs(labels, packed, ignore_index=-100, shift=True, require_tokens=True)
    out = _fused_tokens(model, spec, hidden, labels, require_tokens=packed is None)
    return TokenLogpsOutput(
        token_logps=out.token_logps,
        entropy=out.entropy,
        correct=out.correct,
        mean_logits=out.mean_logits,
        aux_loss=aux_loss,
    )


def _logits_output(outputs, labels, position_ids) -> TokenLogpsOutput:
    logits = outputs.logits
    logits = logits[:, -labels.shape[1] :]  # prompt-learning PEFT: the real tokens' positions
    labels = labels.to(logits.device)
    if position_ids is not None:
        check_packed_inputs(labels, position_ids.to(labels.device), ignore_index=-100, shift=True, require_tokens=True)
    check_logps_inputs(logits, labels, ignore_index=-100, shift=True, require_tokens=position_ids is None)
    logps, (entropy, correct) = token_logps_and_stats(logits, labels, -100, True, "auto", True)
    with torch.no_grad():
        mean_logits = logits[:, :-1].mean(-1, dtype=torch.float32) * (labels[:, 1:] != -100)
    return TokenLogpsOutput(
        token_logps=logps,
        entropy=entropy,
        correct=correct,
        mean_logits=mean_logits,
        aux_loss=getattr(outputs, "aux_loss", None),
    )
