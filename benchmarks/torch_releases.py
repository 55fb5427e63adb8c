"""The fused logits op's speed on each torch release it is built for, side by side.

The kernel is the same Rust code on every torch; what differs is libtorch around it (tensor
creation, the autograd plumbing). Each ``--build`` is an interpreter with its torch and, after
``:``, the folder to put on PYTHONPATH for the simper_rs built against that torch (empty for the
interpreter's own install). Rounds run the builds interleaved, each in a fresh process that times
forward and backward apart (medians over the repeats after a warm-up): the backward writes a
fresh logits-sized gradient, whose page faults make it the noisy half.

    python benchmarks/torch_releases.py --rounds 3 \\
        --build .venv/bin/python: \\
        --build .venv-torch215/bin/python:dist/torch-2.15-cp311     # bash scripts/build_torch.sh 2.15

The rows go to benchmarks/results/torch_releases.json (``--json FILE``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from simper_rs.cli.bench import Results

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = (8, 257, 32000)  # 8 rows of 256 predicted positions: N = 2048, V = 32000, float32


def child(repeats: int) -> dict:
    import time

    import torch

    import simper_rs

    batch, length, vocab = SIZE
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, length, vocab, generator=generator)
    labels = torch.randint(0, vocab, (batch, length), generator=generator)
    forward, backward = [], []
    for i in range(repeats + 3):
        x = logits.clone().requires_grad_()
        t0 = time.perf_counter()
        total = simper_rs.sequence_logps(x, labels, backend="rust").sum()
        t1 = time.perf_counter()
        total.backward()
        t2 = time.perf_counter()
        if i >= 3:  # warm-up: thread pools, first-touch pages
            forward.append(t1 - t0)
            backward.append(t2 - t1)
    return {
        "torch": torch.__version__,
        "built_for": simper_rs._core.TORCH_VERSION,
        "forward_seconds": statistics.median(forward),
        "backward_seconds": statistics.median(backward),
    }


TABLE_HEADER = [
    "| torch | built for | forward | backward | fwd+bwd | fwd+bwd vs the first build |",
    "| --- | --- | --- | --- | --- | --- |",
]


def table_row(row: dict) -> str:
    if "error" in row:
        return f"| {row['build']} | | failed: {row['error']} | | | |"
    return (
        f"| {row['torch']} | {row['built_for']} | {1e3 * row['forward_seconds']:.1f} ms | "
        f"{1e3 * row['backward_seconds']:.1f} ms | {1e3 * row['total_seconds']:.1f} ms | {row['vs_first']:.2f}x |"
    )


def render(data: dict) -> str:
    """The table the run printed, from its JSON (benchmarks/report.py)."""
    s = data["settings"]
    title = (
        f"N = 2048, V = 32000, float32; medians of {s['repeats']} steps per process, then the median over "
        f"{s['rounds']} interleaved rounds"
    )
    return "\n".join([title, "", *TABLE_HEADER, *map(table_row, data["rows"])])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--build", action="append", required=False, metavar="PYTHON:PYTHONPATH", default=[])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", metavar="FILE", help="default: benchmarks/results/torch_releases.json")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child)["repeats"])))
        return 0
    if not args.build:
        parser.error("give at least one --build PYTHON:PYTHONPATH")
    results = Results("torch_releases", None, rounds=args.rounds, repeats=args.repeats, builds=args.build)
    runs = {build: [] for build in args.build}
    for _ in range(args.rounds):
        for build in args.build:
            python, _, path = build.partition(":")
            env = {**os.environ, "PYTHONWARNINGS": "ignore"}
            if path:
                env["PYTHONPATH"] = os.path.abspath(path)
            out = subprocess.run(
                [python, __file__, "--child", json.dumps({"repeats": args.repeats})],
                capture_output=True,
                text=True,
                env=env,
            )
            lines = out.stdout.strip().splitlines()
            failed = out.returncode != 0 or not lines
            runs[build].append(
                {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]} if failed else json.loads(lines[-1])
            )
    first = None
    for build, outs in runs.items():
        ok = [o for o in outs if "error" not in o]
        if not ok:
            results.add({"build": build, "error": outs[0]["error"]})
            continue
        row = {
            "build": build,
            "torch": ok[0]["torch"],
            "built_for": ok[0]["built_for"],
            "forward_seconds": statistics.median(o["forward_seconds"] for o in ok),
            "backward_seconds": statistics.median(o["backward_seconds"] for o in ok),
            "total_seconds": statistics.median(o["forward_seconds"] + o["backward_seconds"] for o in ok),
        }
        first = first or row["total_seconds"]
        row["vs_first"] = row["total_seconds"] / first
        results.add(row)
    print(render(results.data))
    results.write(args.json or str(RESULTS / "torch_releases.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
