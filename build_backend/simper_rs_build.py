"""PEP 517 build backend: maturin's, compiled against the torch of the environment being installed into.

The extension links the libtorch inside the user's ``torch`` package (torch-sys finds it by running
``python -c "import torch"``). Under pip's default build isolation that ``python`` sees only the
isolated build requirements, so torch-sys would fail minutes into the build with "No module named
'torch'"; putting torch in ``build-system.requires`` instead would download a second copy (several
GB) and link against a temporary folder. This backend finds the interpreter being installed into,
checks that it has the supported torch, and points torch-sys at it (a ``python`` shim that runs it
in isolated mode, ``-I``, which skips pip's sys.path overlay and sees the environment's own
site-packages). Without a usable torch it stops within seconds with the command to run.
"""
from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import tempfile

import maturin
from maturin import (  # noqa: F401  (re-exported PEP 517 hooks)
    build_sdist,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_wheel,
)

TORCH_RELEASE = "2.13"  # tch 0.26 <-> torch 2.13 (Cargo.toml); the wheel's metadata pins torch==2.13.*
_PROBE = "import torch, sys; sys.stdout.write(torch.__version__ + '\\n' + torch.__file__)"


def _find_torch() -> tuple[list[str], str, str]:
    """(interpreter command, torch version, torch location) of the environment being installed into."""
    found = []
    # The current sys.path (no build isolation), then the environment itself (pip's isolation).
    for command in ([sys.executable], [sys.executable, "-I"]):
        try:
            out = subprocess.run([*command, "-c", _PROBE], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0:
            version, location = out.stdout.splitlines()[:2]
            found.append((command, version, location))
            if version.split("+")[0].rsplit(".", 1)[0] == TORCH_RELEASE:
                return command, version, location
    if found:
        _, version, location = found[0]
        raise SystemExit(
            f"simper_rs builds against torch {TORCH_RELEASE}, but {sys.executable} has torch {version} "
            f"({os.path.dirname(location)}). Run: pip install 'torch=={TORCH_RELEASE}.*'  and install simper_rs again."
        )
    raise SystemExit(
        f"simper_rs compiles against the torch installed in the environment it goes into, and {sys.executable} "
        f"has none. Run: pip install 'torch=={TORCH_RELEASE}.*'  and install simper_rs again."
    )


@contextlib.contextmanager
def _against_users_torch():
    command, version, location = _find_torch()
    print(f"simper_rs: building against torch {version} at {os.path.dirname(location)}", file=sys.stderr)
    saved = {name: os.environ.get(name) for name in ("PATH", "LIBTORCH_USE_PYTORCH", "SIMPER_RS_TORCH_LIB")}
    with tempfile.TemporaryDirectory(prefix="simper-rs-build-") as shims:
        for name in ("python", "python3"):  # torch-sys runs `python` in a venv, else `python3`
            path = os.path.join(shims, name)
            with open(path, "w") as f:
                f.write("#!/bin/sh\nexec " + " ".join(f"'{part}'" for part in command) + ' "$@"\n')
            os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        os.environ["PATH"] = shims + os.pathsep + os.environ.get("PATH", "")
        os.environ["LIBTORCH_USE_PYTORCH"] = "1"
        os.environ["SIMPER_RS_TORCH_LIB"] = os.path.join(os.path.dirname(location), "lib")  # read by build.rs
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    with _against_users_torch():
        return maturin.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    with _against_users_torch():
        return maturin.build_editable(wheel_directory, config_settings, metadata_directory)
