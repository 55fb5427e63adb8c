"""The fused CPU kernel as a torch op: autograd registration, torch.compile, stats, threads, fork."""

import multiprocessing as mp
import os
import subprocess
import sys
import threading

import pytest
import torch

import reference as ref
import simper_rs
from simper_rs import _core
from simper_rs.ops import _fused_token_logps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shift", [True, False])
def test_opcheck(dtype, shift):
    logits, labels = ref.make_batch(pairs=2, seq_len=5, vocab=9, dtype=dtype)
    for with_stats in (False, True):
        torch.library.opcheck(_fused_token_logps, (logits, labels, -100, shift, with_stats))


def test_torch_compile_of_simper_loss_matches_eager():
    logits, labels = ref.make_batch(pairs=2, seq_len=6, vocab=13)
    loss_fn = simper_rs.SimPERLoss(return_stats=False)

    def step(x):
        return loss_fn(x, labels).loss

    eager = step(logits)
    (g_eager,) = torch.autograd.grad(eager, logits)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=False)
    out = compiled(logits)
    (g_compiled,) = torch.autograd.grad(out, logits)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(g_compiled, g_eager)


def test_stats_match_reference():
    logits, labels = ref.make_batch(pairs=3, seq_len=8, vocab=6, seed=12, requires_grad=False)
    # Make some argmax hits certain.
    logits[0, 2, labels[0, 3].clamp(min=0)] += 20
    shifted, lab = logits[:, :-1].double(), labels[:, 1:]
    mask = lab != -100
    logp = torch.log_softmax(shifted, -1)
    entropy = -(logp.exp() * logp).sum(-1)[mask].mean()
    accuracy = (shifted.argmax(-1) == lab)[mask].double().mean()
    for backend in ("rust", "torch"):
        _, stats = simper_rs.ops.sequence_logps_with_stats(logits, labels, backend=backend)
        assert stats["entropy"] == pytest.approx(float(entropy), rel=1e-5)
        assert stats["mean_token_accuracy"] == pytest.approx(float(accuracy))


def test_module_metrics_include_stats():
    logits, labels = ref.make_batch(pairs=2)
    metrics = simper_rs.SimPERLoss()(logits, labels).metrics
    assert {"entropy", "mean_token_accuracy"} <= metrics.keys()
    assert "entropy" not in simper_rs.SimPERLoss(return_stats=False)(logits, labels).metrics


def test_backend_validation():
    logits, labels = ref.make_batch(pairs=1)
    with pytest.raises(ValueError, match="backend must be one of"):
        simper_rs.sequence_logps(logits, labels, backend="cuda")
    with pytest.raises(ValueError, match="backend='rust' runs on CPU and CUDA tensors"):
        simper_rs.token_logps(logits.to("meta"), labels.to("meta"), backend="rust")


def test_backward_writes_a_fresh_gradient_and_leaves_logits_alone():
    logits, labels = ref.make_batch(pairs=2)
    before = logits.detach().clone()
    simper_rs.sequence_logps(logits, labels, backend="rust").sum().backward()
    assert torch.equal(logits.detach(), before)
    assert logits.grad.data_ptr() != logits.data_ptr()


def test_threads_give_the_same_results_as_serial_calls():
    logits, labels = ref.make_batch(pairs=4, seq_len=16, vocab=257, seed=3, requires_grad=False)
    serial = simper_rs.sequence_logps(logits, labels)
    results = [None] * 4

    def work(i):
        results[i] = simper_rs.sequence_logps(logits, labels)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        assert torch.equal(r, serial)


def _child(queue):
    logits, labels = ref.make_batch(pairs=2, seq_len=6, vocab=50, seed=1, requires_grad=False)
    queue.put(simper_rs.sequence_logps(logits, labels).tolist())


def test_kernel_works_in_a_process_forked_after_use():
    logits, labels = ref.make_batch(pairs=2, seq_len=6, vocab=50, seed=1, requires_grad=False)
    expected = simper_rs.sequence_logps(logits, labels).tolist()  # starts the thread pool here
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue,))
    proc.start()
    got = queue.get(timeout=60)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert got == pytest.approx(expected)


def test_thread_count_is_reported():
    assert _core.kernel_threads() >= 1


def test_thread_count_follows_the_environment_variable():
    code = "import simper_rs; print(simper_rs._core.kernel_threads())"
    env = {**os.environ, "SIMPER_RS_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "1", out.stderr
