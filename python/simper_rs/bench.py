"""Benchmarks of the fused log-prob kernel against the baselines, side by side.

Each method runs in its own interpreter (``python -m simper_rs.bench --child JSON``), so that
its peak memory is its own. ``simper-rs bench`` and ``benchmarks/logps.py`` use this module.

Methods:
  log_softmax  torch.log_softmax(logits, -1).gather(...)  (what the official SimPER/DIL code does)
  selective    logits.gather(...) - torch.logsumexp(logits, -1)  (TRL's selective_log_softmax)
  simper_rs    simper_rs.sequence_logps(..., backend="rust")  (the fused Rust kernel)
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakRSS:
    """Peak resident memory (bytes) above the level at entry, via VmHWM reset (Linux)."""

    def __enter__(self):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark to the current RSS
        self.start = _status_kib("VmRSS")
        return self

    def __exit__(self, *exc):
        self.peak_bytes = max(0, _status_kib("VmHWM") - self.start) * 1024


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_isolated(script: str, args: dict) -> dict:
    """Run `script --child JSON` in a fresh interpreter and return the JSON it prints last.
    `script` is a file path, or `-m module`."""
    command = [sys.executable, *script.split(" ", 1)] if script.startswith("-m ") else [sys.executable, script]
    out = subprocess.run(
        [*command, "--child", json.dumps(args)],
        capture_output=True,
        text=True,
        # A fixed mmap threshold makes glibc return every large block to the OS when it is freed,
        # so the resident-set high-water mark tracks live allocations, not the allocator's cache.
        env={**os.environ, "PYTHONWARNINGS": "ignore", "MALLOC_MMAP_THRESHOLD_": "65536"},
    )
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} GiB"


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


SIZES = [(2048, 32000, "float32"), (2048, 32000, "bfloat16"), (4096, 128256, "float32"), (4096, 128256, "bfloat16")]
HEADLINE = [(2048, 32000, "float32")]
QUICK = [(256, 4096, "float32")]


def table(sizes, repeats: int = 5) -> None:
    """Print the markdown table of every method at every (N, V, dtype)."""
    print(f"CPU threads: {os.cpu_count()}; fwd+bwd median of {repeats}; peaks are RSS above the inputs\n")
    print("| N | V | dtype | method | fwd+bwd | vs log_softmax | fwd peak | bwd peak (x logits) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, vocab, dtype in sizes:
        base = None
        for method in METHODS:
            r = run_isolated("-m simper_rs.bench", {"method": method, "positions": n, "batch": 8, "vocab": vocab, "dtype": dtype, "repeats": repeats})
            if "error" in r:
                print(f"| {n} | {vocab} | {dtype} | {method} | failed: {r['error']} | | | |")
                continue
            base = base or r["seconds"]
            print(
                f"| {n} | {vocab} | {dtype} | {method} | {r['seconds'] * 1e3:.0f} ms | {base / r['seconds']:.2f}x | "
                f"{fmt_bytes(r['forward_peak'])} | {fmt_bytes(r['backward_peak'])} ({r['backward_peak'] / r['logits_bytes']:.2f}x) |",
                flush=True,
            )


def headline(quick: bool = False) -> None:
    """The README's headline comparison: N = 2048, V = 32000, float32 (``quick``: a small size)."""
    table(QUICK if quick else HEADLINE)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
    else:
        headline(quick="--quick" in sys.argv)
