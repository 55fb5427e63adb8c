"""The ``simper-rs`` command line.

    simper-rs train            align the embedded default model on the embedded default data
    simper-rs train --loss dil --estimator cpc      the DPO-style comparison on the same data
    simper-rs train --data prefs.jsonl --model ./my-model --output-dir runs/x
    simper-rs bench            the fused kernel against log_softmax + gather, side by side
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Literal, Optional

# Offline by design: never reach for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def _field(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simper-rs",
        description="Preference alignment with SimPER and DIL (Rust core). Runs offline.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only listed here: `simper-rs train ...` is parsed by _train_parser (HfArgumentParser).
    sub.add_parser(
        "train",
        add_help=False,
        help="supervised warm-up, then preference training, with held-out evaluation before and after "
        "(every TrainingArguments option; `simper-rs train --help`)",
    )
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


# -- the train command's options: TrainingArguments (HfArgumentParser) plus this package's own


@dataclasses.dataclass
class SimperRsArguments:
    """The options of ``simper-rs train`` beyond transformers' ``TrainingArguments``."""

    loss: Literal["simper", "dil"] = _field("simper", "preference loss")
    estimator: Literal["lsif", "bce", "ukl", "cpc"] = _field("lsif", "DIL estimator (cpc is DPO-style)")
    beta: float = _field(1.0, "beta of the cpc estimator")
    data: Optional[str] = _field(None, "preference records (.jsonl or .json); default: the embedded data set")
    eval_data: Optional[str] = _field(None, "held-out records; default: the embedded test split, or the last 10%% of --data")
    model: Optional[str] = _field(None, "a local HuggingFace causal-LM folder; default: a tiny Llama built offline")
    batch_size: Optional[int] = _field(
        None, "preference pairs per optimizer step, over all processes and accumulation steps; sets "
        "--per-device-train-batch-size to batch-size / (processes x gradient accumulation steps); "
        "None: 32, unless --per-device-train-batch-size is given"
    )
    max_length: int = _field(64, "tokens per sequence, prompt included")
    max_prompt_length: Optional[int] = _field(None, "prompt tokens kept (its last ones); None: half of --max-length")
    fused_linear: bool = _field(False, "compute the loss from hidden states, never materialising logits")
    padding_free: bool = _field(False, "pack each preference batch into one row without padding (same loss, no compute on padding)")
    max_tokens_per_row: Optional[int] = _field(None, "with --padding-free: pack into rows of at most this many tokens (default: one row)")
    sft_warmup_steps: int = _field(15, "supervised warm-up steps on the chosen responses before preference training (0: none)")
    device: str = _field("cpu", "torch device")


# This command's defaults where they differ from TrainingArguments' (the main job's settings);
# None means "derived from the data" (see _resolve).
_TRAIN_DEFAULTS = {
    "output_dir": "simper-rs-output",
    "seed": 0,
    "num_train_epochs": 2.0,
    "learning_rate": 3e-3,
    "lr_scheduler_type": "constant",
    "per_device_train_batch_size": None,
    "per_device_eval_batch_size": 64,
    "eval_strategy": "steps",
    "eval_steps": None,
    "logging_steps": None,
    "save_steps": 500,
    "save_total_limit": 2,
    "report_to": "none",
}
# Flags of earlier releases: the name they map to (argparse keeps both working).
_OLD_FLAGS = {"--epochs": ("num_train_epochs", float), "--lr": ("learning_rate", float)}


