"""Importing simper_rs: works without torch imported first; a wrong torch is a clear ImportError."""

import re
import subprocess
import sys

import pytest

from simper_rs._torch_version import check_torch_version, load_failure, required_torch_series


def test_import_in_fresh_interpreter():
    code = "import sys; assert 'torch' not in sys.modules; import simper_rs; print(simper_rs.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


def test_required_series_comes_from_the_package_metadata(monkeypatch):
    from importlib import metadata

    from simper_rs import _torch_version
    from simper_rs._torch_version import SUPPORTED_TORCH

    # What the installed metadata says: the source range (maturin develop) or, for a wheel of the
    # build backend, torch==<the release it was built against>.* (which need not be this
    # extension's: a dist/torch-2.N-cpXY tree on PYTHONPATH runs beside the installed package)
    assert required_torch_series() in (None, *SUPPORTED_TORCH)
    for requires, want in [
        (["numpy>=1.24", "torch==2.15.*"], "2.15"),
        (["torch == 2.14.*; sys_platform == 'linux'"], "2.14"),
        (["torch>=2.13,<2.16", "numpy>=1.24"], None),  # a source checkout's range names no one release
        ([], None),
    ]:
        monkeypatch.setattr(_torch_version.metadata, "requires", lambda name, r=requires: r)
        assert required_torch_series() == want, requires

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(_torch_version.metadata, "requires", missing)
    assert required_torch_series() is None


def test_extension_records_the_torch_it_was_built_against():
    import torch

    import simper_rs

    assert simper_rs._core.TORCH_VERSION.split("+")[0] == torch.__version__.split("+")[0]


def test_failed_load_is_explained(monkeypatch):
    from simper_rs import _torch_version

    monkeypatch.setattr(_torch_version, "required_torch_series", lambda: "2.15")
    err = str(load_failure(ImportError("undefined symbol: _ZN3c10"), "2.14.0"))
    assert "could not be loaded with torch 2.14.0" in err and 'pip install "torch==2.15.*"' in err
    assert "rebuild simper_rs against this torch" in err
    # a torch no source build supports: rebuilding would not help
    err = str(load_failure(ImportError("undefined symbol: _ZN3c10"), "2.11.0"))
    assert "rebuild" not in err and "builds against torch 2.13, 2.14, 2.15 only" in err
    monkeypatch.setattr(_torch_version, "required_torch_series", lambda: None)
    assert "rebuild simper_rs against this torch" in str(load_failure(ImportError("x"), "2.15.0"))


@pytest.mark.parametrize("built_for", ["2.13.0+cu130", "2.14.1", "2.15.0+cpu"])
def test_matching_torch_is_accepted(built_for):
    series = built_for[:4]
    check_torch_version(f"{series}.0+cpu", built_for=built_for)
    check_torch_version(f"{series}.1", built_for=built_for)


@pytest.mark.parametrize(
    "built_for, installed",
    [
        ("2.13.0+cu130", "2.11.0"),
        ("2.13.0", "2.14.0+cu128"),
        ("2.15.0+cu130", "2.13.0"),
        ("2.14.1", "2.15.0"),
        ("2.15.0", "1.13.1"),
    ],
)
def test_other_torch_is_a_clear_import_error(built_for, installed):
    series = built_for[:4]
    with pytest.raises(
        ImportError,
        match=(
            rf"built for torch {re.escape(series)}\.x but torch {re.escape(installed)} is installed; "
            rf'install the matching release with: pip install "torch=={re.escape(series)}\.\*"'
        ),
    ):
        check_torch_version(installed, built_for=built_for)


def test_the_running_extension_accepts_its_own_torch_only():
    import torch

    import simper_rs

    check_torch_version(torch.__version__, built_for=simper_rs._core.TORCH_VERSION)
    other = "2.14.0" if not torch.__version__.startswith("2.14.") else "2.15.0"
    with pytest.raises(ImportError, match="but torch " + re.escape(other)):
        check_torch_version(other, built_for=simper_rs._core.TORCH_VERSION)


# The real import with a wrong torch: tests/test_census.py::test_wrong_torch_version_is_an_import_error
