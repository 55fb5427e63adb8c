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

from typing import Dict, Optional, Tuple

import torch

from . import _core, _cuda, cuda_check

__all__ = [
    "token_logps",
    "sequence_logps",
    "sequence_logps_with_stats",
    "linear_token_logps",
    "linear_sequence_logps",
    "linear_sequence_logps_with_stats",
    "BACKENDS",
]

BACKENDS = ("auto", "rust", "torch")


def _require_storage(name: str, tensor: torch.Tensor) -> None:
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
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, shift: bool, with_stats: bool
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if logits.is_cuda:
        # Reading the labels back to validate them synchronises, which graph capture forbids;
        # under capture the kernel itself turns an out-of-range label into NaN.
        check_values = not torch.cuda.is_current_stream_capturing()
        stream = _cuda.current_stream(logits.device)
        return _core.fused_token_logps_forward(logits, labels, ignore_index, shift, with_stats, stream, check_values)
    return _core.fused_token_logps_forward(logits, labels, ignore_index, shift, with_stats)


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
def _(logits, labels, ignore_index, shift, with_stats):
    return _fake_forward_outputs(logits, shift, with_stats)


@torch.library.custom_op("simper_rs::fused_token_logps_backward", mutates_args=())
def _fused_token_logps_backward(
    grad_logps: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor, ignore_index: int, shift: bool
) -> torch.Tensor:
    _require_storage("logits", logits)
    stream = _cuda.current_stream(logits.device) if logits.is_cuda else None
    return _core.fused_token_logps_backward(grad_logps, logits, labels, lse, ignore_index, shift, stream)


@_fused_token_logps_backward.register_fake
def _(grad_logps, logits, labels, lse, ignore_index, shift):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    logits, labels, ignore_index, shift, _ = inputs
    _, lse, entropy, correct = output
    ctx.save_for_backward(logits, labels, lse)
    ctx.ignore_index, ctx.shift = ignore_index, shift
    ctx.mark_non_differentiable(lse, entropy, correct)


def _backward(ctx, grad_logps, _grad_lse, _grad_entropy, _grad_correct):
    logits, labels, lse = ctx.saved_tensors
    grad = _fused_token_logps_backward(grad_logps, logits, labels, lse, ctx.ignore_index, ctx.shift)
    return grad, None, None, None, None


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
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # The op decides its own precision (the inputs' dtype, float32 accumulation): an enclosing
    # autocast must not recast the chunk matmuls, or forward and backward would disagree.
    with torch.autocast(hidden.device.type, enabled=False):
        return _core.linear_token_logps_forward(
            hidden, weight, bias, labels, ignore_index, shift, chunk_size, with_stats, _linear_cuda_stream(hidden)
        )


def _linear_cuda_stream(hidden: torch.Tensor) -> Optional[int]:
    """PyTorch's current stream when the CUDA kernel takes the fused-linear chunks, else None
    (the Rust side then runs the chunks' softmax through libtorch ops). The kernel takes them
    only once it has passed its self-check for this device and dtype."""
    if not _cuda_kernel_runs(hidden):
        return None
    # A device simulated by the tests has no stream; the Rust side runs CPU tensors on CPU whatever it is given.
    return _cuda.current_stream(hidden.device) if hidden.is_cuda else 0


@_linear_token_logps.register_fake
def _(hidden, weight, bias, labels, ignore_index, shift, chunk_size, with_stats):
    return _fake_forward_outputs(hidden, shift, with_stats)


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
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    for name, tensor in (("hidden", hidden), ("weight", weight), ("bias", bias)):
        if tensor is not None:
            _require_storage(name, tensor)
    with torch.autocast(hidden.device.type, enabled=False):
        grad_hidden, grad_weight, grad_bias = _core.linear_token_logps_backward(
            grad_logps, hidden, weight, bias, labels, lse, ignore_index, shift, chunk_size, _linear_cuda_stream(hidden)
        )
    # custom ops return tensors only: an empty tensor stands for "no bias".
    return grad_hidden, grad_weight, grad_bias if grad_bias is not None else hidden.new_empty(0)


@_linear_token_logps_backward.register_fake
def _(grad_logps, hidden, weight, bias, labels, lse, ignore_index, shift, chunk_size):
    grad_bias = torch.empty_like(bias) if bias is not None else hidden.new_empty(0)
    return torch.empty_like(hidden), torch.empty_like(weight), grad_bias


def _linear_setup_context(ctx, inputs, output):
    hidden, weight, bias, labels, ignore_index, shift, chunk_size, _ = inputs
    _, lse, entropy, correct = output
    ctx.save_for_backward(hidden, weight, bias, labels, lse)
    ctx.ignore_index, ctx.shift, ctx.chunk_size = ignore_index, shift, chunk_size
    ctx.mark_non_differentiable(lse, entropy, correct)


def _linear_backward(ctx, grad_logps, _grad_lse, _grad_entropy, _grad_correct):
    hidden, weight, bias, labels, lse = ctx.saved_tensors
    grad_hidden, grad_weight, grad_bias = _linear_token_logps_backward(
        grad_logps, hidden, weight, bias, labels, lse, ctx.ignore_index, ctx.shift, ctx.chunk_size
    )
    return grad_hidden, grad_weight, (grad_bias if bias is not None else None), None, None, None, None, None


_linear_token_logps.register_autograd(_linear_backward, setup_context=_linear_setup_context)


# -- public functions