def _train_parser():
    from transformers import HfArgumentParser, TrainingArguments

    parser = HfArgumentParser(
        (SimperRsArguments, TrainingArguments),
        prog="simper-rs train",
        usage="simper-rs train [CONFIG.yaml] [--option value ...]",
        description="Supervised warm-up on the chosen responses, then preference training (SimPER by default) with "
        "transformers' Trainer, then a held-out evaluation before and after. With no arguments: the embedded tiny "
        "model and data set. Every TrainingArguments field is an option (--snake_case or --kebab-case); a YAML file "
        "of options may come first, and the command line overrides it. Checkpoints go to <output-dir>/checkpoints.",
    )
    parser.add_argument("config", nargs="?", help="a YAML file of options (keys as the options' names); flags given after it override it")
    for flag, (dest, kind) in _OLD_FLAGS.items():
        parser.add_argument(flag, dest=dest, type=kind, default=argparse.SUPPRESS, help=f"same as --{dest}")
    parser.set_defaults(**_TRAIN_DEFAULTS)
    # --resume-from-checkpoint alone means the newest checkpoint in <output-dir>/checkpoints.
    resume = parser._option_string_actions["--resume_from_checkpoint"]
    resume.nargs, resume.const = "?", "latest"
    resume.help = "continue a killed run: a checkpoint folder, or 'latest' (the default when no value is given)"
    # Several integrations at once, as a list in a config file or --report-to tensorboard wandb.
    parser._option_string_actions["--report_to"].nargs = "+"
    return parser


def _config_tokens(path: str, parser) -> List[str]:
    """The options of a YAML config file as command-line tokens, so the same parsing and checks apply."""
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise CommandError(f"config: no such file: {path}") from None
    except (OSError, yaml.YAMLError) as err:
        raise CommandError(f"config: cannot read {path}: {' '.join(str(err).split())}") from None
    if config is None:
        return []
    if not isinstance(config, dict):
        raise CommandError(f"config: {path} must be a mapping of option names to values, not {type(config).__name__}")
    tokens: List[str] = []
    for key, value in config.items():
        flag = f"--{str(key).replace('-', '_')}"
        if flag not in parser._option_string_actions or flag == "--help":
            raise CommandError(f"config: {path}: unknown option {key!r} (see simper-rs train --help)")
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        tokens.append(flag)
        for item in values:
            tokens.append(str(item).lower() if isinstance(item, bool) else json.dumps(item) if isinstance(item, dict) else str(item))
    return tokens


def parse_train_arguments(argv: List[str]):
    """(SimperRsArguments, TrainingArguments) of ``simper-rs train argv``; the Trainer's output_dir is
    <output-dir>/checkpoints, the run's own folder is ``opts.output_dir``."""
    from transformers import TrainingArguments

    parser = _train_parser()
    tokens = list(argv)
    if tokens and not tokens[0].startswith("-"):
        tokens = _config_tokens(tokens[0], parser) + tokens[1:]
    given = {t.split("=")[0] for t in tokens if t.startswith("--")}
    if {"--warmup_steps", "--warmup-steps"} & given:
        print(
            "simper-rs train: note: --warmup-steps is TrainingArguments' learning-rate warm-up; the supervised "
            "warm-up on the chosen responses (--warmup-steps of earlier releases) is now --sft-warmup-steps",
            file=sys.stderr,
        )
    ns = parser.parse_args(tokens)
    if ns.config is not None:
        raise CommandError(f"unexpected argument {ns.config!r}: a YAML config file goes right after 'train'")
    opts = SimperRsArguments(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(SimperRsArguments)})
    processes, _ = _world()
    ta = {f.name: getattr(ns, f.name) for f in dataclasses.fields(TrainingArguments) if f.init and hasattr(ns, f.name)}
    accumulation = ta["gradient_accumulation_steps"]
    if accumulation < 1:
        raise CommandError("--gradient-accumulation-steps must be at least 1")
    if opts.batch_size is not None and ta["per_device_train_batch_size"] is not None:
        raise CommandError("give --batch-size (pairs per optimizer step) or --per-device-train-batch-size, not both")
    if ta["per_device_train_batch_size"] is None:
        batch = 32 if opts.batch_size is None else opts.batch_size
        if batch <= 0:
            raise CommandError("--epochs, --lr and --batch-size must be positive")
        if batch % (processes * accumulation):
            over = f"the {processes} processes" if accumulation == 1 else f"{processes} process(es) x {accumulation} accumulation steps"
            raise CommandError(f"--batch-size {batch} must split evenly over {over}")
        # The global batch: several processes split it (DDP averages their gradients).
        ta["per_device_train_batch_size"] = batch // (processes * accumulation)
    opts.batch_size = ta["per_device_train_batch_size"] * processes * accumulation
    if ta["num_train_epochs"] <= 0 and ta["max_steps"] <= 0 or ta["learning_rate"] <= 0 or opts.batch_size <= 0:
        raise CommandError("--epochs, --lr and --batch-size must be positive")
    if opts.max_prompt_length is None:
        opts.max_prompt_length = opts.max_length // 2
    if not 0 < opts.max_prompt_length < opts.max_length:
        raise CommandError(f"--max-prompt-length ({opts.max_prompt_length}) must be positive and smaller than --max-length ({opts.max_length})")
    if opts.max_tokens_per_row is not None and (not opts.padding_free or opts.max_tokens_per_row < 1):
        raise CommandError("--max-tokens-per-row takes a positive number and goes with --padding-free")
    opts.output_dir = Path(ta["output_dir"])
    opts.seed = ta["seed"]
    opts.data, opts.eval_data, opts.model = (None if p is None else Path(p) for p in (opts.data, opts.eval_data, opts.model))
    opts.resume = ta.pop("resume_from_checkpoint")
    ta["output_dir"] = str(opts.output_dir / "checkpoints")
    ta["use_cpu"] = ta["use_cpu"] or opts.device == "cpu"
    return opts, ta


