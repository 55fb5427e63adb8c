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


def test_required_series_comes_from_the_package_metadata():
    assert required_torch_series() == "2.13"


def test_extension_records_the_torch_it_was_built_against():
    import torch

    import simper_rs

    assert simper_rs._core.TORCH_VERSION.split("+")[0] == torch.__version__.split("+")[0]


def test_failed_load_is_explained():
    err = load_failure(ImportError("undefined symbol: _ZN3c10"), "2.11.0")
    assert "could not be loaded with torch 2.11.0" in str(err) and 'pip install "torch==2.13.*"' in str(err)


def test_matching_torch_is_accepted():
    check_torch_version("2.13.0+cpu")
    check_torch_version("2.13.1")


@pytest.mark.parametrize("installed", ["2.11.0", "2.14.0+cu128", "1.13.1"])
def test_other_torch_is_a_clear_import_error(installed):
    with pytest.raises(ImportError, match=rf"built for torch 2\.13\.x but torch {re.escape(installed)}"):
        check_torch_version(installed)

# The real import with a wrong torch: tests/test_census.py::test_wrong_torch_version_is_an_import_error
