"""The options of ``simper-rs train``: transformers' ``TrainingArguments`` plus this package's own,
and the two sets of defaults (recipes) they start from.

Without ``--model`` the command trains the embedded toy (a tiny Llama on the embedded data set)
with the toy recipe, whose settings are tuned for that toy only. With ``--model`` it starts from
the SimPER paper's recipe (the official training configs of Xiao et al., ICLR 2025) and does
nothing to the model that was not asked for: no supervised warm-up unless
``--sft-warmup-steps`` is given. Every option given on the command line or in a YAML file
overrides the recipe.
"""

# No `from __future__ import annotations`: HfArgumentParser reads the dataclasses' annotations as types.
import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Union

from ..losses import ESTIMATORS
from .common import CommandError, bf16_supported, device_name, world

__all__ = [
    "SimperRsArguments",
    "TOY_RECIPE",
    "PAPER_RECIPE",
    "PAPER_MAX_LENGTH",
    "PAPER_MAX_PROMPT_LENGTH",
    "parse_train_arguments",
    "training_arguments",
    "prompt_length_for",
    "check_lengths",
    "describe_recipe",
]


def _field(default, help: str, **argparse_kwargs):
    # HfArgumentParser passes a field's metadata to argparse's add_argument.
    return dataclasses.field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclasses.dataclass
class SimperRsArguments:
    """The options of ``simper-rs train`` beyond transformers' ``TrainingArguments``."""

    loss: Literal["simper", "dil"] = _field("simper", "preference loss")
    estimator: str = _field("lsif", "DIL estimator (cpc is DPO-style)", choices=list(ESTIMATORS))
    beta: float = _field(1.0, "beta of the cpc estimator")
    model: Optional[str] = _field(
        None,
        "a local HuggingFace causal-LM folder (loaded in float32); None: a tiny Llama built offline, with the toy recipe",
    )
    data: Optional[str] = _field(
        None,
        "preference data: a .jsonl/.json/.csv/.parquet file, a datasets folder (save_to_disk or data files by split), "
        "or a hub dataset name from the local cache; None: the embedded data set",
    )
    data_split: Optional[str] = _field(None, "the split of --data to train on; None: its only split, else 'train'")
    eval_data: Optional[str] = _field(
        None,
        "held-out preference data (same kinds as --data); None: --eval-split of --data, else its 'test' split, "
        "else the last 10%% of --data",
    )
    eval_split: Optional[str] = _field(
        None, "the split of --eval-data (or of --data) to evaluate on; None: its only split, else 'test'"
    )
    max_eval_pairs: Optional[int] = _field(None, "evaluate on the first N held-out pairs only; None: every pair")
    batch_size: Optional[int] = _field(
        None,
        "preference pairs per optimizer step, over all processes and accumulation steps; whichever of "
        "--per-device-train-batch-size and --gradient-accumulation-steps is not given follows from it. None: 32 (toy), "
        "128 as 2 per device with gradient accumulation (--model, the paper's)",
    )
    max_length: Optional[int] = _field(
        None,
        "tokens per sequence, prompt included; None: 64 (toy), else the model's context length up to 2048 (the paper's)",
    )
    max_prompt_length: Optional[int] = _field(
        None,
        "prompt tokens kept (its last ones) when a sequence is too long; None: half of --max-length (toy), "
        "else 1800/2048 of it (the paper's 1800 of 2048)",
    )
    fused_linear: bool = _field(False, "compute the loss from hidden states, never materialising logits")
    router_aux_loss_coef: Optional[float] = _field(
        None,
        "Mixture-of-Experts models: the weight of the router load-balancing loss added to the loss, as TRL adds it "
        "(logged as aux_loss); None: the model config's router_aux_loss_coef; 0.0 turns it off",
    )
    padding_free: bool = _field(
        False, "pack each preference batch into one row without padding (same loss, no compute on padding)"
    )
    max_tokens_per_row: Optional[int] = _field(
        None, "with --padding-free: pack into rows of at most this many tokens (default: one row)"
    )
    sft_warmup_steps: Optional[int] = _field(
        None,
        "supervised fine-tuning steps on the chosen responses before preference training; None: 15 (toy), 0 (--model)",
    )
    sft_learning_rate: Optional[float] = _field(
        None, "AdamW learning rate of the supervised warm-up; None: --learning-rate"
    )
    generation_accuracy: Optional[bool] = _field(
        None,
        "also evaluate exact-match greedy generation of the chosen answers (decodes every held-out prompt); "
        "None: on for the embedded data set, off for --data",
        nargs="?",
        const=True,
    )
    device: str = _field("auto", "torch device; auto: cuda when torch sees a GPU, else cpu")
    # Resolved by parse_train_arguments, not options (HfArgumentParser skips fields without init).
    toy: bool = dataclasses.field(default=True, init=False)  # the embedded default model, with the toy recipe
    model_path: Optional[Path] = dataclasses.field(default=None, init=False)
    output_dir: Path = dataclasses.field(default=Path("simper-rs-output"), init=False)  # the run's folder
    seed: int = dataclasses.field(default=0, init=False)
    resume: Optional[str] = dataclasses.field(default=None, init=False)  # --resume-from-checkpoint