def _training_arguments(ta: dict, steps_per_epoch: int):
    """TrainingArguments, with the logging and evaluation intervals the data size implies unless given."""
    from transformers import TrainingArguments

    ta = dict(ta)
    if ta["logging_steps"] is None:
        ta["logging_steps"] = max(1, steps_per_epoch // 20)
    if ta["eval_steps"] is None:
        ta["eval_steps"] = max(1, steps_per_epoch // 2)
    if "tensorboard" in (ta["report_to"] if isinstance(ta["report_to"], list) else [ta["report_to"]]) or ta["report_to"] == "all":
        # TensorBoard event files next to the run's other outputs (written locally, nothing uploaded).
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(Path(ta["output_dir"]).parent / "tensorboard"))
    if _world()[1] != 0:
        ta["disable_tqdm"] = True
    try:
        return TrainingArguments(**ta)
    except (ValueError, TypeError) as err:
        raise CommandError(str(err).strip().splitlines()[0]) from None


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

    if args.sft_warmup_steps <= 0:
        return
    rng = random.Random(args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in _progress(range(args.sft_warmup_steps), "warm-up (SFT on chosen)"):
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


def _preference_train(model, tokenizer, collator, train, test, opts, ta: dict, metrics_path: Path, before, resume: Optional[Path]):
    from .checkpoints import ResumableTrainer
    from .data import PreferenceCollator

    training_args = _training_arguments(ta, math.ceil(len(train) / opts.batch_size))
    trainer = ResumableTrainer(
        model=model,
        args=training_args,
        loss=opts.loss,
        estimator=opts.estimator,
        beta=opts.beta,
        fused_linear=opts.fused_linear,
        data_collator=PreferenceCollator(
            tokenizer, collator.max_length, collator.max_prompt_length, padding_free=opts.padding_free, max_tokens_per_row=opts.max_tokens_per_row
        ),
        train_dataset=train,
        eval_dataset=test[:128],
        processing_class=tokenizer,
        callbacks=[_metrics_callback(metrics_path)],
        extra_state={"before": before},
    )
    # Keep the progress bar, drop its printing of every log dict: the metrics go to
    # metrics.jsonl and the summary table.
    from transformers.trainer_callback import ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(QuietProgress())
    trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
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


def _truncate_metrics(metrics_path: Path, step: int) -> None:
    """Keep the rows a resumed run would not write again: the steps up to its checkpoint's, without the
    end-of-training summary (written after the last checkpoint)."""
    rows = []
    for line in metrics_path.read_text().splitlines() if metrics_path.exists() else []:
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short by the kill
            continue
        if row.get("step", 0) <= step and "train_runtime" not in row:
            rows.append(line + "\n")
    tmp = metrics_path.with_name(metrics_path.name + ".tmp")
    tmp.write_text("".join(rows))
    os.replace(tmp, metrics_path)


def cmd_train(argv: List[str]) -> int:
    import torch

    from .checkpoints import CheckpointError, ResumableTrainer, checkpoint_step, checkpoints_by_step, find_checkpoint
    from .data import PreferenceCollator

    opts, ta = parse_train_arguments(argv)
    processes, rank = _world()
    device = _device(opts.device, processes)
    if device.type == "cpu":
        # DeepSpeed, when installed, is imported by the Trainer and otherwise warns that it found no GPU.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    resume = None
    before = None
    if opts.resume is not None:
        try:
            resume = find_checkpoint(opts.resume, opts.output_dir / "checkpoints")
            resume_step = checkpoint_step(resume)
            before = ResumableTrainer.load_extra_state(resume)["before"]
        except (CheckpointError, KeyError, ValueError, OSError) as err:
            raise CommandError(f"--resume-from-checkpoint: {err}") from None
    # Every process runs the same seeded warm-up and evaluations (identical models), and trains
    # its share of each global batch; only the first one prints and writes files.
    say = print if rank == 0 else (lambda *a, **k: None)
    started = time.perf_counter()
    torch.manual_seed(opts.seed)
    train, test = _load_data(opts)
    model, tokenizer, model_name = _load_model(opts, train + test)
    model.to(device)
    try:
        collator = PreferenceCollator(tokenizer, max_length=opts.max_length, max_prompt_length=opts.max_prompt_length)
    except ValueError as err:
        raise CommandError(str(err)) from None
    metrics_path = opts.output_dir / "metrics.jsonl"
    if rank == 0:
        opts.output_dir.mkdir(parents=True, exist_ok=True)
        if resume is None:
            metrics_path.write_text("")
        else:
            _truncate_metrics(metrics_path, resume_step)
    loss_name = "SimPER" if opts.loss == "simper" else f"DIL ({opts.estimator})"
    on = f" on {processes} processes" if processes > 1 else ""
    say(f"simper-rs train: {loss_name} on {len(train)} train / {len(test)} held-out pairs, model: {model_name}{on}")

    if resume is None:
        _warm_up(model, collator, train, opts, device)
        before = evaluate(model, tokenizer, collator, test, device)
    else:
        # The checkpoint holds the warmed-up, partly trained weights; the "before" column was
        # measured by the interrupted run.
        say(f"resuming from {resume} (step {resume_step})")
    try:
        model = _preference_train(model, tokenizer, collator, train, test, opts, ta, metrics_path, before, resume)
    except CheckpointError as err:
        raise CommandError(f"--resume-from-checkpoint: {err}") from None
    after = evaluate(model, tokenizer, collator, test, device)

    if rank != 0:
        return 0
    # The aligned model is the point of the run: saved as an ordinary HuggingFace model (its own
    # lm_head, whatever loss path trained it), loadable with the Auto classes.
    model_dir = opts.output_dir / "model"
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    png_path = opts.output_dir / "training.png"
    _plot(metrics_path, png_path, f"simper-rs: {loss_name}")
    summary = {"loss": opts.loss, "estimator": opts.estimator, "before": before, "after": after, "seconds": time.perf_counter() - started}
    (opts.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{loss_name}: held-out evaluation before and after preference training\n")
    print(_summary(before, after))
    print(f"\nwrote {metrics_path}, {png_path} and {opts.output_dir / 'summary.json'} in {summary['seconds']:.0f} s")
    print(f"saved the trained model and tokenizer to {model_dir} (AutoModelForCausalLM / AutoTokenizer.from_pretrained)")
    checkpoints = checkpoints_by_step(opts.output_dir / "checkpoints")
    if checkpoints:
        print(f"checkpoints: {', '.join(p.name for p in checkpoints)} in {opts.output_dir / 'checkpoints'} (--resume-from-checkpoint)")
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
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "train":
        # Parsed on its own: TrainingArguments' options and a YAML file (see parse_train_arguments).
        try:
            return cmd_train(argv[1:])
        except CommandError as err:
            print(f"simper-rs train: error: {err}", file=sys.stderr)
            return 2
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return {"eval": cmd_eval, "bench": cmd_bench, "doctor": cmd_doctor}[args.command](args)
    except CommandError as err:
        print(f"simper-rs {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
