"""Check, before the extension is loaded, that the installed torch is the one it was built for.

The Rust extension links the libtorch inside the `torch` wheel. A different torch release has a
different C++ ABI, and loading the extension against it would fail with an obscure symbol error
(or worse), so we refuse early with a message that says what to install.
"""
from __future__ import annotations

import re
from importlib import metadata

# Fallback when the package metadata is unavailable (for example a source checkout on sys.path).
_DEFAULT_REQUIREMENT = "2.13"


def required_torch_series() -> str:
    """The `major.minor` torch release this build of simper_rs needs, from its own metadata."""
    try:
        requirements = metadata.requires("simper_rs") or []
    except metadata.PackageNotFoundError:
        return _DEFAULT_REQUIREMENT
    for requirement in requirements:
        match = re.match(r"^torch\s*==\s*(\d+\.\d+)", requirement)
        if match:
            return match.group(1)
    return _DEFAULT_REQUIREMENT


def check_torch_version(installed: str) -> None:
    """Raise ImportError unless `installed` (a torch.__version__) is in the required series."""
    needed = required_torch_series()
    series = ".".join(installed.split("+")[0].split(".")[:2])
    if series != needed:
        raise ImportError(
            f"simper_rs was built for torch {needed}.x but torch {installed} is installed; "
            f'install the matching release with: pip install "torch=={needed}.*"'
        )
