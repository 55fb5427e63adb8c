"""The CUDA kernel against the plain-PyTorch reference, on a GPU (skipped without CUDA).

Covers every dtype, masks, the causal shift, non-contiguous logits, real vocabulary sizes,
offsets past 2^31, a non-default stream, CUDA graph capture, determinism, memory, the fused-linear
op, the fallback when the kernel is disabled, and the kernel's self-check (simper_rs.cuda_check):
passing on every dtype, a planted fault caught on the GPU, the fallback that follows, and a
first use inside graph capture refused. `bash benchmarks/gpu_check.sh` runs it.
"""

import os
import warnings

import pytest
import torch

import reference as ref
import simper_rs
from simper_rs import _core, _cuda, cuda_check

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Loose enough for one rounding of the gradient to the logits' dtype, tight for float32.
TOL = {
    torch.float32: dict(rtol=2e-5, atol=2e-6),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=1e-6),
}


@pytest.fixture(scope="module")
def device():
    dev = torch.device("cuda", torch.cuda.current_device())
    assert _cuda.kernel_unavailable_reason(dev) is None, _core.cuda_kernel_status(dev.index)
    return dev


def make(batch, seq_len, vocab, dtype, device, seed=0, ignore_frac=0.2):
    g = torch.Generator(device="cpu").manual_seed(seed)
    logits = (torch.randn(batch, seq_len, vocab, generator=g) * 3).to(device=device, dtype=dtype)
    labels = torch.randint(0, vocab, (batch, seq_len), generator=g)
    labels[torch.rand(batch, seq_len, generator=g) < ignore_frac] = -100
    labels[:, :2] = -100  # a prompt
    return logits, labels.to(device)


def reference_grad(logits, labels, shift, upstream):
    leaf = logits.detach().float().requires_grad_(True)
    tok = ref.token_logps(leaf, labels, shift=shift)
    (tok * upstream).sum().backward()
    return tok.detach(), leaf.grad


def check_against_reference(logits, labels, shift=True):
    leaf = logits.detach().requires_grad_(True)
    tok = simper_rs.token_logps(leaf, labels, shift=shift)
    upstream = torch.randn_like(tok)
    (tok * upstream).sum().backward()
    want_tok, want_grad = reference_grad(logits, labels, shift, upstream)
    torch.testing.assert_close(tok, want_tok, rtol=1e-5, atol=2e-5)
    assert leaf.grad.dtype == logits.dtype and leaf.grad.shape == logits.shape
    torch.testing.assert_close(leaf.grad.float(), want_grad.to(logits.dtype).float(), **TOL[logits.dtype])


def test_kernel_is_the_auto_backend(device):
    logits, labels = make(2, 9, 50, torch.bfloat16, device)
    assert simper_rs.ops.resolve_backend("auto", logits) == "rust"
    assert simper_rs.ops.resolve_backend("auto", logits.double()) == "torch"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("vocab", [1, 7, 1000, 32003])  # odd sizes: rows start unaligned
def test_values_and_gradients(device, dtype, shift, vocab):
    logits, labels = make(3, 17, vocab, dtype, device, seed=vocab)
    check_against_reference(logits, labels, shift)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_logits(device, dtype):
    # [T, B, V] transposed to [B, T, V]: batch stride V, position stride B·V.
    base, labels = make(5, 11, 3001, dtype, device)
    time_major = base.transpose(0, 1).contiguous().transpose(0, 1)
    assert not time_major.is_contiguous()
    check_against_reference(time_major, labels)
    # A vocabulary axis with a stride (copied once by the op) and a sliced sequence.
    wide = torch.zeros(5, 11, 2 * 3001, device=device, dtype=dtype)
    wide[..., ::2] = base
    check_against_reference(wide[..., ::2], labels)
    check_against_reference(base[:, 2:], labels[:, 2:])


@pytest.mark.parametrize("dtype", DTYPES)
def test_masks_fully_ignored_rows_and_statistics(device, dtype):
    logits, labels = make(4, 33, 5003, dtype, device, ignore_frac=0.5)
    labels[1] = -100  # a row with nothing to score
    check_against_reference(logits, labels)
    kept = labels.clone()
    kept[1, -1] = 3
    out, stats = simper_rs.sequence_logps_with_stats(logits, kept)
    torch.testing.assert_close(out, ref.sequence_logps(logits.float(), kept), rtol=1e-5, atol=2e-5)
    cpu_out, cpu_stats = simper_rs.sequence_logps_with_stats(logits.cpu(), kept.cpu())
    torch.testing.assert_close(out.cpu(), cpu_out, rtol=1e-5, atol=2e-5)
    assert stats["mean_token_accuracy"] == pytest.approx(cpu_stats["mean_token_accuracy"])
    assert stats["entropy"] == pytest.approx(cpu_stats["entropy"], rel=1e-5)


