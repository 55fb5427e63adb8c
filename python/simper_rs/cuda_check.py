"""The CUDA kernel's self-check: before the kernel serves a (GPU, dtype) in a process, it runs on
a small problem built to reach its code paths and is compared with the libtorch-ops path.

Why: the kernel is compiled by NVRTC for the user's own GPU at run time, so a fault in the
compiler, the driver, the launch or the hardware would otherwise reach a training run's loss
without a sign. The check runs once per (device, dtype) and process (on a GPU an estimated 10-20
ms: 14 kernel launches and about 2000 small libtorch ops, not yet timed on one); a failure
warns once, saying what failed, and ``backend="auto"`` then uses libtorch ops for that device
and dtype for the rest of the process (``backend="rust"`` raises the same message instead).
``SIMPER_RS_CUDA_CHECK=off`` skips the check. :func:`cuda_self_check` (and ``simper-rs
doctor``) runs it on every visible GPU and returns what it found.

The problem (:data:`CASES`) is three layouts, each a forward and a backward against the reference:

* contiguous ``[2, 5, 9001]`` rows with the causal shift and the statistics;
* time-major rows padded to ``9001 + 1`` elements, seen as ``[2, 4, 9001]`` (batch and position
  strides differ, every row starts at another 16-byte phase, and the backward's output has
  another alignment than its input), shifted, without statistics;
* ``[5, 9001]`` rows as the fused-linear op hands its chunks to the kernel: no shift, and the
  backward written over the rows in place.

9001 is not a multiple of the 4 (float32) or 8 (16-bit) elements of a 16-byte vector, and is long
enough that a block of 256 threads runs the kernel's 4-deep unrolled loop, its one-vector loop
and its scalar head and tail. The logits have unit spread (every element holds about 1/V of the
softmax, well above the tolerances, so one element skipped or counted twice anywhere in a row
fails the check) and three peaks of +8 per row. Every case has ignored labels, a label at its
row's argmax (the accuracy statistic) and a row whose first 37 logits are ``-inf`` (a masked
vocabulary head).
Two more cases reach the kernels of the logit transforms (a scale; a scale then a softcap), each
a :class:`Case` with its kernel options and the reference's transform.

The kernel is driven through :class:`KernelFunctions`; :class:`CudaKernel` is the real one.
:func:`simulated_device_for_testing` is the test-only seam that lets the decision logic run on
a CPU with injected kernel functions.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Protocol, Sequence, Set, Tuple, Union

import torch

from . import _core, _cuda

__all__ = [
    "CHECK_ENV",
    "Case",
    "CASES",
    "CudaCheckResult",
    "CudaKernel",
    "KernelFunctions",
    "cuda_self_check",
    "fresh_verdicts_for_testing",
    "run_self_check",
    "simulated_device_for_testing",
]

#: ``SIMPER_RS_CUDA_CHECK=off`` (or 0 / false / no) trusts the kernel without its self-check.
CHECK_ENV = "SIMPER_RS_CUDA_CHECK"
_OFF = ("off", "0", "false", "no")

DTYPES: Tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)

#: Allowed |kernel − reference| ≤ atol + rtol·|reference|. Forward outputs are float32 in every
#: dtype (the same float32 arithmetic, so a few float32 ulps of a logsumexp near 10); gradients
#: are rounded once to the logits' dtype (bfloat16 keeps 8 bits, float16 11, with subnormals
#: below 6e-5). Loose enough for the GPU's 2-ulp exp2 and one ulp of the dtype (a kernel that
#: differs only so passes, tests/test_cuda_check.py), tight enough that a 5% gradient error or one
#: element of a row skipped fails.
FORWARD_TOLERANCE = dict(rtol=2e-5, atol=5e-5)
GRADIENT_TOLERANCE: Dict[torch.dtype, Dict[str, float]] = {
    torch.float32: dict(rtol=2e-5, atol=2e-6),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=1e-6),
}

IGNORE_INDEX = -100
VOCAB = 9001
MASKED_HEAD = 37  # logits set to -inf at the start of one row per case


class KernelFunctions(Protocol):
    """The CUDA kernel's entry points as the self-check drives them (:class:`CudaKernel` for the
    real kernel; tests pass an emulation of the kernel on CPU tensors, or one with a planted
    fault). ``options`` are a case's extra kernel parameters (none yet)."""

    def load(self, device: torch.device) -> None:
        """Compile and load the kernel for ``device``; raise when it cannot be."""

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        ignore_index: int,
        shift: bool,
        with_stats: bool,
        **options: Any,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-probs, logsumexp, entropy, argmax == label), float32 ``[B, T']``; the last two
        only matter with ``with_stats``."""

    def backward(
        self,
        grad_logps: torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor,
        lse: torch.Tensor,
        ignore_index: int,
        shift: bool,
        **options: Any,
    ) -> torch.Tensor:
        """The gradient of ``Σ logps · grad_logps`` with respect to ``logits``, a fresh tensor."""

    def backward_in_place(
        self,
        rows: torch.Tensor,
        targets: torch.Tensor,
        grad_logps: torch.Tensor,
        lse: torch.Tensor,
        ignore_index: int,
        **options: Any,
    ) -> None:
        """The same gradient for ``[n, V]`` rows (``targets``, ``grad_logps``, ``lse`` ``[n]``),
        written over ``rows``, as the fused-linear op uses it."""


class CudaKernel:
    """The real CUDA kernel (``src/cuda/logps.cu`` through ``simper_rs._core``), queued on
    PyTorch's current stream."""

    def load(self, device: torch.device) -> None:
        reason = _cuda.kernel_unavailable_reason(device)
        if reason is not None:
            raise RuntimeError(reason)

    def forward(self, logits, labels, ignore_index, shift, with_stats, **options):
        # check_values=False: the labels are the check's own (in range), and reading them back would synchronise.
        stream = _cuda.current_stream(logits.device)
        return _core.fused_token_logps_forward(
            logits, labels, ignore_index, shift, with_stats, cuda_stream=stream, check_values=False, **options
        )

    def backward(self, grad_logps, logits, labels, lse, ignore_index, shift, **options):
        stream = _cuda.current_stream(logits.device)
        return _core.fused_token_logps_backward(
            grad_logps, logits, labels, lse, ignore_index, shift, cuda_stream=stream, **options
        )

    def backward_in_place(self, rows, targets, grad_logps, lse, ignore_index, **options):
        stream = _cuda.current_stream(rows.device)
        _core.cuda_backward_in_place(rows, targets, grad_logps, lse, ignore_index, cuda_stream=stream, **options)


@dataclass(frozen=True)
class Case:
    """One part of the self-check problem: a layout of the logits, with its shift and statistics.

    ``layout`` is ``"contiguous"`` (``[batch, positions, vocab]``), ``"time_major"`` (a
    ``[positions, batch, vocab + 1]`` buffer seen as ``[batch, positions, vocab]`` from its second
    element on) or ``"rows"`` (``[positions, vocab]`` rows of a fused-linear chunk, no shift,
    in-place backward). ``options`` go to every kernel call; ``transform`` maps the float32
    logits to what the reference takes the log-softmax of (for a logit transform's case).
    """

    name: str
    layout: str
    batch: int
    positions: int
    shift: bool
    with_stats: bool
    vocab: int = VOCAB
    options: Mapping[str, Any] = field(default_factory=dict)
    transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None


CASES: Tuple[Case, ...] = (
    Case("contiguous rows, shifted, with statistics", "contiguous", batch=2, positions=5, shift=True, with_stats=True),
    Case(
        "time-major unaligned rows, shifted, without statistics",
        "time_major",
        batch=2,
        positions=4,
        shift=True,
        with_stats=False,
    ),
    Case(
        "fused-linear chunk rows, in-place backward, with statistics",
        "rows",
        batch=1,
        positions=5,
        shift=False,
        with_stats=True,
    ),
    # The logit transforms (their kernels of their own): a scale, and Gemma 2's softcap after a scale.
    Case(
        "contiguous rows with a logit scale",
        "contiguous",
        batch=2,
        positions=3,
        shift=True,
        with_stats=True,
        options={"logit_scale": 0.5},
        transform=lambda z: z * 0.5,
    ),
    Case(
        "fused-linear chunk rows with a scale and a softcap, in-place backward",
        "rows",
        batch=1,
        positions=4,
        shift=False,
        with_stats=True,
        options={"logit_scale": 4.0, "logit_softcap": 3.0},
        transform=lambda z: 3.0 * torch.tanh(z * 4.0 / 3.0),
    ),
)


@dataclass(frozen=True)
class CudaCheckResult:
    """One (device, dtype) of :func:`cuda_self_check`: whether the kernel matched the libtorch
    path, how long the check took (seconds, the kernel already compiled), and what failed."""

    device: str
    device_name: str
    dtype: str
    passed: bool
    seconds: float
    failure: Optional[str] = None

    def message(self) -> str:
        """What failed, where, in one sentence (empty when it passed)."""
        if self.passed:
            return ""
        return f"the fused CUDA kernel failed its self-check on {self.device} ({self.device_name}) for {self.dtype}: {self.failure}"


class _Failed(Exception):
    pass


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _problem(case: Case, dtype: torch.dtype, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(logits in ``dtype`` on ``device`` in the case's layout, labels), the same for every run."""
    g = torch.Generator(device="cpu").manual_seed(zlib.crc32(case.name.encode()))
    b, t, v = case.batch, case.positions, case.vocab
    # Unit spread, so that every element's share of the softmax (about 1/V) is well above the
    # tolerances and a skipped or doubled element anywhere in a row shows; and three confident
    # peaks per row (logit + 8, as a trained model has them) that move the running maximum.
    values = torch.randn(b, t, v, generator=g, device="cpu")
    peaks = torch.randint(0, v, (b, t, 3), generator=g, device="cpu")
    values.scatter_add_(2, peaks, torch.full(peaks.shape, 8.0))
    values[0, 1, :MASKED_HEAD] = float("-inf")
    labels = torch.randint(MASKED_HEAD, v, (b, t), generator=g, device="cpu")
    first = int(case.shift)  # with the shift, logits at t predict labels[t + 1]
    labels[0, first] = IGNORE_INDEX
    labels[-1, t - 1] = IGNORE_INDEX
    # A label at its row's argmax (after rounding to the dtype, first maximum as argmax takes it).
    labels[-1, first] = int(values[-1, 0].to(dtype).float().argmax())
    if case.layout == "rows":
        return values[0].to(device=device, dtype=dtype), labels[0].to(device)
    if case.layout == "time_major":
        buffer = torch.zeros(t, b, v + 1, dtype=dtype, device=device)
        view = buffer.transpose(0, 1)[..., 1:]
        view.copy_(values.to(device=device, dtype=dtype))
        return view, labels.to(device)
    return values.to(device=device, dtype=dtype), labels.to(device)


def _reference(case: Case, logits: torch.Tensor, labels: torch.Tensor, upstream: torch.Tensor):
    """The libtorch path in float32 from the same (dtype-rounded) logits: token log-probs,
    logsumexp, entropy, argmax == label and the gradient of Σ logps·upstream."""
    rows = case.layout == "rows"
    x3 = logits.unsqueeze(0) if rows else logits
    y2 = labels.unsqueeze(0) if rows else labels
    leaf = x3.detach().float().requires_grad_(True)
    z = case.transform(leaf) if case.transform is not None else leaf
    logps = _core.token_logps_torch(z, y2, IGNORE_INDEX, case.shift)
    (grad,) = torch.autograd.grad((logps * upstream.reshape(logps.shape)).sum(), leaf)
    with torch.no_grad():
        zs = z[:, :-1] if case.shift else z
        ys = y2[:, 1:] if case.shift else y2
        lse = torch.where(ys != IGNORE_INDEX, torch.logsumexp(zs, -1), 0.0)
        entropy, correct = _core.token_stats_torch(z.detach(), y2, IGNORE_INDEX, case.shift)
    if rows:
        return logps.detach()[0], lse[0], entropy[0], correct[0], grad[0]
    return logps.detach(), lse, entropy, correct, grad


class _Comparisons:
    """Kernel outputs against the reference, gathered on the device and read back at once (one
    synchronisation for the whole check)."""

    def __init__(self) -> None:
        self.items: List[Tuple[str, torch.Tensor, torch.Tensor, Dict[str, float], bool]] = []

    def add(
        self, what: str, got: torch.Tensor, want: torch.Tensor, tolerance: Dict[str, float], exact: bool = False
    ) -> None:
        if tuple(got.shape) != tuple(want.shape):
            raise _Failed(f"{what} has shape {list(got.shape)}, expected {list(want.shape)}")
        self.items.append((what, got, want, tolerance, exact))

    def first_failure(self) -> Optional[str]:
        if not self.items:
            return None
        summaries = []
        for _, got, want, tolerance, exact in self.items:
            got, want = got.detach().float().reshape(-1), want.detach().float().reshape(-1)
            finite = torch.isfinite(want)
            lost = finite & ~torch.isfinite(got)  # non-finite where the reference is finite
            # Where the reference is not finite, the kernel must give the same value.
            odd = ~finite & ~((got == want) | (torch.isnan(got) & torch.isnan(want)))
            allowed = 0.0 if exact else tolerance["atol"] + tolerance["rtol"] * want.abs()
            excess = torch.where(finite & ~lost, (got - want).abs() - allowed, 0.0)
            excess = torch.where(lost | odd, math.inf, excess)
            # All on the device: indexing by a tensor, or reading it, would synchronise here.
            largest, worst = excess.max(0)
            at = worst.view(1)
            summaries.append(
                torch.cat(
                    [
                        largest.view(1),
                        at.float(),
                        got.index_select(0, at),
                        want.index_select(0, at),
                        lost.sum().float().view(1),
                    ]
                )
            )
        table = torch.stack(summaries).cpu().tolist()  # the one synchronisation
        for (what, _got, want, tolerance, exact), (excess, worst, value, expected, lost) in zip(self.items, table):
            if excess <= 0:
                continue
            index = list(map(int, torch.unravel_index(torch.tensor(int(worst)), tuple(want.shape))))
            if lost:
                return (
                    f"{what}: {int(lost)} non-finite value(s) where the libtorch path is finite (at {index}: {value})"
                )
            if exact:
                return f"{what}: {value:g} at {index}, the libtorch path gives {expected:g}"
            return (
                f"{what}: {value:.7g} at {index}, the libtorch path gives {expected:.7g} "
                f"(allowed difference {tolerance['atol']:g} + {tolerance['rtol']:g}·|expected|)"
            )
        return None


def _run_case(
    kernel: KernelFunctions, case: Case, dtype: torch.dtype, device: torch.device, comparisons: _Comparisons
) -> None:
    logits, labels = _problem(case, dtype, device)
    rows = case.layout == "rows"
    g = torch.Generator(device="cpu").manual_seed(7)
    used = case.positions - int(case.shift)
    upstream = torch.randn((case.batch, used), generator=g).to(device)  # nonzero where ignored too: must not leak
    want_logps, want_lse, want_entropy, want_correct, want_grad = _reference(case, logits, labels, upstream)
    options = dict(case.options)

    def call(stage: str, fn, *args):
        try:
            return fn(*args, **options)
        except Exception as err:  # noqa: BLE001 - a launch error is a failed check, reported as such
            raise _Failed(f"{case.name}: the {stage} kernel failed: {type(err).__name__}: {err}") from err

    x3, y2 = (logits.unsqueeze(0), labels.unsqueeze(0)) if rows else (logits, labels)
    for with_stats in (False, True) if case.with_stats else (False,):
        logps, lse, entropy, correct = call("forward", kernel.forward, x3, y2, IGNORE_INDEX, case.shift, with_stats)
        label = f"{case.name}: forward{' with statistics' if with_stats else ''}"
        squeeze = (lambda t: t[0]) if rows else (lambda t: t)
        comparisons.add(f"{label}: log-probs", squeeze(logps), want_logps, FORWARD_TOLERANCE)
        comparisons.add(f"{label}: logsumexp", squeeze(lse), want_lse, FORWARD_TOLERANCE)
        if with_stats:
            comparisons.add(f"{label}: entropy", squeeze(entropy), want_entropy, FORWARD_TOLERANCE)
            comparisons.add(f"{label}: argmax == label", squeeze(correct), want_correct, FORWARD_TOLERANCE, exact=True)
    tolerance = GRADIENT_TOLERANCE[dtype]
    if rows:
        buffer = logits.clone()
        call("in-place backward", kernel.backward_in_place, buffer, labels, upstream[0], lse[0], IGNORE_INDEX)
        comparisons.add(f"{case.name}: in-place backward: gradient", buffer, want_grad, tolerance)
    else:
        grad = call("backward", kernel.backward, upstream, logits, labels, lse, IGNORE_INDEX, case.shift)
        comparisons.add(f"{case.name}: backward: gradient", grad, want_grad, tolerance)


def _device_name(device: torch.device) -> str:
    if device.type != "cuda":
        return f"{device.type} (simulated)"
    try:
        return torch.cuda.get_device_name(device)
    except Exception:  # noqa: BLE001 - a name for a message; the device's trouble is reported elsewhere
        return "unknown GPU"


def run_self_check(
    kernel: KernelFunctions, device: Union[str, torch.device], dtype: torch.dtype, cases: Sequence[Case] = CASES
) -> CudaCheckResult:
    """Run the self-check of ``kernel`` on ``device`` for ``dtype``, and say what it found (no
    state: nothing is recorded and nothing warns). :func:`cuda_self_check` is the one to call."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    start = time.perf_counter()
    failure: Optional[str] = None
    try:
        try:
            kernel.load(device)
        except Exception as err:  # noqa: BLE001
            raise _Failed(f"the kernel did not compile or load: {err}") from err
        # The check is the same wherever it is called from: a training step under no_grad,
        # inference_mode or autocast included.
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            comparisons = _Comparisons()
            for case in cases:
                _run_case(kernel, case, dtype, device, comparisons)
            try:
                failure = comparisons.first_failure()
            except RuntimeError as err:  # an asynchronous launch failure surfaces at the read-back
                raise _Failed(f"the kernel failed while running: {err}") from err
    except _Failed as failed:
        failure = str(failed)
    except Exception as err:  # noqa: BLE001 - a check that cannot run is not a pass: fall back, and say why
        failure = f"the self-check itself could not run: {type(err).__name__}: {err}"
    return CudaCheckResult(
        device=str(device),
        device_name=_device_name(device),
        dtype=_dtype_name(dtype),
        passed=failure is None,
        seconds=time.perf_counter() - start,
        failure=failure,
    )


# -- the process-wide verdicts, consulted by the backend choice (simper_rs.ops)

_lock = threading.RLock()
_verdicts: Dict[Tuple[str, torch.dtype], CudaCheckResult] = {}
_warned: Set[Tuple[str, torch.dtype]] = set()
_simulated: Dict[str, KernelFunctions] = {}


def _key_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _kernel_for(device: torch.device) -> KernelFunctions:
    return _simulated.get(str(_key_device(device))) or CudaKernel()


def check_disabled() -> bool:
    """Whether ``SIMPER_RS_CUDA_CHECK`` switches the self-check off."""
    return os.environ.get(CHECK_ENV, "").strip().lower() in _OFF


def is_simulated(device: torch.device) -> bool:
    """Whether a CPU ``device`` stands in for a GPU (inside :func:`simulated_device_for_testing` only)."""
    return bool(_simulated) and device.type != "cuda" and str(device) in _simulated


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _record(result: CudaCheckResult, key: Tuple[str, torch.dtype]) -> CudaCheckResult:
    with _lock:
        _verdicts[key] = result
    return result


def _passed(device: torch.device, dtype: torch.dtype) -> bool:
    # The common case, a dictionary lookup that torch.compile can trace (a CUDA tensor's device
    # has its index); anything else goes to the eager functions below.
    found = _verdicts.get((str(device), dtype))
    return found is not None and found.passed


def failure(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """None when the kernel may serve (``device``, ``dtype``): its self-check passed in this
    process (run now if it has not run yet) or is switched off; else the message saying what
    failed. Never warns (``backend="rust"`` raises the message). Raises RuntimeError when the
    check has not run yet and cannot run now (inside CUDA graph capture)."""
    return None if _passed(device, dtype) else _failure(device, dtype)


def kernel_trusted(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``backend="auto"`` may give (``device``, ``dtype``) to the kernel; the first
    refusal warns (once per device and dtype) that libtorch ops are used instead."""
    return _passed(device, dtype) or _trusted(device, dtype)


@torch.compiler.disable
def _failure(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    if check_disabled():
        return None
    device = _key_device(device)
    key = (str(device), dtype)
    found = _verdicts.get(key)
    if found is None:
        with _lock:
            found = _verdicts.get(key)
            if found is None:
                if _capturing(device):
                    # It synchronises, which capture forbids; and an unchecked kernel is not used.
                    raise RuntimeError(
                        f"simper_rs: the fused CUDA kernel's self-check for {_dtype_name(dtype)} on {device} cannot run "
                        "during CUDA graph capture: run one step outside the capture first (the warm-up that "
                        f"torch.cuda.graph asks for anyway), or set {CHECK_ENV}=off"
                    )
                found = _record(run_self_check(_kernel_for(device), device, dtype), key)
    return None if found.passed else found.message()


@torch.compiler.disable
def _trusted(device: torch.device, dtype: torch.dtype) -> bool:
    message = _failure(device, dtype)
    if message is None:
        return True
    key = (str(_key_device(device)), dtype)
    with _lock:
        first = key not in _warned
        _warned.add(key)
    if first:
        warnings.warn(
            f"simper_rs: {message}; {_dtype_name(dtype)} tensors on {key[0]} use libtorch ops instead "
            "(same results, more time and memory)",
            RuntimeWarning,
            stacklevel=6,
        )
    return False


def cuda_self_check(
    device: Union[None, int, str, torch.device] = None, dtypes: Optional[Sequence[torch.dtype]] = None
) -> List[CudaCheckResult]:
    """Run the fused CUDA kernel's self-check now and return one :class:`CudaCheckResult` per
    (device, dtype): on every visible GPU (or ``device``), for float32, bfloat16 and float16 (or
    ``dtypes``). Runs even when ``SIMPER_RS_CUDA_CHECK=off``; what it finds is what the backend
    choice uses from then on in this process. An empty list without a GPU.

    The first call on a device also compiles the kernel (about a second), outside the times
    reported.
    """
    if device is None:
        devices = (
            [torch.device("cuda", i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
        )
        devices += [torch.device(name) for name in _simulated if torch.device(name) not in devices]
    else:
        requested = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        if requested.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0 or (requested.index is not None and not 0 <= requested.index < count):
                raise ValueError(f"device {requested} is not a visible CUDA device ({count} visible)")
        devices = [_key_device(requested)]
    kinds = tuple(dtypes) if dtypes is not None else DTYPES
    for dtype in kinds:
        if dtype not in DTYPES:
            raise ValueError(f"dtypes must be among {[_dtype_name(d) for d in DTYPES]}, got {dtype}")
    results = []
    for dev in devices:
        if dev.type != "cuda" and not is_simulated(dev):  # a CPU device only inside the test seam
            raise ValueError(f"device must be a CUDA device, got {dev}")
        kernel = _kernel_for(dev)
        try:  # compile and load first, so the times below are the check's own
            kernel.load(dev)
        except Exception:  # noqa: BLE001 - run_self_check reports it per dtype
            pass
        for dtype in kinds:
            results.append(_record(run_self_check(kernel, dev, dtype), (str(dev), dtype)))
    return results


@contextlib.contextmanager
def fresh_verdicts_for_testing() -> Iterator[None]:
    """TEST-ONLY: the process's verdicts and warnings set aside for the block (so that the
    self-check runs again at the next first use) and restored after it."""
    with _lock:
        saved = (dict(_verdicts), set(_warned), dict(_simulated))
        _verdicts.clear()
        _warned.clear()
    try:
        yield
    finally:
        with _lock:
            _verdicts.clear()
            _verdicts.update(saved[0])
            _warned.clear()
            _warned.update(saved[1])
            _simulated.clear()
            _simulated.update(saved[2])


@contextlib.contextmanager
def simulated_device_for_testing(kernel: KernelFunctions, device: str = "cpu") -> Iterator[None]:
    """TEST-ONLY seam: inside the block, ``kernel``'s functions stand in for the CUDA kernel on
    ``device``. A CPU device is then treated as if it were a GPU: the backend choice for float32,
    bfloat16 and float16 tensors there runs the self-check with ``kernel`` (CPU code: an
    emulation of the kernel, or one with a planted fault), and on a failure ``backend="auto"``
    falls back (with the warning), ``backend="rust"`` raises, and the fused-linear paths get no
    CUDA stream, exactly as on a GPU whose kernel failed. When the check passes the ops still
    compute with the CPU kernel (the Rust side runs CPU tensors on CPU whatever it is told), so
    only the decision is simulated. On a CUDA device (``"cuda:0"``) only the kernel the check
    drives is replaced. Verdicts and warnings start fresh (:func:`fresh_verdicts_for_testing`).
    Not for use outside tests.
    """
    with fresh_verdicts_for_testing():
        with _lock:
            _simulated[str(_key_device(torch.device(device)))] = kernel
        yield