def _training_arguments_for_parsing():
    """TrainingArguments with the options this command spells its own way (HfArgumentParser passes
    a field's metadata to argparse): used for parsing only. The recipe's options default to None,
    which the recipe fills in (see parse_train_arguments)."""
    from transformers import TrainingArguments
    from transformers.trainer_utils import SchedulerType

    @dataclasses.dataclass
    class TrainCommandArguments(TrainingArguments):
        # The recipe's options: None (not given) until parse_train_arguments fills them in.
        num_train_epochs: Optional[float] = _field(None, "epochs; None: 2 (toy), 1 (--model)")  # type: ignore[assignment]
        learning_rate: Optional[float] = _field(None, "AdamW learning rate; None: 3e-3 (toy), 5e-7 (--model)")  # type: ignore[assignment]
        lr_scheduler_type: Union[SchedulerType, str] = _field(
            None, "learning-rate schedule; None: constant (toy), cosine (--model)"
        )  # type: ignore[assignment]
        warmup_steps: Optional[float] = _field(
            None, "learning-rate warm-up: steps, or a fraction of all steps below 1; None: 0 (toy), 0.1 (--model)"
        )  # type: ignore[assignment]
        per_device_train_batch_size: Optional[int] = _field(
            None, "pairs per forward on each device; None: see --batch-size"
        )  # type: ignore[assignment]
        gradient_accumulation_steps: Optional[int] = _field(None, "forwards per optimizer step; None: see --batch-size")  # type: ignore[assignment]
        per_device_eval_batch_size: Optional[int] = _field(
            None, "held-out pairs per forward; None: 64 (toy), 4 (--model)"
        )  # type: ignore[assignment]
        seed: Optional[int] = _field(None, "random seed; None: 0 (toy), 42 (--model)")  # type: ignore[assignment]
        bf16: Optional[bool] = _field(
            None, "bfloat16 mixed precision; None: on where the device supports it (CUDA GPUs)", nargs="?", const=True
        )  # type: ignore[assignment]
        # --resume-from-checkpoint alone means the newest checkpoint in <output-dir>/checkpoints.
        resume_from_checkpoint: Optional[str] = _field(
            None,
            "continue a killed run: a checkpoint folder, or 'latest' (the default when no value is given)",
            nargs="?",
            const="latest",
        )
        # Several integrations at once, as a list in a config file or --report-to tensorboard wandb.
        report_to: Optional[str] = _field(
            "none", "where to report metrics (tensorboard, wandb, ...; several may follow)", nargs="+"
        )

    return TrainCommandArguments


