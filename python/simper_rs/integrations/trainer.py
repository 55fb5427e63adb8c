"""A HuggingFace ``Trainer`` for SimPER and DIL, and the loss step it is built on.

``PreferenceTrainer`` takes preference records (TRL's formats, see :mod:`simper_rs.data`), runs
one forward per batch on the concatenated [chosen; rejected] batch, and logs TRL's metric names
in train and eval. It works with gradient accumulation, bf16 autocast, gradient checkpointing
and torch.distributed through Accelerate, since all of that is the base Trainer's.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Any, Dict, Optional

import torch

from ..losses import DILLoss, PreferenceLossOutput, SimPERLoss
from ..ops import reduce_with_stats, sequence_logps
from .causal_lm import add_logps_forward

__all__ = ["PreferenceTrainer", "preference_loss", "make_loss", "resolve_aux_loss_coef", "router_loss"]

LOSSES = ("simper", "dil")


def make_loss(loss: str = "simper", estimator: str = "lsif", beta: float = 1.0) -> torch.nn.Module:
    """The loss module for ``loss`` in ("simper", "dil")."""
    if loss == "simper":
        return SimPERLoss()
    if loss == "dil":
        return DILLoss(estimator=estimator, beta=beta)
    raise ValueError(f"loss must be one of {list(LOSSES)}, got {loss!r}")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module  # DistributedDataParallel and friends
    return model


def resolve_aux_loss_coef(model: torch.nn.Module, coef: Optional[float] = None) -> float:
    """The weight of a Mixture-of-Experts model's router load-balancing loss, as TRL's
    DPOTrainer chooses it: ``coef`` when given, else the model config's ``router_aux_loss_coef``;
    0.0 for a model that returns no router logits (not MoE). A non-zero ``coef`` for such a
    model is an error, as in TRL."""
    config = _unwrap(model).config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    moe = hasattr(text_config, "output_router_logits")
    if coef is None:
        return float(getattr(text_config, "router_aux_loss_coef", 0.0) or 0.0) if moe else 0.0
    if coef and not moe:
        raise ValueError(
            f"router_aux_loss_coef={coef}, but {type(_unwrap(model)).__name__} is not a Mixture-of-Experts model that "
            "returns its router logits: there is no auxiliary loss to weight"
        )
    return float(coef)


def preference_loss(
    model: torch.nn.Module,
    inputs: Dict[str, Any],
    loss_fn: torch.nn.Module,
    *,
    ref_model: Optional[torch.nn.Module] = None,
    fused_linear: bool = False,
    aux_loss_coef: float = 0.0,
) -> PreferenceLossOutput:
    """One loss step on a collated [chosen; rejected] batch (see :class:`PreferenceCollator`).

    ``inputs`` holds ``input_ids``, ``attention_mask`` and ``labels`` ``[2P, T]`` (or, packed,
    ``input_ids``, ``labels`` and ``position_ids`` ``[1, L]``) and optionally
    precomputed ``ref_chosen_logps`` / ``ref_rejected_logps`` ``[P]``; otherwise ``ref_model``
    (if given, for DIL) provides them. ``fused_linear`` computes the loss from the lm_head's
    input (as the model's own forward computes it) without materialising the logits.
    ``aux_loss_coef`` (see :func:`resolve_aux_loss_coef`) adds that weight times the router
    load-balancing loss of a Mixture-of-Experts model, logged as ``aux_loss``.
    """
    labels, position_ids = inputs["labels"], inputs.get("position_ids")
    # Padded rows come with an attention_mask; packed rows (padding_free) with position_ids only,
    # from which transformers keeps attention within each sequence.
    model_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if inputs.get(k) is not None}
    policy_inputs = dict(model_inputs, output_router_logits=True) if aux_loss_coef else model_inputs
    refs = {}
    if isinstance(loss_fn, DILLoss):
        ref_chosen, ref_rejected = inputs.get("ref_chosen_logps"), inputs.get("ref_rejected_logps")
        if ref_chosen is None and ref_model is not None:
            with torch.no_grad():
                ref_logits = ref_model(**model_inputs, use_cache=False).logits
                ref = sequence_logps(ref_logits, labels, ignore_index=loss_fn.ignore_index, position_ids=position_ids)
            half = ref.shape[0] // 2
            ref_chosen, ref_rejected = ref[:half], ref[half:]
        refs = {"ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    if fused_linear:
        # Inside the (wrapped) model's own forward, with the op run as the lm_head's forward, so
        # that DDP, FSDP and ZeRO-3 gather the weight and reduce its gradient (simper_rs.head).
        # With a gradient to take, the loss is computed there too, its gradients in the forward
        # (simper_rs.fused_loss); else (evaluation) from the token log-probs.
        add_logps_forward(_unwrap(model))
        ref_pair = (
            (refs["ref_chosen_logps"], refs["ref_rejected_logps"]) if refs.get("ref_chosen_logps") is not None else None
        )
        out = model(**policy_inputs, simper_rs_labels=labels, simper_rs_loss=loss_fn, simper_rs_refs=ref_pair)
        device = out.token_logps.device
        logps, metrics = reduce_with_stats(
            out.token_logps,
            (out.entropy, out.correct) if loss_fn.return_stats else None,
            labels.to(device),
            -100,
            True,
            True,  # the labels convention of add_logps_forward (HF: -100, shifted)
            position_ids.to(device) if position_ids is not None else None,
        )
        if out.loss is not None:
            half = out.sequence_logps.shape[0] // 2
            chosen, rejected = out.sequence_logps[:half], out.sequence_logps[half:]
            result = loss_fn.build_output(out.loss, chosen, rejected, metrics, *ref_pair if ref_pair else (None, None))
        else:
            half = logps.shape[0] // 2
            result = loss_fn.from_sequence_logps(logps[:half], logps[half:], **refs, metrics=metrics)
        aux_loss = out.aux_loss
    else:
        outputs = model(**policy_inputs, use_cache=False)
        result = loss_fn(outputs.logits, labels, position_ids=position_ids, **refs)
        aux_loss = getattr(outputs, "aux_loss", None)
    if aux_loss_coef:
        aux_loss = router_loss(model, aux_loss)
        if aux_loss is not None:
            result.loss = result.loss + aux_loss_coef * aux_loss.to(result.loss.device)
            result.metrics["aux_loss"] = float(aux_loss.detach())
    return result


_NO_ROUTER_LOSS_WARNED = set()


def router_loss(model: torch.nn.Module, aux_loss) -> Optional[torch.Tensor]:
    """The router load-balancing loss a model returned with ``output_router_logits=True``, or None
    (with one warning per model class) when it returned none: some MoE families (Llama 4) define
    a coefficient in their config but no auxiliary loss, so there is nothing to add."""
    if isinstance(aux_loss, torch.Tensor):
        return aux_loss
    if isinstance(aux_loss, (int, float)):
        return torch.tensor(float(aux_loss))
    name = type(_unwrap(model)).__name__
    if name not in _NO_ROUTER_LOSS_WARNED:
        _NO_ROUTER_LOSS_WARNED.add(name)
        warnings.warn(
            f"simper_rs: {name} returns no router load-balancing loss (aux_loss) although its config has a "
            "router_aux_loss_coef; nothing is added to the loss",
            RuntimeWarning,
            stacklevel=3,
        )
    return None


def _trainer_base():
    try:
        from transformers import Trainer
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError('PreferenceTrainer needs transformers: pip install "simper_rs[train]"') from err
    return Trainer


class PreferenceTrainer(_trainer_base()):
    """``transformers.Trainer`` for SimPER (default) or DIL on preference data.

    Arguments beyond the Trainer's: ``loss`` ("simper" or "dil"), ``estimator`` and ``beta``
    (DIL), ``ref_model`` (optional frozen reference for DIL; or put ``ref_chosen_logps`` /
    ``ref_rejected_logps`` in the records), ``fused_linear`` (compute the loss from hidden states
    and the lm_head, never materialising logits), ``max_length`` and ``max_prompt_length`` (for
    the default :class:`~simper_rs.data.PreferenceCollator`, built from ``processing_class``),
    ``padding_free`` (pack each batch into one row without padding: same loss and gradients,
    no compute spent on padding; ``max_tokens_per_row`` packs into rows of at most that many
    tokens instead, which keeps each row's quadratic attention cost down),
    ``router_aux_loss_coef`` (Mixture-of-Experts models: the weight of the router load-balancing
    loss added to the loss, as TRL's DPOTrainer adds it; default the model config's, 0.0 turns it
    off; logged as ``aux_loss``).
    ``train_dataset`` / ``eval_dataset`` may be lists of records, a JSONL path or a
    ``datasets.Dataset``.
    """

    def __init__(
        self,
        model=None,
        args=None,
        *,
        loss: str = "simper",
        estimator: str = "lsif",
        beta: float = 1.0,
        ref_model: Optional[torch.nn.Module] = None,
        fused_linear: bool = False,
        max_length: int = 512,
        max_prompt_length: int = 256,
        padding_free: bool = False,
        max_tokens_per_row: Optional[int] = None,
        router_aux_loss_coef: Optional[float] = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        **kwargs,
    ) -> None:
        from ..data import PreferenceCollator, load_preference_data

        self.loss_fn = make_loss(loss, estimator, beta)
        if ref_model is not None and loss != "dil":
            raise ValueError("ref_model is used by loss='dil' only; SimPER needs no reference model")
        if data_collator is None:
            if processing_class is None:
                raise ValueError("pass processing_class (the tokenizer) or a data_collator")
            data_collator = PreferenceCollator(
                processing_class,
                max_length=max_length,
                max_prompt_length=max_prompt_length,
                padding_free=padding_free,
                max_tokens_per_row=max_tokens_per_row,
            )
        elif padding_free and not getattr(data_collator, "padding_free", False):
            raise ValueError(
                "padding_free=True needs a collator that packs: pass no data_collator, or PreferenceCollator(..., padding_free=True)"
            )
        if isinstance(train_dataset, (str, list)):
            train_dataset = load_preference_data(train_dataset)
        if isinstance(eval_dataset, (str, list)):
            eval_dataset = load_preference_data(eval_dataset)
        if args is not None:
            args.remove_unused_columns = False  # the collator needs prompt/chosen/rejected
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        self.args.remove_unused_columns = False
        self.fused_linear = bool(fused_linear)
        self.router_aux_loss_coef = resolve_aux_loss_coef(self.model, router_aux_loss_coef)
        self.ref_model = None
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
            self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
        self._stored_metrics: Dict[str, Dict[str, list]] = defaultdict(lambda: defaultdict(list))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = preference_loss(
            model,
            inputs,
            self.loss_fn,
            ref_model=self.ref_model,
            fused_linear=self.fused_linear,
            aux_loss_coef=self.router_aux_loss_coef,
        )
        split = "train" if model.training else "eval"
        for name, value in out.metrics.items():
            self._stored_metrics[split][name].append(value)
        return (out.loss, out) if return_outputs else out.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: Dict[str, float], start_time: Optional[float] = None) -> None:
        split = "train" if "loss" in logs else "eval"
        prefix = "" if split == "train" else "eval_"
        stored = self._stored_metrics.pop(split, {})
        if stored:
            names = sorted(stored)
            local = torch.tensor([sum(stored[n]) / len(stored[n]) for n in names], device=self.accelerator.device)
            averaged = self.accelerator.reduce(local, reduction="mean")  # over processes
            for name, value in zip(names, averaged.tolist()):
                logs[prefix + name] = value
        super().log(logs, start_time)
