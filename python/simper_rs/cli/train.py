"""``simper-rs train``: optional supervised warm-up, preference training with the HuggingFace
Trainer, and the held-out evaluation before and after."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import List, Optional

from .common import CommandError, offline, progress, usable_device, world
from .evaluation import evaluate, summary_table
from .options import (
    PAPER_MAX_LENGTH,
    check_lengths,
    describe_recipe,
    parse_train_arguments,
    prompt_length_for,
    training_arguments,
)

__all__ = ["cmd_train", "sft_warm_up"]


def sft_warm_up(
    model,
    collator,
    records: List[dict],
    *,
    steps: int,
    learning_rate: float,
    batch_size: int,
    micro_batch_size: int,
    seed: int,
    bf16: bool = False,
    weight_decay: float = 0.0,
    betas=(0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """``steps`` steps of supervised fine-tuning on the chosen responses (the prompt is masked):
    AdamW at ``learning_rate``, each step on ``batch_size`` records drawn at random (seeded), in
    forwards of ``micro_batch_size`` whose gradients add up to the whole batch's."""
    import random

    import torch

    if steps <= 0:
        return
    device = next(model.parameters()).device
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=betas, eps=eps, weight_decay=weight_decay)
    model.train()
    for _ in progress(range(steps), "warm-up (SFT on chosen)"):
        picked = rng.sample(records, min(batch_size, len(records)))
        parts = []
        for start in range(0, len(picked), micro_batch_size):
            batch = collator(picked[start : start + micro_batch_size])
            half = batch["input_ids"].shape[0] // 2  # the chosen sequences
            parts.append({k: batch[k][:half] for k in ("input_ids", "attention_mask", "labels")})
        # The loss is the mean over the whole batch's response tokens, as one forward would take it.
        tokens = sum(int((p["labels"][:, 1:] != -100).sum()) for p in parts)
        optimizer.zero_grad()
        for part in parts:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(**{k: v.to(device) for k, v in part.items()}, use_cache=False)
            share = int((part["labels"][:, 1:] != -100).sum()) / tokens
            (out.loss.float() * share).backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _metrics_callback(path: Path):
    from transformers import TrainerCallback

    class WriteMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                with open(path, "a") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return WriteMetrics()


def _preference_train(
    model, tokenizer, collator, train, test, opts, ta: dict, metrics_path: Path, before, resume: Optional[Path]
):
    from transformers.trainer_callback import ProgressCallback

    from ..data import PreferenceCollator
    from ..integrations.checkpoints import ResumableTrainer

    training_args = training_arguments(ta, math.ceil(len(train) / opts.batch_size))
    trainer = ResumableTrainer(
        model=model,
        args=training_args,
        loss=opts.loss,
        estimator=opts.estimator,
        beta=opts.beta,
        fused_linear=opts.fused_linear,
        router_aux_loss_coef=opts.router_aux_loss_coef,
        data_collator=PreferenceCollator(
            tokenizer,
            collator.max_length,
            collator.max_prompt_length,
            padding_free=opts.padding_free,
            max_tokens_per_row=opts.max_tokens_per_row,
        ),
        train_dataset=train,
        eval_dataset=test,
        processing_class=tokenizer,
        callbacks=[_metrics_callback(metrics_path)],
        extra_state={"before": before},
    )

    # Keep the progress bar, drop its printing of every log dict: the metrics go to
    # metrics.jsonl and the summary table.
    class QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(QuietProgress())
    trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    return trainer.model


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
    opts, ta = parse_train_arguments(argv)
    with offline():
        return _train(opts, ta)


