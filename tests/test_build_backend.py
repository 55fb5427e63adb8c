"""The build: the torch-sys patch (patches/apply.py) and the PEP 517 backend's choice of torch and
per-torch wheel metadata (build_backend/simper_rs_build.py), without running Cargo."""

import base64
import csv
import gzip
import hashlib
import importlib.util
import io
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def apply():
    return load("patches/apply.py", "simper_rs_patches_apply")


@pytest.fixture(scope="module")
def backend():
    pytest.importorskip("maturin")
    return load("build_backend/simper_rs_build.py", "simper_rs_build")


def test_supported_releases_agree_everywhere(backend):
    from simper_rs._torch_version import SUPPORTED_TORCH

    assert backend.SUPPORTED_TORCH == SUPPORTED_TORCH
    patch = (ROOT / "patches" / "torch-sys-0.26.0.patch").read_text()
    listed = ", ".join(f'"{s}"' for s in SUPPORTED_TORCH)
    assert f"+const SUPPORTED_TORCH_SERIES: [&str; {len(SUPPORTED_TORCH)}] = [{listed}];" in patch
    upper = f"2.{int(SUPPORTED_TORCH[-1].split('.')[1]) + 1}"
    assert f'"torch>={SUPPORTED_TORCH[0]},<{upper}"' in (ROOT / "pyproject.toml").read_text()


# -- patches/apply.py

ORIGINAL = "line 1\nline 2\nline 3\nline 4\nline 5\nline 6\nline 7\nline 8\n"
PATCH = """comment lines before the first file are ignored
--- a/src/x.txt
+++ b/src/x.txt
@@ -1,3 +1,3 @@
 line 1
-line 2
+line two
 line 3
@@ -6,3 +6,4 @@
 line 6
 line 7
+line 7.5
 line 8
"""


def test_patch_applies_hunks_at_their_lines(apply):
    hunks = apply.parse_patch(PATCH)
    assert list(hunks) == ["src/x.txt"]
    assert apply.apply_hunks(ORIGINAL, hunks["src/x.txt"], "src/x.txt") == ORIGINAL.replace(
        "line 2", "line two"
    ).replace("line 7\n", "line 7\nline 7.5\n")


@pytest.mark.parametrize("changed", ["line 2", "line 6"])
def test_patch_refuses_a_hunk_whose_context_differs(apply, changed):
    hunks = apply.parse_patch(PATCH)["src/x.txt"]
    with pytest.raises(apply.PatchError, match="does not match the crate's line"):
        apply.apply_hunks(ORIGINAL.replace(changed, changed + " (changed)"), hunks, "src/x.txt")


def test_patch_file_parses_and_changes_what_it_says(apply):
    hunks = apply.parse_patch(apply.PATCH.read_text())
    assert sorted(hunks) == ["build.rs", "libtch/torch_api_generated.cpp"]
    added = "".join(
        line for _, body in hunks["libtch/torch_api_generated.cpp"] for line in body if line.startswith("+")
    )
    removed = "".join(
        line for _, body in hunks["libtch/torch_api_generated.cpp"] for line in body if line.startswith("-")
    )
    for name in ("cholesky", "cholesky_out", "qr", "qr_out"):
        assert f"torch::{name}(" in removed and f"torch::linalg_{name}(" in added
    build = "".join(line for _, body in hunks["build.rs"] for line in body)
    assert '-                    .flag("-std=c++17")' in build and '+                    .flag("-std=c++20")' in build


