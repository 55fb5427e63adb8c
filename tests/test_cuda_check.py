"""The CUDA kernel's self-check (simper_rs.cuda_check) on CPU: its decision logic by fault
injection, through the test-only seam ``cuda_check.simulated_device_for_testing``, which treats
CPU tensors as if a GPU served by the given kernel functions held them.

The kernel functions here are the kernel's contract written in plain PyTorch (``TorchKernel``),
and that with one fault planted: a wrong value, a compile failure, a launch failure, a NaN, a
leak into ignored or shifted-out rows. The emulation of the real kernel source runs the same
problem in tests/test_cuda_emulated.py; on a GPU tests/test_cuda.py runs it on the real kernel.
"""

import re
import threading
import time
import warnings

import pytest
import torch

import reference as ref
import simper_rs
from simper_rs import cuda_check, ops
from simper_rs.cli import doctor

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
FAILED = "failed its self-check"


def transformed(z, logit_scale=None, logit_softcap=None):
    """The logit transform of the kernel options, in plain PyTorch."""
    if logit_scale is not None:
        z = z * logit_scale
    if logit_softcap is not None:
        z = logit_softcap * torch.tanh(z / logit_softcap)
    return z


class TorchKernel:
    """What a correct kernel computes, in plain PyTorch on CPU tensors (the logit transform of the
    options included); counts its calls."""

    def __init__(self):
        self.calls = {"load": 0, "forward": 0, "backward": 0, "backward_in_place": 0}

    def load(self, device):
        self.calls["load"] += 1

    def forward(self, logits, labels, ignore_index, shift, with_stats, **options):
        self.calls["forward"] += 1
        z = transformed(logits.float(), **options)
        x = z[:, :-1] if shift else z
        y = labels[:, 1:] if shift else labels
        keep = y != ignore_index
        lse = torch.where(keep, torch.logsumexp(x, -1), 0.0)
        logps = ref.token_logps(z, labels, ignore_index, shift)
        logp = torch.log_softmax(x, -1)
        entropy = torch.where(keep, -(logp.exp() * logp).nan_to_num(0.0).sum(-1), 0.0)
        correct = (keep & (x.argmax(-1) == y)).float()
        return logps, lse, entropy, correct

    def backward(self, grad_logps, logits, labels, lse, ignore_index, shift, **options):
        self.calls["backward"] += 1
        return self._gradient(grad_logps, logits, labels, ignore_index, shift, options)

    def backward_in_place(self, rows, targets, grad_logps, lse, ignore_index, **options):
        self.calls["backward_in_place"] += 1
        rows.copy_(self._gradient(grad_logps[None], rows[None], targets[None], ignore_index, False, options)[0])

    @staticmethod
    def _gradient(grad_logps, logits, labels, ignore_index, shift, options):
        leaf = logits.detach().float().requires_grad_()
        tokens = ref.token_logps(transformed(leaf, **options), labels, ignore_index, shift)
        (grad,) = torch.autograd.grad(tokens, leaf, grad_logps.float())
        return grad.to(logits.dtype)


class WrongLogProb(TorchKernel):
    """One token log-prob off by `error` (for `dtypes` only)."""

    def __init__(self, error=1e-3, dtypes=tuple(DTYPES)):
        super().__init__()
        self.error, self.dtypes = error, dtypes

    def forward(self, logits, labels, ignore_index, shift, with_stats, **options):
        logps, lse, entropy, correct = super().forward(logits, labels, ignore_index, shift, with_stats, **options)
        if logits.dtype in self.dtypes:
            logps = logps.clone()
            logps[-1, 1] += self.error
        return logps, lse, entropy, correct


class WrongGradientScale(TorchKernel):
    def backward(self, grad_logps, logits, labels, lse, ignore_index, shift, **options):
        return (super().backward(grad_logps, logits, labels, lse, ignore_index, shift, **options).float() * 1.05).to(
            logits.dtype
        )


class LeaksIntoSkippedRows(TorchKernel):
    """Writes softmax gradients into rows that must be zero: `which` is "ignored" (a label of
    ignore_index) or "shifted" (the last position, which predicts nothing)."""

    def __init__(self, which):
        super().__init__()
        self.which = which

    def backward(self, grad_logps, logits, labels, lse, ignore_index, shift, **options):
        grad = super().backward(grad_logps, logits, labels, lse, ignore_index, shift, **options)
        if self.which == "shifted" and shift:
            grad[:, -1] = 1e-2
        if self.which == "ignored":
            y = labels[:, 1:] if shift else labels
            b, t = (y == ignore_index).nonzero()[0].tolist()
            grad[b, t] = 1e-2
        return grad


