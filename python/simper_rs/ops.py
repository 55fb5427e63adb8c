"""Log-prob reductions from causal-LM logits and labels.

Conventions (those of HuggingFace and TRL):

* ``logits`` is ``[B, T, V]`` as the model returns it; ``labels`` is int64 ``[B, T]`` with
  ``ignore_index`` (default -100) on prompt and padding positions.
* With ``shift=True`` (the default) the logits at position ``t`` predict the label at ``t + 1``;
  the shift is a view, the logits are never copied. Use ``shift=False`` for aligned inputs.
* Log-probs are float32 (float64 for float64 logits); accumulation is always in float32 or wider.

Backends: ``"rust"`` is the fused kernels (one read of each logits row forward, one read and
one write backward, no ``[B, T, V]`` intermediate): Rust + rayon for CPU tensors, a CUDA kernel
(compiled at first use by NVRTC, queued on PyTorch's current stream) for float32, bfloat16 and
float16 CUDA tensors. ``"torch"`` is plain libtorch ops (any device and dtype, and the in-package
reference). ``"auto"`` (default) takes ``"rust"`` where it runs, else ``"torch"``; where the CUDA
kernel cannot run (no NVRTC, no driver) it says why once, in a ``RuntimeWarning``. Before the
CUDA kernel serves a (device, dtype) it passes a self-check against the libtorch path
(:mod:`simper_rs.cuda_check`); where it fails, ``"auto"`` warns once and uses libtorch ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import torch

from . import _core, _cuda, cuda_check

__all__ = [
    "token_logps",
    "sequence_logps",
    "sequence_logps_with_stats",
    "linear_token_logps",
    "linear_sequence_logps",
    "linear_sequence_logps_with_stats",
    "LogitTransform",
    "BACKENDS",
]

BACKENDS = ("auto", "rust", "torch")


def require_storage(name: str, tensor: torch.Tensor) -> None:
    """Refuse a tensor saved for backward whose storage was freed or shrunk after the forward
    (as FSDP-style code does); reading it would read freed memory."""
    if tensor.numel() == 0:
        return
    last = tensor.storage_offset() + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))
    needed = (last + 1) * tensor.element_size()
    held = tensor.untyped_storage().nbytes()
    if held < needed:
        raise RuntimeError(
            f"{name} saved for backward was freed or resized after the forward (its storage holds {held} bytes, "
            f"{needed} are needed); keep it alive until backward has run"
        )


# -- the fused CPU op, registered with torch.library so autograd, opcheck and torch.compile see it


@torch.library.custom_op("simper_rs::fused_token_logps", mutates_args=())
def _fused_token_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    shift: bool,
    with_stats: bool,
    logit_scale: Optional[float] = None,
    logit_softcap: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    transform = dict(logit_scale=logit_scale, logit_softcap=logit_softcap)
    if logits.is_cuda:
        # Reading the labels back to validate them synchronises, which graph capture forbids;
        # under capture the kernel itself turns an out-of-range label into NaN.
        check_values = not torch.cuda.is_current_stream_capturing()
        stream = _cuda.current_stream(logits.device)
        return _core.fused_token_logps_forward(
            logits, labels, ignore_index, shift, with_stats, stream, check_values, **transform
        )
    return _core.fused_token_logps_forward(logits, labels, ignore_index, shift, with_stats, **transform)


def _fake_forward_outputs(source: torch.Tensor, shift: bool, with_stats: bool):
    """Shapes and dtypes of (logps, lse, entropy, correct) for a [B, T, ...] logits or hidden."""
    batch, positions = source.shape[0], source.shape[1] - int(shift)
    dtype = torch.float64 if source.dtype == torch.float64 else torch.float32
    stats_shape = (batch, positions) if with_stats else (0,)
    return (
        source.new_empty((batch, positions), dtype=dtype),
        source.new_empty((batch, positions), dtype=dtype),
        source.new_empty(stats_shape, dtype=dtype),
        source.new_empty(stats_shape, dtype=dtype),
    )


@_fused_token_logps.register_fake
def _(logits, labels, ignore_index, shift, with_stats, logit_scale=None, logit_softcap=None):
    return _fake_forward_outputs(logits, shift, with_stats)


@torch.library.custom_op("simper_rs::fused_token_logps_backward", mutates_args=())
def _fused_token_logps_backward(
    grad_logps: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ignore_index: int,
    shift: bool,
    logit_scale: Optional[float] = None,
    logit_softcap: Optional[float] = None,
) -> torch.Tensor:
    require_storage("logits", logits)
    stream = _cuda.current_stream(logits.device) if logits.is_cuda else None
    return _core.fused_token_logps_backward(
        grad_logps,
        logits,
        labels,
        lse,
        ignore_index,
        shift,
        stream,
        logit_scale=logit_scale,
        logit_softcap=logit_softcap,
    )


@_fused_token_logps_backward.register_fake
def _(grad_logps, logits, labels, lse, ignore_index, shift, logit_scale=None, logit_softcap=None):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    logits, labels, ignore_index, shift, _, logit_scale, logit_softcap = inputs
    _, lse, entropy, correct = output
    ctx.save_for_backward(logits, labels, lse)
    ctx.ignore_index, ctx.shift, ctx.transform = ignore_index, shift, (logit_scale, logit_softcap)
    ctx.mark_non_differentiable(lse, entropy, correct)


def _backward(ctx, grad_logps, _grad_lse, _grad_entropy, _grad_correct):
    logits, labels, lse = ctx.saved_tensors
    grad = _fused_token_logps_backward(grad_logps, logits, labels, lse, ctx.ignore_index, ctx.shift, *ctx.transform)
    return grad, None, None, None, None, None, None


_fused_token_logps.register_autograd(_backward, setup_context=_setup_context)


# -- the fused-linear op: hidden states + lm_head weight -> log-probs, logits never materialised


@torch.library.custom_op("simper_rs::linear_token_logps", mutates_args=())
def _linear_token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    labels: torch.Tensor,
    ignore_index: int,
    shift: bool,
    chunk_size: Optional[int],
    with_stats: bool,
    scale: Optional[torch.Tensor] = None,
    logit_scale: Optional[float] = None,
    logit_softcap: Optional[float] = None,
    with_means: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # The op decides its own precision (the inputs' dtype, float32 accumulation): an enclosing
    # autocast must not recast the chunk matmuls, or forward and backward would disagree.
    with torch.autocast(hidden.device.type, enabled=False):
        return _core.linear_token_logps_forward(
            hidden,
            weight,
            bias,
            labels,
            ignore_index,
            shift,
            chunk_size,
            with_stats,
            linear_cuda_stream(hidden),
            logit_scale=logit_scale,
            logit_scale_tensor=scale,
            logit_softcap=logit_softcap,
            with_means=with_means,
        )


def linear_cuda_stream(hidden: torch.Tensor) -> Optional[int]:
    """PyTorch's current stream when the CUDA kernel takes the fused-linear chunks (the fused-linear
    ops pass it to the Rust side), else None (the Rust side then runs the chunks' softmax through
    libtorch ops). The kernel takes them only once it has passed its self-check for this device
    and dtype."""
    if not _cuda_kernel_runs(hidden):
        return None
    # A device simulated by the tests has no stream; the Rust side runs CPU tensors on CPU whatever it is given.
    return _cuda.current_stream(hidden.device) if hidden.is_cuda else 0


@_linear_token_logps.register_fake
def _(
    hidden,
    weight,
    bias,
    labels,
    ignore_index,
    shift,
    chunk_size,
    with_stats,
    scale=None,
    logit_scale=None,
    logit_softcap=None,
    with_means=False,
):
    logps, lse, entropy, correct = _fake_forward_outputs(hidden, shift, with_stats)
    return logps, lse, entropy, correct, torch.empty_like(logps) if with_means else logps.new_empty(0)


@torch.library.custom_op("simper_rs::linear_token_logps_backward", mutates_args=())
def _linear_token_logps_backward(
    grad_logps: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    labels: torch.Tensor,
    lse: torch.Tensor,
    ignore_index: int,
    shift: bool,
    chunk_size: Optional[int],
    scale: Optional[torch.Tensor] = None,
    logit_scale: Optional[float] = None,
    logit_softcap: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    for name, tensor in (("hidden", hidden), ("weight", weight), ("bias", bias), ("logit_scale", scale)):
        if tensor is not None:
            require_storage(name, tensor)
    with torch.autocast(hidden.device.type, enabled=False):
        grad_hidden, grad_weight, grad_bias, grad_scale = _core.linear_token_logps_backward(
            grad_logps,
            hidden,
            weight,
            bias,
            labels,
            lse,
            ignore_index,
            shift,
            chunk_size,
            linear_cuda_stream(hidden),
            logit_scale=logit_scale,
            logit_scale_tensor=scale,
            logit_softcap=logit_softcap,
        )
    # custom ops return tensors only: an empty tensor stands for "no bias" / "no scale tensor".
    return (
        grad_hidden,
        grad_weight,
        grad_bias if grad_bias is not None else hidden.new_empty(0),
        grad_scale if grad_scale is not None else hidden.new_empty(0),
    )


@_linear_token_logps_backward.register_fake
def _(
    grad_logps,
    hidden,
    weight,
    bias,
    labels,
    lse,
    ignore_index,
    shift,
    chunk_size,
    scale=None,
    logit_scale=None,
    logit_softcap=None,
):
    grad_bias = torch.empty_like(bias) if bias is not None else hidden.new_empty(0)
    grad_scale = torch.empty_like(scale) if scale is not None else hidden.new_empty(0)
    return torch.empty_like(hidden), torch.empty_like(weight), grad_bias, grad_scale


def _linear_setup_context(ctx, inputs, output):
    hidden, weight, bias, labels, ignore_index, shift, chunk_size, _, scale, logit_scale, logit_softcap, _ = inputs
    _, lse, entropy, correct, means = output
    ctx.save_for_backward(hidden, weight, bias, labels, lse, scale)
    ctx.ignore_index, ctx.shift, ctx.chunk_size, ctx.transform = (
        ignore_index,
        shift,
        chunk_size,
        (logit_scale, logit_softcap),
    )
    ctx.mark_non_differentiable(lse, entropy, correct, means)


def _linear_backward(ctx, grad_logps, _grad_lse, _grad_entropy, _grad_correct, _grad_means):
    hidden, weight, bias, labels, lse, scale = ctx.saved_tensors
    grad_hidden, grad_weight, grad_bias, grad_scale = _linear_token_logps_backward(
        grad_logps,
        hidden,
        weight,
        bias,
        labels,
        lse,
        ctx.ignore_index,
        ctx.shift,
        ctx.chunk_size,
        scale,
        *ctx.transform,
    )
    return (
        grad_hidden,
        grad_weight,
        grad_bias if bias is not None else None,
        None,
        None,
        None,
        None,
        None,
        grad_scale if scale is not None else None,
        None,
        None,
        None,
    )


_linear_token_logps.register_autograd(_linear_backward, setup_context=_linear_setup_context)


# -- public functions

# libtorch calls made from Rust are opaque to torch.compile: run them eagerly (a clean graph break).
#: Validate (logits, labels) as the public functions do; raises ValueError / TypeError naming the argument.
check_logps_inputs = torch.compiler.disable(_core.check_logps_inputs)
_token_logps_torch = torch.compiler.disable(_core.token_logps_torch)
_token_stats_torch = torch.compiler.disable(_core.token_stats_torch)
_reduce_sequence_logps = torch.compiler.disable(_core.reduce_sequence_logps)
_reduce_packed_logps = torch.compiler.disable(_core.reduce_packed_logps)
#: Validate packed ``position_ids`` against ``labels``; returns the number of packed sequences.
check_packed_inputs = torch.compiler.disable(_core.check_packed_inputs)
_check_linear_inputs = torch.compiler.disable(_core.check_linear_logps_inputs)


_CUDA_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _on_kernel_device(tensor: torch.Tensor) -> bool:
    """A CUDA tensor (or one on a device the tests simulate a GPU with, see simper_rs.cuda_check)."""
    return tensor.is_cuda or cuda_check.is_simulated(tensor.device)


def _cuda_kernel_runs(tensor: torch.Tensor) -> bool:
    """Whether the CUDA kernel takes this CUDA tensor: its dtype, the kernel loads on its device,
    and it passed its self-check there for this dtype (run at this first use; a failure warns
    once and the libtorch-ops path takes over)."""
    if not _on_kernel_device(tensor) or tensor.dtype not in _CUDA_KERNEL_DTYPES:
        return False
    if tensor.is_cuda and _cuda.kernel_unavailable_reason(tensor.device) is not None:
        return False
    return cuda_check.kernel_trusted(tensor.device, tensor.dtype)


def resolve_backend(backend: str, logits: torch.Tensor) -> str:
    """The backend (``"rust"`` or ``"torch"``) a log-prob function runs for ``logits`` when asked
    for ``backend`` (``"auto"`` picks the fused kernel where it runs and has passed its
    self-check); raises the error the function would raise for an unavailable choice."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    device = logits.device.type
    kernel_device = _on_kernel_device(logits)
    if backend == "auto":
        if kernel_device:
            return "rust" if _cuda_kernel_runs(logits) else "torch"
        return "rust" if device == "cpu" else "torch"
    if backend == "rust" and kernel_device:
        if logits.dtype not in _CUDA_KERNEL_DTYPES:
            raise ValueError(
                f"backend='rust' on CUDA takes float32, bfloat16 or float16 logits, got {logits.dtype}; "
                "use backend='auto' (float64 then runs through libtorch ops)"
            )
        reason = _cuda.kernel_unavailable_reason(logits.device) if logits.is_cuda else None
        if reason is not None:
            raise RuntimeError(f"backend='rust': the CUDA kernel cannot run on {logits.device}: {reason}")
        failed = cuda_check.failure(logits.device, logits.dtype)
        if failed is not None:
            raise RuntimeError(f"backend='rust': {failed}; backend='auto' uses libtorch ops instead")
    elif backend == "rust" and device != "cpu":
        raise ValueError(
            f"backend='rust' runs on CPU and CUDA tensors, but logits are on {logits.device}; "
            "use backend='auto' to pick the right kernel"
        )
    return backend


