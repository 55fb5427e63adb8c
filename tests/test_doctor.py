"""simper-rs doctor: one screen on the installation, exit status 1 when something needed fails."""

import subprocess
import sys

import pytest
import torch

import simper_rs
from simper_rs.cli import doctor


def test_doctor_reports_this_installation(capsys):
    status = doctor.run()
    out = capsys.readouterr().out
    # 1 exactly when a line is marked as a problem; none on a machine without a GPU
    assert status == (1 if "\n!!" in "\n" + out else 0), out
    if not torch.cuda.is_available():
        assert status == 0, out
    for expected in (
        f"simper_rs      {simper_rs.__version__}",
        f"torch          {torch.__version__}",
        f"built for {simper_rs._core.TORCH_VERSION}",
        "kernel row code:",
        "kernel threads",
        "CPU kernel     runs and matches log_softmax",
        "NVRTC",
        "CUDA driver",
        "auto backend   cpu: rust",
    ):
        assert expected in out, expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_asking_for_cuda_without_a_gpu_fails():
    result = subprocess.run(
        [sys.executable, "-m", "simper_rs", "doctor", "--device", "cuda"], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "!! CUDA" in result.stdout and "no CUDA device visible" in result.stdout
    assert "problems: CUDA" in result.stdout


def test_a_broken_cpu_kernel_is_reported(monkeypatch, capsys):
    monkeypatch.setattr(simper_rs, "sequence_logps", lambda logits, labels, **kw: torch.zeros(logits.shape[0]))
    assert doctor.run() == 1
    out = capsys.readouterr().out
    assert "!! CPU kernel     gives wrong values" in out and "problems: CPU kernel" in out


def test_console_script_and_module_agree():
    module = subprocess.run([sys.executable, "-m", "simper_rs", "doctor"], capture_output=True, text=True)
    assert module.returncode == (1 if "\n!!" in "\n" + module.stdout else 0), module.stdout + module.stderr
    assert "simper_rs" in module.stdout and "auto backend" in module.stdout
