"""Checkpoints that a killed run resumes from exactly (``simper-rs train --resume-from-checkpoint``).

The HuggingFace Trainer already saves and restores the model, optimizer, scheduler, RNG states and
its step counter, and skips the batches already trained. Two things are missing for a resumed run
to log the same metrics as an uninterrupted one, and this module adds them:

* the logging state between two logging steps: the Trainer's running loss sum, the step it last
  logged and its total for ``train_loss``, and :class:`PreferenceTrainer`'s per-step metrics not yet
  averaged into a log row. They go to ``simper_rs_state_rank<R>.json`` next to the Trainer's files
  and are put back when training begins again.
* atomicity: each checkpoint is written under ``<checkpoints>/.incomplete/`` and renamed into
  place once complete, so a run killed while saving leaves nothing that a resume would read.

Both need the Trainer's internals (the names in ``TRAINER_INTERNALS``): transformers has no public
hook for them. They are checked when a :class:`ResumableTrainer` is made, so a transformers
release that renamed one is a clear error, not a resume that silently logs something else; the
releases tested are those of ``TESTED_TRANSFORMERS`` (CI runs the resume tests on both ends).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

from transformers import TrainerCallback
from transformers.trainer_utils import rotate_checkpoints

from .trainer import PreferenceTrainer

__all__ = [
    "ResumableTrainer",
    "CheckpointError",
    "checkpoints_by_step",
    "find_checkpoint",
    "STAGING",
    "TESTED_TRANSFORMERS",
]

STAGING = ".incomplete"
#: The transformers releases the resume tests run on (the trl extra's floor and the pinned one).
TESTED_TRANSFORMERS = ("5.20", "5.24")
#: The Trainer's private methods this module overrides, and the attributes of its training loop
#: it reads and restores (the logging state).
TRAINER_METHODS = (
    "_run_epoch",
    "_save_checkpoint",
    "_load_from_checkpoint",
    "_load_optimizer_and_scheduler",
    "_load_rng_state",
)
TRAINER_ATTRIBUTES = ("_tr_loss", "_total_loss_scalar", "_globalstep_last_logged")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# What a checkpoint must hold to be resumed from (the model is model.safetensors or sharded).
_REQUIRED = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


class CheckpointError(Exception):
    """A checkpoint that cannot be resumed from: missing, incomplete or unreadable."""


def _state_file(rank: int) -> str:
    return f"simper_rs_state_rank{rank}.json"


def checkpoints_by_step(checkpoints_dir: Path) -> List[Path]:
    """The ``checkpoint-<step>`` folders in ``checkpoints_dir``, lowest step first (none if it is missing)."""
    if not checkpoints_dir.is_dir():
        return []
    found = sorted(
        (int(m.group(1)), p) for p in checkpoints_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))
    )
    return [path for _, path in found]


def find_checkpoint(spec: str, checkpoints_dir: Path) -> Path:
    """The checkpoint folder that ``spec`` ("latest" or a path) names, checked to be complete."""
    if spec == "latest":
        found = checkpoints_by_step(checkpoints_dir)
        if not found:
            raise CheckpointError(f"no checkpoint to resume from in {checkpoints_dir}")
        path = found[-1]
    else:
        path = Path(spec)
        if not path.is_dir():
            raise CheckpointError(f"{spec} is not a checkpoint folder")
    missing = [name for name in _REQUIRED if not (path / name).is_file()]
    if not any(path.glob("model*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        missing.append("model weights")
    if not any(path.glob("simper_rs_state_rank*.json")):
        missing.append(_state_file(0))
    if missing:
        raise CheckpointError(f"{path} is not a complete checkpoint (missing {', '.join(missing)})")
    try:
        step = json.loads((path / "trainer_state.json").read_text())["global_step"]
        for state in path.glob("simper_rs_state_rank*.json"):
            json.loads(state.read_text())
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path} is corrupt ({type(err).__name__}: {err})") from None
    if not isinstance(step, int):
        raise CheckpointError(f"{path} is corrupt (global_step is {step!r})")
    return path


def checkpoint_step(path: Path) -> int:
    return int(json.loads((path / "trainer_state.json").read_text())["global_step"])


@contextlib.contextmanager
def _unreadable(checkpoint, what: str):
    try:
        yield
    except CheckpointError:
        raise
    except Exception as err:  # torch.load and safetensors raise many kinds on a damaged file
        first = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{checkpoint}: cannot load {what} ({type(err).__name__}: {first})") from err


class _RestoreLoggingState(TrainerCallback):
    """Puts the saved logging state back once ``train()`` has reset it (on_train_begin runs after)."""

    def __init__(self, trainer: "ResumableTrainer") -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        saved = self.trainer._resume_state
        if saved is not None:
            trainer = self.trainer
            trainer._tr_loss.fill_(saved["tr_loss"])
            trainer._total_loss_scalar = saved["total_loss_scalar"]
            trainer._globalstep_last_logged = saved["globalstep_last_logged"]
            for split, metrics in saved["stored_metrics"].items():
                for name, values in metrics.items():
                    trainer._stored_metrics[split][name] = list(values)


class _SaveLastStep(TrainerCallback):
    """With step-based saving, also save after the last step, so a finished run always has a checkpoint."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps and args.save_strategy == "steps":
            control.should_save = True
        return control