@dataclass(frozen=True)
class LogitTransform:
    """What a model does to its output projection's logits z before the softmax: ``scale`` then
    ``softcap``, i.e. ``softcap·tanh(scale·z / softcap)``, or ``scale·z`` without a softcap.

    ``scale`` is a number, or (fused-linear ops only) a tensor of one number or one per vocabulary
    entry, which may require a gradient (a learnable logit scale); ``softcap`` a positive number or
    None. ``LogitTransform()`` is the identity. Which model attribute gives which transform is the
    table in :mod:`simper_rs.integrations.transforms`.
    """

    scale: Union[float, torch.Tensor, None] = None
    softcap: Optional[float] = None

    def is_identity(self) -> bool:
        return self.scale is None and self.softcap is None

    def constants(self) -> Tuple[Optional[float], Optional[float]]:
        """(scale, softcap) as numbers, for the logits ops (which take no scale tensor)."""
        if isinstance(self.scale, torch.Tensor):
            raise TypeError(
                "logit_scale of the logits ops is a number (the logits are given, so a learnable scale has already "
                "been applied by whoever computed them); a logit-scale tensor goes to the fused-linear ops"
            )
        return _number("logit_scale", self.scale), _number("logit_softcap", self.softcap)


def _number(name: str, value) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or None, got {type(value).__name__}")
    return float(value)