# libtorch calls made from Rust are opaque to torch.compile: run them eagerly (a clean graph break).
_check_logps_inputs = torch.compiler.disable(_core.check_logps_inputs)
_token_logps_torch = torch.compiler.disable(_core.token_logps_torch)
_token_stats_torch = torch.compiler.disable(_core.token_stats_torch)
_reduce_sequence_logps = torch.compiler.disable(_core.reduce_sequence_logps)
_reduce_packed_logps = torch.compiler.disable(_core.reduce_packed_logps)
_check_packed_inputs = torch.compiler.disable(_core.check_packed_inputs)
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


def _resolve_backend(backend: str, logits: torch.Tensor) -> str:
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


def _token_logps_and_stats(logits, labels, ignore_index, shift, backend, with_stats):
    if _resolve_backend(backend, logits) == "rust":
        logps, _, entropy, correct = _fused_token_logps(logits, labels, ignore_index, shift, with_stats)
        return logps, (entropy, correct)
    logps = _token_logps_torch(logits, labels, ignore_index, shift)
    stats = _token_stats_torch(logits, labels, ignore_index, shift) if with_stats else None
    return logps, stats


def token_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    shift: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Per-token log-probabilities ``log softmax(logits)[label]``, 0 where the label is ignored.

    Returns ``[B, T-1]`` with ``shift=True`` (entry ``t`` is the log-prob of ``labels[:, t+1]``),
    else ``[B, T]``. Differentiable with respect to ``logits``.
    """
    return _token_logps_and_stats(logits, labels, ignore_index, shift, backend, False)[0]


def sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    average: bool = True,
    ignore_index: int = -100,
    shift: bool = True,
    backend: str = "auto",
    position_ids: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-sequence log-probabilities ``[B]`` over the response tokens.

    ``average=True`` gives ℓ(y) = (1/|y|) Σ_t log π(y_t | x, y_<t), the quantity SimPER and DIL
    use; ``average=False`` gives the sum. A row with no response tokens has no average and
    raises ``ValueError`` naming the row.

    Packed (padding-free) rows: with ``position_ids`` (the shape of ``labels``, restarting at 0
    at each sequence, as transformers takes them) the result has one value per packed sequence,
    in order of appearance row by row. With ``shift`` the first label of each sequence must be
    ``ignore_index`` (it would be predicted from the previous sequence); bad ``position_ids``
    raise ``ValueError``.
    """
    return sequence_logps_with_stats(
        logits, labels, average=average, ignore_index=ignore_index, shift=shift, backend=backend, return_stats=False,
        position_ids=position_ids,
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
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """:func:`sequence_logps` plus, with ``return_stats``, two metrics over all response tokens
    of the batch, computed in the same pass: ``entropy`` (mean predictive entropy, nats) and
    ``mean_token_accuracy`` (fraction where argmax of the logits equals the label)."""
    _resolve_backend(backend, logits)
    packed = position_ids is not None
    _check_logps_inputs(logits, labels, ignore_index=ignore_index, shift=shift, require_tokens=average and not packed)
    if packed:
        _check_packed_inputs(labels, position_ids, ignore_index=ignore_index, shift=shift, require_tokens=average)
    tokens, stats = _token_logps_and_stats(logits, labels, ignore_index, shift, backend, return_stats)
    return _reduce_with_stats(tokens, stats if return_stats else None, labels, ignore_index, shift, average, position_ids)


def _reduce_with_stats(tokens, stats, labels, ignore_index, shift, average, position_ids=None):
    if position_ids is not None:  # one value per packed sequence
        logps = _reduce_packed_logps(tokens, labels, position_ids, ignore_index=ignore_index, shift=shift, average=average)
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
) -> torch.Tensor:
    """Per-token log-probs from the last hidden states, never materialising the logits.

    Equal to ``token_logps(hidden @ weight.T + bias, labels)`` but computed ``chunk_size``
    positions at a time (default: chunks whose logits are about the size of the hidden states they
    come from, at least 128 positions, at most 64 MiB of logits), recomputing each
    chunk's logits in backward. ``hidden`` is ``[B, T, H]``, ``weight`` is ``[V, H]`` (an
    ``lm_head.weight``), ``bias`` is ``[V]`` or None. Differentiable in hidden, weight and bias.
    Positions whose label is ignored cost nothing.
    """
    return _linear_logps_and_stats(hidden, weight, labels, bias, ignore_index, shift, chunk_size, False)[0]


def _linear_logps_and_stats(hidden, weight, labels, bias, ignore_index, shift, chunk_size, with_stats):
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"hidden must be a torch.Tensor, got {type(hidden).__name__}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int (positions per chunk) or None, got {chunk_size!r}")
    logps, _, entropy, correct = _linear_token_logps(hidden, weight, bias, labels, ignore_index, shift, chunk_size, with_stats)
    return logps, (entropy, correct)


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
) -> torch.Tensor:
    """Per-sequence log-probs ``[B]`` from hidden states; see :func:`linear_token_logps` and
    :func:`sequence_logps` (``position_ids`` for packed rows)."""
    return linear_sequence_logps_with_stats(
        hidden, weight, labels, bias, average=average, ignore_index=ignore_index, shift=shift, chunk_size=chunk_size, return_stats=False,
        position_ids=position_ids,
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
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """:func:`linear_sequence_logps` plus the ``entropy`` and ``mean_token_accuracy`` metrics."""
    packed = position_ids is not None
    if average or packed:  # every sequence needs a response token to have an average; checked before any work
        _check_linear_inputs(hidden, weight, bias, labels, ignore_index, shift, require_tokens=average and not packed)
    if packed:
        _check_packed_inputs(labels, position_ids, ignore_index=ignore_index, shift=shift, require_tokens=average)
    tokens, stats = _linear_logps_and_stats(hidden, weight, labels, bias, ignore_index, shift, chunk_size, return_stats)
    return _reduce_with_stats(tokens, stats if return_stats else None, labels, ignore_index, shift, average, position_ids)
