"""Make the patched torch-sys that Cargo.toml's ``[patch.crates-io]`` points at.

torch-sys 0.26 (tch's libtorch binding) is written for torch 2.13; ``torch-sys-0.26.0.patch`` beside
this file makes it build against torch 2.13, 2.14 and 2.15 (see the patch's header). This script
takes the crate file that Cargo fetched from crates.io (fetching it with ``cargo fetch`` when Cargo's
cache does not have it), checks its SHA-256 against the one pinned below, unpacks it into
``.patched-crates/torch-sys-0.26.0`` and applies the patch, refusing any hunk whose context does not
match exactly. A stamp file records the crate's and the patch's hashes, so a second run with
nothing changed does nothing.

    python3 patches/apply.py          (run by scripts/dev.sh, the build backend and the build scripts)
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CRATE = "torch-sys"
VERSION = "0.26.0"
# crates.io's checksum of torch-sys-0.26.0.crate (the one in Cargo's index and in a Cargo.lock
# without the patch); the patch is written against exactly these bytes.
CRATE_SHA256 = "5ae60ab95333c42adcc1a9e74057357e4324a1f344c403e48712a144ab731019"

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PATCH = HERE / f"{CRATE}-{VERSION}.patch"
OUT = ROOT / ".patched-crates" / f"{CRATE}-{VERSION}"


class PatchError(RuntimeError):
    pass


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cargo_home() -> Path:
    return Path(os.environ.get("CARGO_HOME") or Path.home() / ".cargo")


def _cached_crate() -> Path | None:
    found = sorted(glob.glob(str(_cargo_home() / "registry" / "cache" / "*" / f"{CRATE}-{VERSION}.crate")))
    return Path(found[0]) if found else None


def _fetch_crate() -> Path:
    """The .crate file from Cargo's cache, after ``cargo fetch`` of a one-dependency manifest when
    it is not there yet (the main manifest cannot be fetched before this script has run: its
    [patch] points at the folder this script makes)."""
    crate = _cached_crate()
    if crate is not None:
        return crate
    with tempfile.TemporaryDirectory(prefix="simper-rs-fetch-") as tmp:
        (Path(tmp) / "lib.rs").write_text("")
        (Path(tmp) / "Cargo.toml").write_text(
            f'[package]\nname = "fetch-{CRATE}"\nversion = "0.0.0"\nedition = "2021"\n\n'
            f'[lib]\npath = "lib.rs"\n\n[dependencies]\n{CRATE} = "={VERSION}"\n\n[workspace]\n'
        )
        result = subprocess.run(
            ["cargo", "fetch", "--manifest-path", str(Path(tmp) / "Cargo.toml")], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise PatchError(f"cargo fetch of {CRATE} {VERSION} failed:\n{result.stderr.strip()}")
    crate = _cached_crate()
    if crate is None:
        raise PatchError(
            f"cargo fetch succeeded but {CRATE}-{VERSION}.crate is not in {_cargo_home() / 'registry' / 'cache'}"
        )
    return crate


_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def parse_patch(text: str) -> dict[str, list[tuple[int, list[str]]]]:
    """{path: [(old start line, hunk lines with their ' '/'-'/'+' prefix)]} of a unified diff
    (text before the first '--- ' line is a comment)."""
    files: dict[str, list[tuple[int, list[str]]]] = {}
    lines = text.splitlines(keepends=True)
    i = 0
    current = None
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            path = lines[i + 1][4:].strip().split("\t")[0]
            current = files.setdefault(path.split("/", 1)[1] if path.startswith("b/") else path, [])
            i += 2
            continue
        match = _HUNK.match(line)
        if match and current is not None:
            old_count = int(match.group(2) or 1)
            new_count = int(match.group(4) or 1)
            body, i = [], i + 1
            while (old_count > 0 or new_count > 0) and i < len(lines):
                tag = lines[i][:1]
                if tag not in (" ", "-", "+"):
                    raise PatchError(f"malformed hunk at line {i + 1} of {PATCH.name}: {lines[i]!r}")
                old_count -= tag in (" ", "-")
                new_count -= tag in (" ", "+")
                body.append(lines[i])
                i += 1
            current.append((int(match.group(1)), body))
            continue
        i += 1
    return files


def apply_hunks(original: str, hunks: list[tuple[int, list[str]]], name: str) -> str:
    """``original`` with every hunk applied at its stated line; the removed and context lines
    must match exactly (the crate is pinned by hash, so anything else is an error)."""
    old = original.splitlines(keepends=True)
    new: list[str] = []
    pos = 0
    for start, body in hunks:
        at = start - 1
        if at < pos:
            raise PatchError(f"{name}: overlapping hunks at line {start}")
        new.extend(old[pos:at])
        pos = at
        for line in body:
            tag, content = line[:1], line[1:]
            if tag in (" ", "-"):
                if pos >= len(old) or old[pos] != content:
                    raise PatchError(f"{name}: hunk at line {start} does not match the crate's line {pos + 1}")
                pos += 1
                if tag == " ":
                    new.append(content)
            else:
                new.append(content)
    new.extend(old[pos:])
    return "".join(new)


def make(out: Path = OUT) -> Path:
    """Unpack, check and patch the crate into ``out`` (a no-op when the stamp matches)."""
    patch_text = PATCH.read_text()
    stamp = f"{CRATE} {VERSION} crate sha256 {CRATE_SHA256} patch sha256 {_sha256(patch_text.encode())}\n"
    stamp_file = out / ".simper-rs-patched"
    if stamp_file.is_file() and stamp_file.read_text() == stamp:
        return out
    crate_path = _fetch_crate()
    data = crate_path.read_bytes()
    if _sha256(data) != CRATE_SHA256:
        raise PatchError(
            f"{crate_path} has sha256 {_sha256(data)}, not the {CRATE_SHA256} of crates.io's {CRATE} {VERSION} "
            f"that {PATCH.name} is written against; delete it and run again to fetch it afresh"
        )
    work = out.with_name(out.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    prefix = f"{CRATE}-{VERSION}/"
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            if not member.name.startswith(prefix) or ".." in Path(member.name).parts:
                raise PatchError(f"unexpected path {member.name!r} in {crate_path}")
            if not (member.isfile() or member.isdir()):
                continue
            target = work / member.name[len(prefix) :]
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    for path, hunks in parse_patch(patch_text).items():
        target = work / path
        if not target.is_file():
            raise PatchError(f"{PATCH.name} changes {path}, which {CRATE} {VERSION} does not have")
        # newline="" keeps the crate's line endings byte for byte
        with open(target, newline="") as f:
            original = f.read()
        with open(target, "w", newline="") as f:
            f.write(apply_hunks(original, hunks, path))
    (work / ".simper-rs-patched").write_text(stamp)
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    return out


def main() -> int:
    try:
        out = make()
    except PatchError as err:
        print(f"patches/apply.py: {err}", file=sys.stderr)
        return 1
    print(f"patched {CRATE} {VERSION}: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
