"""Tiny random models that more than one test module trains (built offline, in a second)."""

import torch
import transformers


def tiny_mixtral(tokenizer, router_aux_loss_coef: float, seed: int = 0) -> transformers.MixtralForCausalLM:
    """A 2-layer Mixtral (hidden 32, 4 experts, 2 per token) over `tokenizer`'s vocabulary, whose
    router load-balancing loss is weighted by `router_aux_loss_coef`."""
    torch.manual_seed(seed)
    config = transformers.MixtralConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        router_aux_loss_coef=router_aux_loss_coef,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return transformers.MixtralForCausalLM(config)
