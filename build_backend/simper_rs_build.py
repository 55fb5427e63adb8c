"""PEP 517 build backend: maturin's, compiled against the torch of the environment being installed into.

The extension links the libtorch inside the user's ``torch`` package (torch-sys finds it by running
``python -c "import torch"``). Under pip's default build isolation that ``python`` sees only the
isolated build requirements, so torch-sys would fail minutes into the build with "No module named
'torch'"; putting torch in ``build-system.requires`` instead would download a second copy (several
GB), possibly another release, and link against a temporary folder. This backend finds the
interpreter being installed into, checks that its torch is one of the supported releases
(``SUPPORTED_TORCH``), and points torch-sys at it (a ``python`` shim that runs it in isolated mode,
``-I``, which skips pip's sys.path overlay and sees the environment's own site-packages). It never
installs, upgrades or replaces torch. Without a supported torch it stops within seconds with the
command to run.

The wheel it builds is for that torch release only: its version gets the local label
``+torch2.N`` (``simper_rs-0.1.0+torch2.15-...whl``, the way flash-attn and PyG name their
per-torch wheels) and its ``torch`` requirement becomes ``torch==2.N.*``. Each torch release
builds in its own Cargo target folder (``target/torch-2.N``) unless ``CARGO_TARGET_DIR`` is set:
torch-sys's compiled C++ is only valid for the torch headers it was compiled against.
Before any Cargo command it makes the patched torch-sys that Cargo.toml points at (patches/apply.py).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import os
import re
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import maturin
from maturin import (  # noqa: F401  (re-exported PEP 517 hooks)
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
)

get_requires_for_build_editable = get_requires_for_build_wheel

# The torch releases (major.minor) this source tree builds against: tch 0.26 binds torch 2.13, and
# patches/torch-sys-0.26.0.patch makes it build against 2.14 and 2.15 too. Keep in step with the
# patch's SUPPORTED_TORCH_SERIES and python/simper_rs/_torch_version.py (tests/test_build_backend.py checks).
SUPPORTED_TORCH = ("2.13", "2.14", "2.15")
_PROBE = "import torch, sys; sys.stdout.write(torch.__version__ + '\\n' + torch.__file__)"
ROOT = Path(__file__).resolve().parent.parent


def torch_series(version: str) -> str:
    """'2.15.0+cu130' -> '2.15'."""
    return ".".join(version.split("+")[0].split(".")[:2])


def _supported_list() -> str:
    return ", ".join(SUPPORTED_TORCH[:-1]) + " or " + SUPPORTED_TORCH[-1]


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
            if torch_series(version) in SUPPORTED_TORCH:
                return command, version, location
    newest = SUPPORTED_TORCH[-1]
    if found:
        _, version, location = found[0]
        raise SystemExit(
            f"simper_rs builds against torch {_supported_list()}, but {sys.executable} has torch {version} "
            f"({os.path.dirname(location)}), which it cannot build against. Install a supported torch, for "
            f"example: pip install 'torch=={newest}.*'  and install simper_rs again."
        )
    raise SystemExit(
        f"simper_rs compiles against the torch installed in the environment it goes into (torch {_supported_list()}), "
        f"and {sys.executable} has none. Install one first, for example: pip install 'torch=={newest}.*'  "
        f"and install simper_rs again."
    )


def _patch_torch_sys() -> None:
    """Make the patched torch-sys that Cargo.toml's [patch.crates-io] points at (patches/apply.py)."""
    spec = importlib.util.spec_from_file_location("simper_rs_patches_apply", ROOT / "patches" / "apply.py")
    apply = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(apply)
    try:
        apply.make()
    except apply.PatchError as err:
        raise SystemExit(f"simper_rs: could not prepare the patched torch-sys: {err}") from err


@contextlib.contextmanager
def _env(**values):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _against_users_torch():
    """Yields the torch series; inside, Cargo and torch-sys build against the environment's torch."""
    command, version, location = _find_torch()
    series = torch_series(version)
    print(f"simper_rs: building against torch {version} at {os.path.dirname(location)}", file=sys.stderr)
    _patch_torch_sys()
    with tempfile.TemporaryDirectory(prefix="simper-rs-build-") as shims:
        for name in ("python", "python3"):  # torch-sys runs `python` in a venv, else `python3`
            path = os.path.join(shims, name)
            with open(path, "w") as f:
                f.write("#!/bin/sh\nexec " + " ".join(f"'{part}'" for part in command) + ' "$@"\n')
            os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        values = {
            "PATH": shims + os.pathsep + os.environ.get("PATH", ""),
            "LIBTORCH_USE_PYTORCH": "1",
            "SIMPER_RS_TORCH_LIB": os.path.join(os.path.dirname(location), "lib"),  # read by build.rs
            "CARGO_TARGET_DIR": os.environ.get("CARGO_TARGET_DIR") or str(ROOT / "target" / f"torch-{series}"),
        }
        with _env(**values):
            yield series


