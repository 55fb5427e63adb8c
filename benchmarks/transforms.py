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
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from simper_rs.bench import PeakRSS, fmt_bytes, median_seconds, run_isolated

METHODS = ["loss/plain", "loss/softcap", "loss/scale", "loss/learned_scale", "logps/plain", "logps/softcap"]
# (sequences B, length T, hidden H, vocabulary V): Gemma-2's vocabulary.
FULL = (4, 128, 512, 256000)
QUICK = (2, 32, 64, 4096)
PROMPT = 0.25  # the first quarter of each sequence is prompt (ignored labels)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    parser.add_argument(
        "--before", metavar="DIR",
        help="a folder holding an earlier build of the simper_rs package (DIR/simper_rs with its _core .so), "
        "e.g. from `git worktree add /tmp/old <commit>` and its `cargo build --release` library copied in",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    size = QUICK if args.quick else FULL
    rounds = 1 if args.quick else args.rounds
    threads = int(os.environ.get("SIMPER_RS_NUM_THREADS", os.cpu_count() or 1))
    rows = [(m, None) for m in METHODS]
    if args.before:
        rows += [("loss/plain", args.before), ("logps/plain", args.before)]
    results = {row: [] for row in rows}
    for _ in range(rounds):
        for method, before in rows:
            env = {"PYTHONPATH": os.path.abspath(before)} if before else None
            out = run_isolated(__file__, {"method": method, "size": size, "repeats": args.repeats, "threads": threads}, env=env)
            results[(method, before)].append(out)
    b, t, h, v = size
    print(f"B={b} T={t} H={h} V={v}, float32, {threads} threads, {rounds} rounds (median; range)\n")
    print("| method | build | fwd+bwd | range | vs plain | extra peak |")
    print("| --- | --- | --- | --- | --- | --- |")
    table = []
    plain = {}
    for (method, before), outs in results.items():
        ok = [o for o in outs if "seconds" in o]
        if not ok:
            print(f"| {method} | {'before' if before else 'this'} | failed: {outs[0].get('error')} | | | |")
            continue
        seconds = statistics.median(o["seconds"] for o in ok)
        peak = statistics.median(o["peak"] for o in ok)
        family = method.split("/")[0]
        if method.endswith("/plain") and not before:
            plain[family] = seconds
        table.append((method, before, seconds, min(o["seconds"] for o in ok), max(o["seconds"] for o in ok), peak))
    for method, before, seconds, low, high, peak in table:
        ratio = seconds / plain[method.split("/")[0]] if method.split("/")[0] in plain else float("nan")
        print(f"| {method} | {'before' if before else 'this'} | {seconds:.3f} s | {low:.3f}-{high:.3f} s | {ratio:.2f}x | {fmt_bytes(peak)} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"size": size, "threads": threads, "rounds": rounds,
                 "rows": [dict(method=m, build="before" if b_ else "this", seconds=s, low=lo, high=hi, peak_bytes=p) for m, b_, s, lo, hi, p in table]},
                f, indent=1,
            )


if __name__ == "__main__":
    sys.exit(main())
