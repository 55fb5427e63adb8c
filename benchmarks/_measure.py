"""Shared helpers for the benchmarks: peak-memory probes and timing, one method per process."""
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
    """Run `script --child JSON` in a fresh interpreter and return the JSON it prints last."""
    out = subprocess.run(
        [sys.executable, script, "--child", json.dumps(args)],
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
