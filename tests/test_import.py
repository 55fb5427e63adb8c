"""Importing simper_rs: works without torch imported first; a wrong torch is a clear ImportError."""
import re
import subprocess
import sys

import pytest

from simper_rs._torch_version import check_torch_version, required_torch_series


def test_import_in_fresh_interpreter():
    code = "import sys; assert 'torch' not in sys.modules; import simper_rs; print(simper_rs.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


def test_required_series_comes_from_the_package_metadata():
    assert required_torch_series() == "2.13"


def test_matching_torch_is_accepted():
    check_torch_version("2.13.0+cpu")
    check_torch_version("2.13.1")


@pytest.mark.parametrize("installed", ["2.11.0", "2.14.0+cu128", "1.13.1"])
def test_other_torch_is_a_clear_import_error(installed):
    with pytest.raises(ImportError, match=rf"built for torch 2\.13\.x but torch {re.escape(installed)}"):
        check_torch_version(installed)


def test_wrong_torch_fails_the_real_import():
    code = (
        "import torch; torch.__version__ = '2.11.0'\n"
        "try:\n    import simper_rs\nexcept ImportError as e:\n    print('ImportError:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "ImportError: simper_rs was built for torch 2.13.x but torch 2.11.0 is installed" in out.stdout, out.stderr