# The two recipes: what an option left unset becomes. The toy's is tuned for the embedded tiny
# Llama and data set (seconds on a CPU); the paper's is the official SimPER configs' (Llama-3 and
# Mistral 7-8B on UltraFeedback: learning rates 3e-7 to 1e-6, 5e-7 for Mistral-Instruct).
TOY_RECIPE: Dict[str, Any] = {
    "num_train_epochs": 2.0,
    "learning_rate": 3e-3,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "batch_size": 32,
    "per_device_eval_batch_size": 64,
    "seed": 0,
    "sft_warmup_steps": 15,
    "max_length": 64,
}
PAPER_RECIPE: Dict[str, Any] = {
    "num_train_epochs": 1.0,
    "learning_rate": 5e-7,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.1,  # a fraction of the steps: the paper's warmup_ratio 0.1
    "batch_size": 128,
    "per_device_train_batch_size": 2,
    "per_device_eval_batch_size": 4,
    "seed": 42,
    "sft_warmup_steps": 0,
    "max_length": None,  # the model's context length, at most PAPER_MAX_LENGTH (see prompt_length_for)
}
PAPER_MAX_LENGTH, PAPER_MAX_PROMPT_LENGTH = 2048, 1800
_COMMAND_DEFAULTS = {
    "output_dir": "simper-rs-output",
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
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        (SimperRsArguments, _training_arguments_for_parsing()),
        prog="simper-rs train",
        usage="simper-rs train [CONFIG.yaml] [--option value ...]",
        description="Preference training (SimPER by default) with transformers' Trainer, with a held-out evaluation "
        "before and after. With no arguments: the embedded tiny model and data set, with the toy recipe (15 supervised "
        "warm-up steps on the chosen answers, 2 epochs at learning rate 3e-3 constant, 32 pairs per step, 64 tokens). "
        "With --model: your model as given, with the SimPER paper's recipe (1 epoch, learning rate 5e-7 cosine with 10% "
        "warm-up, 128 pairs per step as 2 per device with gradient accumulation, up to 2048 tokens with 1800 of prompt, "
        "bf16 on GPUs that support it, seed 42, no supervised warm-up); every option overrides its recipe value. "
        "Every TrainingArguments field is an option (--snake_case or --kebab-case); a YAML file of options may come "
        "first, and the command line overrides it. Checkpoints go to <output-dir>/checkpoints. Runs offline.",
    )
    parser.add_argument(
        "config",
        nargs="?",
        help="a YAML file of options (keys as the options' names); flags given after it override it",
    )
    for flag, (dest, kind) in _OLD_FLAGS.items():
        parser.add_argument(flag, dest=dest, type=kind, default=argparse.SUPPRESS, help=f"same as --{dest}")
    parser.set_defaults(**_COMMAND_DEFAULTS)
    return parser


def _option_names() -> set:
    names = {f.name for f in dataclasses.fields(SimperRsArguments)}
    names |= {f.name for f in dataclasses.fields(_training_arguments_for_parsing()) if f.init}
    return names | {flag[2:] for flag in _OLD_FLAGS}


def _config_tokens(path: str) -> List[str]:
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
    known = _option_names()
    tokens: List[str] = []
    for key, value in config.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise CommandError(f"config: {path}: unknown option {key!r} (see simper-rs train --help)")
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        tokens.append(f"--{name}")
        for item in values:
            tokens.append(
                str(item).lower()
                if isinstance(item, bool)
                else json.dumps(item)
                if isinstance(item, dict)
                else str(item)
            )
    return tokens


