"""Loss and log-probs from hidden states + lm_head weight: simper_rs's fused-linear path against
its peers, side by side in one run, each method in its own process.

Loss table (``--table loss``), a SimPER-style preference loss on a [chosen; rejected] batch:
  materialised        logits = hidden @ W.T, then simper_rs.SimPERLoss()(logits, labels)
  simper_rs_fused     simper_rs.SimPERLoss()(hidden=..., lm_head_weight=W, labels=...): the
                      gradient computed in the forward, chunk by chunk, no logits kept
  liger_simpo_eager   Liger-Kernel's LigerFusedLinearSimPOLoss(compiled=False)
  liger_simpo_compiled  the same with compiled=True (torch.compile of its per-chunk step)
  gemm_floor          only the three matmuls every lm_head loss needs (logits, grad hidden,
                      grad W), no softmax: the time floor measured on this machine

Log-prob table (``--table logps``), per-sequence average log-probs, forward + backward:
  materialised        logits = hidden @ W.T, then log_softmax + gather
  compiled            torch.compile of the same (matmul + log_softmax + gather)
  simper_rs_linear    simper_rs.linear_sequence_logps (logits recomputed in backward)
  trl_chunked         TRL's ChunkedLogProbFunction (trl.kernels), log-probs only
  gemm_floor          as above

Liger differs from SimPER in the pair loss only: -logsigmoid(beta (l_w - l_l) - gamma)
(beta 0.1, gamma 0.5, no NLL term) instead of -exp(l_w) + exp(l_l), on the same per-sequence
average log-probs; the cost of that scalar formula is nothing next to the matmuls. Liger and TRL
take targets aligned with the hidden states, so they get hidden[:, :-1] and labels[:, 1:] (copies
made before the measurement); simper_rs shifts itself.

"Extra peak" is the resident peak of one forward+backward above the process's level before it,
minus the gradients of hidden and W, which every method produces (see simper_rs.cli.bench.PeakRSS).
Rows are interleaved over ``--rounds`` (each round runs every method once, in a fresh process)
and the median over rounds is reported, with the range, since the machine is shared and noisy.
A peer that is not installed gives a "skipped" row.

    python benchmarks/fused_linear.py --table all --rounds 3   # the tables of RESULTS.md
    python benchmarks/fused_linear.py --quick                  # small sizes, one round: a smoke run

The rows go to benchmarks/results/fused_linear.json too (``--json PATH``; none for ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from simper_rs.cli.bench import PeakRSS, Results, baseline_log_softmax, fmt_bytes, median_seconds, run_isolated

LOSS_METHODS = ["materialised", "simper_rs_fused", "liger_simpo_eager", "liger_simpo_compiled", "gemm_floor"]
LOGPS_METHODS = ["materialised", "compiled", "simper_rs_linear", "trl_chunked", "gemm_floor"]
# (pairs' sequences B, length T, hidden H, vocabulary V): the size of issue 16's target.
FULL = (8, 256, 1024, 32000)
QUICK = (4, 64, 128, 2048)
RESULTS = Path(__file__).resolve().parent / "results"


class Skipped(Exception):
    """A peer that cannot run here (not installed, wrong Python): reported as a row, not a failure."""


def liger_fused_simpo():
    """Liger-Kernel's LigerFusedLinearSimPOLoss class (benchmarks/gpu.py takes it from here too)."""
    if sys.version_info < (3, 10):
        raise Skipped("liger-kernel needs Python >= 3.10")
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearSimPOLoss
    except ImportError as e:
        raise Skipped(
            f"liger-kernel not importable ({e}); pip install 'liger-kernel>=0.8.5' (for the GPU machine: "
            "scripts/gpu_wheels.sh)"
        ) from None
    return LigerFusedLinearSimPOLoss


TRL_VOCAB_CHUNK = 32768  # TRL 1.16's own vocabulary chunk (trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE)


def trl_token_logps():
    """TRL's ChunkedLogProbFunction, log-probs only, at TRL's own chunk size: a function of
    (hidden [N, H], weight [V, H], targets [N], every one a valid id) returning [N] token log-probs
    (benchmarks/gpu.py takes it from here too)."""
    try:
        from trl.kernels import ChunkedLogProbFunction
    except ImportError as e:
        raise Skipped(
            f"trl.kernels.ChunkedLogProbFunction not importable ({e}); pip install 'trl>=1.16,<1.17' (for the GPU "
            "machine: scripts/gpu_wheels.sh)"
        ) from None

    def token_logps(hidden, weight, targets):
        return ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0, TRL_VOCAB_CHUNK, None, 1.0, ())[0]

    return token_logps


