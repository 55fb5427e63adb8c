"""SimPER and DIL inside TRL: ``DPOTrainer`` subclasses that swap in this package's log-probs and losses.

A TRL user changes one line::

    from simper_rs.trl import SimPERConfig, SimPERTrainer
    trainer = SimPERTrainer(model=model, args=SimPERConfig(output_dir="out"), train_dataset=dataset,
                            processing_class=tokenizer)
    trainer.train()

Everything else is TRL's: data processing (text and conversational records, chat templates,
truncation, its collator), evaluation, logging, PEFT and Accelerate. Only two things change:

* the log-probs: per-sequence **average** log-probs over the completion tokens, computed inside
  the model's forward by this package's fused-linear op from the last hidden states and the
  ``lm_head`` (default; the logits are never built) or by the fused logits kernel
  (``use_fused_linear=False``);
* the loss: SimPER, or DIL with ``estimator`` in lsif / bce / ukl / cpc.

SimPER never builds, loads or runs a reference model. DIL is reference-free by default; with
``reference_free=False`` it uses TRL's reference machinery (an explicit ``ref_model``, the PEFT
model with its adapter disabled, or ``precompute_ref_log_probs``), with reference *average*
log-probs computed by this package.

Metrics use TRL's names. ``logps/chosen`` and ``logps/rejected`` are the mean over pairs of the
**average** log-probs (TRL's DPO logs sums); ``rewards/*`` are those averages, or the log-ratios
u = ℓ_θ - ℓ_ref for DIL with a reference (docs/design.md, "Metrics"); ``mean_token_accuracy`` is over the chosen
completions and ``entropy`` over all completions, as TRL computes them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch

from .. import _core
from ..data import pack_rows, reference_logps
from ..losses import DILLoss, SimPERLoss, check_dil_options
from ..ops import reduce_with_stats
from .causal_lm import add_logps_forward
from .trainer import router_loss

SUPPORTED_TRL = ("1.14", "1.17")  # [lower, upper): TRL 1.14, 1.15 and 1.16, each tested (see _TRL_1_15)
SUPPORTED_TRANSFORMERS = (
    "5.20"  # the oldest transformers tested with them (axolotl 0.21: trl 1.14.1, transformers 5.20.1)
)


def _import_trl():
    ranges = f"trl>={SUPPORTED_TRL[0]},<{SUPPORTED_TRL[1]} with transformers>={SUPPORTED_TRANSFORMERS}"
    install = f'pip install "simper_rs[trl]" ({ranges})'
    try:
        import transformers
        import trl
        from packaging.version import Version
    except ImportError as err:
        raise ImportError(f"simper_rs.trl needs TRL: {install}") from err
    version = Version(trl.__version__)
    if not Version(SUPPORTED_TRL[0]) <= version < Version(SUPPORTED_TRL[1]):
        raise ImportError(
            f"simper_rs.trl supports TRL >={SUPPORTED_TRL[0]},<{SUPPORTED_TRL[1]} (it subclasses DPOTrainer, whose "
            f"internals change between releases), but TRL {trl.__version__} is installed: {install}"
        )
    if Version(transformers.__version__) < Version(SUPPORTED_TRANSFORMERS):
        raise ImportError(
            f"simper_rs.trl supports transformers >={SUPPORTED_TRANSFORMERS} (with TRL >={SUPPORTED_TRL[0]},<{SUPPORTED_TRL[1]}), "
            f"but transformers {transformers.__version__} is installed: {install}"
        )
    return trl


_import_trl()

from accelerate.utils import is_peft_model  # noqa: E402
from packaging.version import Version  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402
from trl.models.utils import disable_gradient_checkpointing  # noqa: E402
from trl.trainer import dpo_trainer as _dpo_module  # noqa: E402
from trl.trainer.utils import use_adapter  # noqa: E402

# -- TRL releases. This module runs on the DPOTrainer of TRL 1.14, 1.15 and 1.16; everything it
# uses is the same in all three except what this section handles:
# * precomputed-reference cache key: 1.15+ hashes the model once in __init__ into
#   `_precompute_model_hash`; 1.14 calls `hash_module` inside `_precompute_ref_logps`
#   (see _PreferenceLossTrainer._precompute_ref_logps, which salts either so that this package's
#   averages never share a cache file with DPO's sums);
# * `use_liger_kernel`: 1.15+ only applies Liger's layer kernels (deprecated there); 1.14 also
#   reroutes compute_loss through `_forward_redirection` around its own chunked log-prob path,
#   a path this trainer replaces and has not been tested through: refused on 1.14.
# Not differences for this module: 1.15 moved TRL's own log-probs into a fused lm_head forward
# (`add_fused_lm_head`; this package wraps whichever forward the model has), and 1.16 only adds
# checks for PEFT prefix tuning, VLMs and a reference model's dtype.
_TRL_1_15 = Version(_import_trl().__version__) >= Version("1.15")


def _check_release_options(args) -> None:
    """Refuse options whose meaning differs on the installed TRL release (see above)."""
    if not _TRL_1_15 and getattr(args, "use_liger_kernel", False):
        raise ValueError(
            "use_liger_kernel=True: on TRL 1.14 it routes the loss through TRL's chunked log-prob path, which "
            "SimPERTrainer / DILTrainer replace (this package's own fused paths need no Liger); set it to False, "
            "or use TRL 1.15 or 1.16, where it applies Liger's layer kernels only"
        )


__all__ = [
    "SimPERConfig",
    "SimPERTrainer",
    "DILConfig",
    "DILTrainer",
    "PackedPreferenceCollator",
    "SUPPORTED_TRL",
    "SUPPORTED_TRANSFORMERS",
]

# DPOConfig fields that only TRL's DPO losses or its reference model read. SimPER (and
# reference-free DIL) refuse a non-default value rather than silently ignore it.
_DPO_LOSS_FIELDS = (
    "loss_type",
    "loss_weights",
    "label_smoothing",
    "ld_alpha",
    "f_divergence_type",
    "f_alpha_divergence_coef",
    "use_weighting",
    "discopop_tau",
)
_REFERENCE_FIELDS = (
    "precompute_ref_log_probs",
    "precompute_ref_batch_size",
    "sync_ref_model",
    "ref_model_mixup_alpha",
    "ref_model_sync_steps",
)
# Batch entries that are not model inputs.
_NON_MODEL_KEYS = frozenset({"completion_mask", "ref_chosen_logps", "ref_rejected_logps", "num_tokens"})


def _dpo_default(name: str):
    spec = next(f for f in dataclasses.fields(DPOConfig) if f.name == name)
    return spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default


def _refuse_set_fields(config, names, why: str) -> None:
    for name in names:
        value, default = getattr(config, name), _dpo_default(name)
        if name == "loss_type" and isinstance(value, str):
            value = [value]
        if value != default:
            raise ValueError(
                f"{type(config).__name__}: {name}={value!r} does not apply: {why}; leave it at its default ({default!r})"
            )


@dataclass
class _LogpsOptions:
    """The options of this package's log-probs, shared by both configs."""

    use_fused_linear: bool = field(
        default=True,
        metadata={
            "help": "Log-probs from hidden states and lm_head without building the logits (False: logits + fused kernel)."
        },
    )
    max_tokens_per_row: Optional[int] = field(
        default=None,
        metadata={"help": "With padding_free: pack into rows of at most this many tokens (default: one row)."},
    )