# -- the wheel's metadata for one torch release


def local_version(version: str, series: str) -> str:
    """'0.1.0' -> '0.1.0+torch2.15' (a local label already there is extended)."""
    return f"{version}.torch{series}" if "+" in version else f"{version}+torch{series}"


def retag_metadata(text: str, series: str) -> str:
    """METADATA with the local version label and ``Requires-Dist: torch==<series>.*``."""
    lines = []
    for line in text.split("\n"):
        if line.startswith("Version: "):
            line = "Version: " + local_version(line[len("Version: ") :].strip(), series)
        elif re.match(r"Requires-Dist: torch(\s|[<>=!~;(\[]|$)", line):
            marker = line.split(";", 1)[1] if ";" in line else None
            line = f"Requires-Dist: torch=={series}.*" + (f";{marker}" if marker else "")
        lines.append(line)
    return "\n".join(lines)


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def retag_wheel(wheel_directory: str, filename: str, series: str) -> str:
    """Rewrite the wheel ``filename`` for one torch release (version label, torch requirement,
    dist-info folder name, RECORD); returns the new file name."""
    path = os.path.join(wheel_directory, filename)
    with zipfile.ZipFile(path) as wheel:
        entries = [(info, wheel.read(info)) for info in wheel.infolist()]
    metadata_name = next(
        info.filename for info, _ in entries if re.fullmatch(r"[^/]+\.dist-info/METADATA", info.filename)
    )
    old_info = metadata_name.split("/")[0]
    name, version = old_info[: -len(".dist-info")].rsplit("-", 1)
    new_version = local_version(version, series)
    new_info = f"{name}-{new_version}.dist-info"
    out_entries = []
    for info, data in entries:
        arcname = info.filename
        if arcname.startswith(old_info + "/"):
            arcname = new_info + arcname[len(old_info) :]
        if arcname == f"{new_info}/RECORD":
            continue
        if arcname == f"{new_info}/METADATA":
            data = retag_metadata(data.decode(), series).encode()
        out_entries.append((arcname, info, data))
    record = [f"{arcname},{_record_hash(data)},{len(data)}" for arcname, _, data in out_entries]
    record.append(f"{new_info}/RECORD,,")
    out_entries.append((f"{new_info}/RECORD", None, ("\n".join(record) + "\n").encode()))
    new_filename = filename.replace(f"{name}-{version}-", f"{name}-{new_version}-", 1)
    new_path = os.path.join(wheel_directory, new_filename)
    tmp_path = new_path + ".tmp"
    with zipfile.ZipFile(tmp_path, "w", compression=zipfile.ZIP_DEFLATED) as wheel:
        for arcname, info, data in out_entries:
            target = zipfile.ZipInfo(arcname, date_time=info.date_time if info else (1980, 1, 1, 0, 0, 0))
            target.external_attr = info.external_attr if info else (0o644 << 16)
            target.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(target, data)
    os.replace(tmp_path, new_path)
    if new_path != path:
        os.remove(path)
    return new_filename


def _retag_metadata_directory(metadata_directory: str, dist_info: str, series: str) -> str:
    old = Path(metadata_directory) / dist_info
    metadata = old / "METADATA"
    metadata.write_text(retag_metadata(metadata.read_text(), series))
    name, version = dist_info[: -len(".dist-info")].rsplit("-", 1)
    new_name = f"{name}-{local_version(version, series)}.dist-info"
    old.rename(Path(metadata_directory) / new_name)
    return new_name


# -- PEP 517 / 660 hooks


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    with _against_users_torch() as series:
        dist_info = maturin.prepare_metadata_for_build_wheel(metadata_directory, config_settings)
    return _retag_metadata_directory(metadata_directory, dist_info, series)


prepare_metadata_for_build_editable = prepare_metadata_for_build_wheel


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    # maturin writes its own metadata (not the prepared folder, whose name carries the label)
    with _against_users_torch() as series:
        filename = maturin.build_wheel(wheel_directory, config_settings, None)
    return retag_wheel(wheel_directory, filename, series)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    with _against_users_torch() as series:
        filename = maturin.build_editable(wheel_directory, config_settings, None)
    return retag_wheel(wheel_directory, filename, series)


def build_sdist(sdist_directory, config_settings=None):
    # Cargo reads the manifest, whose [patch] needs the patched torch-sys folder.
    _patch_torch_sys()
    return maturin.build_sdist(sdist_directory, config_settings)