def _as_transform(logit_scale, logit_softcap) -> LogitTransform:
    return LogitTransform(scale=logit_scale, softcap=logit_softcap)


def token_logps_and_stats(
    logits, labels, ignore_index, shift, backend, with_stats, transform: LogitTransform = LogitTransform()
):
    """Per-token log-probs ``[B, T']`` and, with ``with_stats``, per-token (entropy, correct) of
    already validated logits (or None): the building block of the logits functions here."""
    scale, softcap = transform.constants()
    if resolve_backend(backend, logits) == "rust":
        logps, _, entropy, correct = _fused_token_logps(logits, labels, ignore_index, shift, with_stats, scale, softcap)
        return logps, (entropy, correct)
    logps = _token_logps_torch(logits, labels, ignore_index, shift, scale, softcap)
    stats = _token_stats_torch(logits, labels, ignore_index, shift, scale, softcap) if with_stats else None
    return logps, stats


def token_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    shift: bool = True,
    backend: str = "auto",
    logit_scale: Optional[float] = None,
    logit_softcap: Optional[float] = None,
) -> torch.Tensor:
    """Per-token log-probabilities ``log softmax(logits)[label]``, 0 where the label is ignored.

    Returns ``[B, T-1]`` with ``shift=True`` (entry ``t`` is the log-prob of ``labels[:, t+1]``),
    else ``[B, T]``. Differentiable with respect to ``logits``.

    ``logit_scale`` and ``logit_softcap`` take the log-softmax of ``t(logits)`` instead, with
    ``t(z) = logit_softcap·tanh(logit_scale·z / logit_softcap)`` (or ``logit_scale·z``), computed by
    the kernel as it reads each row; the gradient is with respect to the untransformed logits.
    """
    transform = _as_transform(logit_scale, logit_softcap)
    return token_logps_and_stats(logits, labels, ignore_index, shift, backend, False, transform)[0]


def sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    average: bool = True,
    ignore_index: int = -100,
    shift: bool = True,
    backend: str = "auto",
    position_ids: Optional[torch.Tensor] = None,
    logit_scale: Optional[float] = None,
    logit_softcap: Optional[float] = None,
) -> torch.Tensor:
    """Per-sequence log-probabilities ``[B]`` over the response tokens.

    ``average=True`` gives ℓ(y) = (1/|y|) Σ_t log π(y_t | x, y_<t), the quantity SimPER and DIL
    use; ``average=False`` gives the sum. A row with no response tokens has no average and
    raises ``ValueError`` naming the row.

    Packed (padding-free) rows: with ``position_ids`` (the shape of ``labels``, restarting at 0
    at each sequence, as transformers takes them) the result has one value per packed sequence,
    in order of appearance row by row. With ``shift`` the first label of each sequence must be
    ``ignore_index`` (it would be predicted from the previous sequence); bad ``position_ids``
    raise ``ValueError``. ``logit_scale`` / ``logit_softcap`` as in :func:`token_logps`.
    """
    return sequence_logps_with_stats(
        logits,
        labels,
        average=average,
        ignore_index=ignore_index,
        shift=shift,
        backend=backend,
        return_stats=False,
        position_ids=position_ids,
        logit_scale=logit_scale,
        logit_softcap=logit_softcap,
    )[0]


