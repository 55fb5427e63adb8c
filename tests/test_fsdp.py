"""The fused-linear paths under FSDP2 (fully_shard) on CPU: 2 gloo processes give every parameter
the gradient of a 1-process run, wherever the lm_head is wrapped (tests/fsdp_worker.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

WORKER = str(Path(__file__).with_name("fsdp_worker.py"))


def run(args, out, layout, path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SIMPER_RS_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, *args, WORKER, layout, path, str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["trainer", "trl"])
@pytest.mark.parametrize(
    "layout", ["root", "own", "tied"], ids=["lm_head-in-root", "lm_head-own-unit", "tied-embedding"]
)
def test_fsdp2_gradients_equal_one_process(tmp_path, layout, path):
    two = run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], tmp_path / "two.pt", layout, path)
    one = run([], tmp_path / "one.pt", layout, path)
    assert two["world"] == 2 and one["world"] == 1
    assert set(two["grads"]) == set(one["grads"])
    assert ("lm_head.weight" in one["grads"]) == (layout != "tied")  # tied: the one weight is the embedding's
    for name, grad in one["grads"].items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(two["grads"][name], grad, rtol=1e-5, atol=1e-5 * grad.abs().max().item(), msg=name)


def test_a_weight_still_sharded_inside_the_head_is_refused():
    """A DTensor lm_head.weight inside the head's forward (e.g. tensor parallelism) gets a clear error."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from simper_rs.head import head_token_logps

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        head = torch.nn.Linear(8, 11, bias=False)
        head.weight = torch.nn.Parameter(distribute_tensor(head.weight.detach(), mesh, [Shard(0)]))
        hidden, labels = torch.randn(2, 5, 8), torch.randint(0, 11, (2, 5))
        with pytest.raises(ValueError, match="sharded DTensor inside the lm_head's forward.*use fused_linear=False"):
            head_token_logps(head, hidden, labels)
    finally:
        dist.destroy_process_group()


ZERO3_WORKER = str(Path(__file__).with_name("zero3_worker.py"))


@pytest.mark.slow
@pytest.mark.parametrize("path", ["trainer", "trl"])
def test_deepspeed_zero3_gradients_equal_one_process(tmp_path, path):
    """DeepSpeed ZeRO-3 on its CPU accelerator, every parameter partitioned (lm_head.weight is empty
    outside the lm_head's forward): 2 processes give the 1-process gradients."""
    pytest.importorskip("deepspeed")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "SIMPER_RS_NUM_THREADS": "1"}
    outs = {}
    for name, args in (("two", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]), ("one", [])):
        result = subprocess.run(
            [sys.executable, *args, ZERO3_WORKER, path, str(tmp_path / f"{name}.pt")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        outs[name] = torch.load(tmp_path / f"{name}.pt")
    assert outs["two"]["world"] == 2 and outs["one"]["world"] == 1
    for name, grad in outs["one"]["grads"].items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(
            outs["two"]["grads"][name], grad, rtol=1e-5, atol=1e-5 * grad.abs().max().item(), msg=name
        )
