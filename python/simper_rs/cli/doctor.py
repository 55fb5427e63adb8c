"""``simper-rs doctor``: what this installation can run, on one screen.

Each check is one line; a line marked ``!!`` is something that cannot work. The exit status is
1 when a check that matters fails: always for the CPU kernel, and for CUDA when a GPU is visible
(a GPU whose kernel cannot run, or fails its self-check, falls back to slower libtorch ops) or
``--device cuda`` asks for it. The CUDA kernel's self-check (:func:`simper_rs.cuda_self_check`)
runs on every GPU, one line per dtype with its time.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import time
from typing import List, Optional, Tuple

import torch

from .. import _core, _cuda, cuda_check

Line = Tuple[str, str, bool]  # (topic, text, ok)


def _cpu_lines() -> List[Line]:
    from .. import sequence_logps

    threads = _core.kernel_threads()
    source = (
        f"SIMPER_RS_NUM_THREADS={os.environ['SIMPER_RS_NUM_THREADS']}"
        if os.environ.get("SIMPER_RS_NUM_THREADS")
        else "torch.get_num_threads()"
    )
    lines: List[Line] = [
        ("CPU", f"{platform.machine()}, {os.cpu_count()} cores; kernel row code: {_core.cpu_kernel_path()}", True),
        ("threads", f"{threads} kernel threads (from {source})", True),
    ]
    try:  # the fused CPU kernel end to end, against plain log_softmax
        logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
        labels = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(1))
        got = sequence_logps(logits, labels, backend="rust")
        want = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:, None]).squeeze(-1).mean(-1)
        ok = torch.allclose(got, want, atol=1e-5)
        lines.append(
            ("CPU kernel", "runs and matches log_softmax" if ok else f"gives wrong values: {got} vs {want}", ok)
        )
    except Exception as err:  # noqa: BLE001 - the report says what failed
        lines.append(("CPU kernel", f"fails: {err}", False))
    return lines


def _driver_line() -> Line:
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            ctypes.CDLL(name)
            return ("CUDA driver", f"loads ({name})", True)
        except OSError:
            continue
    return ("CUDA driver", "not found (libcuda.so.1): no NVIDIA driver on this machine", True)


def _cuda_lines(want_cuda: bool) -> List[Line]:
    available = torch.cuda.is_available()
    built = torch.version.cuda
    lines: List[Line] = [
        (
            "CUDA",
            f"{torch.cuda.device_count()} device(s) visible (torch built with CUDA {built})"
            if available
            else f"no CUDA device visible (torch built with {'CUDA ' + built if built else 'no CUDA'})",
            available or not want_cuda,
        )
    ]
    nvrtc = _cuda.load_nvrtc()
    lines.append(
        (
            "NVRTC",
            f"loads ({nvrtc})" if nvrtc else "cannot be loaded; it comes with the CUDA build of torch",
            bool(nvrtc) or not (available or want_cuda),
        )
    )
    if nvrtc:
        try:
            _core.cuda_compile_kernel("sm_90")
            lines.append(("NVRTC compile", "the kernel compiles for sm_90", True))
        except Exception as err:  # noqa: BLE001
            lines.append(("NVRTC compile", f"fails: {err}", False))
    lines.append(_driver_line())
    for index in range(torch.cuda.device_count() if available else 0):
        name = torch.cuda.get_device_name(index)
        major, minor = torch.cuda.get_device_capability(index)
        start = time.perf_counter()
        reason = _cuda.kernel_unavailable_reason(torch.device("cuda", index))
        loaded = f"kernel compiled and loaded ({_seconds(time.perf_counter() - start)})"
        text = f"cuda:{index} {name} (sm_{major}{minor}): " + (
            loaded if reason is None else f"kernel cannot run: {reason}"
        )
        lines.append(("CUDA kernel", text, reason is None))
    return lines + _self_check_lines()


def _seconds(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _self_check_lines() -> List[Line]:
    """The kernel's self-check on every GPU where it loads, one line per dtype: passed or what
    failed, and its time (a failure means that device and dtype fall back to libtorch ops)."""
    lines: List[Line] = []
    for result in cuda_check.cuda_self_check():
        if (
            result.device.startswith("cuda")
            and _cuda.kernel_unavailable_reason(torch.device(result.device)) is not None
        ):
            continue  # the CUDA kernel line above already says why it cannot run
        where = f"{result.device} {result.dtype:<8}"
        if result.passed:
            lines.append(("self-check", f"{where} passed ({_seconds(result.seconds)})", True))
        else:
            lines.append(
                (
                    "self-check",
                    f"{where} FAILED ({_seconds(result.seconds)}): {result.failure}; libtorch ops are used instead",
                    False,
                )
            )
    return lines


def _backend_lines() -> List[Line]:
    from ..ops import resolve_backend

    lines: List[Line] = [
        ("auto backend", f"cpu: {resolve_backend('auto', torch.empty(0))} (the fused Rust kernel)", True)
    ]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            probe = torch.empty(0, device=f"cuda:{index}", dtype=torch.bfloat16)
            picked = resolve_backend("auto", probe)
            what = "the CUDA kernel" if picked == "rust" else "libtorch ops (slower fallback)"
            lines.append(("auto backend", f"cuda:{index}: {picked} ({what})", True))
    return lines


def report(device: Optional[str] = None) -> Tuple[List[Line], bool]:
    """All report lines and whether every check that matters passed."""
    import simper_rs

    want_cuda = device == "cuda"
    torch_ok = torch.__version__.split("+")[0] == _core.TORCH_VERSION.split("+")[0]
    lines: List[Line] = [
        ("simper_rs", f"{simper_rs.__version__} ({os.path.dirname(simper_rs.__file__)})", True),
        ("python", f"{platform.python_version()} ({sys.executable})", True),
        (
            "torch",
            f"{torch.__version__} ({os.path.dirname(torch.__file__)}); built for {_core.TORCH_VERSION}",
            torch_ok,
        ),
    ]
    lines += _cpu_lines()
    lines += _cuda_lines(want_cuda)
    lines += _backend_lines()
    return lines, all(ok for _, _, ok in lines)


def run(device: Optional[str] = None) -> int:
    lines, ok = report(device)
    width = max(len(topic) for topic, _, _ in lines)
    for topic, text, line_ok in lines:
        print(f"{'  ' if line_ok else '!!'} {topic:<{width}}  {text}")
    failed = [topic for topic, _, line_ok in lines if not line_ok]
    print("\n" + ("everything needed works" if ok else f"problems: {', '.join(failed)} (lines marked !!)"))
    return 0 if ok else 1
