"""The CUDA kernel's run-time pieces on the Python side: finding NVRTC, deciding once per device
whether the kernel can run (else the libtorch-ops fallback, with one warning), and the stream.

The CUDA build of torch brings NVRTC as a pip package (``nvidia-cuda-nvrtc``, under
``site-packages/nvidia/.../lib``); it is not on the loader's search path, so it is loaded here
by path (RTLD_GLOBAL), after which the Rust side's dlopen by name finds it.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
import threading
import warnings
from typing import Dict, Optional

import torch

from . import _core

#: Set to 1 to never use the CUDA kernel (CUDA tensors then take the libtorch-ops path).
DISABLE_ENV = "SIMPER_RS_DISABLE_CUDA_KERNEL"

_loaded: Optional[str] = None
_status: Dict[int, Optional[str]] = {}
_status_lock = threading.Lock()


def load_nvrtc() -> Optional[str]:
    """Load libnvrtc from the installed nvidia wheels (or the system); its path, or None."""
    global _loaded
    if _loaded:
        return _loaded
    candidates = []
    for entry in sys.path:
        candidates += sorted(glob.glob(os.path.join(entry, "nvidia", "*", "lib", "libnvrtc.so.*")), reverse=True)
        candidates += sorted(
            glob.glob(os.path.join(entry, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so.*")), reverse=True
        )
    candidates = [c for c in candidates if "builtins" not in c and ".alt." not in c]
    candidates += ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]
    for path in candidates:
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        _loaded = path
        return path
    return None


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def kernel_unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the CUDA kernel runs on ``device``; else why not. Decided once per device (the
    first call compiles the kernel with NVRTC, about a second); the first refusal warns once."""
    index = _device_index(device)
    if index in _status:
        return _status[index]
    with _status_lock:
        if index not in _status:
            if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
                reason: Optional[str] = f"disabled by {DISABLE_ENV}"
            elif load_nvrtc() is None:
                reason = "NVRTC (libnvrtc) cannot be loaded; it comes with the CUDA build of torch"
            else:
                reason = _core.cuda_kernel_status(index)
            if reason is not None:
                warnings.warn(
                    f"simper_rs: the fused CUDA kernel cannot run on cuda:{index} ({reason}); "
                    "CUDA tensors use libtorch ops instead (same results, more time and memory)",
                    RuntimeWarning,
                    stacklevel=4,
                )
            _status[index] = reason
    return _status[index]


def current_stream(device: torch.device) -> int:
    """The handle of PyTorch's current CUDA stream on ``device`` (what the kernel is queued on)."""
    return torch.cuda.current_stream(device).cuda_stream
