"""Benchmarks of the fused log-prob kernel against the baselines, side by side.

Each method runs in its own interpreter (``python -m simper_rs.bench --child JSON``), so that
its peak memory is its own. ``simper-rs bench`` and ``benchmarks/logps.py`` use this module.

Methods:
  log_softmax  torch.log_softmax(logits, -1).gather(...)  (what the official SimPER/DIL code does)
  selective    logits.gather(...) - torch.logsumexp(logits, -1)  (TRL's selective_log_softmax)
  simper_rs    simper_rs.sequence_logps(..., backend="rust")  (the fused Rust kernel)
  torch.compile  torch.compile of log_softmax + gather (inductor's fused CPU code)
  floor        no log-probs: a read of the logits' size plus a copy of it into freshly mapped
               memory (advised to use 2 MiB pages, as the fused backward's gradient is), the
               least memory traffic a forward (one read) and a backward (one read, one write of
               a new gradient, page faults included) can do. The table also gives the ratio to
               the bandwidth floor: the same read and copy into memory already mapped (no page
               faults; an op that must return a new gradient cannot reach it). Both are the best
               of the repeats, measured in the same run, so ratios to them cancel the machine's
               momentary bandwidth.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Optional


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


def _timings(fn, repeats: int) -> list:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median_seconds(fn, repeats: int) -> float:
    return statistics.median(_timings(fn, repeats))


def min_seconds(fn, repeats: int) -> float:
    """The best of `repeats` timings: for a floor, what the machine can do at its quietest."""
    return min(_timings(fn, repeats))


def run_isolated(script: str, args: dict, env: Optional[dict] = None) -> dict:
    """Run `script --child JSON` in a fresh interpreter and return the JSON it prints last.
    `script` is a file path or `-m module`, either followed by space-separated arguments; `env`
    adds to the environment (``PYTHONPATH`` of another build, for before/after rows)."""
    command = [sys.executable, *script.split()]
    out = subprocess.run(
        [*command, "--child", json.dumps(args)],
        capture_output=True,
        text=True,
        # A fixed mmap threshold makes glibc return every large block to the OS when it is freed,
        # so the resident-set high-water mark tracks live allocations, not the allocator's cache.
        env={**os.environ, "PYTHONWARNINGS": "ignore", "MALLOC_MMAP_THRESHOLD_": "65536", **(env or {})},
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


METHODS = ["floor", "log_softmax", "selective", "torch.compile", "simper_rs"]


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


def _inputs(args: dict):
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    dtype = getattr(torch, args["dtype"])
    batch, vocab = args["batch"], args["vocab"]
    seq_len = args["positions"] // batch + 1  # N = batch·(seq_len-1) predicted positions
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, seq_len, vocab, generator=g, dtype=dtype).requires_grad_()
    labels = torch.randint(0, vocab, (batch, seq_len), generator=g)
    labels[:, : seq_len // 8] = -100
    return logits, labels


def _copy_to_fresh_huge_pages(x) -> None:
    """Copy `x` into a new tensor advised to use 2 MiB pages, as the fused backward's gradient
    is (src/fused_cpu.rs): the same write with 1/512 of the page faults of 4 KiB pages."""
    import ctypes

    import torch

    out = torch.empty_like(x)
    nbytes, page = out.numel() * out.element_size(), 4096
    first = -(-out.data_ptr() // page) * page
    last = (out.data_ptr() + nbytes) // page * page
    if last > first:
        ctypes.CDLL(None, use_errno=True).madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), 14)  # MADV_HUGEPAGE
    out.copy_(x)


def _floor_pieces(x, repeats: int) -> dict:
    """Best seconds of a read of `x` (a sum), a copy into fresh memory (page faults included)
    with 2 MiB pages and with torch's allocator (4 KiB pages), and a copy into memory already
    mapped (bandwidth only). Fresh 2 MiB pages vary most from run to run: a fault that finds no
    free huge page compacts memory first."""
    import torch

    x = x.detach()
    mapped = torch.empty_like(x)
    mapped.fill_(0)
    pieces = {
        "read": min_seconds(lambda: x.sum(), repeats),
        "copy": min_seconds(lambda: _copy_to_fresh_huge_pages(x), repeats),
        "copy_small_pages": min_seconds(lambda: x.clone(), repeats),
        "copy_mapped": min_seconds(lambda: mapped.copy_(x), repeats),
    }
    pieces["floor"] = pieces["read"] + pieces["copy"]
    pieces["bandwidth_floor"] = pieces["read"] + pieces["copy_mapped"]
    return pieces


def child(args: dict) -> dict:
    import torch

    import simper_rs

    logits, labels = _inputs(args)
    if args["method"] == "floor":
        pieces = _floor_pieces(logits, args["repeats"])
        return {"seconds": pieces["floor"], "forward_peak": 0, "backward_peak": 0, "logits_bytes": logits.numel() * logits.element_size(), **pieces}
    fn = {
        "log_softmax": baseline_log_softmax,
        "selective": baseline_selective,
        "torch.compile": torch.compile(baseline_log_softmax),
        "simper_rs": lambda x, y: simper_rs.sequence_logps(x, y, backend="rust"),
    }[args["method"]]

    def step():
        fn(logits, labels).sum().backward()
        logits.grad = None

    step()  # warm-up (thread pools, allocator; torch.compile compiles here)
    seconds = median_seconds(step, args["repeats"])
    with PeakRSS() as fwd:
        out = fn(logits, labels)
    with PeakRSS() as bwd:
        out.sum().backward()
    return {"seconds": seconds, "forward_peak": fwd.peak_bytes, "backward_peak": bwd.peak_bytes, "logits_bytes": logits.numel() * logits.element_size()}


def breakdown_child(args: dict) -> dict:
    """The fused op's forward and backward timed apart, beside the floor's pieces."""
    import torch

    import simper_rs
    from simper_rs import _core

    logits, labels = _inputs(args)
    repeats = args["repeats"]

    def forward_only():
        with torch.no_grad():
            simper_rs.sequence_logps(logits, labels, backend="rust")

    backward_times = []

    def step():
        out = simper_rs.sequence_logps(logits, labels, backend="rust").sum()
        t0 = time.perf_counter()
        out.backward()
        backward_times.append(time.perf_counter() - t0)
        logits.grad = None

    step()
    backward_times.clear()
    total = median_seconds(step, repeats)
    return {
        "row_code": _core.cpu_kernel_path(),
        "forward": median_seconds(forward_only, repeats),
        "backward": statistics.median(backward_times),
        "total": total,
        **_floor_pieces(logits, repeats),
    }


SIZES = [(2048, 32000, "float32"), (2048, 32000, "bfloat16"), (4096, 128256, "float32"), (4096, 128256, "bfloat16")]
HEADLINE = [(2048, 32000, "float32")]
QUICK = [(256, 4096, "float32")]


def _run(method: str, n: int, vocab: int, dtype: str, repeats: int) -> dict:
    return run_isolated("-m simper_rs.bench", {"method": method, "positions": n, "batch": 8, "vocab": vocab, "dtype": dtype, "repeats": repeats})


def table(sizes, repeats: int = 5, methods=METHODS) -> None:
    """Print the markdown table of every method at every (N, V, dtype), with each time's ratio
    to log_softmax and to the floor measured in the same run."""
    print(f"CPU threads: {os.cpu_count()}; fwd+bwd median of {repeats}; peaks are RSS above the inputs\n")
    print("| N | V | dtype | method | fwd+bwd | vs log_softmax | vs floor | vs bandwidth floor | fwd peak | bwd peak (x logits) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, vocab, dtype in sizes:
        results = {}
        for method in methods:
            r = results[method] = _run(method, n, vocab, dtype, repeats)
            if "error" in r:
                print(f"| {n} | {vocab} | {dtype} | {method} | failed: {r['error']} | | | | | |", flush=True)
                continue
            base = results.get("log_softmax", {}).get("seconds")
            floor = results.get("floor", {}).get("seconds")
            bandwidth_floor = results.get("floor", {}).get("bandwidth_floor")
            vs_base = f"{base / r['seconds']:.2f}x" if base else ""
            vs_floor = f"{r['seconds'] / floor:.2f}x" if floor else ""
            vs_bandwidth = f"{r['seconds'] / bandwidth_floor:.2f}x" if bandwidth_floor else ""
            peaks = ("", "") if method == "floor" else (fmt_bytes(r["forward_peak"]), f"{fmt_bytes(r['backward_peak'])} ({r['backward_peak'] / r['logits_bytes']:.2f}x)")
            print(f"| {n} | {vocab} | {dtype} | {method} | {r['seconds'] * 1e3:.0f} ms | {vs_base} | {vs_floor} | {vs_bandwidth} | {peaks[0]} | {peaks[1]} |", flush=True)


def breakdown(sizes, repeats: int = 5, row_codes=("avx512", "avx2", "baseline")) -> None:
    """Print where the fused op's time goes: its forward and backward apart, for each row code
    (``SIMPER_RS_ROW_CODE``; a code the CPU lacks runs the widest it has below it), beside the
    floor's pieces measured in the same process."""
    print(f"CPU threads: {os.cpu_count()}; op: medians of {repeats}; floor pieces: best of {repeats}; floor = read + copy into fresh 2 MiB pages; bandwidth floor = read + copy into mapped memory\n")
    print("| N | V | dtype | row code | forward | backward | fwd+bwd | read | copy, fresh 2 MiB pages | copy, fresh 4 KiB pages | copy, mapped memory | fwd+bwd vs floor | vs bandwidth floor |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, vocab, dtype in sizes:
        for code in row_codes:
            args = {"positions": n, "batch": 8, "vocab": vocab, "dtype": dtype, "repeats": repeats}
            os.environ["SIMPER_RS_ROW_CODE"] = code
            try:
                r = run_isolated("-m simper_rs.bench --breakdown-child", args)
            finally:
                del os.environ["SIMPER_RS_ROW_CODE"]
            if "error" in r:
                print(f"| {n} | {vocab} | {dtype} | {code} | failed: {r['error']} |", flush=True)
                continue
            ms = {k: f"{r[k] * 1e3:.1f} ms" for k in ("forward", "backward", "total", "read", "copy", "copy_small_pages", "copy_mapped")}
            print(
                f"| {n} | {vocab} | {dtype} | {r['row_code']} | {ms['forward']} | {ms['backward']} | {ms['total']} | {ms['read']} | "
                f"{ms['copy']} | {ms['copy_small_pages']} | {ms['copy_mapped']} | {r['total'] / r['floor']:.2f}x | {r['total'] / r['bandwidth_floor']:.2f}x |",
                flush=True,
            )


def headline(quick: bool = False) -> None:
    """The README's headline comparison: N = 2048, V = 32000, float32 (``quick``: a small size)."""
    table(QUICK if quick else HEADLINE)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
    elif len(sys.argv) == 4 and sys.argv[1:3] == ["--breakdown-child", "--child"]:
        print(json.dumps(breakdown_child(json.loads(sys.argv[3]))))
    else:
        headline(quick="--quick" in sys.argv)
