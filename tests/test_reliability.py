"""Reliability: memory stability, determinism, numerics at the extremes, thread control."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import reference as ref
import simper_rs


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.parametrize("fused_linear", [False, True], ids=["logits", "fused-linear"])
def test_ten_thousand_calls_do_not_grow_memory(fused_linear):
    logits, labels = ref.make_batch(pairs=2, seq_len=8, vocab=64, seed=1)
    hidden = torch.randn(4, 8, 16, requires_grad=True)
    weight = torch.randn(64, 16, requires_grad=True)

    def step():
        if fused_linear:
            out = simper_rs.linear_sequence_logps(hidden, weight, labels)
        else:
            out = simper_rs.sequence_logps(logits, labels)
        simper_rs.simper_loss(out[:2], out[2:]).backward()

    for _ in range(500):  # warm-up: allocator pools, caches, lazily built thread pool
        step()
    start = rss_kib()
    for _ in range(10_000):
        step()
        logits.grad = hidden.grad = weight.grad = None
    growth_kib = rss_kib() - start
    assert growth_kib < 8 * 1024, f"resident memory grew by {growth_kib} KiB over 10,000 calls"


def test_bit_identical_across_runs_and_thread_counts():
    code = (
        "import sys, torch, simper_rs; sys.path.insert(0, 'tests'); import reference as ref\n"
        "logits, labels = ref.make_batch(pairs=4, seq_len=33, vocab=3001, seed=5)\n"
        "out = simper_rs.SimPERLoss()(logits, labels)\n"
        "out.loss.backward()\n"
        "torch.save({'loss': out.loss.detach(), 'grad': logits.grad}, sys.argv[1])\n"
    )
    results = []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for i, threads in enumerate(["1", "2", "2", "3"]):
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"simper_rs_det_{os.getpid()}_{i}.pt")
        env = {**os.environ, "SIMPER_RS_NUM_THREADS": threads}
        subprocess.run([sys.executable, "-c", code, path], check=True, env=env, cwd=root)
        results.append(torch.load(path))
        os.remove(path)
    for other in results[1:]:
        assert torch.equal(other["loss"], results[0]["loss"])
        assert torch.equal(other["grad"], results[0]["grad"])


def test_kernel_threads_follow_torch_set_num_threads():
    if "SIMPER_RS_NUM_THREADS" in os.environ:
        pytest.skip("SIMPER_RS_NUM_THREADS overrides torch's setting")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert simper_rs._core.kernel_threads() == 1
        torch.set_num_threads(2)
        assert simper_rs._core.kernel_threads() == 2
    finally:
        torch.set_num_threads(before)


def float64_reference(logits, labels):
    return ref.token_logps(logits.double(), labels)


@pytest.mark.parametrize(
    "case, dtype, tol",
    [
        ("magnitude 1e4", torch.float32, 1e-6),
        ("magnitude -1e4", torch.float32, 1e-6),
        ("all-equal rows", torch.float32, 1e-6),
        ("bfloat16", torch.bfloat16, 1e-5),
        ("float16", torch.float16, 1e-5),
    ],
)
def test_numerics_against_float64(case, dtype, tol):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 6, 500, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 500, (2, 6), generator=g)
    if case == "magnitude 1e4":
        logits = logits * 1e4
    elif case == "magnitude -1e4":
        logits = logits - 1e4
    elif case == "all-equal rows":
        logits = torch.full_like(logits, 7.25)
    x = logits.to(dtype)
    ours = simper_rs.token_logps(x, labels, backend="rust")
    # Against float64 math on the values as stored in `dtype`: the error is the kernel's alone.
    expected = float64_reference(x, labels)
    scale = expected.abs().clamp(min=1.0)
    assert ((ours.double() - expected).abs() / scale).max() < tol
    if case == "all-equal rows":
        assert torch.allclose(ours, torch.full_like(ours, -np.log(500)), atol=1e-6)


@pytest.mark.parametrize("vocab", [128256, 256000])
def test_large_vocabulary_against_float64(vocab):
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(1, 3, vocab, generator=g) * 5
    labels = torch.randint(0, vocab, (1, 3), generator=g)
    ours = simper_rs.sequence_logps(logits.requires_grad_(), labels, backend="rust")
    expected = ref.sequence_logps(logits.double(), labels)
    assert ((ours.double() - expected).abs() / expected.abs()).max() < 2e-6  # float32 accumulation
    ours.sum().backward()
    (expected_grad,) = torch.autograd.grad(ref.sequence_logps(logits.double(), labels).sum(), logits)
    assert (logits.grad.double() - expected_grad).abs().max() < 1e-5  # float32 gradients of magnitude <= 1/3


def test_loss_numerics_at_the_extremes():
    # exp of log-probs near 0 and very negative: finite, exact to float32
    near_zero = torch.tensor([-1e-8, -1e-30, -80.0, -1e4])
    loss = simper_rs.simper_loss(near_zero, near_zero.flip(0), reduction="none")
    expected = -torch.exp(near_zero.double()) + torch.exp(near_zero.flip(0).double())
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-12)
    # softplus / log-sigmoid for large arguments: no overflow, no NaN
    big = torch.tensor([-1e4, -100.0, 100.0, 1e4], requires_grad=True)
    for estimator in ("bce", "cpc"):
        out = simper_rs.dil_loss(big, -big, estimator=estimator, beta=5.0, reduction="none")
        assert torch.isfinite(out).all()
        (grad,) = torch.autograd.grad(out.sum(), big)
        assert torch.isfinite(grad).all()
    # LSIF with a reference where exp(2u) overflows float32 (u_l > 44.4): computed in float64,
    # the loss is exact while it fits float32 and saturates to ±inf (never inf - inf = NaN) past it.
    policy = torch.tensor([-1.0, -1.0, -1.0], requires_grad=True)
    ref_chosen = torch.tensor([-1.0, -1.0, -100.0])  # u_w = 0, 0, 99
    ref_rejected = torch.tensor([-45.0, -50.0, -50.0])  # u_l = 44, 49, 49
    out = simper_rs.dil_loss(policy, policy, ref_chosen, ref_rejected, reduction="none")
    assert out.dtype == torch.float32 and not out.isnan().any()
    expected_0 = -1.0 + 0.5 * torch.exp(torch.tensor(88.0, dtype=torch.float64))
    torch.testing.assert_close(out[0].double(), expected_0, rtol=1e-6, atol=0)
    assert out[1] == float("inf")  # -1 + e^98 / 2: beyond float32
    assert out[2] == float("-inf")  # -e^99 + e^98 / 2: float32 alone would give inf - inf = NaN