def _batch_layout(
    batch: Optional[int], per_device: Optional[int], accumulation: Optional[int], recipe: Dict[str, Any], processes: int
) -> Tuple[int, int, int]:
    """(pairs per optimizer step, per device, accumulation steps) from what was given and the recipe.

    Whichever of the per-device batch and the accumulation steps is not given follows from the
    global batch; with neither given, the toy splits its batch over the processes and the paper's
    recipe takes its 2 pairs per device and accumulates the rest.
    """
    if accumulation is not None and accumulation < 1:
        raise CommandError("--gradient-accumulation-steps must be at least 1")
    if per_device is not None and per_device < 1 or batch is not None and batch < 1:
        raise CommandError("--epochs, --lr and --batch-size must be positive")
    if per_device is not None and accumulation is not None:
        if batch is not None and batch != per_device * accumulation * processes:
            raise CommandError(
                f"--batch-size {batch} is not --per-device-train-batch-size {per_device} x --gradient-accumulation-steps "
                f"{accumulation} x {processes} process(es): give two of the three"
            )
        return per_device * accumulation * processes, per_device, accumulation
    batch = recipe["batch_size"] if batch is None else batch
    if per_device is None and accumulation is None and recipe.get("per_device_train_batch_size"):
        per_device = recipe["per_device_train_batch_size"]
        if batch % (per_device * processes):
            per_device = 1  # e.g. an odd --batch-size: one pair per forward, accumulating the rest
    if per_device is None:
        accumulation = accumulation or 1
        if batch % (processes * accumulation):
            over = (
                f"the {processes} processes"
                if accumulation == 1
                else f"{processes} process(es) x {accumulation} accumulation steps"
            )
            raise CommandError(f"--batch-size {batch} must split evenly over {over}")
        return batch, batch // (processes * accumulation), accumulation
    if batch % (processes * per_device):
        raise CommandError(
            f"--batch-size {batch} must split evenly over {processes} process(es) x {per_device} pairs per device"
        )
    return batch, per_device, batch // (processes * per_device)


def prompt_length_for(max_length: int, toy: bool) -> int:
    """The default --max-prompt-length: half of --max-length (toy), else the paper's share (1800 of 2048)."""
    return max_length // 2 if toy else max_length * PAPER_MAX_PROMPT_LENGTH // PAPER_MAX_LENGTH


def check_lengths(opts) -> None:
    """--max-prompt-length must leave room for a response within --max-length."""
    if opts.max_length < 2:
        raise CommandError(f"--max-length ({opts.max_length}) must be at least 2")
    if not 0 < opts.max_prompt_length < opts.max_length:
        raise CommandError(
            f"--max-prompt-length ({opts.max_prompt_length}) must be positive and smaller than --max-length ({opts.max_length})"
        )


def parse_train_arguments(argv: List[str]):
    """(SimperRsArguments, TrainingArguments as a dict) of ``simper-rs train argv``, the recipe's
    values in every option left unset. The Trainer's output_dir is <output-dir>/checkpoints; the
    run's own folder is ``opts.output_dir``. ``opts.max_length`` stays None (with --model and no
    --max-length) until the model's context length is known."""
    from transformers import TrainingArguments

    parser = _train_parser()
    tokens = list(argv)
    if tokens and not tokens[0].startswith("-"):
        tokens = _config_tokens(tokens[0]) + tokens[1:]
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
    opts = SimperRsArguments(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(SimperRsArguments) if f.init})
    opts.toy = opts.model is None
    recipe = TOY_RECIPE if opts.toy else PAPER_RECIPE
    processes, _ = world()
    ta = {f.name: getattr(ns, f.name) for f in dataclasses.fields(TrainingArguments) if f.init and hasattr(ns, f.name)}
    opts.batch_size, ta["per_device_train_batch_size"], ta["gradient_accumulation_steps"] = _batch_layout(
        opts.batch_size, ta["per_device_train_batch_size"], ta["gradient_accumulation_steps"], recipe, processes
    )
    for name in (
        "num_train_epochs",
        "learning_rate",
        "lr_scheduler_type",
        "warmup_steps",
        "per_device_eval_batch_size",
        "seed",
    ):
        if ta[name] is None:
            ta[name] = recipe[name]
    if ta["num_train_epochs"] <= 0 and ta["max_steps"] <= 0 or ta["learning_rate"] <= 0:
        raise CommandError("--epochs, --lr and --batch-size must be positive")
    if opts.max_length is None:
        opts.max_length = recipe["max_length"]
    if opts.sft_warmup_steps is None:
        opts.sft_warmup_steps = recipe["sft_warmup_steps"]
    elif opts.sft_warmup_steps < 0:
        raise CommandError(f"--sft-warmup-steps ({opts.sft_warmup_steps}) must be 0 or more")
    if opts.sft_learning_rate is None:
        opts.sft_learning_rate = ta["learning_rate"]
    elif opts.sft_learning_rate <= 0:
        raise CommandError(f"--sft-learning-rate ({opts.sft_learning_rate}) must be positive")
    if opts.max_eval_pairs is not None and opts.max_eval_pairs < 1:
        raise CommandError(f"--max-eval-pairs ({opts.max_eval_pairs}) must be at least 1")
    if opts.max_length is not None:
        if opts.max_prompt_length is None:
            opts.max_prompt_length = prompt_length_for(opts.max_length, opts.toy)
        check_lengths(opts)
    if opts.max_tokens_per_row is not None and (not opts.padding_free or opts.max_tokens_per_row < 1):
        raise CommandError("--max-tokens-per-row takes a positive number and goes with --padding-free")
    if opts.generation_accuracy is None:
        opts.generation_accuracy = opts.data is None
    opts.device = device_name(opts.device)
    if ta["bf16"] is None:  # bfloat16 mixed precision where the device supports it, unless fp16 was asked for
        ta["bf16"] = not ta["fp16"] and bf16_supported(opts.device.split(":")[0])
    opts.model_path = None if opts.model is None else Path(opts.model)
    opts.output_dir = Path(ta["output_dir"])
    opts.seed = ta["seed"]
    opts.resume = ta.pop("resume_from_checkpoint")
    ta["output_dir"] = str(opts.output_dir / "checkpoints")
    ta["use_cpu"] = ta["use_cpu"] or opts.device == "cpu"
    return opts, ta