@dataclass
class SimPERConfig(_LogpsOptions, DPOConfig):
    """``trl.DPOConfig`` for SimPER: every training, data and logging option of DPOConfig.

    SimPER has no hyperparameter and no reference model, so DPO's loss fields (``beta``,
    ``loss_type``, ``label_smoothing``, ...) and reference fields (``precompute_ref_log_probs``,
    ``sync_ref_model``, ...) are refused when set. ``use_fused_linear`` (default True) computes
    the log-probs from the hidden states and the ``lm_head`` without building the logits;
    False builds the logits with the ``lm_head`` module and reduces them with the fused kernel.
    """

    def __post_init__(self):
        _refuse_set_fields(self, ("beta",) + _DPO_LOSS_FIELDS, "SimPER has no hyperparameter and its own loss")
        _refuse_set_fields(self, _REFERENCE_FIELDS, "SimPER uses no reference model")
        super().__post_init__()


@dataclass
class DILConfig(_LogpsOptions, DPOConfig):
    """``trl.DPOConfig`` for DIL: ``estimator`` in lsif (default), bce, ukl or cpc.

    ``beta`` (default 1.0) is the one hyperparameter of ``cpc`` and is refused for the others.
    ``reference_free`` (default True) trains without a reference model; False uses TRL's
    reference machinery (``ref_model``, the PEFT adapter-disabled model, or
    ``precompute_ref_log_probs``). DPO's loss fields (``loss_type``, ``label_smoothing``, ...) are
    refused. ``use_fused_linear`` as in :class:`SimPERConfig`.
    """

    estimator: str = field(default="lsif", metadata={"help": "DIL density-ratio estimator: lsif, bce, ukl or cpc."})
    beta: float = field(default=1.0, metadata={"help": "β of the cpc estimator (unused by the others)."})
    reference_free: bool = field(default=True, metadata={"help": "Train without a reference model (ℓ_ref = 0)."})

    def __post_init__(self):
        try:
            check_dil_options(self.estimator, self.beta)
        except (TypeError, ValueError) as err:
            raise type(err)(f"DILConfig: {err}") from None
        if self.estimator != "cpc" and self.beta != 1.0:
            raise ValueError(f"DILConfig: beta={self.beta!r} is used by estimator='cpc' only, not {self.estimator!r}")
        _refuse_set_fields(self, _DPO_LOSS_FIELDS, "DIL uses its own loss (estimator=...)")
        if self.reference_free:
            _refuse_set_fields(self, _REFERENCE_FIELDS, "reference_free=True uses no reference model")
        super().__post_init__()


