"""One fused-linear loss step of a tiny Llama under DeepSpeed ZeRO-3 on CPU (gloo), for
tests/test_fsdp.py.

    DS_ACCELERATOR=cpu python -m torch.distributed.run --standalone --nproc_per_node=2 tests/zero3_worker.py PATH OUT.pt
    python tests/zero3_worker.py PATH OUT.pt        # 1 process, no DeepSpeed, the same global batch

PATH: trainer (simper_rs.trainer.preference_loss, fused linear) or trl (add_logps_forward, the
model forward simper_rs.trl uses). Every parameter is partitioned (no persistence threshold), so
lm_head.weight is empty outside the lm_head's forward. Rank 0 saves the full gradients.
"""

import os
import sys

import torch

from fsdp_worker import GLOBAL_PAIRS, loss_of
from simper_rs.cli.tiny import build_tiny_model, build_tokenizer
from simper_rs.data import PreferenceCollator, load_default_data


def main(path, out_path):
    distributed = "WORLD_SIZE" in os.environ
    data = load_default_data()
    tokenizer = build_tokenizer(data["train"])
    model = build_tiny_model(tokenizer, seed=7)
    names = [name for name, _ in model.named_parameters()]
    world, rank = 1, 0
    if distributed:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
        world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        config = {
            "train_micro_batch_size_per_gpu": GLOBAL_PAIRS // world,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
            "zero_allow_untested_optimizer": True,
        }
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        model, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        assert model.module.lm_head.weight.numel() == 0  # partitioned outside its forward
    records = data["train"][:GLOBAL_PAIRS]
    per_rank = GLOBAL_PAIRS // world
    batch = PreferenceCollator(tokenizer, max_length=32, max_prompt_length=16)(
        records[rank * per_rank : (rank + 1) * per_rank]
    )
    loss = loss_of(model, batch, path)
    if distributed:
        from deepspeed.utils import safe_get_full_grad

        model.backward(loss)
        grads = {name: safe_get_full_grad(param).clone() for name, param in zip(names, model.module.parameters())}
    else:
        loss.backward()
        grads = {name: param.grad for name, param in zip(names, model.parameters())}
    if rank == 0:
        torch.save({"world": world, "grads": grads}, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:3])
    sys.stdout.flush()
    os._exit(0)