def training_arguments(ta: dict, steps_per_epoch: int):
    """TrainingArguments, with the logging and evaluation intervals the data size implies unless given."""
    import os

    from transformers import TrainingArguments

    ta = dict(ta)
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    if 0 < ta["warmup_steps"] < 1 and "warmup_ratio" in names:
        # transformers 4 takes a fraction of the steps as warmup_ratio (5 folded it into warmup_steps).
        ta["warmup_ratio"], ta["warmup_steps"] = ta["warmup_steps"], 0
    if ta["logging_steps"] is None:
        ta["logging_steps"] = max(1, steps_per_epoch // 20)
    if ta["eval_steps"] is None:
        ta["eval_steps"] = max(1, steps_per_epoch // 2)
    if (
        "tensorboard" in (ta["report_to"] if isinstance(ta["report_to"], list) else [ta["report_to"]])
        or ta["report_to"] == "all"
    ):
        # TensorBoard event files next to the run's other outputs (written locally, nothing uploaded).
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(Path(ta["output_dir"]).parent / "tensorboard"))
    if world()[1] != 0:
        ta["disable_tqdm"] = True
    try:
        return TrainingArguments(**ta)
    except (ValueError, TypeError) as err:
        raise CommandError(str(err).strip().splitlines()[0]) from None


def describe_recipe(opts, ta: dict) -> str:
    """One line of the settings the run uses, so that a default is never a surprise."""
    steps = f"{ta['max_steps']} steps" if ta["max_steps"] > 0 else f"{ta['num_train_epochs']:g} epoch(s)"
    warmup = ta["warmup_steps"]
    schedule = (
        ta["lr_scheduler_type"]
        if not warmup
        else f"{ta['lr_scheduler_type']}, {warmup:.0%} warm-up"
        if warmup < 1
        else f"{ta['lr_scheduler_type']}, {warmup:g} warm-up steps"
    )
    layout = f"{ta['per_device_train_batch_size']} per device"
    if ta["gradient_accumulation_steps"] > 1:
        layout += f" x {ta['gradient_accumulation_steps']} accumulation steps"
    precision = "bf16" if ta["bf16"] else "fp16" if ta["fp16"] else "float32"
    sft = (
        f"{opts.sft_warmup_steps} supervised warm-up steps at {opts.sft_learning_rate:g}"
        if opts.sft_warmup_steps
        else "no supervised warm-up"
    )
    recipe = "toy recipe" if opts.toy else "SimPER paper's recipe"
    return (
        f"{recipe}: learning rate {ta['learning_rate']:g} ({schedule}), {steps}, {opts.batch_size} pairs per step ({layout}), "
        f"max length {opts.max_length} (prompt {opts.max_prompt_length}), {precision} on {opts.device}, {sft}"
    )
