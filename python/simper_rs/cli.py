"""The ``simper-rs`` command line.

    simper-rs train            align the embedded default model on the embedded default data
    simper-rs train --loss dil --estimator cpc      the DPO-style comparison on the same data
    simper-rs train --data prefs.jsonl --model ./my-model --output-dir runs/x
    simper-rs bench            the fused kernel against log_softmax + gather, side by side
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

# Offline by design: never reach for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simper-rs",
        description="Preference alignment with SimPER and DIL (Rust core). Runs offline.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = sub.add_parser(
        "train",
        help="supervised warm-up, then preference training, with held-out evaluation before and after",
        description="Supervised warm-up on the chosen responses, then preference training (SimPER by default), "
        "then a held-out evaluation before and after. With no arguments: the embedded tiny model and data set.",
    )
    train.add_argument("--loss", choices=["simper", "dil"], default="simper", help="preference loss (default: simper)")
    train.add_argument("--estimator", choices=["lsif", "bce", "ukl", "cpc"], default="lsif", help="DIL estimator (default: lsif; cpc is DPO-style)")
    train.add_argument("--beta", type=float, default=1.0, help="beta of the cpc estimator (default: 1.0)")
    train.add_argument("--data", type=Path, help="preference records (.jsonl or .json); default: the embedded data set")
    train.add_argument("--eval-data", type=Path, help="held-out records; default: the embedded test split, or the last 10%% of --data")
    train.add_argument("--model", type=Path, help="a local HuggingFace causal-LM folder; default: a tiny Llama built offline")
    train.add_argument("--output-dir", type=Path, default=Path("simper-rs-output"), help="where metrics.jsonl and training.png go (default: ./simper-rs-output)")
    train.add_argument("--epochs", type=float, default=2.0, help="preference-training epochs (default: 2)")
    train.add_argument("--lr", type=float, default=3e-3, help="preference-training learning rate (default: 3e-3)")
    train.add_argument("--warmup-steps", type=int, default=15, help="supervised warm-up steps on the chosen responses (default: 15)")
    train.add_argument("--batch-size", type=int, default=32, help="preference pairs per batch (default: 32)")
    train.add_argument("--max-length", type=int, default=64, help="tokens per sequence (default: 64)")
    train.add_argument("--fused-linear", action="store_true", help="compute the loss from hidden states, never materialising logits")
    train.add_argument("--padding-free", action="store_true", help="pack each preference batch into one row without padding (same loss, no compute on padding)")
    train.add_argument("--max-tokens-per-row", type=int, help="with --padding-free: pack into rows of at most this many tokens (default: one row)")
    train.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    train.add_argument("--seed", type=int, default=0)
    bench = sub.add_parser("bench", help="fused kernel vs log_softmax + gather: time and peak memory", description="Forward+backward time and peak memory of the fused log-prob kernel against log_softmax + gather and a logsumexp-based selective log-softmax, each in its own process.")
    bench.add_argument("--quick", action="store_true", help="a small size, in seconds")
    evaluate_ = sub.add_parser(
        "eval",
        help="held-out preference accuracy, margins and log-probs of a saved model",
        description="Evaluate a saved causal LM (for example <output-dir>/model of simper-rs train) on preference "
        "records: the rows of the table train prints.",
    )
    evaluate_.add_argument("--model", type=Path, required=True, help="a local HuggingFace causal-LM folder")
    evaluate_.add_argument("--data", type=Path, help="preference records (.jsonl or .json); default: the embedded held-out split")
    evaluate_.add_argument("--max-length", type=int, default=64, help="tokens per sequence (default: 64, as train)")
    evaluate_.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    doctor = sub.add_parser(
        "doctor",
        help="versions, CPU and CUDA support, and which kernel runs where",
        description="One screen on this installation: versions, the torch it was built for, the CPU kernel's "
        "instruction set and threads, CUDA, NVRTC and the driver, the CUDA kernel per GPU, and what backend='auto' "
        "picks. Exit status 1 when something needed cannot work.",
    )
    doctor.add_argument("--device", choices=["cpu", "cuda"], help="also fail when this device cannot run the fused kernel")
    return parser


# -- data and model


def _records(path: Optional[Path], default_split: str) -> List[dict]:
    """Preference records from ``path``, or a split of the embedded data set; bad files are one-line errors."""
    from .data import PreferenceDataError, load_default_data, load_preference_data

    try:
        return load_default_data()[default_split] if path is None else load_preference_data(path)
    except FileNotFoundError as err:
        raise CommandError(str(err)) from None
    except PreferenceDataError as err:
        raise CommandError(f"bad preference data: {err}") from None


def _load_data(args) -> tuple:
    if args.data is None:
        return _records(None, "train"), _records(args.eval_data, "test")
    train = _records(args.data, "train")
    if args.eval_data is not None:
        return train, _records(args.eval_data, "test")
    if len(train) < 10:
        raise CommandError(f"--data: {args.data} has {len(train)} records; give at least 10, or --eval-data")
    cut = len(train) - max(1, len(train) // 10)
    return train[:cut], train[cut:]


def _load_model(args, records):
    from .tiny import build_tiny_model, build_tokenizer

    if args.model is None:
        tokenizer = build_tokenizer(records)
        return build_tiny_model(tokenizer, seed=args.seed), tokenizer, "tiny Llama (built offline)"
    if not args.model.is_dir():
        raise CommandError(f"--model: {args.model} is not a folder (expected a local HuggingFace model)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(args.model, local_files_only=True)
    except (OSError, ValueError) as err:
        raise CommandError(f"--model: cannot load {args.model}: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, str(args.model)


# -- evaluation


def _batches(records: List[dict], size: int):
    for start in range(0, len(records), size):
        yield records[start : start + size]


def evaluate(model, tokenizer, collator, records: List[dict], device, batch_size: int = 64) -> Dict[str, float]:
    """Held-out preference accuracy, exact-match greedy generation accuracy and mean log-probs."""
    import torch

    from .ops import sequence_logps

    model.eval()
    chosen, rejected, correct = [], [], 0
    with torch.no_grad():
        for part in _batches(records, batch_size):
            batch = {k: v.to(device) for k, v in collator(part).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
            logps = sequence_logps(logits, batch["labels"])
            chosen += logps[: len(part)].tolist()
            rejected += logps[len(part) :].tolist()
            correct += _generation_hits(model, tokenizer, collator, part, device)
    model.train()
    pairs = len(records)
    return {
        "preference accuracy": sum(c > r for c, r in zip(chosen, rejected)) / pairs,
        "generation accuracy": correct / pairs,
        "mean logp chosen": sum(chosen) / pairs,
        "mean logp rejected": sum(rejected) / pairs,
        "margin": (sum(chosen) - sum(rejected)) / pairs,
    }


def _generation_hits(model, tokenizer, collator, records, device) -> int:
    """How many greedy completions of the prompts equal the chosen responses exactly."""
    import torch

    prompts, answers = [], []
    for record in records:
        ids, labels, _, _ = collator.encode_record(record)
        start = next(i for i, y in enumerate(labels) if y != -100)
        prompts.append(ids[:start])
        answers.append([y for y in labels[start:]])
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
    hits = 0
    for row, answer in zip(out[:, width:].tolist(), answers):
        hits += row[: len(answer)] == answer
    return hits


# -- training


def _warm_up(model, collator, records, args, device) -> None:
    """Supervised fine-tuning on the chosen responses (the prompt is masked)."""
    import random

    import torch

    if args.warmup_steps <= 0:
        return
    rng = random.Random(args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in _progress(range(args.warmup_steps), "warm-up (SFT on chosen)"):
        batch = collator(rng.sample(records, min(args.batch_size, len(records))))
        half = batch["input_ids"].shape[0] // 2
        out = model(
            input_ids=batch["input_ids"][:half].to(device),
            attention_mask=batch["attention_mask"][:half].to(device),
            labels=batch["labels"][:half].to(device),
            use_cache=False,
        )
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()


def _world() -> tuple:
    """(processes, this process's rank) when started by accelerate launch / torchrun, else (1, 0)."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def _progress(iterable, description: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, desc=description, dynamic_ncols=True, disable=_world()[1] != 0)


def _metrics_callback(path: Path):
    from transformers import TrainerCallback

    class WriteMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                with open(path, "a") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return WriteMetrics()


def _preference_train(model, tokenizer, collator, train, test, args, metrics_path: Path):
    from transformers import TrainingArguments

    from .data import PreferenceCollator
    from .trainer import PreferenceTrainer

    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    processes, rank = _world()
    training_args = TrainingArguments(
        output_dir=str(args.output_dir / "trainer"),
        num_train_epochs=args.epochs,
        # --batch-size is the global batch: several processes split it (DDP averages their gradients).
        per_device_train_batch_size=args.batch_size // processes,
        per_device_eval_batch_size=64,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        logging_steps=max(1, steps_per_epoch // 20),
        eval_strategy="steps",
        eval_steps=max(1, steps_per_epoch // 2),
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        use_cpu=args.device == "cpu",
        dataloader_num_workers=0,
        disable_tqdm=rank != 0,
    )
    trainer = PreferenceTrainer(
        model=model,
        args=training_args,
        loss=args.loss,
        estimator=args.estimator,
        beta=args.beta,
        fused_linear=args.fused_linear,
        data_collator=PreferenceCollator(
            tokenizer, collator.max_length, collator.max_prompt_length, padding_free=args.padding_free, max_tokens_per_row=args.max_tokens_per_row
        ),
        train_dataset=train,
        eval_dataset=test[:128],
        processing_class=tokenizer,
        callbacks=[_metrics_callback(metrics_path)],
    )
    # Keep the progress bar, drop its printing of every log dict: the metrics go to
    # metrics.jsonl and the summary table.
    from transformers.trainer_callback import ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(QuietProgress())
    trainer.train()
    return trainer.model


def _plot(metrics_path: Path, png_path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    train = [r for r in rows if "loss" in r and "rewards/margins" in r]
    evals = [r for r in rows if "eval_rewards/margins" in r]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    step = [r["step"] for r in train]
    axes[0].plot(step, [r["loss"] for r in train], label="train")
    axes[0].plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="held-out")
    axes[0].set_title("loss")
    axes[1].plot(step, [r["rewards/margins"] for r in train], label="train")
    axes[1].plot([r["step"] for r in evals], [r["eval_rewards/margins"] for r in evals], "o-", label="held-out")
    axes[1].set_title("margin (logp chosen - rejected)")
    axes[2].plot(step, [r["logps/chosen"] for r in train], label="chosen")
    axes[2].plot(step, [r["logps/rejected"] for r in train], label="rejected")
    axes[2].set_title("average log-prob (train)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def _summary(before: Dict[str, float], after: Dict[str, float]) -> str:
    lines = [f"{'held-out':<22}{'before':>10}{'after':>10}{'change':>10}"]
    for key in before:
        lines.append(f"{key:<22}{before[key]:>10.3f}{after[key]:>10.3f}{after[key] - before[key]:>+10.3f}")
    return "\n".join(lines)


def _device(name: str, processes: int = 1):
    import torch

    try:
        device = torch.device(name)
        if device.type == "cuda" and device.index is None and processes > 1:  # one GPU per process
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.empty(0, device=device)
    except (RuntimeError, ValueError) as err:
        raise CommandError(f"--device: {name} is not usable here ({str(err).splitlines()[0]})") from None
    return device


def _values(values: Dict[str, float]) -> str:
    lines = [f"{'held-out':<22}{'value':>10}"]
    lines += [f"{key:<22}{value:>10.3f}" for key, value in values.items()]
    return "\n".join(lines)


def cmd_eval(args) -> int:
    from .data import PreferenceCollator

    device = _device(args.device)
    records = _records(args.data, "test")
    model, tokenizer, model_name = _load_model(args, records)
    model.to(device)
    collator = PreferenceCollator(tokenizer, max_length=args.max_length, max_prompt_length=args.max_length // 2)
    print(f"simper-rs eval: {model_name} on {len(records)} preference pairs\n")
    print(_values(evaluate(model, tokenizer, collator, records, device)))
    return 0


def cmd_train(args) -> int:
    import torch

    from .data import PreferenceCollator

    if args.epochs <= 0 or args.lr <= 0 or args.batch_size <= 0:
        raise CommandError("--epochs, --lr and --batch-size must be positive")
    processes, rank = _world()
    device = _device(args.device, processes)
    if device.type == "cpu":
        # DeepSpeed, when installed, is imported by the Trainer and otherwise warns that it found no GPU.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if args.max_tokens_per_row is not None and (not args.padding_free or args.max_tokens_per_row < 1):
        raise CommandError("--max-tokens-per-row takes a positive number and goes with --padding-free")
    if args.batch_size % processes:
        raise CommandError(f"--batch-size {args.batch_size} must split evenly over the {processes} processes")
    # Every process runs the same seeded warm-up and evaluations (identical models), and trains
    # its share of each global batch; only the first one prints and writes files.
    say = print if rank == 0 else (lambda *a, **k: None)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    train, test = _load_data(args)
    model, tokenizer, model_name = _load_model(args, train + test)
    model.to(device)
    collator = PreferenceCollator(tokenizer, max_length=args.max_length, max_prompt_length=args.max_length // 2)
    metrics_path = args.output_dir / "metrics.jsonl"
    if rank == 0:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("")
    loss_name = "SimPER" if args.loss == "simper" else f"DIL ({args.estimator})"
    on = f" on {processes} processes" if processes > 1 else ""
    say(f"simper-rs train: {loss_name} on {len(train)} train / {len(test)} held-out pairs, model: {model_name}{on}")

    _warm_up(model, collator, train, args, device)
    before = evaluate(model, tokenizer, collator, test, device)
    model = _preference_train(model, tokenizer, collator, train, test, args, metrics_path)
    after = evaluate(model, tokenizer, collator, test, device)

    if rank != 0:
        return 0
    # The aligned model is the point of the run: saved as an ordinary HuggingFace model (its own
    # lm_head, whatever loss path trained it), loadable with the Auto classes.
    model_dir = args.output_dir / "model"
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    png_path = args.output_dir / "training.png"
    _plot(metrics_path, png_path, f"simper-rs: {loss_name}")
    summary = {"loss": args.loss, "estimator": args.estimator, "before": before, "after": after, "seconds": time.perf_counter() - started}
    (args.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{loss_name}: held-out evaluation before and after preference training\n")
    print(_summary(before, after))
    print(f"\nwrote {metrics_path}, {png_path} and {args.output_dir / 'summary.json'} in {summary['seconds']:.0f} s")
    print(f"saved the trained model and tokenizer to {model_dir} (AutoModelForCausalLM / AutoTokenizer.from_pretrained)")
    return 0


def cmd_bench(args) -> int:
    from . import bench

    bench.headline(quick=args.quick)
    return 0


def cmd_doctor(args) -> int:
    from . import doctor

    return doctor.run(args.device)


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return {"train": cmd_train, "eval": cmd_eval, "bench": cmd_bench, "doctor": cmd_doctor}[args.command](args)
    except CommandError as err:
        print(f"simper-rs {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
