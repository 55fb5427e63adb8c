"""A 2-process CPU (gloo) run through Accelerate gives the gradients of a 1-process run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("accelerate")
WORKER = str(Path(__file__).with_name("distributed_worker.py"))


def run(args, out, fused):
    env = {**os.environ, "FUSED_LINEAR": "1" if fused else "0", "OMP_NUM_THREADS": "1", "SIMPER_RS_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, *args, WORKER, str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out)


@pytest.mark.parametrize("fused", [False, True], ids=["logits", "fused-linear"])
def test_two_process_gradients_equal_one_process(tmp_path, fused):
    two = run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], tmp_path / "two.pt", fused)
    one = run([], tmp_path / "one.pt", fused)
    assert two["world"] == 2 and one["world"] == 1
    for name, grad in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
