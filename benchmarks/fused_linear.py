"""Peak memory and forward+backward time of log-probs from hidden states, fused vs materialised.

Methods, each in its own process:
  materialised_log_softmax  logits = hidden @ W.T, then log_softmax + gather (the official code)
  materialised_simper_rs    logits = hidden @ W.T, then simper_rs.sequence_logps (fused kernel)
  fused_linear              simper_rs.linear_sequence_logps(hidden, W, labels): no logits at all

Extra memory is the resident peak during forward+backward above the inputs, minus the
gradients of hidden and W themselves (which every method must produce).

    python benchmarks/fused_linear.py            # the sizes of RESULTS.md
    python benchmarks/fused_linear.py --quick    # a small size, seconds
"""
from __future__ import annotations

import argparse
import json
import os

from simper_rs.bench import PeakRSS, baseline_log_softmax, fmt_bytes, median_seconds, run_isolated

METHODS = ["materialised_log_softmax", "materialised_simper_rs", "fused_linear"]


def child(args: dict) -> dict:
    import torch

    import simper_rs

    torch.set_num_threads(os.cpu_count() or 1)
    dtype = getattr(torch, args["dtype"])
    n, h, v, batch = args["positions"], args["hidden"], args["vocab"], 8
    seq_len = n // batch + 1
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(batch, seq_len, h, generator=g, dtype=dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g, dtype=dtype) / h**0.5).requires_grad_()
    labels = torch.randint(0, v, (batch, seq_len), generator=g)
    labels[:, : seq_len // 8] = -100  # a masked prompt, as in real preference batches

    fn = {
        "materialised_log_softmax": lambda: baseline_log_softmax(hidden @ weight.T, labels),
        "materialised_simper_rs": lambda: simper_rs.sequence_logps(hidden @ weight.T, labels),
        "fused_linear": lambda: simper_rs.linear_sequence_logps(hidden, weight, labels),
    }[args["method"]]

    def step():
        fn().sum().backward()
        hidden.grad = weight.grad = None

    step()
    seconds = median_seconds(step, args["repeats"])
    with PeakRSS() as peak:
        fn().sum().backward()
    grads = hidden.grad.numel() * hidden.grad.element_size() + weight.grad.numel() * weight.grad.element_size()
    return {"seconds": seconds, "extra_peak": peak.peak_bytes - grads, "logits_bytes": n * v * hidden.element_size()}


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
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    sizes = [(256, 256, 8192)] if args.quick else [(1024, 512, 32000), (2048, 1024, 32000), (2048, 1024, 128256)]
    print(f"CPU threads: {os.cpu_count()}; float32; fwd+bwd median of {args.repeats}\n")
    print("| N | H | V | method | fwd+bwd | time vs materialised log_softmax | extra peak | extra vs materialised log_softmax |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, h, v in sizes:
        base = None
        for method in METHODS:
            r = run_isolated(__file__, {"method": method, "positions": n, "hidden": h, "vocab": v, "dtype": "float32", "repeats": args.repeats})
            if "error" in r:
                print(f"| {n} | {h} | {v} | {method} | failed: {r['error']} | | | |")
                continue
            base = base or r
            print(
                f"| {n} | {h} | {v} | {method} | {r['seconds'] * 1e3:.0f} ms | {r['seconds'] / base['seconds']:.2f}x | "
                f"{fmt_bytes(r['extra_peak'])} | {r['extra_peak'] / base['extra_peak']:.1%} |",
                flush=True,
            )
    print()
    print(paper_extrapolation())


if __name__ == "__main__":
    main()
