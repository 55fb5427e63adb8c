"""Forward+backward time and peak memory of the masked sequence log-prob reduction on CPU.

Methods, each measured in its own process so that peak memory is its own:
  log_softmax  torch.log_softmax(logits, -1).gather(...)  (what the official SimPER/DIL code does)
  selective    logits.gather(...) - torch.logsumexp(logits, -1)  (TRL's selective_log_softmax)
  simper_rs    simper_rs.sequence_logps(..., backend="rust")  (the fused Rust kernel)

    python benchmarks/logps.py                 # the sizes of RESULTS.md
    python benchmarks/logps.py --quick         # a small size, seconds
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _measure import PeakRSS, fmt_bytes, median_seconds, run_isolated  # noqa: E402

METHODS = ["log_softmax", "selective", "simper_rs"]


def baseline_log_softmax(logits, labels):
    import torch

    x, y = logits[:, :-1], labels[:, 1:]
    mask = y != -100
    logp = torch.log_softmax(x.float(), dim=-1).gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1) / mask.sum(-1)


def baseline_selective(logits, labels):
    import torch

    x, y = logits[:, :-1], labels[:, 1:]
    mask = y != -100
    picked = x.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1).float()
    if x.dtype in (torch.float32, torch.float64):
        logp = picked - torch.logsumexp(x, dim=-1)
    else:  # TRL loops over rows for low precision to bound memory
        logp = torch.stack([p - torch.logsumexp(row.float(), dim=-1) for p, row in zip(picked, x)])
    return (logp * mask).sum(-1) / mask.sum(-1)


def child(args: dict) -> dict:
    import torch

    import simper_rs

    torch.set_num_threads(os.cpu_count() or 1)
    dtype = getattr(torch, args["dtype"])
    batch, vocab = args["batch"], args["vocab"]
    seq_len = args["positions"] // batch + 1  # N = batch·(seq_len-1) predicted positions
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, seq_len, vocab, generator=g, dtype=dtype).requires_grad_()
    labels = torch.randint(0, vocab, (batch, seq_len), generator=g)
    labels[:, : seq_len // 8] = -100
    fn = {
        "log_softmax": baseline_log_softmax,
        "selective": baseline_selective,
        "simper_rs": lambda x, y: simper_rs.sequence_logps(x, y, backend="rust"),
    }[args["method"]]

    def step():
        fn(logits, labels).sum().backward()
        logits.grad = None

    step()  # warm-up (thread pools, allocator)
    seconds = median_seconds(step, args["repeats"])
    with PeakRSS() as fwd:
        out = fn(logits, labels)
    with PeakRSS() as bwd:
        out.sum().backward()
    return {"seconds": seconds, "forward_peak": fwd.peak_bytes, "backward_peak": bwd.peak_bytes, "logits_bytes": logits.numel() * logits.element_size()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="one small size, for a smoke run")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    sizes = [(256, 4096, "float32")] if args.quick else [
        (2048, 32000, "float32"),
        (2048, 32000, "bfloat16"),
        (4096, 128256, "float32"),
        (4096, 128256, "bfloat16"),
    ]
    print(f"CPU threads: {os.cpu_count()}; fwd+bwd median of {args.repeats}; peaks are RSS above the inputs\n")
    print("| N | V | dtype | method | fwd+bwd | vs log_softmax | fwd peak | bwd peak (x logits) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, vocab, dtype in sizes:
        base = None
        for method in METHODS:
            r = run_isolated(__file__, {"method": method, "positions": n, "batch": 8, "vocab": vocab, "dtype": dtype, "repeats": args.repeats})
            if "error" in r:
                print(f"| {n} | {vocab} | {dtype} | {method} | failed: {r['error']} | | | |")
                continue
            base = base or r["seconds"]
            ratio = base / r["seconds"]
            print(
                f"| {n} | {vocab} | {dtype} | {method} | {r['seconds'] * 1e3:.0f} ms | {ratio:.2f}x | "
                f"{fmt_bytes(r['forward_peak'])} | {fmt_bytes(r['backward_peak'])} ({r['backward_peak'] / r['logits_bytes']:.2f}x) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