def fake_crate(files):
    """A .crate (tar.gz of torch-sys-0.26.0/...) holding ``files``."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"torch-sys-0.26.0/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def test_the_crate_is_checked_by_hash_before_anything_is_written(apply, tmp_path, monkeypatch):
    cache = tmp_path / "cargo" / "registry" / "cache" / "index.crates.io-x"
    cache.mkdir(parents=True)
    (cache / "torch-sys-0.26.0.crate").write_bytes(fake_crate({"build.rs": "tampered\n"}))
    monkeypatch.setenv("CARGO_HOME", str(tmp_path / "cargo"))
    out = tmp_path / "out" / "torch-sys-0.26.0"
    with pytest.raises(apply.PatchError, match=f"not the {apply.CRATE_SHA256}"):
        apply.make(out)
    assert not out.exists()


def test_a_crate_with_the_pinned_hash_is_unpacked_and_patched(apply, tmp_path, monkeypatch):
    crate = fake_crate({"build.rs": ORIGINAL, "src/x.txt": ORIGINAL, "src/lib.rs": "// untouched\n"})
    cache = tmp_path / "cargo" / "registry" / "cache" / "index.crates.io-x"
    cache.mkdir(parents=True)
    (cache / "torch-sys-0.26.0.crate").write_bytes(crate)
    patch = tmp_path / "the.patch"
    patch.write_text(PATCH)
    monkeypatch.setenv("CARGO_HOME", str(tmp_path / "cargo"))
    monkeypatch.setattr(apply, "CRATE_SHA256", hashlib.sha256(crate).hexdigest())
    monkeypatch.setattr(apply, "PATCH", patch)
    out = tmp_path / "out" / "torch-sys-0.26.0"
    apply.make(out)
    assert (out / "src" / "x.txt").read_text() == ORIGINAL.replace("line 2", "line two").replace(
        "line 7\n", "line 7\nline 7.5\n"
    )
    assert (out / "src" / "lib.rs").read_text() == "// untouched\n"
    # the stamp makes a second run a no-op; a changed patch redoes it
    (out / "src" / "lib.rs").write_text("edited")
    apply.make(out)
    assert (out / "src" / "lib.rs").read_text() == "edited"
    patch.write_text(PATCH.replace("line two", "line II"))
    apply.make(out)
    assert (out / "src" / "lib.rs").read_text() == "// untouched\n" and "line II" in (out / "src" / "x.txt").read_text()


def test_the_checkout_uses_the_patched_torch_sys():
    """Cargo.toml points torch-sys at the folder patches/apply.py makes, and that folder (made by
    scripts/dev.sh setup) is the pinned crate with the patch applied."""
    manifest = (ROOT / "Cargo.toml").read_text()
    assert '[patch.crates-io]\ntorch-sys = { path = ".patched-crates/torch-sys-0.26.0" }' in manifest
    built = ROOT / ".patched-crates" / "torch-sys-0.26.0"
    if not built.is_dir():
        pytest.skip("run python3 patches/apply.py (scripts/dev.sh setup does)")
    assert '.flag("-std=c++20")' in (built / "build.rs").read_text()
    generated = (built / "libtch" / "torch_api_generated.cpp").read_text()
    assert "torch::cholesky(" not in generated and "torch::linalg_qr(*self" in generated


# -- build_backend/simper_rs_build.py

METADATA = """Metadata-Version: 2.4
Name: simper_rs
Version: 0.1.0
Requires-Dist: torch>=2.13,<2.16
Requires-Dist: numpy>=1.24
Requires-Dist: torchvision ; extra == 'x'
Requires-Dist: transformers>=5.20 ; extra == 'trl'
Summary: x
"""


def test_metadata_names_one_torch_release(backend):
    text = backend.retag_metadata(METADATA, "2.15")
    assert "Version: 0.1.0+torch2.15\n" in text
    assert "Requires-Dist: torch==2.15.*\n" in text and "torch>=2.13" not in text
    assert "Requires-Dist: torchvision ; extra == 'x'" in text  # another package whose name starts with torch
    assert "Requires-Dist: numpy>=1.24" in text and "transformers>=5.20 ; extra == 'trl'" in text


def make_wheel(directory):
    files = {
        "simper_rs/__init__.py": b"x = 1\n",
        "simper_rs/_core.cpython-311-x86_64-linux-gnu.so": b"\x7fELF" + bytes(100),
        "simper_rs-0.1.0.dist-info/METADATA": METADATA.encode(),
        "simper_rs-0.1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nTag: cp311-cp311-linux_x86_64\n",
        "simper_rs-0.1.0.dist-info/RECORD": b"stale\n",
    }
    name = "simper_rs-0.1.0-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(directory / name, "w") as wheel:
        for arcname, data in files.items():
            wheel.writestr(arcname, data)
    return name


def test_wheel_is_relabelled_for_its_torch_release(backend, tmp_path):
    name = backend.retag_wheel(str(tmp_path), make_wheel(tmp_path), "2.14")
    assert name == "simper_rs-0.1.0+torch2.14-cp311-cp311-linux_x86_64.whl"
    assert [p.name for p in tmp_path.iterdir()] == [name]
    with zipfile.ZipFile(tmp_path / name) as wheel:
        names = set(wheel.namelist())
        assert {
            "simper_rs/__init__.py",
            "simper_rs-0.1.0+torch2.14.dist-info/METADATA",
            "simper_rs-0.1.0+torch2.14.dist-info/RECORD",
        } <= names
        assert not any(n.startswith("simper_rs-0.1.0.dist-info/") for n in names)
        metadata = wheel.read("simper_rs-0.1.0+torch2.14.dist-info/METADATA").decode()
        assert "Version: 0.1.0+torch2.14" in metadata and "Requires-Dist: torch==2.14.*" in metadata
        record = list(csv.reader(io.StringIO(wheel.read("simper_rs-0.1.0+torch2.14.dist-info/RECORD").decode())))
        assert sorted(row[0] for row in record) == sorted(names)
        for path, digest, size in record:
            if path.endswith("RECORD"):
                assert digest == size == ""
                continue
            data = wheel.read(path)
            assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert int(size) == len(data)


def test_pip_reads_the_relabelled_wheel(backend, tmp_path):
    """pip itself takes the rewritten wheel: its name, version and the one torch it requires."""
    name = backend.retag_wheel(str(tmp_path), make_wheel(tmp_path), "2.15")
    report = tmp_path / "report.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            str(tmp_path / name),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    import json

    (item,) = json.loads(report.read_text())["install"]
    assert item["metadata"]["version"] == "0.1.0+torch2.15"
    assert "torch==2.15.*" in item["metadata"]["requires_dist"]


def probe_as(monkeypatch, backend, versions):
    """Make the backend's torch probe see ``versions``: one per probe (None: no torch there)."""
    results = iter(versions)

    def run(command, **kwargs):
        version = next(results)
        if version is None:
            return subprocess.CompletedProcess(command, 1, "", "ModuleNotFoundError: No module named 'torch'")
        return subprocess.CompletedProcess(command, 0, f"{version}\n/env/site-packages/torch/__init__.py", "")

    monkeypatch.setattr(backend.subprocess, "run", run)


