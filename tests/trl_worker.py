"""One SimPERTrainer step on 8 pairs, for tests/test_trl.py.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/trl_worker.py OUT.pt   # 4 pairs each
    python tests/trl_worker.py OUT.pt                                                           # 8 pairs

FUSED_LINEAR=1 takes the fused-linear path (else logits + the fused kernel).

Rank 0 saves every parameter's gradient (after the all-reduce, before the optimizer step) and
the logged metrics.
"""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from simper_rs.data import load_default_data  # noqa: E402
from simper_rs.tiny import build_tiny_model, build_tokenizer  # noqa: E402
from simper_rs.trl import SimPERConfig, SimPERTrainer  # noqa: E402

GLOBAL_PAIRS = 8


class KeepGradients(TrainerCallback):
    def __init__(self):
        self.grads = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def main(out_path: str) -> None:
    data = load_default_data()
    tokenizer = build_tokenizer(data["train"])
    records = [dict(r, chosen=" " + r["chosen"], rejected=" " + r["rejected"]) for r in data["train"][:GLOBAL_PAIRS]]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = SimPERConfig(
        output_dir=os.path.dirname(out_path), per_device_train_batch_size=GLOBAL_PAIRS // world, max_steps=1,
        logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, learning_rate=1e-3,
        max_grad_norm=0.0, train_sampling_strategy="sequential", bf16=False, use_fused_linear=os.environ.get("FUSED_LINEAR") == "1",
    )
    keep = KeepGradients()
    trainer = SimPERTrainer(
        model=build_tiny_model(tokenizer, seed=7), args=args, train_dataset=records, processing_class=tokenizer,
        callbacks=[keep],
    )
    trainer.train()
    if trainer.accelerator.is_main_process:
        metrics = {k: v for k, v in trainer.state.log_history[0].items() if "/" in k or k in ("entropy", "mean_token_accuracy", "num_tokens", "loss")}
        torch.save({"world": trainer.accelerator.num_processes, "grads": keep.grads, "metrics": metrics}, out_path)
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
    # Skip interpreter teardown: tearing down a DDP model's gloo process group there can
    # deadlock inside PyTorch (its worker thread waits for the GIL the destructor holds).
    sys.stdout.flush()
    os._exit(0)