def _internals_error(missing) -> CheckpointError:
    import transformers

    return CheckpointError(
        f"exact resume relies on transformers.Trainer internals that transformers {transformers.__version__} does not have "
        f"({', '.join(missing)}); it is tested with transformers {TESTED_TRANSFORMERS[0]} to {TESTED_TRANSFORMERS[1]}"
    )


def _check_trainer_internals() -> None:
    from transformers import Trainer

    missing = [name for name in TRAINER_METHODS if not callable(getattr(Trainer, name, None))]
    if missing:
        raise _internals_error(missing)


def _logging_state(trainer) -> Dict[str, Any]:
    """The training loop's logging state (set by the Trainer once training runs)."""
    missing = [name for name in TRAINER_ATTRIBUTES if not hasattr(trainer, name)]
    if missing:
        raise _internals_error(missing)
    return {
        "tr_loss": float(trainer._tr_loss.item()),
        "total_loss_scalar": trainer._total_loss_scalar,
        "globalstep_last_logged": trainer._globalstep_last_logged,
    }


class ResumableTrainer(PreferenceTrainer):
    """:class:`PreferenceTrainer` whose checkpoints are atomic and resume with identical logs.

    ``args.output_dir`` is the checkpoints folder. ``extra_state`` (JSON) is saved with every
    checkpoint (the command line keeps its "before" evaluation there) and
    :meth:`load_extra_state` reads it back.
    """

    def __init__(self, *args, extra_state: Optional[Dict[str, Any]] = None, **kwargs) -> None:
        _check_trainer_internals()
        super().__init__(*args, **kwargs)
        self.extra_state = extra_state or {}
        self._resume_state: Optional[Dict[str, Any]] = None
        self.add_callback(_RestoreLoggingState(self))
        self.add_callback(_SaveLastStep())

    @staticmethod
    def load_extra_state(checkpoint: Path) -> Dict[str, Any]:
        return json.loads((checkpoint / _state_file(0)).read_text())["extra"]

    def train(self, resume_from_checkpoint: Optional[str] = None, **kwargs):
        self._resume_state = None
        if resume_from_checkpoint is not None:
            rank = self.args.process_index
            path = Path(resume_from_checkpoint) / _state_file(rank)
            if not path.is_file():
                raise CheckpointError(
                    f"{resume_from_checkpoint} has no {path.name}: resume with as many processes as saved it"
                )
            self._resume_state = json.loads(path.read_text())
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def log(self, logs: Dict[str, float], start_time: Optional[float] = None) -> None:
        if "train_runtime" in logs and "train_loss" in logs and self._resume_state is not None:
            # The Trainer averages train_loss over this call's steps only; a resumed run reports
            # the whole run's average, as the uninterrupted run does (same sum, same order).
            logs["train_loss"] = self._total_loss_scalar / max(self.state.global_step, 0.001)
        super().log(logs, start_time)

    def _run_epoch(self, *args, **kwargs):
        if self.state.global_step >= self.state.max_steps:
            # Resumed from the last step's checkpoint: nothing is left to train. (The Trainer would
            # take one more step when the epoch count is fractional, as it checks after stepping.)
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    # A checkpoint whose files exist but do not load (truncated, overwritten) is a CheckpointError
    # naming it, not a traceback from deep inside torch.load.
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
        with _unreadable(resume_from_checkpoint, "the model weights"):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        with _unreadable(checkpoint, "the optimizer or scheduler state"):
            super()._load_optimizer_and_scheduler(checkpoint)

    def _load_rng_state(self, checkpoint) -> None:
        with _unreadable(checkpoint, "the RNG state"):
            super()._load_rng_state(checkpoint)

    def _save_checkpoint(self, model, trial) -> None:
        final = Path(self.args.output_dir)
        staging = final / STAGING
        name = f"checkpoint-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(staging / name, ignore_errors=True)  # left by a run killed while saving
        self.accelerator.wait_for_everyone()
        self.args.output_dir = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = str(final)
        state = {
            **_logging_state(self),
            "stored_metrics": {
                split: {k: list(v) for k, v in metrics.items()} for split, metrics in self._stored_metrics.items()
            },
            "extra": self.extra_state,
        }
        (staging / name / _state_file(self.args.process_index)).write_text(json.dumps(state))
        self.accelerator.wait_for_everyone()  # every process has written its RNG and logging state
        if self.args.should_save:
            self._fsync_tree(staging / name)
            if (final / name).exists():  # the same step saved again by a resumed run
                shutil.rmtree(final / name)
            os.replace(staging / name, final / name)
            try:
                staging.rmdir()
            except OSError:  # not empty: another checkpoint is being written
                pass
            if self.state.best_model_checkpoint and self.state.best_model_checkpoint.startswith(str(staging)):
                self.state.best_model_checkpoint = str(final / name)
            rotate_checkpoints(
                str(final), self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=False
            )
        self.accelerator.wait_for_everyone()

    @staticmethod
    def _fsync_tree(folder: Path) -> None:
        """Flush the files to disk before the rename makes them visible (a crash, not only a kill)."""
        for path in folder.rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
