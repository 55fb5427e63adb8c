"""Benchmarks of the fused log-prob kernel against the baselines, side by side.

Each method runs in its own interpreter (``python -m simper_rs.cli.bench --child JSON``), so that
its peak memory is its own. ``simper-rs bench`` and ``benchmarks/logps.py`` use this module, and
the other scripts in benchmarks/ take their helpers from it: :class:`PeakRSS`, the timers,
:func:`run_isolated`, and :class:`Results`, the JSON each run writes (benchmarks/results/*.json:
the command, the date, the machine and one object per row with numbers, not formatted text).
The tables are printed row by row while they are measured, by the same functions that
``benchmarks/report.py`` renders the JSON with, so a table in RESULTS.md is what the run printed.

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

import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional


def _proc_field(path: str, name: str) -> Optional[str]:
    """The value of the ``name: value`` line of a /proc file (None where the file or line is missing)."""
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def _status_kib(field: str) -> int:
    value = _proc_field("/proc/self/status", field)
    if value is None:
        raise RuntimeError(f"{field} not in /proc/self/status")
    return int(value.split()[0])


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


def run_isolated(script: str, args: dict, env: Optional[dict] = None, python: Optional[str] = None) -> dict:
    """Run `script --child JSON` in a fresh interpreter and return the JSON it prints last.
    `script` is a file path or `-m module`, either followed by space-separated arguments; `env`
    adds to the environment (``PYTHONPATH`` of another build, for before/after rows); `python` is
    the interpreter (default: this one; another venv's, for another torch)."""
    command = [python or sys.executable, *script.split()]
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


def ratio(x: Optional[float]) -> str:
    """A ratio as the tables print it (``3.13x``), or nothing when there is none."""
    return f"{x:.2f}x" if x else ""


# ---------------------------------------------------------------------------------------------
# The JSON every benchmark writes


def command_line(argv: Optional[List[str]] = None) -> str:
    """The command that ran, as a reader would type it from the repository's root."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0])
    if script.suffix == ".py" and script.parent.name == "benchmarks":
        argv[0] = f"benchmarks/{script.name}"
    elif script.name == "__main__.py" or argv[0] == "-c":
        argv[0] = "-m simper_rs.cli.bench"
    return "python " + " ".join(shlex.quote(a) if " " in a or not a else a for a in argv)


def _cpu_model() -> str:
    return _proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine()


def _memory_bytes() -> Optional[int]:
    total = _proc_field("/proc/meminfo", "MemTotal")
    return int(total.split()[0]) * 1024 if total else None


def machine() -> dict:
    """What the numbers were measured on: the CPU, its cores, memory and the library versions."""
    import torch

    import simper_rs
    from simper_rs import _core

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "row_code": _core.cpu_kernel_path(),
        "torch": torch.__version__,
        "simper_rs": simper_rs.__version__,
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _load_average() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


class Results:
    """One benchmark run as JSON: ``benchmark`` (the script), ``mode``, ``command``, ``date``
    (UTC, at the start), ``machine``, the one-minute load average at the start and the end,
    ``settings`` (sizes, repeats: what the tables' titles say) and ``rows``, one object per row
    with numeric fields (seconds, bytes, ratios); a row that failed has ``error`` instead."""

    def __init__(self, benchmark: str, mode: Optional[str] = None, **settings):
        self._start = time.perf_counter()
        self.data = {
            "benchmark": benchmark,
            "mode": mode,
            "command": command_line(),
            "date": _now(),
            "machine": machine(),
            "load_average_start": _load_average(),
            "settings": settings,
            "rows": [],
        }

    @property
    def rows(self) -> list:
        return self.data["rows"]

    def add(self, row: dict) -> dict:
        self.rows.append(row)
        return row

    def write(self, path: Optional[str], **extra) -> None:
        """Write the JSON to `path` (nothing when it is empty), with `extra` top-level fields."""
        if not path:
            return
        self.data.update(extra)
        self.data["load_average_end"] = _load_average()
        self.data["wall_seconds"] = round(time.perf_counter() - self._start, 1)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.data, indent=1) + "\n")
        print(f"results: {path}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# The kernel benchmark: the methods, measured in child processes


METHODS = ["floor", "log_softmax", "selective", "torch.compile", "simper_rs"]
SWEEP_METHODS = ["log_softmax", "selective", "simper_rs"]


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
        madvise = ctypes.CDLL(None, use_errno=True).madvise
        madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), 14)  # MADV_HUGEPAGE
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
    logits_bytes = logits.numel() * logits.element_size()
    if args["method"] == "floor":
        pieces = _floor_pieces(logits, args["repeats"])
        peaks = {"forward_peak": 0, "backward_peak": 0, "step_peak": 0}
        return {"seconds": pieces["floor"], **peaks, "logits_bytes": logits_bytes, **pieces}
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
    with PeakRSS() as whole:  # one forward+backward: everything above the inputs, the gradient included
        fn(logits, labels).sum().backward()
    logits.grad = None
    with PeakRSS() as fwd:
        out = fn(logits, labels)
    with PeakRSS() as bwd:
        out.sum().backward()
    return {
        "seconds": seconds,
        "forward_peak": fwd.peak_bytes,
        "backward_peak": bwd.peak_bytes,
        "step_peak": whole.peak_bytes,
        "logits_bytes": logits_bytes,
    }


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
        "torch": torch.__version__,
        "built_for": _core.TORCH_VERSION,
        "row_code": _core.cpu_kernel_path(),
        "forward": median_seconds(forward_only, repeats),
        "backward": statistics.median(backward_times),
        "total": total,
        **_floor_pieces(logits, repeats),
    }


SIZES = [(2048, 32000, "float32"), (2048, 32000, "bfloat16"), (4096, 128256, "float32"), (4096, 128256, "bfloat16")]
HEADLINE = [(2048, 32000, "float32")]
QUICK = [(256, 4096, "float32")]
# The vocabulary sweep of docs/benchmarks.png: Llama-2's 32000 and Llama-3's 128256 among them, at
# a small N so that it runs in a few minutes on 2 cores.
SWEEP_VOCABS = [8192, 32000, 65536, 128256]
SWEEP_POSITIONS = 1024


def _run(method: str, n: int, vocab: int, dtype: str, repeats: int) -> dict:
    args = {"method": method, "positions": n, "batch": 8, "vocab": vocab, "dtype": dtype, "repeats": repeats}
    return run_isolated("-m simper_rs.cli.bench", args)


def measure(sizes, repeats: int, methods=METHODS) -> Iterator[dict]:
    """Run every method at every (N, V, dtype), each in its own process, and yield one row per
    method as it finishes: seconds, peaks (bytes) and the ratios to log_softmax and to the floors
    measured in the same run (``None`` where there is none); a failed method gives ``error``."""
    for n, vocab, dtype in sizes:
        results: Dict[str, dict] = {}
        for method in methods:
            r = results[method] = _run(method, n, vocab, dtype, repeats)
            row = {"n": n, "vocab": vocab, "dtype": dtype, "method": method}
            if "error" in r:
                yield {**row, "error": r["error"]}
                continue
            base = results.get("log_softmax", {}).get("seconds")
            floor = results.get("floor", {}).get("seconds")
            bandwidth_floor = results.get("floor", {}).get("bandwidth_floor")
            row.update(
                seconds=r["seconds"],
                vs_log_softmax=base / r["seconds"] if base else None,
                vs_floor=r["seconds"] / floor if floor else None,
                vs_bandwidth_floor=r["seconds"] / bandwidth_floor if bandwidth_floor else None,
                forward_peak_bytes=r["forward_peak"],
                backward_peak_bytes=r["backward_peak"],
                step_peak_bytes=r["step_peak"],
                logits_bytes=r["logits_bytes"],
            )
            if method == "floor":
                row.update({k: r[k] for k in ("read", "copy", "copy_small_pages", "copy_mapped", "bandwidth_floor")})
            yield row


TABLE_HEADER = [
    "| N | V | dtype | method | fwd+bwd | vs log_softmax | vs floor | vs bandwidth floor | fwd peak | bwd peak (x logits) |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
]


def table_title(cores: int, repeats: int) -> str:
    return f"CPU threads: {cores}; fwd+bwd median of {repeats}; peaks are RSS above the inputs"


def table_row(row: dict) -> str:
    """One row of the kernel table, from one of :func:`measure`'s rows."""
    n, vocab, dtype, method = row["n"], row["vocab"], row["dtype"], row["method"]
    if "error" in row:
        return f"| {n} | {vocab} | {dtype} | {method} | failed: {row['error']} | | | | | |"
    if method == "floor":
        peaks = ("", "")
    else:
        backward = row["backward_peak_bytes"]
        peaks = (
            fmt_bytes(row["forward_peak_bytes"]),
            f"{fmt_bytes(backward)} ({backward / row['logits_bytes']:.2f}x)",
        )
    ratios = (ratio(row["vs_log_softmax"]), ratio(row["vs_floor"]), ratio(row["vs_bandwidth_floor"]))
    return (
        f"| {n} | {vocab} | {dtype} | {method} | {row['seconds'] * 1e3:.0f} ms | {ratios[0]} | {ratios[1]} | "
        f"{ratios[2]} | {peaks[0]} | {peaks[1]} |"
    )


def print_table(
    title: str, header: List[str], rows: Iterable[dict], render_row, results: Optional[Results]
) -> List[dict]:
    """Print a markdown table row by row as `rows` are measured, each row also added to `results`."""
    print(title + "\n")
    print("\n".join(header))
    done = []
    for row in rows:
        done.append(results.add(row) if results else row)
        print(render_row(row), flush=True)
    return done


def table(sizes, repeats: int = 5, methods=METHODS, results: Optional[Results] = None) -> List[dict]:
    """Print the markdown table of every method at every (N, V, dtype), with each time's ratio
    to log_softmax and to the floor measured in the same run; the rows go to `results` too."""
    rows = measure(sizes, repeats, methods)
    return print_table(table_title(os.cpu_count(), repeats), TABLE_HEADER, rows, table_row, results)


SWEEP_HEADER = [
    "| V | method | fwd+bwd | vs log_softmax | fwd+bwd peak | beyond the gradient | (x logits) |",
    "| --- | --- | --- | --- | --- | --- | --- |",
]


def sweep_title(cores: int, n: int, dtype: str, repeats: int) -> str:
    return (
        f"CPU threads: {cores}; N = {n} (batch 8), {dtype}; fwd+bwd median of {repeats}; peak: resident memory above "
        "the inputs during one forward+backward, and beyond the logits-sized gradient every method returns"
    )


def extra_peak(row: dict) -> int:
    """A sweep row's peak beyond its inputs and the gradient (bytes; below 0 within a page or so)."""
    return row["step_peak_bytes"] - row["logits_bytes"]


def sweep_row(row: dict) -> str:
    if "error" in row:
        return f"| {row['vocab']} | {row['method']} | failed: {row['error']} | | | | |"
    extra = extra_peak(row)
    return (
        f"| {row['vocab']} | {row['method']} | {row['seconds'] * 1e3:.0f} ms | {ratio(row['vs_log_softmax'])} | "
        f"{fmt_bytes(row['step_peak_bytes'])} | {fmt_bytes(extra)} | {extra / row['logits_bytes']:.2f}x |"
    )


def sweep(
    vocabs=SWEEP_VOCABS,
    n: int = SWEEP_POSITIONS,
    dtype: str = "float32",
    repeats: int = 5,
    methods=SWEEP_METHODS,
    results: Optional[Results] = None,
) -> List[dict]:
    """Time and peak memory against the vocabulary size (docs/benchmarks.png): every method at
    each V, N positions, one table row per (V, method)."""
    rows = measure([(n, vocab, dtype) for vocab in vocabs], repeats, methods)
    return print_table(sweep_title(os.cpu_count(), n, dtype, repeats), SWEEP_HEADER, rows, sweep_row, results)


BREAKDOWN_HEADER = [
    "| N | V | dtype | row code | forward | backward | fwd+bwd | read | copy, fresh 2 MiB pages | "
    "copy, fresh 4 KiB pages | copy, mapped memory | fwd+bwd vs floor | vs bandwidth floor |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
]
_BREAKDOWN_TIMES = ("forward", "backward", "total", "read", "copy", "copy_small_pages", "copy_mapped")


def breakdown_title(cores: int, repeats: int) -> str:
    return (
        f"CPU threads: {cores}; op: medians of {repeats}; floor pieces: best of {repeats}; floor = read + copy into "
        "fresh 2 MiB pages; bandwidth floor = read + copy into mapped memory"
    )


def breakdown_row(row: dict) -> str:
    n, vocab, dtype = row["n"], row["vocab"], row["dtype"]
    if "error" in row:
        return f"| {n} | {vocab} | {dtype} | {row['requested_row_code']} | failed: {row['error']} |"
    ms = [f"{row[k] * 1e3:.1f} ms" for k in _BREAKDOWN_TIMES]
    return (
        f"| {n} | {vocab} | {dtype} | {row['row_code']} | {' | '.join(ms)} | {row['vs_floor']:.2f}x | "
        f"{row['vs_bandwidth_floor']:.2f}x |"
    )


def measure_breakdown(n: int, vocab: int, dtype: str, repeats: int, env=None, python=None) -> dict:
    """One :func:`breakdown_child` run in its own process (``env`` and ``python`` as for
    :func:`run_isolated`), with its ratios to the floors; a failed run gives ``error``."""
    args = {"positions": n, "batch": 8, "vocab": vocab, "dtype": dtype, "repeats": repeats}
    r = run_isolated("-m simper_rs.cli.bench --breakdown-child", args, env=env, python=python)
    row = {"n": n, "vocab": vocab, "dtype": dtype}
    if "error" in r:
        return {**row, "error": r["error"]}
    return {**row, **r, "vs_floor": r["total"] / r["floor"], "vs_bandwidth_floor": r["total"] / r["bandwidth_floor"]}


def breakdown(
    sizes, repeats: int = 5, row_codes=("avx512", "avx2", "baseline"), results: Optional[Results] = None
) -> List[dict]:
    """Print where the fused op's time goes: its forward and backward apart, for each row code
    (``SIMPER_RS_ROW_CODE``; a code the CPU lacks runs the widest it has below it), beside the
    floor's pieces measured in the same process."""
    rows = (
        {"requested_row_code": code, **measure_breakdown(n, vocab, dtype, repeats, env={"SIMPER_RS_ROW_CODE": code})}
        for n, vocab, dtype in sizes
        for code in row_codes
    )
    return print_table(breakdown_title(os.cpu_count(), repeats), BREAKDOWN_HEADER, rows, breakdown_row, results)


def render(data: dict) -> str:
    """The markdown a kernel benchmark run printed, from its JSON (:class:`Results`)."""
    cores, settings = data["machine"]["cores"], data["settings"]
    repeats = settings["repeats"]
    if data["mode"] == "breakdown":
        title, header, row = breakdown_title(cores, repeats), BREAKDOWN_HEADER, breakdown_row
    elif data["mode"] == "vocab_sweep":
        title, header = sweep_title(cores, settings["positions"], settings["dtype"], repeats), SWEEP_HEADER
        row = sweep_row
    else:
        title, header, row = table_title(cores, repeats), TABLE_HEADER, table_row
    return "\n".join([title, "", *header, *(row(r) for r in data["rows"])])


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
