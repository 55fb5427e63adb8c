"""Padded against packed (padding-free) preference batches on CPU: one training step of a tiny
Llama, and the log-prob op alone on the same tokens.

Lengths like real preference data: prompt and completion lengths drawn log-normally (prompt
median 64 tokens, completion median 48, sigma 0.8), clipped to [4, 8x the median]; 8 pairs per
step; the same records, initial weights and optimizer for both. The model is benchmarks/trainer.py's
Llama (hidden 256, 4 layers, vocabulary 32000), float32, SimPER, with the lm_head as the
fused-linear op (which already skips padding and prompts) and as plain logits + the fused kernel.

  padded        PreferenceCollator: [16, longest] with an attention mask
  packed        PreferenceCollator(padding_free=True): [1, total], position_ids restarting per sequence
  packed_rows   PreferenceCollator(padding_free=True, max_tokens_per_row=ROW_TOKENS): rows of at most
                ROW_TOKENS tokens (attention is quadratic in a row's length)

Each method runs in its own process (peak resident memory above the level after imports).

    python benchmarks/packing.py            # the sizes of RESULTS.md (about 5 minutes on 2 cores)
    python benchmarks/packing.py --quick    # a smaller model, seconds

The rows go to benchmarks/results/packing.json too (``--json PATH``; none for ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from trainer import make_model, make_tokenizer  # noqa: E402  (benchmarks/trainer.py)

from simper_rs.cli.bench import PeakRSS, Results, fmt_bytes, run_isolated  # noqa: E402

SIZES = {
    "full": dict(hidden=256, layers=4, heads=4, vocab=32000, pairs=8, steps=6, warmup=1),
    "quick": dict(hidden=64, layers=2, heads=4, vocab=4000, pairs=4, steps=2, warmup=1),
}
PROMPT_MEDIAN, COMPLETION_MEDIAN, SIGMA = 64, 48, 0.8
ROW_TOKENS = 512
RESULTS = Path(__file__).resolve().parent / "results"


def lognormal_length(rng, median: int) -> int:
    return int(min(max(round(rng.lognormvariate(0.0, SIGMA) * median), 4), 8 * median))


def make_records(size: dict, count: int):
    import random

    rng = random.Random(0)
    words = lambda n: " ".join(f"w{rng.randrange(size['vocab'] - 4)}" for _ in range(n))  # noqa: E731
    return [
        {
            "prompt": words(lognormal_length(rng, PROMPT_MEDIAN)),
            "chosen": words(lognormal_length(rng, COMPLETION_MEDIAN)),
            "rejected": words(lognormal_length(rng, COMPLETION_MEDIAN)),
        }
        for _ in range(count)
    ]


def child(args: dict) -> dict:
    import torch

    from simper_rs import SimPERLoss
    from simper_rs.data import PreferenceCollator
    from simper_rs.trainer import preference_loss

    torch.set_num_threads(os.cpu_count() or 1)
    size = SIZES[args["size"]]
    tokenizer = make_tokenizer(size["vocab"])
    steps = size["warmup"] + size["steps"]
    records = make_records(size, size["pairs"] * steps)
    batching, head = args["method"].rsplit("/", 1)
    packing = {
        "padded": {},
        "packed": dict(padding_free=True),
        "packed_rows": dict(padding_free=True, max_tokens_per_row=ROW_TOKENS),
    }
    collator = PreferenceCollator(
        tokenizer, max_length=16 * PROMPT_MEDIAN, max_prompt_length=8 * PROMPT_MEDIAN, **packing[batching]
    )
    loss_fn = SimPERLoss()
    times, losses, computed, real = [], [], [], []
    with PeakRSS() as peak:
        model = make_model(size, tokenizer)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        for step in range(steps):
            batch = collator(records[step * size["pairs"] : (step + 1) * size["pairs"]])
            start = time.perf_counter()
            out = preference_loss(model, batch, loss_fn, fused_linear=head == "fused_linear")
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - start)
            losses.append(out.loss.item())
            computed.append(batch["input_ids"].numel())
            real.append(
                sum(
                    len(r["prompt"].split()) + len(r[k].split()) + 2
                    for r in records[step * size["pairs"] : (step + 1) * size["pairs"]]
                    for k in ("chosen", "rejected")
                )
            )
    return {
        "seconds": statistics.median(times[size["warmup"] :]),
        "computed": statistics.mean(computed),
        "real": statistics.mean(real),
        "first_loss": losses[0],
        "peak": peak.peak_bytes,
    }


def op_comparison(repeats: int = 5) -> dict:
    """The log-prob op alone, fwd+bwd: per-row on the padded batch against segmented on the packed
    row holding the same tokens (logits of the real tokens are identical)."""
    import torch

    import simper_rs

    size = SIZES["full"]
    import random

    rng = random.Random(1)
    lengths = [
        lognormal_length(rng, PROMPT_MEDIAN) + lognormal_length(rng, COMPLETION_MEDIAN)
        for _ in range(2 * size["pairs"])
    ]
    vocab, width = size["vocab"], max(lengths)
    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(n, vocab, generator=g) for n in lengths]
    labels = [torch.randint(0, vocab, (n,), generator=g) for n in lengths]
    for y in labels:
        y[: max(1, len(y) // 2)] = -100  # a masked prompt
    padded = torch.zeros(len(lengths), width, vocab)
    padded_labels = torch.full((len(lengths), width), -100)
    for i, (x, y) in enumerate(zip(rows, labels)):
        padded[i, : len(x)], padded_labels[i, : len(y)] = x, y
    packed = torch.cat(rows)[None]
    packed_labels = torch.cat(labels)[None]
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    del rows

    def timed(fn, logits):
        logits.requires_grad_(True)
        out = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            fn(logits).sum().backward()
            out.append(time.perf_counter() - start)
            logits.grad = None
        return statistics.median(out[1:])

    per_row = timed(lambda x: simper_rs.sequence_logps(x, padded_labels), padded)
    segmented = timed(lambda x: simper_rs.sequence_logps(x, packed_labels, position_ids=position_ids), packed)
    return {
        "vocab": vocab,
        "sequences": len(lengths),
        "real_tokens": sum(lengths),
        "width": width,
        "repeats": repeats,
        "per_row_seconds": per_row,
        "segmented_seconds": segmented,
        "vs_per_row": segmented / per_row,
    }


def render_op_comparison(op: dict) -> str:
    sequences, width, real = op["sequences"], op["width"], op["real_tokens"]
    return (
        f"log-prob op alone, fwd+bwd, V = {op['vocab']}, {sequences} sequences, {real} real tokens "
        f"(padded batch {sequences} x {width} = {sequences * width} positions), median of {op['repeats']}:\n\n"
        "| op | input | fwd+bwd | vs per-row |\n| --- | --- | --- | --- |\n"
        f"| per-row `sequence_logps` | padded [{sequences}, {width}, V] | {op['per_row_seconds'] * 1e3:.0f} ms | 1.00x |\n"
        f"| segmented `sequence_logps(position_ids=)` | packed [1, {real}, V] | {op['segmented_seconds'] * 1e3:.0f} ms | "
        f"{op['vs_per_row']:.2f}x |"
    )


def table_title(size: dict, cores: int) -> str:
    return (
        f"CPU threads: {cores}; Llama hidden {size['hidden']}, {size['layers']} layers, vocabulary {size['vocab']}; "
        f"{size['pairs']} pairs per step; prompt/completion lengths log-normal (medians {PROMPT_MEDIAN}/{COMPLETION_MEDIAN}, "
        f"sigma {SIGMA}, clipped to [4, 8x median]); float32; median of {size['steps']} steps after {size['warmup']} warm-up"
    )


TABLE_HEADER = [
    "| lm_head | batch | tokens computed / step | real tokens / step | s / step | vs padded | peak above imports | "
    "first-step loss |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
]


def table_row(row: dict) -> str:
    if "error" in row:
        return f"| {row['head']} | {row['batching']} | failed: {row['error']} | | | | | |"
    return (
        f"| {row['head']} | {row['batching']} | {row['computed']:.0f} | {row['real']:.0f} | {row['seconds']:.3f} | "
        f"{row['vs_padded']:.2f}x | {fmt_bytes(row['peak_bytes'])} | {row['first_loss']:.9e} |"
    )


def render(data: dict) -> str:
    """What the run printed, from its JSON (benchmarks/report.py)."""
    size = SIZES[data["settings"]["size"]]
    lines = [table_title(size, data["machine"]["cores"]), "", *TABLE_HEADER, *map(table_row, data["rows"])]
    if data.get("op_comparison"):
        lines += ["", render_op_comparison(data["op_comparison"])]
    return "\n".join(lines)


def summary(data: dict) -> str:
    """One sentence for the README: packed against padded steps, per lm_head
    (benchmarks/report.py's block ``packing.summary``)."""
    rows = {(r["head"], r["batching"]): r for r in data["rows"] if "error" not in r}
    parts = []
    for head, name in (("logits", "a plain-logits lm_head"), ("fused_linear", "the fused-linear one")):
        padded, packed = rows.get((head, "padded")), rows.get((head, "packed"))
        if padded and packed:
            parts.append(
                f"{packed['vs_padded']:.2f}x the padded step's time with {name} "
                f"({packed['peak_bytes'] / padded['peak_bytes']:.2f}x its peak memory)"
            )
    op = data.get("op_comparison")
    if op:
        parts.append(
            f"the segmented log-prob op alone {op['vs_per_row']:.2f}x the per-row op's time on the same tokens"
        )
    return "**Packed batches**: " + ("; ".join(parts) or "no run completed") + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="where to write the rows (default: benchmarks/results/packing.json; --quick: none)",
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    name = "quick" if args.quick else "full"
    results = Results("packing", None, size=name)
    print(table_title(SIZES[name], os.cpu_count()) + "\n")
    print("\n".join(TABLE_HEADER))
    for head in ("fused_linear", "logits"):
        base = None
        for batching in ("padded", "packed", "packed_rows"):
            r = run_isolated(__file__, {"method": f"{batching}/{head}", "size": name})
            row = {"head": head, "batching": batching}
            if "error" in r:
                row["error"] = r["error"]
            else:
                base = base or r
                row.update(
                    computed=r["computed"],
                    real=r["real"],
                    seconds=r["seconds"],
                    vs_padded=r["seconds"] / base["seconds"],
                    peak_bytes=r["peak"],
                    first_loss=r["first_loss"],
                )
            print(table_row(results.add(row)), flush=True)
    if not args.quick:
        results.data["op_comparison"] = op_comparison()
        print()
        print(render_op_comparison(results.data["op_comparison"]))
    results.write(args.json or (None if args.quick else RESULTS / "packing.json"))


if __name__ == "__main__":
    main()
