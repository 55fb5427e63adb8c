"""The cost of logit transforms in the fused ops, and the plain head before and after they came.

Rows, each method in its own process, rounds interleaved, median over rounds (the machine is
shared and noisy):

  loss/plain          SimPERLoss()(hidden=..., lm_head_weight=W, labels=...): the fused-linear
                      loss with its gradients in the forward, a plain head
  loss/softcap        the same with logit_softcap=30 (Gemma 2's final_logit_softcapping)
  loss/scale          the same with logit_scale=0.0625 (Cohere's logit_scale)
  loss/learned_scale  the same with a learnable per-vocabulary logit_scale tensor (gets its gradient)
  logps/plain         simper_rs.sequence_logps on materialised logits (the logits op alone)
  logps/softcap       the same with logit_softcap=30

With ``--before DIR``, the two plain rows also run against the simper_rs package in DIR (a build
of an earlier commit; see ``--help``), each "before" row in its own process beside "after".

    python benchmarks/transforms.py --rounds 3                    # the table of RESULTS.md
    python benchmarks/transforms.py --rounds 3 --before target/before
    python benchmarks/transforms.py --quick                       # small sizes, one round

The rows go to benchmarks/results/transforms.json too (``--json FILE``; none for ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

try:
    from simper_rs.cli.bench import PeakRSS, Results, fmt_bytes, median_seconds, run_isolated
except ImportError:  # a --before build from when the helpers were simper_rs.bench (only children import it)
    from simper_rs.bench import PeakRSS, fmt_bytes, median_seconds, run_isolated  # type: ignore[no-redef]

METHODS = ["loss/plain", "loss/softcap", "loss/scale", "loss/learned_scale", "logps/plain", "logps/softcap"]
# (sequences B, length T, hidden H, vocabulary V): Gemma-2's vocabulary.
FULL = (4, 128, 512, 256000)
QUICK = (2, 32, 64, 4096)
PROMPT = 0.25  # the first quarter of each sequence is prompt (ignored labels)
RESULTS = Path(__file__).resolve().parent / "results"


def build(args: dict):
    import torch

    import simper_rs

    b, t, h, v = args["size"]
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[:, : int(t * PROMPT)] = -100
    method = args["method"]
    if method.startswith("logps/"):
        logits = (torch.randn(b, t, v, generator=g) * 4).requires_grad_()
        options = {"logit_softcap": 30.0} if method == "logps/softcap" else {}
        return (logits,), lambda: simper_rs.sequence_logps(logits, labels, **options).sum()
    hidden = torch.randn(b, t, h, generator=g).requires_grad_()
    weight = (torch.randn(v, h, generator=g) / h**0.5).requires_grad_()
    options = {
        "loss/plain": {},
        "loss/softcap": {"logit_softcap": 30.0},
        "loss/scale": {"logit_scale": 0.0625},
        "loss/learned_scale": {"logit_scale": torch.full((v,), 0.5).requires_grad_()},
    }[method]
    loss_fn = simper_rs.SimPERLoss()
    leaves = (hidden, weight) + tuple(o for o in options.values() if isinstance(o, torch.Tensor))
    return leaves, lambda: loss_fn(hidden=hidden, lm_head_weight=weight, labels=labels, **options).loss


def child(args: dict) -> dict:
    import torch

    torch.set_num_threads(args["threads"])
    leaves, forward = build(args)

    def step():
        forward().backward()
        for leaf in leaves:
            leaf.grad = None

    step()  # warm up (thread pools, first-touch pages)
    with PeakRSS() as peak:
        step()
    seconds = median_seconds(step, args["repeats"])
    return {"seconds": seconds, "peak": peak.peak_bytes}


TABLE_HEADER = ["| method | build | fwd+bwd | range | vs plain | extra peak |", "| --- | --- | --- | --- | --- | --- |"]


def table_title(size, threads: int, rounds: int) -> str:
    b, t, h, v = size
    return f"B={b} T={t} H={h} V={v}, float32, {threads} threads, {rounds} rounds (median; range)"


def table_row(row: dict) -> str:
    if "error" in row:
        return f"| {row['method']} | {row['build']} | failed: {row['error']} | | | |"
    vs_plain = f"{row['vs_plain']:.2f}x" if row["vs_plain"] is not None else "n/a"
    return (
        f"| {row['method']} | {row['build']} | {row['seconds']:.3f} s | {row['low']:.3f}-{row['high']:.3f} s | "
        f"{vs_plain} | {fmt_bytes(row['peak_bytes'])} |"
    )


def render(data: dict) -> str:
    """The table the run printed, from its JSON (benchmarks/report.py): failed rows first."""
    s, rows = data["settings"], data["rows"]
    ordered = [r for r in rows if "error" in r] + [r for r in rows if "error" not in r]
    return "\n".join([table_title(s["size"], s["threads"], s["rounds"]), "", *TABLE_HEADER, *map(table_row, ordered)])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    parser.add_argument(
        "--before",
        metavar="DIR",
        help="a folder holding an earlier build of the simper_rs package (DIR/simper_rs with its _core .so), "
        "e.g. from `git worktree add /tmp/old <commit>` and its `cargo build --release` library copied in",
    )
    parser.add_argument(
        "--json",
        metavar="FILE",
        help="where to write the rows (default: benchmarks/results/transforms.json; --quick: none)",
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    size = QUICK if args.quick else FULL
    rounds = 1 if args.quick else args.rounds
    threads = int(os.environ.get("SIMPER_RS_NUM_THREADS", os.cpu_count() or 1))
    results = Results("transforms", None, size=size, threads=threads, rounds=rounds, repeats=args.repeats)
    rows = [(m, None) for m in METHODS]
    if args.before:
        rows += [("loss/plain", args.before), ("logps/plain", args.before)]
    runs = {row: [] for row in rows}
    for _ in range(rounds):
        for method, before in rows:
            env = {"PYTHONPATH": os.path.abspath(before)} if before else None
            args_ = {"method": method, "size": size, "repeats": args.repeats, "threads": threads}
            runs[(method, before)].append(run_isolated(__file__, args_, env=env))
    table = []
    for (method, before), outs in runs.items():
        ok = [o for o in outs if "seconds" in o]
        row = {"method": method, "build": "before" if before else "this"}
        if not ok:
            table.append({**row, "error": outs[0].get("error")})
            continue
        secs = [o["seconds"] for o in ok]
        row.update(
            seconds=statistics.median(secs),
            low=min(secs),
            high=max(secs),
            round_seconds=secs,
            peak_bytes=statistics.median(o["peak"] for o in ok),
        )
        table.append(row)
    plain = {
        r["method"].split("/")[0]: r["seconds"]
        for r in table
        if r["method"].endswith("/plain") and r["build"] == "this" and "seconds" in r
    }
    for r in table:
        if "seconds" in r:
            family = r["method"].split("/")[0]
            r["vs_plain"] = r["seconds"] / plain[family] if family in plain else None
        results.add(r)
    print(render(results.data))
    results.write(args.json or (None if args.quick else RESULTS / "transforms.json"))


if __name__ == "__main__":
    sys.exit(main())
