"""The offline default model: a word-level tokenizer built from the data and a tiny Llama.

Nothing is downloaded: the tokenizer's vocabulary is the set of whitespace-separated words in
the records, and the model is a freshly initialised ``LlamaForCausalLM`` from a small config.
"""

from __future__ import annotations

from typing import Iterable, List

SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<eos>"]


def _words(records: Iterable[dict]) -> List[str]:
    words = set()
    for record in records:
        for field in ("prompt", "chosen", "rejected"):
            value = record[field]
            texts = [value] if isinstance(value, str) else [m["content"] for m in value]
            for text in texts:
                words.update(text.split())
    return sorted(words)


def build_tokenizer(records: Iterable[dict]):
    """A word-level ``PreTrainedTokenizerFast`` over the words of ``records``."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + _words(records))}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def build_tiny_model(tokenizer, hidden_size: int = 64, layers: int = 2, heads: int = 4, seed: int = 0):
    """A small, randomly initialised Llama causal LM sized to ``tokenizer``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)
