"""Check that the installed torch is the one the extension was built for.

The Rust extension links the libtorch inside the `torch` wheel. One source tree builds against
torch 2.13, 2.14 and 2.15 (`SUPPORTED_TORCH`; the torch 2.11 variant besides), but each build
links one release, and another release has a different C++ ABI: the extension would fail to load
with an obscure symbol error (or load and misbehave), so we refuse with a message that says what
to install or rebuild. The extension records the torch it was compiled against
(`_core.TORCH_VERSION`), which is checked right after loading it; a load that fails is explained
with the package metadata's torch requirement (a wheel built by the build backend requires
`torch==2.N.*`), when known. The metadata is not trusted on its own: a source tree on PYTHONPATH
(dist/torch-2.N-cpXY of scripts/build_torch.sh) may run beside an installed simper_rs built for
another torch.
"""

from __future__ import annotations

import re
from importlib import metadata
from typing import Optional

# The torch releases a source build supports (build_backend/simper_rs_build.py and the torch-sys
# patch list the same; tests/test_build_backend.py checks).
SUPPORTED_TORCH = ("2.13", "2.14", "2.15")


def _series(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def required_torch_series() -> Optional[str]:
    """The `major.minor` torch release the installed simper_rs needs, from its metadata (None
    when simper_rs runs from a source tree without metadata)."""
    try:
        requirements = metadata.requires("simper_rs") or []
    except metadata.PackageNotFoundError:
        return None
    for requirement in requirements:
        match = re.match(r"^torch\s*==\s*(\d+\.\d+)", requirement)
        if match:
            return match.group(1)
    return None


def _rebuild_hint(installed: str) -> str:
    if _series(installed) in SUPPORTED_TORCH:
        return "or rebuild simper_rs against this torch (pip install --force-reinstall --no-deps <simper_rs source>)"
    return f"simper_rs builds against torch {', '.join(SUPPORTED_TORCH)} only"


def _mismatch(needed: str, installed: str) -> ImportError:
    return ImportError(
        f"simper_rs was built for torch {needed}.x but torch {installed} is installed; "
        f'install the matching release with: pip install "torch=={needed}.*" ({_rebuild_hint(installed)})'
    )


def load_failure(error: ImportError, installed: str) -> ImportError:
    """An ImportError explaining that the extension did not load against torch `installed`."""
    needed = required_torch_series()
    hint = f'install the torch it was built for (pip install "torch=={needed}.*"), ' if needed else ""
    return ImportError(
        f"simper_rs's Rust extension could not be loaded with torch {installed} ({error}); it links one torch "
        f"release's libtorch: {hint}{_rebuild_hint(installed)}"
    )


def check_torch_version(installed: str, built_for: Optional[str] = None) -> None:
    """Raise ImportError unless `installed` (a torch.__version__) is in the series simper_rs
    needs: `built_for` (the extension's own record) when given, else the package metadata."""
    needed = _series(built_for) if built_for and built_for != "unknown" else required_torch_series()
    if needed is not None and _series(installed) != needed:
        raise _mismatch(needed, installed)
