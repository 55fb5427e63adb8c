"""Finding NVRTC for the CUDA kernel's run-time compilation.

The CUDA build of torch brings NVRTC as a pip package (``nvidia-cuda-nvrtc``, under
``site-packages/nvidia/.../lib``); it is not on the loader's search path, so it is loaded here
by path (RTLD_GLOBAL), after which the Rust side's dlopen by name finds it.
"""
from __future__ import annotations

import ctypes
import glob
import os
import sys
from typing import Optional

_loaded: Optional[str] = None


def load_nvrtc() -> Optional[str]:
    """Load libnvrtc from the installed nvidia wheels (or the system); its path, or None."""
    global _loaded
    if _loaded:
        return _loaded
    candidates = []
    for entry in sys.path:
        candidates += sorted(glob.glob(os.path.join(entry, "nvidia", "*", "lib", "libnvrtc.so.*")), reverse=True)
        candidates += sorted(glob.glob(os.path.join(entry, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so.*")), reverse=True)
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
