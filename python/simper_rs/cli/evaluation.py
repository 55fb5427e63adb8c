"""Held-out evaluation (the rows of the table ``simper-rs train`` prints) and ``simper-rs eval``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Dict, List

from .common import CommandError, progress, usable_device

__all__ = ["evaluate", "generation_hits", "summary_table", "values_table", "add_eval_command", "cmd_eval"]


def _batches(records: List[dict], size: int):
    for start in range(0, len(records), size):
        yield records[start : start + size]


def _autocast(model, bf16: bool):
    import torch

    device_type = next(model.parameters()).device.type
    return torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def evaluate(
    model,
    tokenizer,
    collator,
    records: List[dict],
    *,
    batch_size: int = 64,
    generation: bool = True,
    bf16: bool = False,
) -> Dict[str, float]:
    """Held-out preference accuracy (chosen more likely than rejected, by average log-prob), mean
    log-probs and their margin, and with ``generation`` the exact-match accuracy of greedy
    decoding against the chosen answer. Runs on the model's device, in bfloat16 autocast with ``bf16``."""
    import torch

    from ..ops import sequence_logps

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chosen: List[float] = []
    rejected: List[float] = []
    correct = 0
    parts = list(_batches(records, batch_size))
    with torch.no_grad(), _autocast(model, bf16):
        for part in progress(parts, "held-out evaluation", disable=len(parts) < 20, leave=False):
            batch = {k: v.to(device) for k, v in collator(part).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
            logps = sequence_logps(logits, batch["labels"])
            chosen += logps[: len(part)].tolist()
            rejected += logps[len(part) :].tolist()
            if generation:
                correct += generation_hits(model, tokenizer, collator, part)
    model.train(was_training)
    pairs = len(records)
    values = {"preference accuracy": sum(c > r for c, r in zip(chosen, rejected)) / pairs}
    if generation:
        values["generation accuracy"] = correct / pairs
    values["mean logp chosen"] = sum(chosen) / pairs
    values["mean logp rejected"] = sum(rejected) / pairs
    values["margin"] = (sum(chosen) - sum(rejected)) / pairs
    return values


def generation_hits(model, tokenizer, collator, records) -> int:
    """How many greedy completions of the prompts equal the chosen responses exactly."""
    import torch

    device = next(model.parameters()).device
    prompts, answers = [], []
    for record in records:
        ids, labels, _, _ = collator.encode_record(record)
        start = next(i for i, y in enumerate(labels) if y != -100)
        prompts.append(ids[:start])
        answers.append(labels[start:])
    width = max(len(p) for p in prompts)
    pad = collator.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)  # left padding
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention,
        max_new_tokens=max(len(a) for a in answers),
        do_sample=False,
        pad_token_id=pad,
        eos_token_id=tokenizer.eos_token_id,
    )
    return sum(row[: len(answer)] == answer for row, answer in zip(out[:, width:].tolist(), answers))


def summary_table(before: Dict[str, float], after: Dict[str, float]) -> str:
    """The before / after / change table of ``simper-rs train``."""
    lines = [f"{'held-out':<22}{'before':>10}{'after':>10}{'change':>10}"]
    for key in before:
        lines.append(f"{key:<22}{before[key]:>10.3f}{after[key]:>10.3f}{after[key] - before[key]:>+10.3f}")
    return "\n".join(lines)


def values_table(values: Dict[str, float]) -> str:
    """The one-column table of ``simper-rs eval``."""
    lines = [f"{'held-out':<22}{'value':>10}"]
    lines += [f"{key:<22}{value:>10.3f}" for key, value in values.items()]
    return "\n".join(lines)


def add_eval_command(subparsers) -> None:
    evaluate_ = subparsers.add_parser(
        "eval",
        help="held-out preference accuracy, margins and log-probs of a saved model",
        description="Evaluate a saved causal LM (for example <output-dir>/model of simper-rs train) on preference "
        "records: the rows of the table train prints. Runs offline.",
    )
    evaluate_.add_argument("--model", type=Path, required=True, help="a local HuggingFace causal-LM folder")
    evaluate_.add_argument(
        "--data",
        help="preference data, of the kinds simper-rs train --data takes; default: the embedded held-out split",
    )
    evaluate_.add_argument("--split", help="the split of --data; default: its only split, else 'test'")
    evaluate_.add_argument("--max-eval-pairs", type=int, help="the first N pairs only (default: every pair)")
    evaluate_.add_argument(
        "--max-length", type=int, help="tokens per sequence (default: as train: the model's context length, up to 2048)"
    )
    evaluate_.add_argument(
        "--max-prompt-length",
        type=int,
        help="prompt tokens kept (default: half of --max-length on the embedded data, else 1800/2048 of it, as train)",
    )
    evaluate_.add_argument(
        "--batch-size", type=int, help="pairs per forward (default: 64 on the embedded data, else 4)"
    )
    evaluate_.add_argument(
        "--generation-accuracy",
        choices=["on", "off"],
        help="exact-match greedy generation of the chosen answers (default: on for the embedded data set, off for --data)",
    )
    evaluate_.add_argument(
        "--bf16", choices=["on", "off"], help="bfloat16 autocast (default: on for GPUs that support it)"
    )
    evaluate_.add_argument("--device", default="auto", help="torch device (default: auto, cuda when torch sees a GPU)")


def cmd_eval(args) -> int:
    from ..data import PreferenceCollator
    from .common import bf16_supported, offline
    from .loading import context_length, load_eval_records, load_model
    from .options import PAPER_MAX_LENGTH, prompt_length_for

    with offline():
        device = usable_device(args.device)
        records = load_eval_records(args.data, args.split)
        if args.max_eval_pairs is not None:
            if args.max_eval_pairs < 1:
                raise CommandError(f"--max-eval-pairs ({args.max_eval_pairs}) must be at least 1")
            records = records[: args.max_eval_pairs]
        model, tokenizer, model_name = load_model(args.model, records, seed=0)
        model.to(device)
        embedded = args.data is None
        # The lengths train used: the toy's 64 and 32 come out of the same rule (its context is 64).
        max_length = args.max_length or min(context_length(model, tokenizer) or PAPER_MAX_LENGTH, PAPER_MAX_LENGTH)
        max_prompt_length = args.max_prompt_length or prompt_length_for(max_length, toy=embedded)
        try:
            collator = PreferenceCollator(tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)
        except ValueError as err:
            raise CommandError(str(err)) from None
        generation = embedded if args.generation_accuracy is None else args.generation_accuracy == "on"
        bf16 = bf16_supported(device.type) if args.bf16 is None else args.bf16 == "on"
        batch_size = args.batch_size or (64 if embedded else 4)
        if batch_size < 1:
            raise CommandError(f"--batch-size ({batch_size}) must be at least 1")
        print(f"simper-rs eval: {model_name} on {len(records)} preference pairs\n")
        print(
            values_table(
                evaluate(model, tokenizer, collator, records, batch_size=batch_size, generation=generation, bf16=bf16)
            )
        )
    return 0