@pytest.mark.parametrize(
    "versions, want", [(["2.15.0+cu132"], "2.15.0+cu132"), ([None, "2.14.1"], "2.14.1"), (["2.13.0+cpu"], "2.13.0+cpu")]
)
def test_builds_against_the_supported_torch_it_finds(backend, monkeypatch, versions, want):
    probe_as(monkeypatch, backend, versions)
    command, version, location = backend._find_torch()
    assert version == want and location == "/env/site-packages/torch/__init__.py"
    assert command[-1] == "-I" if versions[0] is None else command == [sys.executable]


@pytest.mark.parametrize("found", [["2.12.1", "2.12.1"], [None, "2.16.0"], ["2.11.0+cu128", None]])
def test_an_unsupported_torch_is_a_clear_error_listing_the_supported_ones(backend, monkeypatch, found):
    probe_as(monkeypatch, backend, found)
    installed = next(v for v in found if v)
    with pytest.raises(
        SystemExit,
        match=rf"builds against torch 2\.13, 2\.14 or 2\.15, but .* has torch {re.escape(installed)} .*pip install 'torch==2\.15\.\*'",
    ):
        backend._find_torch()


def test_no_torch_is_a_clear_error(backend, monkeypatch):
    probe_as(monkeypatch, backend, [None, None])
    with pytest.raises(SystemExit, match=r"\(torch 2\.13, 2\.14 or 2\.15\), and .* has none\. Install one first"):
        backend._find_torch()


def test_each_torch_release_builds_in_its_own_target_folder(backend, monkeypatch):
    probe_as(monkeypatch, backend, ["2.14.1"])
    monkeypatch.setattr(backend, "_patch_torch_sys", lambda: None)
    monkeypatch.delenv("CARGO_TARGET_DIR", raising=False)
    monkeypatch.setenv("SIMPER_RS_TORCH_LIB", "before")
    with backend._against_users_torch() as series:
        import os

        assert series == "2.14"
        assert os.environ["CARGO_TARGET_DIR"] == str(ROOT / "target" / "torch-2.14")
        assert os.environ["SIMPER_RS_TORCH_LIB"] == "/env/site-packages/torch/lib"
    assert "CARGO_TARGET_DIR" not in os.environ and os.environ["SIMPER_RS_TORCH_LIB"] == "before"  # restored