def sequence_logps_with_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    average: bool = True,
    ignore_index: int = -100,
    shift: bool = True,
    backend: str = "auto",
    return_stats: bool = True,
    position_ids: Optional[torch.Tensor] = None,
    logit_scale: Optional[float] = None,
    logit_softcap: Optional[float] = None,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """:func:`sequence_logps` plus, with ``return_stats``, two metrics over all response tokens
    of the batch, computed in the same pass: ``entropy`` (mean predictive entropy, nats) and
    ``mean_token_accuracy`` (fraction where argmax of the logits equals the label)."""
    resolve_backend(backend, logits)
    transform = _as_transform(logit_scale, logit_softcap)
    transform.constants()  # checked before any work
    packed = position_ids is not None
    check_logps_inputs(logits, labels, ignore_index=ignore_index, shift=shift, require_tokens=average and not packed)
    if packed:
        check_packed_inputs(labels, position_ids, ignore_index=ignore_index, shift=shift, require_tokens=average)
    tokens, stats = token_logps_and_stats(logits, labels, ignore_index, shift, backend, return_stats, transform)
    return reduce_with_stats(
        tokens, stats if return_stats else None, labels, ignore_index, shift, average, position_ids
    )


def reduce_with_stats(tokens, stats, labels, ignore_index=-100, shift=True, average=True, position_ids=None):
    """Per-token log-probs ``[B, T']`` (0 where ignored) reduced to per-sequence values (averages,
    or sums without ``average``; one per packed sequence with ``position_ids``), and the token
    metrics from per-token ``stats = (entropy, correct)`` (or None): the reduction every log-prob
    function here ends with, for callers that computed the token values themselves."""
    if position_ids is not None:  # one value per packed sequence
        logps = _reduce_packed_logps(
            tokens, labels, position_ids, ignore_index=ignore_index, shift=shift, average=average
        )
    else:
        logps = _reduce_sequence_logps(tokens, labels, ignore_index=ignore_index, shift=shift, average=average)
    metrics: Dict[str, float] = {}
    if stats is not None:
        entropy, correct = stats
        count = max(int((labels[:, 1:] if shift else labels).ne(ignore_index).sum()), 1)
        metrics = {"entropy": float(entropy.sum()) / count, "mean_token_accuracy": float(correct.sum()) / count}
    return logps, metrics


