"""End-to-end preference-training steps on CPU: TRL's DPOTrainer against simper_rs's trainers.

One tiny-but-not-trivial Llama built offline (hidden 256, 4 layers, 4 heads, vocabulary 32000),
8 pairs per step, prompts of 64-192 tokens and completions of 32-160 (about 256 per sequence),
the same records and the same initial weights for every method, float32, no gradient
checkpointing, AdamW. Methods, each in its own process:

  trl_dpo             trl.DPOTrainer, loss_type="sigmoid", with its reference model (what TRL users run)
  trl_simper_by_hand  trl.DPOTrainer with `_compute_loss` overridden to SimPER on TRL's own fused
                      lm head (average of its per-token log-probs); its reference model removed
  simper_rs_trl       simper_rs.trl.SimPERTrainer (fused linear, TRL's data pipeline)
  preference_trainer  simper_rs.trainer.PreferenceTrainer(fused_linear=True) (this package's collator)

Reported: median seconds per optimizer step after warm-up, completion+prompt tokens per second
(the policy's non-padding tokens), and peak resident memory: of the whole process, and above
the level after imports (models, reference, optimizer state, activations).

    python benchmarks/trainer.py            # the sizes of RESULTS.md (about 3 minutes on 2 cores)
    python benchmarks/trainer.py --quick    # a smaller model and batch, seconds

The rows go to benchmarks/results/trainer.json too (``--json PATH``; none for ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from simper_rs.cli.bench import PeakRSS, Results, fmt_bytes, run_isolated

METHODS = ["trl_dpo", "trl_simper_by_hand", "simper_rs_trl", "preference_trainer"]
SIZES = {
    "full": dict(
        hidden=256, layers=4, heads=4, vocab=32000, pairs=8, prompt=(64, 192), completion=(32, 160), warmup=2, steps=6
    ),
    "quick": dict(
        hidden=64, layers=2, heads=4, vocab=4000, pairs=4, prompt=(16, 48), completion=(8, 40), warmup=1, steps=2
    ),
}
RESULTS = Path(__file__).resolve().parent / "results"


def make_tokenizer(vocab: int):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<unk>", "<bos>", "<eos>"]
    words = special + [f"w{i}" for i in range(vocab - len(special))]
    core = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def make_records(size: dict, count: int):
    import random

    rng = random.Random(0)
    words = lambda lo_hi: " ".join(f"w{rng.randrange(size['vocab'] - 4)}" for _ in range(rng.randint(*lo_hi)))  # noqa: E731
    return [
        {
            "prompt": words(size["prompt"]),
            "chosen": " " + words(size["completion"]),
            "rejected": " " + words(size["completion"]),
        }
        for _ in range(count)
    ]


def make_model(size: dict, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=size["vocab"],
        hidden_size=size["hidden"],
        intermediate_size=size["hidden"] * 4,
        num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"],
        num_key_value_heads=size["heads"],
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def child(args: dict) -> dict:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    size, method = SIZES[args["size"]], args["method"]
    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = make_tokenizer(size["vocab"])
    total_steps = size["warmup"] + size["steps"]
    records = make_records(size, size["pairs"] * total_steps)
    common = dict(
        per_device_train_batch_size=size["pairs"],
        max_steps=total_steps,
        learning_rate=1e-5,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        bf16=False,
        gradient_checkpointing=False,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
    )
    step_times, tokens = [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            step_times.append(time.perf_counter() - self.start)

    def counting(cls):
        class Counted(cls):
            def compute_loss(self, model, inputs, *a, **k):
                if model.training:
                    tokens.append(int(inputs["attention_mask"].sum()))
                return super().compute_loss(model, inputs, *a, **k)

        return Counted

    out_dir = tempfile.mkdtemp()
    with PeakRSS() as peak:
        model = make_model(size, tokenizer)
        if method in ("trl_dpo", "trl_simper_by_hand"):
            from trl import DPOConfig, DPOTrainer
            from trl.trainer import dpo_trainer

            config = DPOConfig(output_dir=out_dir, loss_type="sigmoid", max_length=None, **common)
            if method == "trl_dpo":
                # TRL's default reference: the policy reloaded from its path.
                model.save_pretrained(out_dir + "/init")
                tokenizer.save_pretrained(out_dir + "/init")
                trainer = counting(DPOTrainer)(
                    model=out_dir + "/init",
                    args=config,
                    train_dataset=Dataset.from_list(records),
                    processing_class=tokenizer,
                    callbacks=[Clock()],
                )
            else:
                original = dpo_trainer.create_model_from_path
                dpo_trainer.create_model_from_path = lambda *a, **k: None  # SimPER needs no reference
                try:
                    trainer = counting(_SimPEROnTRLFusedHead())(
                        model=model,
                        args=config,
                        train_dataset=Dataset.from_list(records),
                        processing_class=tokenizer,
                        callbacks=[Clock()],
                    )
                finally:
                    dpo_trainer.create_model_from_path = original
                assert trainer.ref_model is None
        elif method == "simper_rs_trl":
            from simper_rs.trl import SimPERConfig, SimPERTrainer

            config = SimPERConfig(output_dir=out_dir, max_length=None, **common)
            trainer = counting(SimPERTrainer)(
                model=model,
                args=config,
                train_dataset=Dataset.from_list(records),
                processing_class=tokenizer,
                callbacks=[Clock()],
            )
        elif method == "preference_trainer":
            from transformers import TrainingArguments

            from simper_rs.trainer import PreferenceTrainer

            limit = size["prompt"][1] + size["completion"][1] + 2
            trainer = counting(PreferenceTrainer)(
                model=model,
                args=TrainingArguments(output_dir=out_dir, **common),
                train_dataset=records,
                processing_class=tokenizer,
                fused_linear=True,
                max_length=limit,
                max_prompt_length=size["prompt"][1] + 1,
                callbacks=[Clock()],
            )
        else:
            raise ValueError(method)
        trainer.train()
    measured = step_times[size["warmup"] :]
    seconds = statistics.median(measured)
    return {
        "seconds": seconds,
        "tokens_per_second": statistics.mean(tokens[size["warmup"] :]) / seconds,
        "peak_above_imports": peak.peak_bytes,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "steps": len(measured),
    }


def _SimPEROnTRLFusedHead():
    """What a TRL user writes by hand for SimPER today: DPOTrainer's loss replaced, TRL's fused head kept."""
    import torch
    from trl import DPOTrainer

    class SimPEROnTRL(DPOTrainer):
        def _compute_loss(self, model, inputs, return_outputs):
            kwargs = {
                k: v
                for k, v in inputs.items()
                if k not in ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")
            }
            mask = inputs["completion_mask"][:, 1:]
            labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
            per_token = model(**kwargs, labels=labels, fused_lm_head=True).log_probs[:, -mask.shape[1] :]
            average = (per_token * mask).sum(1) / mask.sum(1)
            chosen, rejected = average.chunk(2)
            return (-torch.exp(chosen) + torch.exp(rejected)).mean()

    return SimPEROnTRL


def table_title(size: dict, cores: int) -> str:
    return (
        f"CPU threads: {cores}; Llama hidden {size['hidden']}, {size['layers']} layers, vocabulary {size['vocab']}; "
        f"{size['pairs']} pairs per step, prompts {size['prompt'][0]}-{size['prompt'][1]} and completions "
        f"{size['completion'][0]}-{size['completion'][1]} tokens; float32; median of {size['steps']} steps after "
        f"{size['warmup']} warm-up"
    )


TABLE_HEADER = [
    "| method | s / step | vs trl_dpo | tokens / s | peak RSS | peak above imports | vs trl_dpo |",
    "| --- | --- | --- | --- | --- | --- | --- |",
]


def table_row(row: dict) -> str:
    if "error" in row:
        return f"| {row['method']} | failed: {row['error']} | | | | | |"
    return (
        f"| {row['method']} | {row['seconds']:.3f} | {row['vs_trl_dpo']:.2f}x | {row['tokens_per_second']:.0f} | "
        f"{fmt_bytes(row['peak_rss_bytes'])} | {fmt_bytes(row['peak_above_imports_bytes'])} | "
        f"{row['peak_vs_trl_dpo']:.2f}x |"
    )


def render(data: dict) -> str:
    """The table the run printed, from its JSON (benchmarks/report.py)."""
    size = SIZES[data["settings"]["size"]]
    return "\n".join([table_title(size, data["machine"]["cores"]), "", *TABLE_HEADER, *map(table_row, data["rows"])])


def summary(data: dict) -> str:
    """One sentence for the README: SimPERTrainer's step against TRL's DPOTrainer
    (benchmarks/report.py's block ``trainer.summary``)."""
    rows = {r["method"]: r for r in data["rows"] if "error" not in r}
    ours, trl = rows["simper_rs_trl"], rows["trl_dpo"]
    size = SIZES[data["settings"]["size"]]
    return (
        f"**Against TRL**: one training step of a small Llama ({size['vocab']}-token vocabulary, {size['pairs']} pairs "
        f"of about 256 tokens) takes {ours['vs_trl_dpo']:.2f}x TRL `DPOTrainer`'s time with `SimPERTrainer` "
        f"({ours['seconds']:.2f} s against {trl['seconds']:.2f} s), with {fmt_bytes(ours['peak_above_imports_bytes'])} "
        f"above imports against {fmt_bytes(trl['peak_above_imports_bytes'])}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a smaller model and batch, for a smoke run")
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="where to write the rows (default: benchmarks/results/trainer.json; --quick: none)",
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    name = "quick" if args.quick else "full"
    results = Results("trainer", None, size=name)
    print(table_title(SIZES[name], os.cpu_count()) + "\n")
    print("\n".join(TABLE_HEADER))
    base = None
    for method in METHODS:
        r = run_isolated(__file__, {"method": method, "size": name})
        row = {"method": method}
        if "error" in r:
            row["error"] = r["error"]
        else:
            base = base or r
            row.update(
                seconds=r["seconds"],
                vs_trl_dpo=r["seconds"] / base["seconds"],
                tokens_per_second=r["tokens_per_second"],
                peak_rss_bytes=r["peak_rss"],
                peak_above_imports_bytes=r["peak_above_imports"],
                peak_vs_trl_dpo=r["peak_above_imports"] / base["peak_above_imports"],
                steps=r["steps"],
            )
        print(table_row(results.add(row)), flush=True)
    results.write(args.json or (None if args.quick else RESULTS / "trainer.json"))


if __name__ == "__main__":
    main()