def _train(opts, ta: dict) -> int:
    import torch

    from ..data import PreferenceCollator
    from ..integrations.checkpoints import (
        CheckpointError,
        ResumableTrainer,
        checkpoint_step,
        checkpoints_by_step,
        find_checkpoint,
    )
    from .loading import context_length, load_model, load_train_and_eval
    from .plots import plot_metrics

    processes, rank = world()
    if opts.model_path is not None and not opts.model_path.is_dir():  # before a large data set is read
        raise CommandError(f"--model: {opts.model} is not a folder (expected a local HuggingFace model)")
    device = usable_device(opts.device, processes)
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
    train, test, held_out_from = load_train_and_eval(opts)
    model, tokenizer, model_name = load_model(opts.model_path, train + test, opts.seed)
    if opts.max_length is None:  # --model without --max-length: the model's context, up to the paper's 2048
        opts.max_length = min(context_length(model, tokenizer) or PAPER_MAX_LENGTH, PAPER_MAX_LENGTH)
        if opts.max_prompt_length is None:
            opts.max_prompt_length = prompt_length_for(opts.max_length, opts.toy)
        check_lengths(opts)
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
    say(
        f"simper-rs train: {loss_name} on {len(train)} train / {len(test)} held-out pairs ({held_out_from}), model: {model_name}{on}"
    )
    say(describe_recipe(opts, ta))

    def held_out():
        return evaluate(
            model,
            tokenizer,
            collator,
            test,
            batch_size=ta["per_device_eval_batch_size"],
            generation=opts.generation_accuracy,
            bf16=ta["bf16"],
        )

    def warm_up():
        sft_warm_up(
            model,
            collator,
            train,
            steps=opts.sft_warmup_steps,
            learning_rate=opts.sft_learning_rate,
            batch_size=opts.batch_size,
            micro_batch_size=ta["per_device_train_batch_size"],
            seed=opts.seed,
            bf16=ta["bf16"],
            weight_decay=ta["weight_decay"],
            betas=(ta["adam_beta1"], ta["adam_beta2"]),
            eps=ta["adam_epsilon"],
        )

    if before is None:  # not resumed
        if opts.toy:
            # The toy's starting point is the tiny Llama after its warm-up (a randomly initialised
            # model has nothing to prefer yet); "before" is measured there.
            warm_up()
            before = held_out()
        else:
            # A user's model: "before" is the model as given, whatever the run does to it next.
            before = held_out()
            warm_up()
    else:
        # The checkpoint holds the partly trained weights; the "before" column was measured by
        # the interrupted run.
        say(f"resuming from {resume} (step {resume_step})")
    try:
        model = _preference_train(model, tokenizer, collator, train, test, opts, ta, metrics_path, before, resume)
    except CheckpointError as err:
        raise CommandError(f"--resume-from-checkpoint: {err}") from None
    after = held_out()

    if rank != 0:
        return 0
    # The aligned model is the point of the run: saved as an ordinary HuggingFace model (its own
    # lm_head, whatever loss path trained it), loadable with the Auto classes.
    model_dir = opts.output_dir / "model"
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    png_path = opts.output_dir / "training.png"
    plot_metrics(metrics_path, png_path, f"simper-rs: {loss_name}")
    summary = {
        "loss": opts.loss,
        "estimator": opts.estimator,
        "model": model_name,
        "train_pairs": len(train),
        "held_out_pairs": len(test),
        "sft_warmup_steps": opts.sft_warmup_steps,
        "before": before,
        "after": after,
        "seconds": time.perf_counter() - started,
    }
    (opts.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if opts.toy:
        what = "preference training"
    elif opts.sft_warmup_steps:
        what = f"training ({opts.sft_warmup_steps} supervised warm-up steps, then preference training)"
    else:
        what = "preference training"
    print(f"\n{loss_name}: held-out evaluation on {len(test)} pairs before and after {what}\n")
    print(summary_table(before, after))
    print(f"\nwrote {metrics_path}, {png_path} and {opts.output_dir / 'summary.json'} in {summary['seconds']:.0f} s")
    print(
        f"saved the trained model and tokenizer to {model_dir} (AutoModelForCausalLM / AutoTokenizer.from_pretrained)"
    )
    checkpoints = checkpoints_by_step(opts.output_dir / "checkpoints")
    if checkpoints:
        print(
            f"checkpoints: {', '.join(p.name for p in checkpoints)} in {opts.output_dir / 'checkpoints'} (--resume-from-checkpoint)"
        )
    return 0