@contextlib.contextmanager
def _without_reference_model(model):
    """Run ``DPOTrainer.__init__`` without it building a reference model.

    With no ``ref_model``, no PEFT and no precomputation, TRL (1.14 to 1.16) reloads the policy from
    ``config._name_or_path`` as the reference. It calls ``create_model_from_path`` at most twice:
    first for the policy when ``model`` is a path, then for the reference; only the first is let through.
    """
    original = _dpo_module.create_model_from_path
    policy_loads = [isinstance(model, str)]

    def load_policy_only(*args, **kwargs):
        if policy_loads.pop() if policy_loads else False:
            return original(*args, **kwargs)
        return None

    _dpo_module.create_model_from_path = load_policy_only
    try:
        yield
    finally:
        _dpo_module.create_model_from_path = original


@dataclass
class PackedPreferenceCollator:
    """TRL's tokenized preference examples (``prompt_ids``, ``chosen_ids``, ``rejected_ids``)
    packed without padding: every prompt + chosen, then every prompt + rejected, truncated as
    TRL's collator does, ``position_ids`` restarting at 0 at each sequence (the model's attention
    stays within it) and each sequence's first token outside the completion mask (it would be
    predicted from the previous sequence). One row, or rows of at most ``max_tokens_per_row``
    tokens (:func:`simper_rs.data.pack_rows`)."""

    max_length: Optional[int] = None
    truncation_mode: str = "keep_start"
    pad_token_id: int = 0
    max_tokens_per_row: Optional[int] = None

    def __call__(self, examples):
        if self.truncation_mode not in ("keep_start", "keep_end"):
            raise ValueError(f"truncation_mode must be 'keep_start' or 'keep_end', got {self.truncation_mode!r}")
        sequences = []
        for key in ("chosen_ids", "rejected_ids"):
            for example in examples:
                ids = list(example["prompt_ids"]) + list(example[key])
                mask = [0] * len(example["prompt_ids"]) + [1] * len(example[key])
                if self.max_length is not None:
                    cut = (
                        slice(None, self.max_length)
                        if self.truncation_mode == "keep_start"
                        else slice(-self.max_length, None)
                    )
                    ids, mask = ids[cut], mask[cut]
                sequences.append((ids, [0] + mask[1:]))
        rows = pack_rows(sequences, self.pad_token_id, self.max_tokens_per_row, label_fill=0)
        batch = {
            "input_ids": rows["input_ids"],
            "completion_mask": rows["labels"],
            "position_ids": rows["position_ids"],
            "num_tokens": torch.tensor(sum(len(ids) for ids, _ in sequences)),  # the fill of shorter rows is no token
        }
        batch.update(reference_logps(examples))
        return batch


