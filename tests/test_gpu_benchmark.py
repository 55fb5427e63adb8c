"""benchmarks/gpu.py, which measures only where a GPU is lent, run on the CPU: the script goes
end to end and writes JSON that its renderer turns into the tables, and the fused-linear table
gives its peers the same problem as simper_rs (the three log-prob methods agree)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module
    spec.loader.exec_module(module)
    return module


gpu = _load_script()

LOG_PROB_METHODS = [
    "materialised log_softmax + gather",
    "TRL ChunkedLogProbFunction",
    "simper_rs linear_sequence_logps",
]


def test_the_log_prob_methods_of_the_fused_linear_table_compute_the_same_value():
    """Every position scored: the mean token log-prob, whichever way the inputs are shifted."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 9, 16, generator=g).requires_grad_(True)
    weight = (torch.randn(50, 16, generator=g) / 4).requires_grad_(True)
    labels = torch.randint(0, 50, (4, 9), generator=g)
    values = {}
    for name in LOG_PROB_METHODS:
        try:
            fn, _ = gpu.linear_method(name, hidden, weight, labels)
        except gpu.Skipped as skipped:
            pytest.skip(str(skipped))
        values[name] = fn().item()
    want = torch.log_softmax(hidden[:, :-1] @ weight.T, -1).gather(-1, labels[:, 1:, None]).mean().item()
    for name, value in values.items():
        assert value == pytest.approx(want, rel=1e-5), name


def test_the_dry_run_on_the_cpu_writes_json_that_renders(tmp_path):
    out = tmp_path / "gpu.json"
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--rows", "16", "--vocab", "300", "--hidden", "16"]
    command += ["--repeats", "1", "--no-compile", "--json", str(out)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads(out.read_text())
    logits_rows = [r for r in data["rows"] if r["table"] == "logits"]
    assert {r["dtype"] for r in logits_rows} == {"bfloat16", "float32"}
    assert not [r for r in data["rows"] if "error" in r], data["rows"]
    linear = {r["method"]: r for r in data["rows"] if r["table"] == "linear"}
    assert list(linear) == list(gpu.LINEAR_METHODS)
    for name in ("simper_rs linear_sequence_logps", "simper_rs SimPERLoss (fused linear)"):
        assert linear[name]["seconds"] > 0
    text = gpu.render(data)
    assert "## fused linear, bfloat16, (N, H, V) = (16, 16, 300)" in text
    assert text.count("| simper_rs") == 4, text  # the kernel rows of both dtypes and the two fused-linear rows
