"""What the CUDA kernel's self-check (simper_rs.cuda_check) costs, once per (device, dtype).

    python benchmarks/cuda_check.py             # on a GPU: simper_rs.cuda_self_check(), per dtype
    python benchmarks/cuda_check.py --emulated  # without one: the same problem on the CPU emulation

The rows go to benchmarks/results/cuda_check.json (cuda_check_emulated.json) too, or ``--json PATH``.

On a GPU each repeat is a fresh cuda_self_check() (the kernel compiled beforehand: NVRTC's
compile is a once-per-device cost the kernel had before the check). Under the emulation
(tests/cuda_emulation: the kernel source as C++, each block as real threads) the time is split
between the emulated kernel calls and the rest (building the problem, the libtorch reference,
the comparison): the rest is real CPU work, the kernel part is the emulation's thread
spawning, not what a GPU takes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from simper_rs import cuda_check
from simper_rs.cli.bench import Results

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class Timed:
    """A kernel whose calls are timed (seconds summed in `.spent`)."""

    def __init__(self, kernel):
        self.kernel, self.spent = kernel, 0.0

    def __getattr__(self, name):
        fn = getattr(self.kernel, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent += time.perf_counter() - start

        return timed


def emulated(repeats: int, blocks):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_cuda_emulated import EmulatedKernel, build_emulator

    rows = []
    for block in blocks:
        lib = build_emulator(block)
        for dtype in DTYPES:
            totals, kernel_parts = [], []
            for _ in range(repeats):
                kernel = Timed(EmulatedKernel(lib))
                result = cuda_check.run_self_check(kernel, "cpu", dtype)
                assert result.passed, result.failure
                totals.append(result.seconds)
                kernel_parts.append(kernel.spent)
            rest = [t - k for t, k in zip(totals, kernel_parts)]
            rows.append(
                dict(
                    block=block,
                    dtype=str(dtype).replace("torch.", ""),
                    total_ms=1e3 * statistics.median(totals),
                    kernel_ms=1e3 * statistics.median(kernel_parts),
                    rest_ms=1e3 * statistics.median(rest),
                    best_total_ms=1e3 * min(totals),
                    best_rest_ms=1e3 * min(rest),
                    first_ms=1e3 * totals[0],
                )
            )
    print("median (best) of the repeats, ms; 'rest' is the problem, the libtorch reference and the comparison")
    print(f"{'block':>5} {'dtype':>9} {'total':>15} {'emulated kernel':>16} {'rest':>14} {'first run':>10}")
    for r in rows:
        print(
            f"{r['block']:>5} {r['dtype']:>9} {r['total_ms']:>7.1f} ({r['best_total_ms']:>5.1f}) {r['kernel_ms']:>16.1f} "
            f"{r['rest_ms']:>6.1f} ({r['best_rest_ms']:>5.1f}) {r['first_ms']:>10.1f}"
        )
    return rows


def on_gpu(repeats: int):
    rows = []
    for index in range(torch.cuda.device_count()):
        device = torch.device("cuda", index)
        start = time.perf_counter()
        cuda_check.CudaKernel().load(device)
        compile_s = time.perf_counter() - start
        runs = [cuda_check.cuda_self_check(device) for _ in range(repeats)]
        for i in range(len(DTYPES)):
            times = [run[i].seconds for run in runs]
            rows.append(
                dict(
                    device=str(device),
                    name=torch.cuda.get_device_name(index),
                    dtype=runs[0][i].dtype,
                    passed=all(run[i].passed for run in runs),
                    failure=runs[0][i].failure,
                    first_ms=1e3 * times[0],
                    median_ms=1e3 * statistics.median(times),
                    compile_s=compile_s,
                )
            )
    for r in rows:
        verdict = "passed" if r["passed"] else f"FAILED: {r['failure']}"
        print(
            f"{r['device']} {r['name']} {r['dtype']:>9}: first {r['first_ms']:.1f} ms, median {r['median_ms']:.1f} ms "
            f"(kernel compile {r['compile_s']:.2f} s) {verdict}"
        )
    return rows


def render(data: dict) -> str:
    """The rows as a markdown table (benchmarks/report.py; the run prints them as plain text)."""
    if data["mode"] == "emulated":
        lines = [
            "| threads per block | dtype | total, median (best) ms | emulated kernel ms | rest, median (best) ms |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['block']} | {r['dtype']} | {r['total_ms']:.0f} ({r['best_total_ms']:.0f}) | {r['kernel_ms']:.0f} | "
            f"{r['rest_ms']:.0f} ({r['best_rest_ms']:.0f}) |"
            for r in data["rows"]
        ]
    else:
        lines = [
            "| device | GPU | dtype | first ms | median ms | kernel compile s | result |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['device']} | {r['name']} | {r['dtype']} | {r['first_ms']:.1f} | {r['median_ms']:.1f} | "
            f"{r['compile_s']:.2f} | {'passed' if r['passed'] else 'FAILED: ' + str(r['failure'])} |"
            for r in data["rows"]
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--emulated", action="store_true", help="run the check's problem on the CPU emulation of the kernel"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--blocks", type=int, nargs="+", default=[32, 256], help="threads per block of the emulation")
    parser.add_argument(
        "--json", help="write the rows here (default: benchmarks/results/cuda_check.json, cuda_check_emulated.json)"
    )
    args = parser.parse_args()
    if not args.emulated and not torch.cuda.is_available():
        parser.error("no CUDA GPU visible; --emulated runs the check's problem on the CPU emulation")
    mode = "emulated" if args.emulated else "gpu"
    settings = {"repeats": args.repeats, **({"blocks": args.blocks} if args.emulated else {})}
    results = Results("cuda_check", mode, **settings)
    rows = emulated(args.repeats, args.blocks) if args.emulated else on_gpu(args.repeats)
    for row in rows:
        results.add(row)
    default = RESULTS / ("cuda_check_emulated.json" if args.emulated else "cuda_check.json")
    results.write(args.json or default)


if __name__ == "__main__":
    main()
