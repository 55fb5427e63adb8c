"""Loss and log-probs from hidden states + lm_head weight: simper_rs's fused-linear path against
its peers, side by side in one run, each method in its own process.

Loss table (``--table loss``), a SimPER-style preference loss on a [chosen; rejected] batch:
  materialised        logits = hidden @ W.T, then simper_rs.SimPERLoss()(logits, labels)
  simper_rs_fused     simper_rs.SimPERLoss()(hidden=..., lm_head_weight=W, labels=...): the
                      gradient computed in the forward, chunk by chunk, no logits kept
  liger_simpo_eager   Liger-Kernel's LigerFusedLinearSimPOLoss(compiled=False)
  liger_simpo_compiled  the same with compiled=True (torch.compile of its per-chunk step)
  gemm_floor          only the three matmuls every lm_head loss needs (logits, grad hidden,
                      grad W), no softmax: the time floor measured on this machine

Log-prob table (``--table logps``), per-sequence average log-probs, forward + backward:
  materialised        logits = hidden @ W.T, then log_softmax + gather
  compiled            torch.compile of the same (matmul + log_softmax + gather)
  simper_rs_linear    simper_rs.linear_sequence_logps (logits recomputed in backward)
  trl_chunked         TRL's ChunkedLogProbFunction (trl.kernels), log-probs only
  gemm_floor          as above

Liger differs from SimPER in the pair loss only: -logsigmoid(beta (l_w - l_l) - gamma)
(beta 0.1, gamma 0.5, no NLL term) instead of -exp(l_w) + exp(l_l), on the same per-sequence
average log-probs; the cost of that scalar formula is nothing next to the matmuls. Liger and TRL
take targets aligned with the hidden states, so they get hidden[:, :-1] and labels[:, 1:] (copies
made before the measurement); simper_rs shifts itself.

"Extra peak" is the resident peak of one forward+backward above the process's level before it,
minus the gradients of hidden and W, which every method produces (see simper_rs.bench.PeakRSS).
Rows are interleaved over ``--rounds`` (each round runs every method once, in a fresh process)
and the median over rounds is reported, with the range, since the machine is shared and noisy.
A peer that is not installed gives a "skipped" row.

    python benchmarks/fused_linear.py --table all --rounds 3   # the tables of RESULTS.md
    python benchmarks/fused_linear.py --quick                  # small sizes, one round: a smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from simper_rs.bench import PeakRSS, baseline_log_softmax, fmt_bytes, median_seconds, run_isolated

LOSS_METHODS = ["materialised", "simper_rs_fused", "liger_simpo_eager", "liger_simpo_compiled", "gemm_floor"]
LOGPS_METHODS = ["materialised", "compiled", "simper_rs_linear", "trl_chunked", "gemm_floor"]
# (pairs' sequences B, length T, hidden H, vocabulary V): the size of issue 16's target.
FULL = (8, 256, 1024, 32000)
QUICK = (4, 64, 128, 2048)


class Skipped(Exception):
    """A peer that cannot run here (not installed, wrong Python): reported as a row, not a failure."""


def _liger_simpo():
    if sys.version_info < (3, 10):
        raise Skipped("liger-kernel needs Python >= 3.10")
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearSimPOLoss
    except ImportError as e:
        raise Skipped(f"liger-kernel not importable ({e}); pip install 'liger-kernel>=0.8.5'") from None
    return LigerFusedLinearSimPOLoss


def _trl_chunked():
    try:
        from trl.kernels import ChunkedLogProbFunction
    except ImportError as e:
        raise Skipped(f"trl.kernels.ChunkedLogProbFunction not importable ({e}); pip install 'trl>=1.16,<1.17'") from None
    return ChunkedLogProbFunction


def build(args: dict):
    """The inputs and a forward function returning the scalar to backpropagate."""
    import torch

    import simper_rs

    b, t, h, v = args["size"]
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(b, t, h, generator=g).requires_grad_()
    weight = (torch.randn(v, h, generator=g) / h**0.5).requires_grad_()
    labels = torch.randint(0, v, (b, t), generator=g)
    if args["padding"]:
        labels[:, : t // 8] = -100  # a masked prompt, as in real preference batches
        labels[b // 2 :, -t // 8 :] = -100  # and padding after the (shorter) rejected answers
    # Liger and TRL score position i against target i: the shift is done here, outside the measurement.
    h_shift = hidden.detach()[:, :-1].contiguous().requires_grad_()
    y_shift = labels[:, 1:].contiguous()
    table, method = args["table"], args["method"]

    if method == "gemm_floor":
        grad_logits = torch.randn(b * (t - 1), v, generator=g)
        flat = h_shift.detach().reshape(-1, h)
        w = weight.detach()

        def floor():
            logits = flat @ w.T
            return logits, grad_logits @ w, grad_logits.T @ flat

        return floor, (h_shift, weight), False
    if table == "loss":
        if method == "materialised":
            loss = simper_rs.SimPERLoss()
            return lambda: loss(hidden @ weight.T, labels).loss, (hidden, weight), True
        if method == "simper_rs_fused":
            loss = simper_rs.SimPERLoss()
            return lambda: loss(hidden=hidden, lm_head_weight=weight, labels=labels).loss, (hidden, weight), True
        if method in ("liger_simpo_eager", "liger_simpo_compiled"):
            cls = _liger_simpo()
            loss = cls(compute_nll_loss=False, compiled=method.endswith("compiled"))
            return lambda: loss(weight, h_shift, y_shift)[0], (h_shift, weight), True
    else:
        if method == "materialised":
            return lambda: baseline_log_softmax(hidden @ weight.T, labels).sum(), (hidden, weight), True
        if method == "compiled":
            compiled = torch.compile(lambda x, w, y: baseline_log_softmax(x @ w.T, y))
            return lambda: compiled(hidden, weight, labels).sum(), (hidden, weight), True
        if method == "simper_rs_linear":
            return lambda: simper_rs.linear_sequence_logps(hidden, weight, labels).sum(), (hidden, weight), True
        if method == "trl_chunked":
            fn = _trl_chunked()
            flat, targets, mask = h_shift.reshape(-1, h), y_shift.clamp(min=0).reshape(-1), y_shift != -100

            def trl_logps():
                # TRL 1.16's own vocabulary chunk (trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE), log-probs only.
                tokens = fn.apply(flat, weight, None, targets, 1.0, 32768, None, 1.0, ())[0].view(mask.shape)
                return ((tokens * mask).sum(-1) / mask.sum(-1)).sum()

            return trl_logps, (h_shift, weight), True
    raise ValueError(f"unknown method {method!r} for table {table!r}")


def child(args: dict) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    try:
        fn, leaves, differentiable = build(args)
    except Skipped as e:
        return {"skipped": str(e)}

    def step():
        out = fn()
        if differentiable:
            out.backward()
        for leaf in leaves:
            leaf.grad = None

    step()  # warm-up (and compilation for the compiled rows)
    seconds = median_seconds(step, args["repeats"])
    with PeakRSS() as peak:
        out = fn()
        if differentiable:
            out.backward()
    grads = sum(x.grad.numel() * x.grad.element_size() for x in leaves if x.grad is not None)
    return {"seconds": seconds, "extra_peak": peak.peak_bytes - grads, "measured_memory": differentiable}


def run_table(table: str, size, rounds: int, repeats: int, padding: bool) -> None:
    methods = LOSS_METHODS if table == "loss" else LOGPS_METHODS
    results = {m: [] for m in methods}
    for _ in range(rounds):  # interleaved, so that a noisy stretch of the machine hits every row
        for m in methods:
            r = run_isolated(__file__, {"table": table, "method": m, "size": size, "repeats": repeats, "padding": padding})
            results[m].append(r)
    b, t, h, v = size
    what = "SimPER-style loss" if table == "loss" else "per-sequence log-probs"
    print(f"\n{what}, B={b} T={t} H={h} V={v} float32, {os.cpu_count()} CPU threads, "
          f"forward+backward median of {repeats} steps per process, median over {rounds} rounds (range)\n")
    print("| method | fwd+bwd | range | time vs materialised | extra peak | peak vs materialised |")
    print("| --- | --- | --- | --- | --- | --- |")
    summary = {}
    for m in methods:
        rs = results[m]
        bad = next((r for r in rs if "skipped" in r or "error" in r), None)
        if bad is not None:
            print(f"| {m} | {'skipped: ' + bad['skipped'] if 'skipped' in bad else 'failed: ' + bad['error']} | | | | |")
            continue
        secs = [r["seconds"] for r in rs]
        summary[m] = (statistics.median(secs), statistics.median(r["extra_peak"] for r in rs), rs[0]["measured_memory"])
    base = summary.get("materialised")
    for m in methods:
        if m not in summary:
            continue
        s, p, measured = summary[m]
        secs = [r["seconds"] for r in results[m]]
        ratio = f"{s / base[0]:.2f}x" if base else ""
        mem = fmt_bytes(p) if measured else "n/a (time floor)"
        mem_ratio = f"{p / base[1]:.2f}x" if base and measured and base[1] > 0 else ""
        print(f"| {m} | {s:.3f} s | {min(secs):.3f}-{max(secs):.3f} s | {ratio} | {mem} | {mem_ratio} |", flush=True)
    ours = summary.get("simper_rs_fused" if table == "loss" else "simper_rs_linear")
    if ours:
        print()
        for peer in ("liger_simpo_compiled", "liger_simpo_eager", "trl_chunked", "compiled", "materialised", "gemm_floor"):
            if peer in summary and peer in methods:
                line = f"simper_rs / {peer}: time {ours[0] / summary[peer][0]:.2f}x"
                if summary[peer][2] and summary[peer][1] > 0:
                    line += f", extra peak {ours[1] / summary[peer][1]:.2f}x"
                print(line)


def paper_extrapolation(n=16384, h=4096, v=128256, elt=2) -> str:
    """Memory beyond inputs and parameter gradients at a Llama-3-8B batch, bfloat16, from the
    algorithms' allocations (not measured: no machine here holds it)."""
    import simper_rs

    nv = n * v
    chunk = simper_rs._core.linear_chunk_rows(n, h, v, elt)
    accumulator = v * h * 4
    rows = [
        # At least: the bf16 logits, the float32 log-softmax saved for backward, and its float32
        # gradient (the gather's scatter) = 10 bytes per element (a lower bound).
        ("materialised, log_softmax + gather (lower bound)", nv * (elt + 4 + 4)),
        # The bf16 logits and the kernel's logits-sized bf16 gradient.
        ("materialised, simper_rs kernel", nv * (elt + elt)),
        # One chunk's logits and row gradients, O(N) buffers, and the float32 accumulator of
        # grad W (for a bf16 weight; with float32 master weights it is the gradient itself).
        ("fused_linear, chunk buffers", 2 * chunk * v * elt + n * 4 * 4),
        ("fused_linear, + float32 grad-W accumulator", 2 * chunk * v * elt + n * 4 * 4 + accumulator),
    ]
    out = [f"Paper extrapolation, N = {n}, H = {h}, V = {v}, bfloat16 (chunk = {chunk} positions):", ""]
    out += ["| path | extra memory |", "| --- | --- |"]
    out += [f"| {name} | {fmt_bytes(b)} |" for name, b in rows]
    out.append(
        f"\nfused_linear / materialised log_softmax: {rows[2][1] / rows[0][1]:.1%} "
        f"({rows[3][1] / rows[0][1]:.1%} counting the float32 accumulator)"
    )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--table", choices=["loss", "logps", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per method, interleaved; median reported")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per process (after one warm-up)")
    parser.add_argument("--quick", action="store_true", help="small sizes and one round, for a smoke run")
    parser.add_argument("--no-padding", action="store_true", help="every label counts (no masked prompt or padding)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    for name, value in (("--rounds", args.rounds), ("--repeats", args.repeats)):
        if value < 1:
            parser.error(f"{name} must be at least 1, got {value}")
    size, rounds = (QUICK, 1) if args.quick else (FULL, args.rounds)
    tables = ["loss", "logps"] if args.table == "all" else [args.table]
    print(f"python {' '.join(sys.argv)}")
    for table in tables:
        run_table(table, size, rounds, args.repeats, not args.no_padding)
    if args.table == "all":
        print()
        print(paper_extrapolation())


if __name__ == "__main__":
    main()
