"""What each model family does to its logits after the ``lm_head``: the one table.

The fused-linear path replaces only the output projection of a model with the fused op, so
whatever the model's forward does to the projection's logits afterwards must be done by the op
too. ``TRANSFORMS`` maps a model type (``model.config.model_type``) to the steps its forward
applies, in order; each step names the attribute it reads. The fused ops compute them natively
(see :class:`simper_rs.LogitTransform`): a scale (a number, or a tensor of one number or one per
vocabulary entry with its own gradient), then a softcap ``c·tanh(z/c)``. Two more steps change
the projection itself: keeping the first N vocabulary entries, and taking one stream of a head
that predicts several.

A model type that is not in the table is assumed to use its logits as they come; the first
fused step checks that assumption against the model's own logits (``verify_fused_head`` in
:mod:`simper_rs.integrations.causal_lm`), so a family missing here is refused with a clear
error, never trained on the wrong distribution. docs/design.md explains the design.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch

from ..ops import LogitTransform

__all__ = ["TRANSFORMS", "Step", "ModelTransform", "model_transform"]


@dataclass(frozen=True)
class Step:
    """One thing a model's forward does after the lm_head.

    ``kind``: ``"scale"`` (logits · value), ``"divide"`` (logits / value), ``"softcap"``
    (value·tanh(logits / value)), ``"vocab_limit"`` (logits[..., :value]), ``"first_stream"``
    (the head runs on [B, streams, T, H] and the logits are stream 0). ``source`` says where the
    value is: ``config.<name>`` (the text config), ``head.<name>`` (an attribute of the lm_head
    module, read inside its forward: a learnable scale), or ``none`` (no value). ``times`` is an
    optional second attribute the value is multiplied by (``head.<name>``).
    """

    kind: str
    source: str = "none"
    times: Optional[str] = None


def _scale(source: str) -> Step:
    return Step("scale", source)


def _divide(source: str) -> Step:
    return Step("divide", source)


def _softcap(source: str) -> Step:
    return Step("softcap", source)


_GEMMA_SOFTCAP = (_softcap("config.final_logit_softcapping"),)

#: model type -> what its forward does to the lm_head's logits, in order.
TRANSFORMS: Dict[str, Tuple[Step, ...]] = {
    # logits * config.logit_scale
    "cohere": (_scale("config.logit_scale"),),
    "cohere2": (_scale("config.logit_scale"),),
    "cohere2_moe": (_scale("config.logit_scale"),),
    "cohere_compass_text": (_scale("config.logit_scale"),),
    # logits / config.logits_scaling (muP)
    "granite": (_divide("config.logits_scaling"),),
    "granite_swa": (_divide("config.logits_scaling"),),
    "granitemoe": (_divide("config.logits_scaling"),),
    "granitemoe_swa": (_divide("config.logits_scaling"),),
    "granitemoehybrid": (_divide("config.logits_scaling"),),
    "granitemoeshared": (_divide("config.logits_scaling"),),
    # logits * config.logits_scaling (the same name multiplies here)
    "hyperclovax": (_scale("config.logits_scaling"),),
    # logits * config.lm_head_multiplier
    "falcon_h1": (_scale("config.lm_head_multiplier"),),
    # logits * (lm_head.logit_scale · lm_head.logit_scale_factor): a learned scale per vocabulary entry
    "dory": (Step("scale", "head.logit_scale", times="head.logit_scale_factor"),),
    # softcap: final_logit_softcapping · tanh(logits / final_logit_softcapping) when it is set
    "gemma2": _GEMMA_SOFTCAP,
    "gemma3_text": _GEMMA_SOFTCAP,
    "gemma3n": _GEMMA_SOFTCAP,
    "gemma3n_text": _GEMMA_SOFTCAP,
    "gemma4": _GEMMA_SOFTCAP,
    "gemma4_text": _GEMMA_SOFTCAP,
    "gemma4_unified": _GEMMA_SOFTCAP,
    "gemma4_unified_text": _GEMMA_SOFTCAP,
    "vaultgemma": _GEMMA_SOFTCAP,
    "nanochat": _GEMMA_SOFTCAP,
    "beam": _GEMMA_SOFTCAP,
    "inkling2_text": _GEMMA_SOFTCAP,
    "inkling2_loop_text": _GEMMA_SOFTCAP,
    "recurrent_gemma": (_softcap("config.logits_soft_cap"),),
    "xlstm": (_softcap("config.output_logit_soft_cap"),),
    # logits[..., :unpadded_vocab_size]: the embedding is padded beyond the real vocabulary
    "inkling_text": (Step("vocab_limit", "config.unpadded_vocab_size"),),
    # the head predicts n-gram streams [B, ngram, T, V]; the logits are stream 0
    "prophetnet": (Step("first_stream"),),
}


@dataclass(frozen=True)
class ModelTransform:
    """The table's entry for one model, with its values read: ``transform(head)`` gives the
    :class:`~simper_rs.LogitTransform` (evaluated inside the head's forward, where a sharded
    head's parameters are gathered), ``vocab_limit`` the number of vocabulary entries kept (None:
    all), ``first_stream`` whether the head input is [B, streams, T, H] of which stream 0 counts."""

    model_type: str
    steps: Tuple[Step, ...] = ()
    vocab_limit: Optional[int] = None
    first_stream: bool = False
    _scales: Tuple[Tuple[str, Optional[str], bool], ...] = field(default=(), repr=False)
    _constant_scale: Optional[float] = None
    _softcap: Optional[float] = None

    def transform(self, head: torch.nn.Module) -> LogitTransform:
        scale = self._constant_scale
        for source, times, invert in self._scales:  # head attributes: read here, inside the forward
            value = _head_value(head, source) * (_head_value(head, times) if times else 1.0)
            value = 1.0 / value if invert else value
            if isinstance(value, torch.Tensor) and not value.is_floating_point():
                value = value.float()
            scale = value if scale is None else value * scale
        return LogitTransform(scale=scale, softcap=self._softcap)

    def describe(self) -> str:
        """The steps in words, for messages."""
        if not self.steps:
            return "none (the lm_head's logits as they are)"
        return ", then ".join(f"{s.kind} by {s.source}" + (f" × {s.times}" if s.times else "") for s in self.steps)

    @property
    def head_attributes(self) -> Tuple[str, ...]:
        """The attributes of the lm_head module this transform reads (a learnable scale)."""
        names = []
        for source, times, _ in self._scales:
            names += [source.split(".", 1)[1]] + ([times.split(".", 1)[1]] if times else [])
        return tuple(names)


def _head_value(head: torch.nn.Module, source: str):
    name = source.split(".", 1)[1]
    if not hasattr(head, name):
        raise ValueError(
            f"{type(head).__name__} has no attribute {name!r} ({source} in simper_rs's logit-transform table)"
        )
    value = getattr(head, name)
    return value.float() if isinstance(value, torch.Tensor) else float(value)


def _text_config(model) -> object:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _config_value(model, source: str):
    name = source.split(".", 1)[1]
    for config in (_text_config(model), model.config):
        if hasattr(config, name):
            return getattr(config, name)
    return None


def model_transform(model) -> ModelTransform:
    """The :class:`ModelTransform` of a HuggingFace model (identity for a type not in the table)."""
    model_type = getattr(model.config, "model_type", "")
    steps = TRANSFORMS.get(model_type, ())
    scales, constant, softcap, vocab_limit, first_stream = [], None, None, None, False
    for step in steps:
        if step.kind == "first_stream":
            first_stream = True
            continue
        if step.source.startswith("head."):
            if step.kind not in ("scale", "divide"):
                raise ValueError(f"{step.kind} from {step.source}: only scales may be read from the head")
            scales.append((step.source, step.times, step.kind == "divide"))
            continue
        value = _config_value(model, step.source)
        if value is None:
            continue  # the config does not set it: the model's forward skips the step too
        if step.kind in ("scale", "divide"):
            if softcap is not None:
                raise ValueError(f"{model_type}: a scale after the softcap is not a transform the fused ops compute")
            value = float(value) if step.kind == "scale" else 1.0 / float(value)
            constant = value if constant is None else constant * value
        elif step.kind == "softcap":
            softcap = float(value)
        elif step.kind == "vocab_limit":
            vocab_limit = int(value)
        else:
            raise ValueError(f"unknown step kind {step.kind!r} in simper_rs's logit-transform table")
    if constant == 1.0:
        constant = None
    return ModelTransform(
        model_type=model_type,
        steps=steps,
        vocab_limit=vocab_limit,
        first_stream=first_stream,
        _scales=tuple(scales),
        _constant_scale=constant,
        _softcap=softcap,
    )