def build(args: dict):
    """The inputs and a forward function returning the scalar to backpropagate."""
    import torch

    import simper_rs

    b, t, h, v = args["size"]
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(b, t, h, generator=g).requires_grad_()
    weight = (torch.randn(v, h, generator=g) / h**0.5).requires_grad_()
    labels = torch.randint(0, v, (b, t), generator=g)
    if args["padding"]:
        labels[:, : t // 8] = -100  # a masked prompt, as in real preference batches
        labels[b // 2 :, -t // 8 :] = -100  # and padding after the (shorter) rejected answers
    # Liger and TRL score position i against target i: the shift is done here, outside the measurement.
    h_shift = hidden.detach()[:, :-1].contiguous().requires_grad_()
    y_shift = labels[:, 1:].contiguous()
    table, method = args["table"], args["method"]

    if method == "gemm_floor":
        grad_logits = torch.randn(b * (t - 1), v, generator=g)
        flat = h_shift.detach().reshape(-1, h)
        w = weight.detach()

        def floor():
            logits = flat @ w.T
            return logits, grad_logits @ w, grad_logits.T @ flat

        return floor, (h_shift, weight), False
    if table == "loss":
        if method == "materialised":
            loss = simper_rs.SimPERLoss()
            return lambda: loss(hidden @ weight.T, labels).loss, (hidden, weight), True
        if method == "simper_rs_fused":
            loss = simper_rs.SimPERLoss()
            return lambda: loss(hidden=hidden, lm_head_weight=weight, labels=labels).loss, (hidden, weight), True
        if method in ("liger_simpo_eager", "liger_simpo_compiled"):
            cls = liger_fused_simpo()
            loss = cls(compute_nll_loss=False, compiled=method.endswith("compiled"))
            return lambda: loss(weight, h_shift, y_shift)[0], (h_shift, weight), True
    else:
        if method == "materialised":
            return lambda: baseline_log_softmax(hidden @ weight.T, labels).sum(), (hidden, weight), True
        if method == "compiled":
            compiled = torch.compile(lambda x, w, y: baseline_log_softmax(x @ w.T, y))
            return lambda: compiled(hidden, weight, labels).sum(), (hidden, weight), True
        if method == "simper_rs_linear":
            return lambda: simper_rs.linear_sequence_logps(hidden, weight, labels).sum(), (hidden, weight), True
        if method == "trl_chunked":
            token_logps = trl_token_logps()
            flat, targets, mask = h_shift.reshape(-1, h), y_shift.clamp(min=0).reshape(-1), y_shift != -100

            def trl_logps():
                tokens = token_logps(flat, weight, targets).view(mask.shape)
                return ((tokens * mask).sum(-1) / mask.sum(-1)).sum()

            return trl_logps, (h_shift, weight), True
    raise ValueError(f"unknown method {method!r} for table {table!r}")


def child(args: dict) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    try:
        fn, leaves, differentiable = build(args)
    except Skipped as e:
        return {"skipped": str(e)}

    def step():
        out = fn()
        if differentiable:
            out.backward()
        for leaf in leaves:
            leaf.grad = None

    step()  # warm-up (and compilation for the compiled rows)
    seconds = median_seconds(step, args["repeats"])
    with PeakRSS() as peak:
        out = fn()
        if differentiable:
            out.backward()
    grads = sum(x.grad.numel() * x.grad.element_size() for x in leaves if x.grad is not None)
    return {"seconds": seconds, "extra_peak": peak.peak_bytes - grads, "measured_memory": differentiable}


TITLE = {"loss": "SimPER-style loss", "logps": "per-sequence log-probs"}
TABLE_HEADER = [
    "| method | fwd+bwd | range | time vs materialised | extra peak | peak vs materialised |",
    "| --- | --- | --- | --- | --- | --- |",
]
PEERS = ("liger_simpo_compiled", "liger_simpo_eager", "trl_chunked", "compiled", "materialised", "gemm_floor")


def table_title(table: str, size, cores: int, repeats: int, rounds: int) -> str:
    b, t, h, v = size
    return (
        f"{TITLE[table]}, B={b} T={t} H={h} V={v} float32, {cores} CPU threads, "
        f"forward+backward median of {repeats} steps per process, median over {rounds} rounds (range)"
    )


def run_table(table: str, size, rounds: int, repeats: int, padding: bool) -> list:
    """Every method of `table`, `rounds` times interleaved; one row per method: the median
    seconds over rounds, their range, the median extra peak (bytes) and the ratios to
    materialised; a peer that did not run has ``skipped`` or ``error``."""
    methods = LOSS_METHODS if table == "loss" else LOGPS_METHODS
    results = {m: [] for m in methods}
    for _ in range(rounds):  # interleaved, so that a noisy stretch of the machine hits every row
        for m in methods:
            args = {"table": table, "method": m, "size": size, "repeats": repeats, "padding": padding}
            results[m].append(run_isolated(__file__, args))
    rows = []
    for m in methods:
        row = {"table": table, "method": m}
        bad = next((r for r in results[m] if "skipped" in r or "error" in r), None)
        if bad is not None:
            rows.append({**row, **({"skipped": bad["skipped"]} if "skipped" in bad else {"error": bad["error"]})})
            continue
        secs = [r["seconds"] for r in results[m]]
        measured = results[m][0]["measured_memory"]
        extra = statistics.median(r["extra_peak"] for r in results[m])
        rows.append(
            {
                **row,
                "seconds": statistics.median(secs),
                "low": min(secs),
                "high": max(secs),
                "round_seconds": secs,
                "extra_peak_bytes": extra if measured else None,
            }
        )
    base = next((r for r in rows if r["method"] == "materialised" and "seconds" in r), None)
    for row in rows:
        if "seconds" in row:
            row["vs_materialised"] = row["seconds"] / base["seconds"] if base else None
            extra, base_extra = row["extra_peak_bytes"], base["extra_peak_bytes"] if base else None
            row["peak_vs_materialised"] = extra / base_extra if extra is not None and (base_extra or 0) > 0 else None
    return rows


def table_row(row: dict) -> str:
    if "skipped" in row or "error" in row:
        reason = "skipped: " + row["skipped"] if "skipped" in row else "failed: " + row["error"]
        return f"| {row['method']} | {reason} | | | | |"
    measured = row["extra_peak_bytes"] is not None
    mem = fmt_bytes(row["extra_peak_bytes"]) if measured else "n/a (time floor)"
    mem_ratio = f"{row['peak_vs_materialised']:.2f}x" if row["peak_vs_materialised"] else ""
    time_ratio = f"{row['vs_materialised']:.2f}x" if row["vs_materialised"] else ""
    return (
        f"| {row['method']} | {row['seconds']:.3f} s | {row['low']:.3f}-{row['high']:.3f} s | {time_ratio} | "
        f"{mem} | {mem_ratio} |"
    )


def render_table(table: str, rows: list, size, cores: int, repeats: int, rounds: int) -> str:
    """The table, then simper_rs's ratios to each peer, as the run printed them."""
    failed = [table_row(r) for r in rows if "seconds" not in r]
    lines = ["", table_title(table, size, cores, repeats, rounds), "", *TABLE_HEADER, *failed]
    lines += [table_row(r) for r in rows if "seconds" in r]
    summary = {r["method"]: r for r in rows if "seconds" in r}
    ours = summary.get("simper_rs_fused" if table == "loss" else "simper_rs_linear")
    if ours:
        lines.append("")
        for peer in PEERS:
            if peer in summary:
                line = f"simper_rs / {peer}: time {ours['seconds'] / summary[peer]['seconds']:.2f}x"
                if (summary[peer]["extra_peak_bytes"] or 0) > 0:
                    line += f", extra peak {ours['extra_peak_bytes'] / summary[peer]['extra_peak_bytes']:.2f}x"
                lines.append(line)
    return "\n".join(lines)


def paper_extrapolation(n=16384, h=4096, v=128256, elt=2) -> dict:
    """Memory beyond inputs and parameter gradients at a Llama-3-8B batch, bfloat16, from the
    algorithms' allocations (not measured: no machine here holds it)."""
    import simper_rs

    nv = n * v
    chunk = simper_rs._core.linear_chunk_rows(n, h, v, elt)
    accumulator = v * h * 4
    rows = [
        # At least: the bf16 logits, the float32 log-softmax saved for backward, and its float32
        # gradient (the gather's scatter) = 10 bytes per element (a lower bound).
        ("materialised, log_softmax + gather (lower bound)", nv * (elt + 4 + 4)),
        # The bf16 logits and the kernel's logits-sized bf16 gradient.
        ("materialised, simper_rs kernel", nv * (elt + elt)),
        # One chunk's logits and row gradients, O(N) buffers, and the float32 accumulator of
        # grad W (for a bf16 weight; with float32 master weights it is the gradient itself).
        ("fused_linear, chunk buffers", 2 * chunk * v * elt + n * 4 * 4),
        ("fused_linear, + float32 grad-W accumulator", 2 * chunk * v * elt + n * 4 * 4 + accumulator),
    ]
    return {"n": n, "h": h, "v": v, "chunk": chunk, "rows": [{"path": name, "bytes": b} for name, b in rows]}


def render_extrapolation(e: dict) -> str:
    rows = e["rows"]
    out = [f"Paper extrapolation, N = {e['n']}, H = {e['h']}, V = {e['v']}, bfloat16 (chunk = {e['chunk']} positions):"]
    out += ["", "| path | extra memory |", "| --- | --- |"]
    out += [f"| {r['path']} | {fmt_bytes(r['bytes'])} |" for r in rows]
    out.append(
        f"\nfused_linear / materialised log_softmax: {rows[2]['bytes'] / rows[0]['bytes']:.1%} "
        f"({rows[3]['bytes'] / rows[0]['bytes']:.1%} counting the float32 accumulator)"
    )
    return "\n".join(out)


def render(data: dict) -> str:
    """What the run printed after its command line, from its JSON (benchmarks/report.py)."""
    s = data["settings"]
    parts = [
        render_table(
            table,
            [r for r in data["rows"] if r["table"] == table],
            s["size"],
            data["machine"]["cores"],
            s["repeats"],
            s["rounds"],
        )
        for table in s["tables"]
    ]
    if data.get("extrapolation"):
        parts += ["", render_extrapolation(data["extrapolation"])]
    return "\n".join(parts).lstrip("\n")


def summary(data: dict) -> str:
    """One sentence for the README: the fused-linear loss against Liger's compiled SimPO and the
    materialised path (benchmarks/report.py's block ``fused_linear.summary``)."""
    rows = {r["method"]: r for r in data["rows"] if r["table"] == "loss" and "seconds" in r}
    ours = rows["simper_rs_fused"]
    b, t, h, v = data["settings"]["size"]
    peers = [
        (rows[method], name, owner)
        for method, name, owner in (
            ("liger_simpo_compiled", "Liger-Kernel's compiled SimPO", "Liger's"),
            ("materialised", "the materialised path", "the materialised path's"),
        )
        if method in rows
    ]
    text = f"**Fused linear**, B = {b}, T = {t}, H = {h}, V = {v}, float32: the SimPER loss from hidden states takes "
    if not peers:
        return text + f"{ours['seconds']:.2f} s (no peer ran)."
    times = [f"{ours['seconds'] / row['seconds']:.2f}x the time of {name}" for row, name, _ in peers]
    memory = [f"{owner} {fmt_bytes(row['extra_peak_bytes'])}" for row, _, owner in peers]
    extra = fmt_bytes(ours["extra_peak_bytes"])
    return text + " and ".join(times) + f", with {extra} of extra memory against " + " and ".join(memory) + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--table", choices=["loss", "logps", "all"], default="all")
    parser.add_argument(
        "--rounds", type=int, default=3, help="fresh processes per method, interleaved; median reported"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per process (after one warm-up)")
    parser.add_argument("--quick", action="store_true", help="small sizes and one round, for a smoke run")
    parser.add_argument("--no-padding", action="store_true", help="every label counts (no masked prompt or padding)")
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="where to write the rows (default: benchmarks/results/fused_linear.json; --quick: none)",
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    for name, value in (("--rounds", args.rounds), ("--repeats", args.repeats)):
        if value < 1:
            parser.error(f"{name} must be at least 1, got {value}")
    size, rounds = (QUICK, 1) if args.quick else (FULL, args.rounds)
    tables = ["loss", "logps"] if args.table == "all" else [args.table]
    results = Results(
        "fused_linear",
        args.table,
        size=size,
        rounds=rounds,
        repeats=args.repeats,
        padding=not args.no_padding,
        tables=tables,
    )
    print(f"python {' '.join(sys.argv)}")
    for table in tables:
        rows = run_table(table, size, rounds, args.repeats, not args.no_padding)
        results.rows.extend(rows)
        print(render_table(table, rows, size, os.cpu_count(), args.repeats, rounds), flush=True)
    if args.table == "all":
        results.data["extrapolation"] = paper_extrapolation()
        print()
        print(render_extrapolation(results.data["extrapolation"]))
    results.write(args.json or (None if args.quick else RESULTS / "fused_linear.json"))


if __name__ == "__main__":
    main()