def linear_token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    ignore_index: int = -100,
    shift: bool = True,
    chunk_size: Optional[int] = None,
    logit_scale: Union[float, torch.Tensor, None] = None,
    logit_softcap: Optional[float] = None,
) -> torch.Tensor:
    """Per-token log-probs from the last hidden states, never materialising the logits.

    Equal to ``token_logps(hidden @ weight.T + bias, labels)`` but computed ``chunk_size``
    positions at a time (default: chunks whose logits are about the size of the hidden states they
    come from, at least 128 positions, at most 64 MiB of logits), recomputing each
    chunk's logits in backward. ``hidden`` is ``[B, T, H]``, ``weight`` is ``[V, H]`` (an
    ``lm_head.weight``), ``bias`` is ``[V]`` or None. Differentiable in hidden, weight and bias.
    Positions whose label is ignored cost nothing.

    A model that transforms its logits (Gemma 2's softcap, Cohere's logit scale, ...): the
    log-probs of ``t(hidden @ weight.T + bias)`` with ``t`` as in :func:`token_logps`;
    ``logit_scale`` may also be a tensor of one number or one per vocabulary entry (a learnable
    scale: it gets its gradient too).
    """
    transform = _as_transform(logit_scale, logit_softcap)
    return linear_logps_and_stats(
        hidden, weight, labels, bias, ignore_index, shift, chunk_size, False, transform
    ).token_logps


@dataclass
class LinearLogps:
    """What :func:`linear_logps_and_stats` returns: per-token log-probs ``[B, T']`` (with
    gradient), entropy and argmax == label (empty without stats) and the mean logit over the
    vocabulary (empty unless asked; no gradient), 0 where the label is ignored."""

    token_logps: torch.Tensor
    entropy: torch.Tensor
    correct: torch.Tensor
    mean_logits: torch.Tensor


def split_transform(hidden: torch.Tensor, transform: LogitTransform):
    """(scale tensor in hidden's dtype or None, scale number or None, softcap or None) of a
    transform, checked: how the fused-linear ops take it."""
    scale = transform.scale
    if isinstance(scale, torch.Tensor):
        if not scale.is_floating_point():
            raise TypeError(f"logit_scale must be a floating-point tensor, got {scale.dtype}")
        return scale.reshape(-1).to(hidden.dtype), None, _number("logit_softcap", transform.softcap)
    return None, _number("logit_scale", scale), _number("logit_softcap", transform.softcap)