class WrongArgmax(TorchKernel):
    def forward(self, logits, labels, ignore_index, shift, with_stats, **options):
        logps, lse, entropy, correct = super().forward(logits, labels, ignore_index, shift, with_stats, **options)
        return logps, lse, entropy, 1.0 - correct  # the accuracy statistic inverted


class NaNEntropy(TorchKernel):
    def forward(self, logits, labels, ignore_index, shift, with_stats, **options):
        logps, lse, entropy, correct = super().forward(logits, labels, ignore_index, shift, with_stats, **options)
        entropy = entropy.clone()
        entropy[0, -1] = float("nan")
        return logps, lse, entropy, correct


class HalfInPlace(TorchKernel):
    """The in-place backward writes only the first half of each row."""

    def backward_in_place(self, rows, targets, grad_logps, lse, ignore_index, **options):
        keep = rows.clone()
        super().backward_in_place(rows, targets, grad_logps, lse, ignore_index, **options)
        rows[:, rows.shape[1] // 2 :] = keep[:, rows.shape[1] // 2 :]


class FailsToCompile(TorchKernel):
    def load(self, device):
        super().load(device)
        raise RuntimeError(
            'the CUDA kernel did not compile for Cubin(90):\nlogps.cu(12): error: identifier "u16" is undefined'
        )


class FailsToLaunch(TorchKernel):
    def backward(self, grad_logps, logits, labels, lse, ignore_index, shift, **options):
        self.calls["backward"] += 1
        raise RuntimeError("CUDA driver call cuLaunchKernel failed: too many resources requested for launch")


@pytest.fixture(autouse=True)
def checked_fresh(monkeypatch):
    monkeypatch.delenv(cuda_check.CHECK_ENV, raising=False)


def warnings_of(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = fn()
    return value, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def batch(dtype, seed=0, pairs=2, t=9, v=300):
    logits, labels = ref.make_batch(pairs=pairs, seq_len=t, vocab=v, dtype=dtype, seed=seed, requires_grad=False)
    return logits, labels


# -- the check itself


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_correct_kernel_passes(dtype):
    result = cuda_check.run_self_check(TorchKernel(), "cpu", dtype)
    assert result.passed and result.failure is None and result.message() == "", result.failure
    assert result.device == "cpu" and result.dtype == str(dtype).replace("torch.", "") and result.seconds > 0


def test_every_case_runs_forward_with_and_without_statistics_and_backward():
    kernel = TorchKernel()
    assert cuda_check.run_self_check(kernel, "cpu", torch.bfloat16).passed
    with_stats = sum(case.with_stats for case in cuda_check.CASES)
    in_place = sum(case.layout == "rows" for case in cuda_check.CASES)
    assert kernel.calls == {
        "load": 1,
        "forward": len(cuda_check.CASES) + with_stats,
        "backward": len(cuda_check.CASES) - in_place,
        "backward_in_place": in_place,
    }
    assert in_place >= 1 and with_stats >= 1 and any(not case.with_stats for case in cuda_check.CASES)
    assert {case.options.get("logit_softcap") is not None for case in cuda_check.CASES} == {
        True,
        False,
    }  # the transform kernels too
    assert {case.layout for case in cuda_check.CASES} == {"contiguous", "time_major", "rows"}


@pytest.mark.parametrize(
    "kernel, expected",
    [
        (
            WrongLogProb(),
            r"contiguous rows, shifted, with statistics: forward: log-probs: \S+ at \[1, 1\], the libtorch path gives ",
        ),
        (WrongLogProb(error=3e-4), r"forward: log-probs: \S+ at \[1, 1\], the libtorch path gives "),
        (WrongGradientScale(), r"contiguous rows, shifted, with statistics: backward: gradient: \S+ at \["),
        (LeaksIntoSkippedRows("ignored"), r"backward: gradient: \S+ at \[0, 0, 0\], the libtorch path gives 0 "),
        (LeaksIntoSkippedRows("shifted"), r"backward: gradient: \S+ at \[0, 4, 0\], the libtorch path gives 0 "),
        (WrongArgmax(), r"forward with statistics: argmax == label: [01] at \[.*\], the libtorch path gives [01]$"),
        (
            NaNEntropy(),
            r"forward with statistics: entropy: 1 non-finite value\(s\) where the libtorch path is finite \(at \[0, 3\]: nan\)",
        ),
        (HalfInPlace(), r"fused-linear chunk rows, in-place backward, with statistics: in-place backward: gradient: "),
        (FailsToCompile(), r"the kernel did not compile or load: the CUDA kernel did not compile for Cubin\(90\)"),
        (
            FailsToLaunch(),
            r"backward kernel failed: RuntimeError: CUDA driver call cuLaunchKernel failed: too many resources",
        ),
    ],
    ids=[
        "wrong-logp",
        "small-wrong-logp",
        "gradient-5%",
        "ignored-row-leak",
        "shifted-row-leak",
        "argmax",
        "nan",
        "in-place",
        "compile",
        "launch",
    ],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_each_planted_fault_fails_the_check_and_says_what(kernel, expected, dtype):
    result = cuda_check.run_self_check(kernel, "cpu", dtype)
    assert not result.passed and result.failure is not None
    assert re.search(expected, result.failure), result.failure
    assert result.message().startswith(
        f"the fused CUDA kernel failed its self-check on cpu (cpu (simulated)) for {result.dtype}: "
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_kernel_with_other_rounding_still_passes(dtype):
    # What a correct GPU kernel may differ by: a few float32 ulps in the forward (the hardware's
    # approximate exp2), and a gradient one ulp of its dtype away before rounding to it.
    class Rounded(TorchKernel):
        def forward(self, logits, labels, ignore_index, shift, with_stats, **options):
            logps, lse, entropy, correct = super().forward(logits, labels, ignore_index, shift, with_stats, **options)
            return logps * (1 + 8e-7), lse * (1 - 8e-7), entropy * (1 + 8e-7), correct

        def backward(self, grad_logps, logits, labels, lse, ignore_index, shift, **options):
            grad = super().backward(grad_logps, logits, labels, lse, ignore_index, shift, **options).float()
            return (grad * (1 - torch.finfo(logits.dtype).eps)).to(logits.dtype)

    result = cuda_check.run_self_check(Rounded(), "cpu", dtype)
    assert result.passed, result.failure


# -- the decision: auto falls back once, rust raises, the loss stays the libtorch path's


def test_a_wrong_kernel_warns_once_falls_back_and_the_loss_is_the_libtorch_path():
    kernel = WrongLogProb(dtypes=(torch.bfloat16,))
    logits, labels = batch(torch.bfloat16)
    with cuda_check.simulated_device_for_testing(kernel):
        leaf = logits.clone().requires_grad_(True)

        def two_steps():
            first = simper_rs.SimPERLoss()(leaf, labels)
            first.loss.backward()
            second = simper_rs.sequence_logps(logits, labels)
            return first, second

        (first, second), warned = warnings_of(two_steps)
        assert len(warned) == 1, warned
        assert (
            f"{FAILED} on cpu (cpu (simulated)) for bfloat16: contiguous rows, shifted, with statistics: forward: log-probs"
            in warned[0]
        )
        assert "bfloat16 tensors on cpu use libtorch ops instead" in warned[0]
        assert ops.resolve_backend("auto", logits) == "torch"
        # Exactly the libtorch path's values and gradients: no wrong value reached the loss.
        torch_leaf = logits.clone().requires_grad_(True)
        want = simper_rs.SimPERLoss(backend="torch")(torch_leaf, labels)
        want.loss.backward()
        assert torch.equal(first.loss, want.loss) and torch.equal(leaf.grad, torch_leaf.grad)
        assert torch.equal(second, simper_rs.sequence_logps(logits, labels, backend="torch"))
        # backend="rust" raises the same message (and does not warn).
        with pytest.raises(RuntimeError) as raised:
            simper_rs.sequence_logps(logits, labels, backend="rust")
        assert str(raised.value).startswith(
            "backend='rust': the fused CUDA kernel failed its self-check on cpu (cpu (simulated)) for bfloat16"
        )
        assert warned[0].split("; bfloat16 tensors")[0].removeprefix("simper_rs: ") in str(raised.value)
        # Another dtype is its own decision: float32 passes (the kernel is wrong for bfloat16 only).
        _, warned32 = warnings_of(lambda: simper_rs.sequence_logps(logits.float(), labels))
        assert warned32 == [] and ops.resolve_backend("auto", logits.float()) == "rust"
        assert ops.resolve_backend("auto", logits.half()) == "rust"
    # Outside the seam the CPU is the CPU again.
    assert not cuda_check.is_simulated(torch.device("cpu"))
    assert ops.resolve_backend("auto", logits) == "rust"


def test_the_check_runs_once_per_device_and_dtype():
    kernel = TorchKernel()
    logits, labels = batch(torch.float16)
    with cuda_check.simulated_device_for_testing(kernel):
        _, warned = warnings_of(lambda: [simper_rs.sequence_logps(logits, labels) for _ in range(3)])
        assert warned == [] and kernel.calls["load"] == 1
        once = dict(kernel.calls)
        simper_rs.token_logps(logits, labels)
        assert kernel.calls == once
        simper_rs.token_logps(logits.float(), labels)  # float32: a second check
        assert kernel.calls["load"] == 2 and kernel.calls["forward"] == 2 * once["forward"]


@pytest.mark.parametrize(
    "kernel, what", [(FailsToCompile(), "did not compile or load"), (FailsToLaunch(), "backward kernel failed")]
)
def test_compile_and_launch_failures_fall_back_with_one_warning(kernel, what):
    logits, labels = batch(torch.float32)
    with cuda_check.simulated_device_for_testing(kernel):
        outs, warned = warnings_of(lambda: [simper_rs.sequence_logps(logits, labels) for _ in range(2)])
        assert len(warned) == 1 and what in warned[0] and "on cpu" in warned[0] and "for float32" in warned[0]
        assert torch.equal(outs[0], simper_rs.sequence_logps(logits, labels, backend="torch"))
        assert kernel.calls["load"] == 1  # decided once, not retried on every call


def test_the_check_can_be_switched_off(monkeypatch):
    monkeypatch.setenv(cuda_check.CHECK_ENV, "off")
    kernel = WrongLogProb()
    logits, labels = batch(torch.bfloat16)
    with cuda_check.simulated_device_for_testing(kernel):
        _, warned = warnings_of(lambda: simper_rs.sequence_logps(logits, labels))
        assert warned == [] and kernel.calls["load"] == 0
        assert ops.resolve_backend("auto", logits) == "rust"
        # An explicit request still runs it, and what it finds is used once the switch is back on.
        results = simper_rs.cuda_self_check("cpu", dtypes=[torch.bfloat16])
        assert [r.passed for r in results] == [False]
        monkeypatch.delenv(cuda_check.CHECK_ENV)
        picked, warned = warnings_of(lambda: ops.resolve_backend("auto", logits))
        assert picked == "torch" and len(warned) == 1


def test_fused_linear_paths_get_no_stream_when_the_check_fails():
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(4, 9, 16, generator=g).requires_grad_(True)
    weight = (torch.randn(301, 16, generator=g) * 0.3).requires_grad_(True)
    labels = torch.randint(0, 301, (4, 9), generator=g)
    labels[:, :3] = -100
    with cuda_check.simulated_device_for_testing(WrongLogProb(dtypes=(torch.float32,))):
        out, warned = warnings_of(lambda: simper_rs.SimPERLoss()(hidden=hidden, lm_head_weight=weight, labels=labels))
        assert len(warned) == 1 and f"{FAILED} on cpu (cpu (simulated)) for float32" in warned[0]
        assert ops.linear_cuda_stream(hidden) is None
        gh, gw = torch.autograd.grad(out.loss, (hidden, weight))
        tok = simper_rs.linear_sequence_logps(hidden, weight, labels)
    h64, w64 = hidden.detach().double().requires_grad_(True), weight.detach().double().requires_grad_(True)
    logps = ref.sequence_logps(h64 @ w64.T, labels)
    want = ref.simper(logps[:2], logps[2:])
    wh, ww = torch.autograd.grad(want, (h64, w64))
    torch.testing.assert_close(out.loss.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gh.double(), wh, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw.double(), ww, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(tok.double(), logps.detach(), rtol=1e-5, atol=1e-6)


def test_fused_linear_paths_get_a_stream_when_the_check_passes():
    hidden = torch.randn(2, 5, 8)
    with cuda_check.simulated_device_for_testing(TorchKernel()):
        assert ops.linear_cuda_stream(hidden) is not None
        assert ops.linear_cuda_stream(hidden.double()) is None  # float64 never goes to the kernel
    assert ops.linear_cuda_stream(hidden) is None  # a CPU tensor, outside the seam


def test_concurrent_first_uses_run_one_check():
    class Slow(TorchKernel):
        def load(self, device):
            time.sleep(0.05)
            super().load(device)

    kernel = Slow()
    logits, labels = batch(torch.float32)
    picked = []
    with cuda_check.simulated_device_for_testing(kernel):
        threads = [
            threading.Thread(target=lambda: picked.append(ops.resolve_backend("auto", logits))) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert picked == ["rust"] * 4 and kernel.calls["load"] == 1


def test_the_check_runs_the_same_under_no_grad_inference_mode_and_autocast():
    logits, labels = batch(torch.float32)
    for context in (torch.no_grad, torch.inference_mode, lambda: torch.autocast("cpu", dtype=torch.bfloat16)):
        kernel = TorchKernel()
        with cuda_check.simulated_device_for_testing(kernel), context():
            _, warned = warnings_of(lambda: simper_rs.sequence_logps(logits, labels))
            assert warned == [] and ops.resolve_backend("auto", logits) == "rust", context


# -- cuda_self_check() and simper-rs doctor


def test_cuda_self_check_reports_every_dtype_and_records_the_verdicts():
    kernel = WrongLogProb(dtypes=(torch.float16,))
    with cuda_check.simulated_device_for_testing(kernel):
        results = simper_rs.cuda_self_check()
        assert [(r.device, r.dtype, r.passed) for r in results if r.device == "cpu"] == [
            ("cpu", "float32", True),
            ("cpu", "bfloat16", True),
            ("cpu", "float16", False),
        ]
        failed = [r for r in results if r.device == "cpu" and not r.passed][0]
        assert "forward: log-probs: " in failed.failure and all(r.seconds > 0 for r in results)
        calls = dict(kernel.calls)
        logits, labels = batch(torch.float16)
        _, warned = warnings_of(lambda: simper_rs.sequence_logps(logits, labels))
        assert kernel.calls == calls  # the verdict was recorded: no second run
        assert len(warned) == 1 and failed.message() in warned[0]


def test_cuda_self_check_refuses_bad_arguments():
    with pytest.raises(ValueError, match="dtypes must be among"):
        simper_rs.cuda_self_check("cpu", dtypes=[torch.float64])
    with pytest.raises(ValueError, match="device must be a CUDA device, got cpu"):
        simper_rs.cuda_self_check("cpu")
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match=rf"device cuda:{visible} is not a visible CUDA device \({visible} visible\)"):
        simper_rs.cuda_self_check(visible)


def test_without_a_gpu_there_is_nothing_to_check():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert simper_rs.cuda_self_check() == []


def test_doctor_prints_the_self_check_per_dtype(capsys):
    with cuda_check.simulated_device_for_testing(WrongLogProb(dtypes=(torch.bfloat16,))):
        status = doctor.run()
    out = capsys.readouterr().out
    assert status == 1 and "problems: " in out and "self-check" in out.split("problems: ")[1]
    lines = [line for line in out.splitlines() if "self-check" in line and " cpu " in line]
    assert len(lines) == 3, out
    assert lines[0].startswith("   self-check") and re.search(r"cpu float32  passed \(\d+\.\d+ m?s\)$", lines[0]), (
        lines[0]
    )
    assert lines[1].startswith("!! self-check") and re.search(
        r"cpu bfloat16 FAILED \(\d+\.\d+ m?s\): contiguous rows", lines[1]
    )
    assert "forward: log-probs: " in lines[1]
    assert "libtorch ops are used instead" in lines[1]
    with cuda_check.simulated_device_for_testing(TorchKernel()):
        status = doctor.run()
    out = capsys.readouterr().out
    assert (status == 0) == (not torch.cuda.is_available() or doctor.report()[1]) and out.count("passed (") >= 3


def test_once_passed_the_decision_compiles_into_one_graph():
    # After the first use, the choice is a dictionary lookup that torch.compile traces: no
    # graph break per call on a GPU whose kernel passed.
    logits, labels = batch(torch.float32)
    with cuda_check.simulated_device_for_testing(TorchKernel()):
        want = simper_rs.token_logps(logits, labels)
        compiled = torch.compile(lambda x: simper_rs.token_logps(x, labels), backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(logits), want)
