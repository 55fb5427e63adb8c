"""One fused-linear loss step of a tiny Llama under FSDP2 on CPU (gloo), for tests/test_fsdp.py.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/fsdp_worker.py LAYOUT PATH OUT.pt
    python tests/fsdp_worker.py LAYOUT PATH OUT.pt          # 1 process, no FSDP, the same global batch

LAYOUT: root (one fully_shard unit), own (the lm_head its own unit, and each decoder layer),
tied (lm_head tied to the input embedding; decoder layers as units). PATH: trainer (the
PreferenceTrainer loss step, simper_rs.trainer.preference_loss) or trl (the model forward that
simper_rs.trl uses, add_logps_forward, with SimPER). Each process takes its shard of 8 pairs;
rank 0 saves every parameter's full gradient.
"""

import os
import sys

import torch
import torch.distributed as dist

from simper_rs import simper_loss
from simper_rs.cli.tiny import build_tiny_model, build_tokenizer
from simper_rs.data import PreferenceCollator, load_default_data
from simper_rs.integrations.causal_lm import add_logps_forward
from simper_rs.ops import _reduce_sequence_logps
from simper_rs.trainer import make_loss, preference_loss

GLOBAL_PAIRS = 8


def build(layout, tokenizer):
    model = build_tiny_model(tokenizer, seed=7)
    if layout == "tied":
        model.config.tie_word_embeddings = True
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


def shard(model, layout, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    if layout in ("own", "tied"):
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
    if layout == "own":
        fully_shard(model.lm_head, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def loss_of(model, batch, path):
    if path == "trainer":
        return preference_loss(model, batch, make_loss("simper"), fused_linear=True).loss
    add_logps_forward(model)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], simper_rs_labels=batch["labels"])
    logps = _reduce_sequence_logps(out.token_logps, batch["labels"], ignore_index=-100, shift=True, average=True)
    return simper_loss(*logps.chunk(2))


def main(layout, path, out_path):
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
    torch.manual_seed(0)
    data = load_default_data()
    tokenizer = build_tokenizer(data["train"])
    model = build(layout, tokenizer)
    names = [name for name, _ in model.named_parameters()]
    if distributed:
        model = shard(model, layout, world)
    records = data["train"][:GLOBAL_PAIRS]
    per_rank = GLOBAL_PAIRS // world
    batch = PreferenceCollator(tokenizer, max_length=32, max_prompt_length=16)(
        records[rank * per_rank : (rank + 1) * per_rank]
    )
    loss = loss_of(model, batch, path)
    loss.backward()
    grads = {}
    for name, param in zip(names, model.parameters()):
        grad = param.grad
        grads[name] = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
    if rank == 0:
        torch.save({"world": world, "grads": grads}, out_path)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
    sys.stdout.flush()
    os._exit(0)