def linear_logps_and_stats(
    hidden,
    weight,
    labels,
    bias=None,
    ignore_index=-100,
    shift=True,
    chunk_size=None,
    with_stats=True,
    transform: LogitTransform = LogitTransform(),
    with_means: bool = False,
):
    """The fused-linear op's per-token outputs, as a :class:`LinearLogps` (the building block of
    the fused-linear functions here and of the lm_head forward in :mod:`simper_rs.integrations`)."""
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"hidden must be a torch.Tensor, got {type(hidden).__name__}")
    check_chunk_size(chunk_size)
    scale_tensor, scale, softcap = split_transform(hidden, transform)
    logps, _, entropy, correct, means = _linear_token_logps(
        hidden,
        weight,
        bias,
        labels,
        ignore_index,
        shift,
        chunk_size,
        with_stats,
        scale_tensor,
        scale,
        softcap,
        with_means,
    )
    return LinearLogps(logps, entropy, correct, means)


def check_chunk_size(chunk_size) -> None:
    """A fused-linear ``chunk_size``: a positive number of positions, or None (automatic)."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int (positions per chunk) or None, got {chunk_size!r}")


def check_linear_inputs(
    hidden, weight, bias, labels, ignore_index=-100, shift=True, require_tokens=False, transform=LogitTransform()
):
    """Validate fused-linear inputs (shapes, dtypes, devices, labels, the transform) as the public
    functions do, before any work; raises ``ValueError`` / ``TypeError`` naming the argument."""
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"hidden must be a torch.Tensor, got {type(hidden).__name__}")
    scale_tensor, scale, softcap = split_transform(hidden, transform)
    _check_linear_inputs(
        hidden,
        weight,
        bias,
        labels,
        ignore_index,
        shift,
        require_tokens,
        logit_scale=scale,
        logit_scale_tensor=scale_tensor,
        logit_softcap=softcap,
    )


def linear_sequence_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    average: bool = True,
    ignore_index: int = -100,
    shift: bool = True,
    chunk_size: Optional[int] = None,
    position_ids: Optional[torch.Tensor] = None,
    logit_scale: Union[float, torch.Tensor, None] = None,
    logit_softcap: Optional[float] = None,
) -> torch.Tensor:
    """Per-sequence log-probs ``[B]`` from hidden states; see :func:`linear_token_logps` and
    :func:`sequence_logps` (``position_ids`` for packed rows)."""
    return linear_sequence_logps_with_stats(
        hidden,
        weight,
        labels,
        bias,
        average=average,
        ignore_index=ignore_index,
        shift=shift,
        chunk_size=chunk_size,
        return_stats=False,
        position_ids=position_ids,
        logit_scale=logit_scale,
        logit_softcap=logit_softcap,
    )[0]


def linear_sequence_logps_with_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    average: bool = True,
    ignore_index: int = -100,
    shift: bool = True,
    chunk_size: Optional[int] = None,
    return_stats: bool = True,
    position_ids: Optional[torch.Tensor] = None,
    logit_scale: Union[float, torch.Tensor, None] = None,
    logit_softcap: Optional[float] = None,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """:func:`linear_sequence_logps` plus the ``entropy`` and ``mean_token_accuracy`` metrics."""
    transform = _as_transform(logit_scale, logit_softcap)
    packed = position_ids is not None
    # every sequence needs a response token to have an average; checked before any work
    check_linear_inputs(
        hidden, weight, bias, labels, ignore_index, shift, require_tokens=average and not packed, transform=transform
    )
    if packed:
        check_packed_inputs(labels, position_ids, ignore_index=ignore_index, shift=shift, require_tokens=average)
    out = linear_logps_and_stats(hidden, weight, labels, bias, ignore_index, shift, chunk_size, return_stats, transform)
    stats = (out.entropy, out.correct) if return_stats else None
    return reduce_with_stats(out.token_logps, stats, labels, ignore_index, shift, average, position_ids)
