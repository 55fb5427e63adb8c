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
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from trainer import make_model, make_tokenizer  # noqa: E402  (benchmarks/trainer.py)

from simper_rs.bench import PeakRSS, fmt_bytes, run_isolated  # noqa: E402

SIZES = {
    "full": dict(hidden=256, layers=4, heads=4, vocab=32000, pairs=8, steps=6, warmup=1),
    "quick": dict(hidden=64, layers=2, heads=4, vocab=4000, pairs=4, steps=2, warmup=1),
}
PROMPT_MEDIAN, COMPLETION_MEDIAN, SIGMA = 64, 48, 0.8
ROW_TOKENS = 512


def lognormal_length(rng, median: int) -> int:
    return int(min(max(round(rng.lognormvariate(0.0, SIGMA) * median), 4), 8 * median))


def make_records(size: dict, count: int):
    import random

    rng = random.Random(0)
    words = lambda n: " ".join(f"w{rng.randrange(size['vocab'] - 4)}" for _ in range(n))  # noqa: E731
    return [
        {"prompt": words(lognormal_length(rng, PROMPT_MEDIAN)), "chosen": words(lognormal_length(rng, COMPLETION_MEDIAN)),
         "rejected": words(lognormal_length(rng, COMPLETION_MEDIAN))}
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
    packing = {"padded": {}, "packed": dict(padding_free=True), "packed_rows": dict(padding_free=True, max_tokens_per_row=ROW_TOKENS)}
    collator = PreferenceCollator(tokenizer, max_length=16 * PROMPT_MEDIAN, max_prompt_length=8 * PROMPT_MEDIAN, **packing[batching])
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
            real.append(sum(len(r["prompt"].split()) + len(r[k].split()) + 2 for r in records[step * size["pairs"] : (step + 1) * size["pairs"]] for k in ("chosen", "rejected")))
    return {
        "seconds": statistics.median(times[size["warmup"] :]),
        "computed": statistics.mean(computed),
        "real": statistics.mean(real),
        "first_loss": losses[0],
        "peak": peak.peak_bytes,
    }


def op_comparison(repeats: int = 5) -> str:
    """The log-prob op alone, fwd+bwd: per-row on the padded batch against segmented on the packed
    row holding the same tokens (logits of the real tokens are identical)."""
    import torch

    import simper_rs

    size = SIZES["full"]
    import random

    rng = random.Random(1)
    lengths = [lognormal_length(rng, PROMPT_MEDIAN) + lognormal_length(rng, COMPLETION_MEDIAN) for _ in range(2 * size["pairs"])]
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
    return (
        f"log-prob op alone, fwd+bwd, V = {vocab}, {len(lengths)} sequences, {sum(lengths)} real tokens "
        f"(padded batch {len(lengths)} x {width} = {len(lengths) * width} positions), median of {repeats}:\n\n"
        "| op | input | fwd+bwd | vs per-row |\n| --- | --- | --- | --- |\n"
        f"| per-row `sequence_logps` | padded [{len(lengths)}, {width}, V] | {per_row * 1e3:.0f} ms | 1.00x |\n"
        f"| segmented `sequence_logps(position_ids=)` | packed [1, {sum(lengths)}, V] | {segmented * 1e3:.0f} ms | {segmented / per_row:.2f}x |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    name = "quick" if args.quick else "full"
    size = SIZES[name]
    print(
        f"CPU threads: {os.cpu_count()}; Llama hidden {size['hidden']}, {size['layers']} layers, vocabulary {size['vocab']}; "
        f"{size['pairs']} pairs per step; prompt/completion lengths log-normal (medians {PROMPT_MEDIAN}/{COMPLETION_MEDIAN}, "
        f"sigma {SIGMA}, clipped to [4, 8x median]); float32; median of {size['steps']} steps after {size['warmup']} warm-up\n"
    )
    print("| lm_head | batch | tokens computed / step | real tokens / step | s / step | vs padded | peak above imports | first-step loss |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for head in ("fused_linear", "logits"):
        base = None
        for batching in ("padded", "packed", "packed_rows"):
            r = run_isolated(__file__, {"method": f"{batching}/{head}", "size": name})
            if "error" in r:
                print(f"| {head} | {batching} | failed: {r['error']} | | | | | |", flush=True)
                continue
            base = base or r
            print(
                f"| {head} | {batching} | {r['computed']:.0f} | {r['real']:.0f} | {r['seconds']:.3f} | {r['seconds'] / base['seconds']:.2f}x | "
                f"{fmt_bytes(r['peak'])} | {r['first_loss']:.9e} |",
                flush=True,
            )
    if not args.quick:
        print()
        print(op_comparison())


if __name__ == "__main__":
    main()
