"""One SimPERTrainer step on 8 pairs, for tests/test_trl.py.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/trl_worker.py OUT.pt   # 4 pairs each
    python tests/trl_worker.py OUT.pt                                                           # 8 pairs

FUSED_LINEAR=1 takes the fused-linear path (else logits + the fused kernel). ZERO3=1 runs the
2 processes under DeepSpeed ZeRO-3 through Accelerate (DS_ACCELERATOR=cpu) and saves the step of
SGD with learning rate 1 (minus the gradient) in place of the gradient, in both runs.

Rank 0 saves every parameter's gradient (after the all-reduce, before the optimizer step) and
the logged metrics.
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from simper_rs.cli.tiny import build_tiny_model, build_tokenizer  # noqa: E402
from simper_rs.data import load_default_data  # noqa: E402
from simper_rs.trl import SimPERConfig, SimPERTrainer  # noqa: E402

GLOBAL_PAIRS = 8


class KeepGradients(TrainerCallback):
    def __init__(self):
        self.grads = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _full_parameters(trainer):
    """Every parameter whole, on every process (gathering ZeRO-3's partitions is collective)."""
    model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    if not trainer.is_deepspeed_enabled:
        return {n: p.detach().clone() for n, p in model.named_parameters()}
    from deepspeed.utils import safe_get_full_fp32_param

    return {n: safe_get_full_fp32_param(p).clone() for n, p in model.named_parameters()}


def main(out_path: str) -> None:
    data = load_default_data()
    tokenizer = build_tokenizer(data["train"])
    records = [dict(r, chosen=" " + r["chosen"], rejected=" " + r["rejected"]) for r in data["train"][:GLOBAL_PAIRS]]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    zero3 = os.environ.get("ZERO3") == "1"
    engine = {}
    if zero3:
        # ZeRO-3 keeps gradients partitioned inside its optimizer step: compare the step of plain
        # SGD with learning rate 1 instead, which is minus the gradient, in both runs.
        engine.update(optim="sgd", learning_rate=1.0, weight_decay=0.0)
    if zero3 and world > 1:  # DeepSpeed ZeRO-3 through Accelerate, every parameter partitioned
        engine["deepspeed"] = {
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "zero_allow_untested_optimizer": True,
            "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        }
    args = SimPERConfig(
        output_dir=os.path.dirname(out_path),
        per_device_train_batch_size=GLOBAL_PAIRS // world,
        max_steps=1,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        max_grad_norm=0.0,
        train_sampling_strategy="sequential",
        bf16=False,
        use_fused_linear=os.environ.get("FUSED_LINEAR") == "1",
        **{"learning_rate": 1e-3, **engine},
    )
    keep = KeepGradients()
    model = build_tiny_model(tokenizer, seed=7)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = SimPERTrainer(model=model, args=args, train_dataset=records, processing_class=tokenizer, callbacks=[keep])
    trainer.train()
    scales = {}
    if zero3:
        keep.grads = {n: before[n] - full for n, full in _full_parameters(trainer).items()}
        scales = {n: w.abs().max().item() for n, w in before.items()}  # the step is exact to float32 ulps of w
    if trainer.accelerator.is_main_process:
        metrics = {
            k: v
            for k, v in trainer.state.log_history[0].items()
            if "/" in k or k in ("entropy", "mean_token_accuracy", "num_tokens", "loss")
        }
        torch.save(
            {"world": trainer.accelerator.num_processes, "grads": keep.grads, "scales": scales, "metrics": metrics},
            out_path,
        )
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
    # Skip interpreter teardown: tearing down a DDP model's gloo process group there can
    # deadlock inside PyTorch (its worker thread waits for the GIL the destructor holds).
    sys.stdout.flush()
    os._exit(0)
