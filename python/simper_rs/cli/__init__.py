"""The ``simper-rs`` command line.

    simper-rs train            align the embedded default model on the embedded default data
    simper-rs train --loss dil --estimator cpc      the DPO-style comparison on the same data
    simper-rs train --model ./my-model --data prefs.parquet --output-dir runs/x
    simper-rs eval --model runs/x/model --data prefs.parquet
    simper-rs bench            the fused kernel against log_softmax + gather, side by side
    simper-rs doctor           what this installation can run

Modules: :mod:`.options` (train's options and recipes), :mod:`.loading` (data and model),
:mod:`.train`, :mod:`.evaluation` (the held-out table and ``eval``), :mod:`.plots`,
:mod:`.common` (errors, devices, offline mode).
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .common import CommandError
from .evaluation import add_eval_command, cmd_eval, evaluate
from .options import parse_train_arguments

__all__ = ["main", "CommandError", "evaluate", "parse_train_arguments"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simper-rs",
        description="Preference alignment with SimPER and DIL (Rust core). Runs offline.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only listed here: `simper-rs train ...` is parsed by options.parse_train_arguments (HfArgumentParser).
    sub.add_parser(
        "train",
        add_help=False,
        help="preference training with held-out evaluation before and after: the embedded toy, or your --model "
        "as given (every TrainingArguments option; `simper-rs train --help`)",
    )
    bench = sub.add_parser(
        "bench",
        help="fused kernel vs log_softmax + gather: time and peak memory",
        description="Forward+backward time and peak memory of the fused log-prob kernel against log_softmax + gather and "
        "a logsumexp-based selective log-softmax, each in its own process.",
    )
    bench.add_argument("--quick", action="store_true", help="a small size, in seconds")
    add_eval_command(sub)
    doctor = sub.add_parser(
        "doctor",
        help="versions, CPU and CUDA support, and which kernel runs where",
        description="One screen on this installation: versions, the torch it was built for, the CPU kernel's "
        "instruction set and threads, CUDA, NVRTC and the driver, the CUDA kernel per GPU, and what backend='auto' "
        "picks. Exit status 1 when something needed cannot work.",
    )
    doctor.add_argument(
        "--device", choices=["cpu", "cuda"], help="also fail when this device cannot run the fused kernel"
    )
    return parser


def _cmd_bench(args) -> int:
    from . import bench

    bench.headline(quick=args.quick)
    return 0


def _cmd_doctor(args) -> int:
    from . import doctor

    return doctor.run(args.device)


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``simper-rs argv`` (default: the process's arguments); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "train":
        from .train import cmd_train

        # Parsed on its own: TrainingArguments' options and a YAML file (see parse_train_arguments).
        try:
            return cmd_train(argv[1:])
        except CommandError as err:
            print(f"simper-rs train: error: {err}", file=sys.stderr)
            return 2
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return {"eval": cmd_eval, "bench": _cmd_bench, "doctor": _cmd_doctor}[args.command](args)
    except CommandError as err:
        print(f"simper-rs {args.command}: error: {err}", file=sys.stderr)
        return 2
