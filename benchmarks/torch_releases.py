"""The fused logits op's speed on each torch release it is built for, side by side.

The kernel is the same Rust code on every torch; what differs is libtorch around it (tensor
creation, the autograd plumbing). Each ``--build`` is an interpreter with its torch and, after
``:``, the folder to put on PYTHONPATH for the simper_rs built against that torch (empty for the
interpreter's own install). Rounds run the builds interleaved, each in a fresh process that runs
``simper_rs.cli.bench``'s breakdown (forward and backward timed apart, medians over the repeats
after a warm-up, beside the memory floor measured in the same process): the backward writes a
fresh logits-sized gradient, whose page faults make it the noisy half.

    python benchmarks/torch_releases.py --rounds 3 \\
        --build .venv/bin/python: \\
        --build .venv-torch215/bin/python:dist/torch-2.15-cp311     # bash scripts/build_torch.sh 2.15

The rows go to benchmarks/results/torch_releases.json (``--json FILE``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from simper_rs.cli.bench import Results, measure_breakdown

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = (2048, 32000, "float32")  # predicted positions N, vocabulary V, dtype


TABLE_HEADER = [
    "| torch | built for | forward | backward | fwd+bwd | fwd+bwd vs the first build | fwd+bwd vs floor |",
    "| --- | --- | --- | --- | --- | --- | --- |",
]


def table_row(row: dict) -> str:
    if "error" in row:
        return f"| {row['build']} | | failed: {row['error']} | | | | |"
    return (
        f"| {row['torch']} | {row['built_for']} | {1e3 * row['forward']:.1f} ms | {1e3 * row['backward']:.1f} ms | "
        f"{1e3 * row['total']:.1f} ms | {row['vs_first']:.2f}x | {row['vs_floor']:.2f}x |"
    )


def render(data: dict) -> str:
    """The table the run printed, from its JSON (benchmarks/report.py)."""
    s = data["settings"]
    title = (
        f"N = 2048, V = 32000, float32; medians of {s['repeats']} steps per process (forward alone under no_grad), "
        f"then the median over {s['rounds']} interleaved rounds; floor = read + copy into fresh 2 MiB pages"
    )
    return "\n".join([title, "", *TABLE_HEADER, *map(table_row, data["rows"])])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--build", action="append", required=True, metavar="PYTHON:PYTHONPATH")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", metavar="FILE", help="default: benchmarks/results/torch_releases.json")
    args = parser.parse_args()
    results = Results("torch_releases", None, rounds=args.rounds, repeats=args.repeats, builds=args.build)
    runs = {build: [] for build in args.build}
    for _ in range(args.rounds):
        for build in args.build:
            python, _, path = build.partition(":")
            env = {"PYTHONPATH": os.path.abspath(path)} if path else None
            runs[build].append(measure_breakdown(*SIZE, args.repeats, env=env, python=python))
    first = None
    for build, outs in runs.items():
        ok = [o for o in outs if "error" not in o]
        if not ok:
            results.add({"build": build, "error": outs[0]["error"]})
            continue
        row = {"build": build, "torch": ok[0]["torch"], "built_for": ok[0]["built_for"]}
        for key in ("forward", "backward", "total", "vs_floor"):
            row[key] = statistics.median(o[key] for o in ok)
        first = first or row["total"]
        row["vs_first"] = row["total"] / first
        results.add(row)
    print(render(results.data))
    results.write(args.json or str(RESULTS / "torch_releases.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