def _as_dataset(data):
    """Lists of records and JSONL paths become a ``datasets.Dataset`` (TRL's input type)."""
    if isinstance(data, (str, list)):
        from datasets import Dataset

        from ..data import load_preference_data

        return Dataset.from_list(load_preference_data(data))
    return data


class _PreferenceLossTrainer(DPOTrainer):
    """DPOTrainer with this package's average log-probs and a loss of this package."""

    _reference_free = True

    def __init__(
        self,
        model,
        ref_model=None,
        args=None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
    ):
        config_class = self._config_class
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
            args = config_class(f"{name.rstrip('/').split('/')[-1]}-{self._name}")
        if not isinstance(args, config_class):
            raise TypeError(f"args must be a simper_rs.trl.{config_class.__name__}, got {type(args).__name__}")
        self._reference_free = self._is_reference_free(args)
        if self._reference_free and ref_model is not None:
            raise ValueError(f"{type(self).__name__} {self._reference_free_reason}: pass ref_model=None")
        self._use_fused_linear = bool(args.use_fused_linear)  # read by the reference precompute inside __init__
        # TRL 1.16 turns padding_free off ("temporarily unavailable"); here it packs each batch
        # into one row with this package's collator and segment reductions.
        self._padding_free = bool(args.padding_free)
        if self._padding_free:
            if data_collator is not None:
                raise ValueError(
                    "padding_free=True packs batches with simper_rs.trl.PackedPreferenceCollator; pass no data_collator"
                )
            args.padding_free = False  # TRL would warn that it falls back to padding
            pad = getattr(processing_class, "pad_token_id", None)
            pad = pad if pad is not None else getattr(processing_class, "eos_token_id", None)
            data_collator = PackedPreferenceCollator(
                max_length=args.max_length,
                truncation_mode=args.truncation_mode,
                pad_token_id=pad if pad is not None else 0,
                max_tokens_per_row=args.max_tokens_per_row,
            )
        _check_release_options(args)
        context = _without_reference_model(model) if self._reference_free else contextlib.nullcontext()
        with context:
            super().__init__(
                model=model,
                ref_model=ref_model,
                args=args,
                data_collator=data_collator,
                train_dataset=_as_dataset(train_dataset),
                eval_dataset=_as_dataset(eval_dataset),
                processing_class=processing_class,
                compute_metrics=compute_metrics,
                callbacks=callbacks,
                optimizers=optimizers,
                quantization_config=quantization_config,
                peft_config=peft_config,
            )
        if self._reference_free and self.ref_model is not None:  # pragma: no cover - guards a TRL change
            raise RuntimeError(
                f"TRL {_import_trl().__version__} built a reference model; {type(self).__name__} must not have one"
            )
        add_logps_forward(self._backbone(self.model))

    # -- hooks for the concrete trainers
    _config_class = DPOConfig
    _reference_free_reason = ""

    def _is_reference_free(self, args) -> bool:
        return True

    def _loss_module(self) -> torch.nn.Module:
        """The loss (a SimPERLoss or DILLoss) with this trainer's settings."""
        raise NotImplementedError

    # -- log-probs

    def _backbone(self, model):
        model = self.accelerator.unwrap_model(model)
        return model.get_base_model() if is_peft_model(model) else model

    def _sequence_logps(self, model, inputs, with_loss=False, refs=None):
        """Average log-probs ``[2P]`` of a collated batch and the per-token output they come from.

        ``with_loss`` (and ``refs``, the reference log-probs, when not reference-free): the loss
        is computed in the model's forward when fused linear takes a gradient (``out.loss``, its
        gradients computed in the forward; simper_rs.fused_loss).
        """
        add_logps_forward(self._backbone(model))  # also the reference model and TRL's precompute engine
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        if with_loss:
            model_kwargs.update(simper_rs_loss=self._loss_module(), simper_rs_refs=refs)
            if (
                self.aux_loss_enabled
            ):  # MoE: the model returns its router load-balancing loss (TRL's DPOTrainer does the same)
                model_kwargs["output_router_logits"] = True
        out = model(**model_kwargs, simper_rs_labels=labels, simper_rs_fused_linear=self._use_fused_linear)
        if out.sequence_logps is not None:
            return out.sequence_logps, out
        device = out.token_logps.device
        # Packed batches: one average per packed sequence, chosen ones first.
        position_ids = inputs["position_ids"].to(device) if self._padding_free else None
        logps, _ = reduce_with_stats(out.token_logps, None, labels.to(device), -100, True, True, position_ids)
        return logps, out

    def compute_ref_log_probs(self, model, inputs):
        """Reference average log-probs (chosen ``[P]``, rejected ``[P]``) of one collated batch,
        with TRL's choice of reference (``ref_model``, or the PEFT model with its adapter disabled)."""
        adapter = contextlib.nullcontext()
        if self.ref_model is None and is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            adapter = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        with (
            torch.no_grad(),
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
            adapter,
            self.accelerator.autocast(),
        ):
            logps, _ = self._sequence_logps(model, inputs)
        return logps.chunk(2, dim=0)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        # TRL caches precomputed reference log-probs by (data set, model); DPO's are sums, these are
        # averages, so they must never share a cache file: the model's hash gets a salt, where each
        # TRL release takes it from (see "TRL releases" above).
        salt = "simper_rs average log-probs"
        if _TRL_1_15:
            model_hash = self._precompute_model_hash
            self._precompute_model_hash = (model_hash, salt)
            try:
                return super()._precompute_ref_logps(dataset, name, batch_size)
            finally:
                self._precompute_model_hash = model_hash
        hash_module = _dpo_module.hash_module  # TRL 1.14
        _dpo_module.hash_module = lambda module: (hash_module(module), salt)
        try:
            return super()._precompute_ref_logps(dataset, name, batch_size)
        finally:
            _dpo_module.hash_module = hash_module

    # -- loss and metrics

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        ref_chosen = ref_rejected = None
        if not self._reference_free:
            if self.precompute_ref_logps:
                ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
            else:
                reference = self.ref_model if self.ref_model is not None else model  # PEFT: adapter disabled
                ref_chosen, ref_rejected = self.compute_ref_log_probs(reference, inputs)
        refs = None if self._reference_free else (ref_chosen, ref_rejected)
        logps, out = self._sequence_logps(model, inputs, with_loss=True, refs=refs)
        chosen, rejected = logps.chunk(2, dim=0)
        loss = (
            out.loss
            if out.loss is not None
            else self._loss_module().pair_loss(chosen, rejected, ref_chosen, ref_rejected)
        )
        aux_loss = router_loss(model, out.aux_loss) if self.aux_loss_enabled else None
        if aux_loss is not None:
            # The router load-balancing loss, weighted and logged as TRL's DPOTrainer does.
            loss = loss + self.router_aux_loss_coef * aux_loss
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss.detach()).mean().item())
        self._record_metrics(mode, inputs, out, chosen, rejected, ref_chosen, ref_rejected)
        if return_outputs:  # TRL's deprecated compute_metrics path: it wants logits, which are not built here
            with torch.no_grad():
                model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
                return loss, model(**model_kwargs)
        return loss

    def _chosen_and_rejected(self, mask, inputs):
        """The completion tokens ``[rows, T-1]`` of the chosen and of the rejected sequences: the
        first and second half of the rows, or of the packed sequences."""
        position_ids = inputs.get("position_ids") if self._padding_free else None
        if position_ids is None:
            chosen_rows = (torch.arange(mask.shape[0], device=mask.device) < mask.shape[0] // 2)[:, None]
        else:
            sequence = (position_ids.to(mask.device) == 0).flatten().cumsum(0).view_as(position_ids) - 1
            chosen_rows = sequence[:, 1:] < (sequence.max() + 1) // 2
        return mask & chosen_rows, mask & ~chosen_rows

    def _record_metrics(self, mode, inputs, out, chosen, rejected, ref_chosen, ref_rejected) -> None:
        """TRL's metric names, each averaged over every process's batch (token metrics weighted by tokens)."""
        gather = self.accelerator.gather
        with torch.no_grad():
            mask = inputs["completion_mask"][:, 1:].to(out.entropy.device).bool()
            chosen_mask, rejected_mask = self._chosen_and_rejected(mask, inputs)
            sums = [
                (out.entropy * mask).sum(),
                mask.sum(),
                out.mean_logits[chosen_mask].sum(),
                chosen_mask.sum(),
                out.mean_logits[rejected_mask].sum(),
                rejected_mask.sum(),
                (out.correct * chosen_mask).sum(),
            ]
            sums = torch.stack([s.double() for s in sums])
            entropy, tokens, logits_c, tokens_c, logits_r, tokens_r, correct_c = gather(sums[None]).sum(0).tolist()
            metrics = self._metrics[mode]
            metrics["entropy"].append(entropy / max(tokens, 1))
            metrics["logits/chosen"].append(logits_c / max(tokens_c, 1))
            metrics["logits/rejected"].append(logits_r / max(tokens_r, 1))
            metrics["mean_token_accuracy"].append(correct_c / max(tokens_c, 1))
            if mode == "train":
                attention_mask = inputs.get("attention_mask")  # packed rows have none: their collator counts
                real = attention_mask.sum() if attention_mask is not None else inputs["num_tokens"].to(mask.device)
                self._total_train_tokens += int(gather(real).sum().item()) // self._tp_size
            metrics["num_tokens"] = [self._total_train_tokens]
            pairs = [chosen.detach(), rejected.detach()]
            if ref_chosen is not None:
                pairs += [ref_chosen.detach().to(chosen.device), ref_rejected.detach().to(chosen.device)]
            gathered = [gather(t.float()) for t in pairs]
            for name, value in _core.preference_metrics(*gathered).items():
                metrics[name].append(value)


class SimPERTrainer(_PreferenceLossTrainer):
    """``trl.DPOTrainer`` that trains with SimPER: same constructor, data pipeline, evaluation,
    logging, PEFT and Accelerate support; no reference model, ever (``trainer.ref_model is None``).

    ``args`` is a :class:`SimPERConfig`. ``train_dataset`` / ``eval_dataset`` take what DPOTrainer
    takes (a ``datasets.Dataset``), and also a list of records or a JSONL path.
    """

    _tag_names = ["trl", "simper", "simper_rs"]
    _name = "SimPER"
    _paper = {
        "title": "SimPER: A Minimalist Approach to Preference Alignment without Hyperparameters",
        "citation": "Xiao et al., SimPER: A Minimalist Approach to Preference Alignment without Hyperparameters, ICLR 2025",
    }
    _config_class = SimPERConfig
    _reference_free_reason = "uses no reference model"

    def _loss_module(self):
        return SimPERLoss()


class DILTrainer(_PreferenceLossTrainer):
    """``trl.DPOTrainer`` that trains with DIL (``DILConfig.estimator``): reference-free by default;
    with ``DILConfig(reference_free=False)`` the reference is TRL's (``ref_model``, the PEFT model
    with its adapter disabled, or a reloaded copy of the policy; ``precompute_ref_log_probs`` to
    compute it once before training), scored with this package's average log-probs.
    """

    _tag_names = ["trl", "dil", "simper_rs"]
    _name = "DIL"
    _paper = {
        "title": "On a Connection Between Imitation Learning and RLHF",
        "citation": "Xiao et al., On a Connection Between Imitation Learning and RLHF, ICLR 2025",
    }
    _config_class = DILConfig
    _reference_free_reason = "is reference-free (DILConfig.reference_free=True)"

    def _is_reference_free(self, args) -> bool:
        return bool(args.reference_free)

    def _loss_module(self):
        return DILLoss(estimator=self.args.estimator, beta=self.args.beta)