def test_custom_ignore_index_and_extreme_values(device):
    logits, labels = make(2, 9, 777, torch.float32, device)
    labels[labels == -100] = 5
    tok = simper_rs.token_logps(logits, labels, ignore_index=5)
    torch.testing.assert_close(tok, ref.token_logps(logits, labels, ignore_index=5), rtol=1e-5, atol=2e-5)
    big = logits * 3e3  # rows at ±1e4: the online max must keep exp in range
    torch.testing.assert_close(
        simper_rs.token_logps(big, labels, ignore_index=5),
        ref.token_logps(big, labels, ignore_index=5),
        rtol=1e-5,
        atol=1e-2,
    )
    masked = logits.clone()
    masked[..., 100:] = float("-inf")  # a masked-out vocabulary tail
    labels_in = labels % 100
    torch.testing.assert_close(
        simper_rs.token_logps(masked, labels_in, ignore_index=5),
        ref.token_logps(masked, labels_in, ignore_index=5),
        rtol=1e-5,
        atol=2e-5,
    )


@pytest.mark.parametrize("vocab", [128256, 256000])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_real_vocabulary_sizes(device, vocab, dtype):
    logits, labels = make(2, 40, vocab, dtype, device)
    check_against_reference(logits, labels)


def test_offsets_past_2_pow_31(device):
    # bfloat16 [1, 16800, 128256]: 2.15e9 elements, so the last rows sit past 2^31.
    vocab, rows = 128256, 16800
    assert rows * vocab > 2**31
    logits = torch.empty(1, rows + 1, vocab, device=device, dtype=torch.bfloat16).normal_(0, 3)
    labels = torch.randint(0, vocab, (1, rows + 1), device=device)
    leaf = logits.requires_grad_(True)
    tok = simper_rs.token_logps(leaf, labels)
    tok[:, -64:].sum().backward()
    tail_logits, tail_labels = logits.detach()[:, -65:], labels[:, -65:]
    want_tok, want_grad = reference_grad(tail_logits, tail_labels, True, torch.ones(1, 64, device=device))
    torch.testing.assert_close(tok[:, -64:].detach(), want_tok, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(leaf.grad[:, -65:].float(), want_grad.bfloat16().float(), **TOL[torch.bfloat16])
    assert leaf.grad[:, :-65].abs().max().item() == 0


def test_runs_on_the_current_non_default_stream(device):
    logits, labels = make(4, 65, 32000, torch.bfloat16, device)
    target = torch.zeros_like(logits)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        # The copy runs late on `side`; a kernel on any other stream would read zeros.
        torch.cuda._sleep(50_000_000)
        target.copy_(logits)
        leaf = target.requires_grad_(True)
        tok = simper_rs.token_logps(leaf, labels)
        tok.sum().backward()
    side.synchronize()
    want_tok, want_grad = reference_grad(logits, labels, True, torch.ones_like(tok))
    torch.testing.assert_close(tok.detach(), want_tok, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(leaf.grad.float(), want_grad.bfloat16().float(), **TOL[torch.bfloat16])


def test_cuda_graph_capture_and_replay(device):
    logits, labels = make(2, 33, 4099, torch.bfloat16, device)
    static_logits = logits.clone()
    op, op_backward = torch.ops.simper_rs.fused_token_logps, torch.ops.simper_rs.fused_token_logps_backward
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm up (and compile) outside the capture
        op(static_logits, labels, -100, True, False)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tok, lse, _, _ = op(static_logits, labels, -100, True, False)
        grad = op_backward(torch.ones_like(tok), static_logits, labels, lse, -100, True)
    for seed in (1, 2):
        fresh, _ = make(2, 33, 4099, torch.bfloat16, device, seed=seed)
        static_logits.copy_(fresh)
        graph.replay()
        want_tok, want_grad = reference_grad(fresh, labels, True, torch.ones_like(tok))
        torch.testing.assert_close(tok, want_tok, rtol=1e-5, atol=2e-5)
        torch.testing.assert_close(grad.float(), want_grad.bfloat16().float(), **TOL[torch.bfloat16])


def test_out_of_range_label_is_refused_in_eager_mode(device):
    logits, labels = make(2, 9, 50, torch.float32, device)
    labels[1, 4] = 50
    with pytest.raises(ValueError, match=r"labels\[1, 4\] = 50 is outside the vocabulary"):
        simper_rs.token_logps(logits, labels)


def test_bit_identical_across_runs(device):
    logits, labels = make(4, 129, 32003, torch.bfloat16, device)
    runs = []
    for _ in range(3):
        leaf = logits.detach().requires_grad_(True)
        out, stats = simper_rs.sequence_logps_with_stats(leaf, labels.clamp(min=0))
        out.sum().backward()
        runs.append((out.detach(), leaf.grad, stats))
    for out, grad, stats in runs[1:]:
        assert torch.equal(out, runs[0][0]) and torch.equal(grad, runs[0][1]) and stats == runs[0][2]


def test_forward_allocates_o_n_and_backward_only_the_gradient(device):
    logits, labels = make(8, 257, 32000, torch.bfloat16, device)
    leaf = logits.requires_grad_(True)
    torch.cuda.synchronize()
    rows = 8 * 256
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    tok = simper_rs.token_logps(leaf, labels)
    forward_peak = torch.cuda.max_memory_allocated(device) - base
    assert forward_peak <= 8 * rows * 4 + (1 << 20), forward_peak  # a few [N] float32 vectors
    loss = tok.sum()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    loss.backward()
    backward_peak = torch.cuda.max_memory_allocated(device) - base
    grad_bytes = logits.numel() * logits.element_size()
    assert backward_peak <= grad_bytes + (1 << 20), (backward_peak, grad_bytes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_linear_on_cuda(device, dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(3, 21, 64, generator=g).to(device, dtype).requires_grad_(True)
    weight = (torch.randn(5003, 64, generator=g) * 0.2).to(device, dtype).requires_grad_(True)
    labels = torch.randint(0, 5003, (3, 21), generator=g).to(device)
    labels[:, :3] = -100
    got = simper_rs.linear_token_logps(hidden, weight, labels, chunk_size=7)
    upstream = torch.randn_like(got)
    gh, gw = torch.autograd.grad((got * upstream).sum(), (hidden, weight))
    h32, w32 = hidden.detach().float().requires_grad_(True), weight.detach().float().requires_grad_(True)
    want = ref.token_logps(h32 @ w32.T, labels)
    wh, ww = torch.autograd.grad((want * upstream).sum(), (h32, w32))
    loose = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got, want, **loose)
    torch.testing.assert_close(gh.float(), wh, **loose)
    torch.testing.assert_close(gw.float(), ww, **loose)
    assert simper_rs.ops.linear_cuda_stream(hidden) is not None  # the kernel took the chunks


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("estimator", [None, "cpc"])
def test_fused_linear_loss_gradients_in_forward_on_cuda(device, dtype, estimator):
    """SimPERLoss / DILLoss from hidden states (gradients taken in the forward, chunks of whole
    sequences, or pairs for cpc) against the float32 materialised reference."""
    g = torch.Generator(device="cpu").manual_seed(1)
    hidden = torch.randn(4, 33, 64, generator=g).to(device, dtype).requires_grad_(True)
    weight = (torch.randn(5003, 64, generator=g) * 0.2).to(device, dtype).requires_grad_(True)
    labels = torch.randint(0, 5003, (4, 33), generator=g).to(device)
    labels[:, :5] = -100
    loss_fn = simper_rs.SimPERLoss() if estimator is None else simper_rs.DILLoss(estimator)
    out = loss_fn(hidden=hidden, lm_head_weight=weight, labels=labels, chunk_size=16)
    gh, gw = torch.autograd.grad(out.loss, (hidden, weight))
    h32, w32 = hidden.detach().float().requires_grad_(True), weight.detach().float().requires_grad_(True)
    logps = ref.sequence_logps(h32 @ w32.T, labels)
    want = ref.simper(logps[:2], logps[2:]) if estimator is None else ref.dil(logps[:2], logps[2:], estimator=estimator)
    wh, ww = torch.autograd.grad(want, (h32, w32))
    loose = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.loss, want, **loose)
    torch.testing.assert_close(gh.float(), wh, **loose)
    torch.testing.assert_close(gw.float(), ww, **loose)


def test_fallback_warns_once_and_matches(device, monkeypatch):
    logits, labels = make(2, 9, 300, torch.float32, device)
    saved = dict(_cuda._status)
    monkeypatch.setenv(_cuda.DISABLE_ENV, "1")
    _cuda._status.clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = simper_rs.token_logps(logits, labels)
            second = simper_rs.token_logps(logits, labels)
        relevant = [w for w in caught if "fused CUDA kernel cannot run" in str(w.message)]
        assert len(relevant) == 1 and "SIMPER_RS_DISABLE_CUDA_KERNEL" in str(relevant[0].message)
        assert simper_rs.ops.resolve_backend("auto", logits) == "torch"
        with pytest.raises(RuntimeError, match="backend='rust': the CUDA kernel cannot run"):
            simper_rs.token_logps(logits, labels, backend="rust")
        torch.testing.assert_close(first, ref.token_logps(logits, labels), rtol=1e-5, atol=2e-5)
        assert torch.equal(first, second)
    finally:
        _cuda._status.clear()
        _cuda._status.update(saved)
        os.environ.pop(_cuda.DISABLE_ENV, None)


def test_losses_train_end_to_end_on_cuda(device):
    logits, labels = make(4, 17, 1000, torch.bfloat16, device, ignore_frac=0.0)
    leaf = logits.requires_grad_(True)
    out = simper_rs.SimPERLoss()(leaf, labels)
    out.loss.backward()
    assert torch.isfinite(out.loss) and leaf.grad is not None and torch.isfinite(leaf.grad.float()).all()


# -- the kernel's self-check (simper_rs.cuda_check) on the real kernel


def test_the_kernel_passes_its_self_check_on_every_dtype(device):
    results = simper_rs.cuda_self_check(device)
    assert [r.dtype for r in results] == ["float32", "bfloat16", "float16"]
    for result in results:
        assert result.passed, result.failure
        assert result.device == str(device) and result.device_name == torch.cuda.get_device_name(device)
    assert all(cuda_check.failure(device, dtype) is None for dtype in DTYPES)


class _OffByOne(cuda_check.CudaKernel):
    """The real kernel with one token log-prob planted wrong, on the GPU."""

    def forward(self, logits, labels, ignore_index, shift, with_stats, **options):
        logps, lse, entropy, correct = super().forward(logits, labels, ignore_index, shift, with_stats, **options)
        logps[-1, 1] += 1e-2
        return logps, lse, entropy, correct


def test_the_in_place_backward_equals_the_fresh_one(device):
    for dtype in DTYPES:
        logits, labels = make(1, 9, 4099, dtype, device)
        rows, targets = logits[0].clone(), labels[0]
        tok, lse, _, _ = torch.ops.simper_rs.fused_token_logps(rows[None], targets[None], -100, False, False)
        upstream = torch.randn_like(tok)
        fresh = torch.ops.simper_rs.fused_token_logps_backward(upstream, rows[None], targets[None], lse, -100, False)[0]
        _core.cuda_backward_in_place(
            rows, targets, upstream[0], lse[0], -100, torch.cuda.current_stream(device).cuda_stream
        )
        assert torch.equal(rows, fresh)


def test_a_planted_fault_fails_on_the_gpu_and_auto_falls_back(device):
    result = cuda_check.run_self_check(_OffByOne(), device, torch.bfloat16)
    assert (
        not result.passed
        and "forward: log-probs: " in result.failure
        and " at [1, 1], the libtorch path gives " in result.failure
    )
    logits, labels = make(2, 9, 300, torch.bfloat16, device)
    with cuda_check.simulated_device_for_testing(_OffByOne(), str(device)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = simper_rs.token_logps(logits, labels)
            simper_rs.token_logps(logits, labels)
        relevant = [str(w.message) for w in caught if "failed its self-check" in str(w.message)]
        assert len(relevant) == 1 and f"on {device}" in relevant[0] and "for bfloat16" in relevant[0]
        assert torch.equal(first, simper_rs.token_logps(logits, labels, backend="torch"))
        assert simper_rs.ops.linear_cuda_stream(logits) is None
        with pytest.raises(RuntimeError, match="backend='rust': the fused CUDA kernel failed its self-check"):
            simper_rs.token_logps(logits, labels, backend="rust")
        assert simper_rs.ops.resolve_backend("auto", logits.float()) == "rust"  # float32 passed
    assert simper_rs.ops.resolve_backend("auto", logits) == "rust"  # the real kernel's verdict again


def test_a_first_use_inside_graph_capture_is_refused_clearly(device):
    logits, labels = make(2, 9, 300, torch.float32, device)
    with cuda_check.fresh_verdicts_for_testing():
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        graph = torch.cuda.CUDAGraph()
        with pytest.raises(RuntimeError, match="cannot run during CUDA graph capture"):
            with torch.cuda.graph(graph, stream=side):
                simper_rs.token_logps(logits, labels)
        assert simper_rs.ops.resolve_backend("auto", logits) == "rust"  # outside the capture it runs and passes
