"""One loss step of the preference trainer's loss under Accelerate, for tests/test_distributed.py.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/distributed_worker.py OUT.pt
    python tests/distributed_worker.py OUT.pt          # the 1-process run on the same global batch

Each process takes its shard of one global batch of 8 pairs; rank 0 saves the gradients.
"""

import os
import sys

import torch
from accelerate import Accelerator

from simper_rs.cli.tiny import build_tiny_model, build_tokenizer
from simper_rs.data import PreferenceCollator, load_default_data
from simper_rs.trainer import make_loss, preference_loss

GLOBAL_PAIRS = 8


def main(out_path: str) -> None:
    accelerator = Accelerator(cpu=True)
    data = load_default_data()
    tokenizer = build_tokenizer(data["train"])
    model = accelerator.prepare(build_tiny_model(tokenizer, seed=7))
    records = data["train"][:GLOBAL_PAIRS]
    per_rank = GLOBAL_PAIRS // accelerator.num_processes
    shard = records[accelerator.process_index * per_rank : (accelerator.process_index + 1) * per_rank]
    batch = PreferenceCollator(tokenizer, max_length=32, max_prompt_length=16)(shard)
    fused = os.environ.get("FUSED_LINEAR") == "1"
    out = preference_loss(model, batch, make_loss("simper"), fused_linear=fused)
    accelerator.backward(out.loss)
    if accelerator.is_main_process:
        grads = {n: p.grad.clone() for n, p in accelerator.unwrap_model(model).named_parameters()}
        torch.save({"world": accelerator.num_processes, "grads": grads}, out_path)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
    # Skip interpreter teardown: tearing down a DDP model's gloo process group there can
    # deadlock inside PyTorch (its worker thread waits for the GIL the destructor holds).
    sys.stdout.flush()
    os._exit(0)
