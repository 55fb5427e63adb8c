"""The collator that turns preference records into ``[chosen; rejected]`` batches (padded or packed)."""

from __future__ import annotations

from typing import Dict, List, Optional

import torch

from .records import PreferenceDataError, Record, check_record

__all__ = ["PreferenceCollator", "pack_rows"]


REFERENCE_FIELDS = ("ref_chosen_logps", "ref_rejected_logps")


def reference_logps(records) -> Dict[str, torch.Tensor]:
    """The precomputed reference log-probs of a batch of records, ``[P]`` each (float32), or none:
    every record carries ``ref_chosen_logps`` and ``ref_rejected_logps``, or none does (a batch
    with some is a ``PreferenceDataError`` naming the first record without them)."""
    present = [all(field in r for field in REFERENCE_FIELDS) for r in records]
    if not any(present):
        return {}
    if not all(present):
        missing = present.index(False)
        raise PreferenceDataError(
            f"record {missing} of the batch has no {' / '.join(REFERENCE_FIELDS)} while others have them: "
            "give them for every record or for none"
        )
    return {field: torch.tensor([float(r[field]) for r in records]) for field in REFERENCE_FIELDS}


def pack_rows(
    sequences, pad_token_id: int, max_tokens_per_row: Optional[int] = None, label_fill: int = -100
) -> Dict[str, torch.Tensor]:
    """Pack ``(token ids, labels)`` sequences, in order, into rows of at most
    ``max_tokens_per_row`` tokens (one row when None; a longer sequence gets a row of its own).

    Returns ``input_ids``, ``labels`` and ``position_ids`` ``[rows, width]``. Shorter rows are
    filled up to the width as a continuation of their last sequence (``position_ids`` counting
    on, labels ``label_fill``, the pad token): no new sequence, and since attention is causal no
    real token sees the fill. Each row's attention is quadratic in its own length only.
    """
    rows: List[list] = [[]]
    for ids, labels in sequences:
        used = sum(len(i) for i, _ in rows[-1])
        if rows[-1] and max_tokens_per_row is not None and used + len(ids) > max_tokens_per_row:
            rows.append([])
        rows[-1].append((ids, labels))
    width = max(sum(len(i) for i, _ in row) for row in rows)
    input_ids, out_labels, position_ids = [], [], []
    for row in rows:
        ids = [t for i, _ in row for t in i]
        fill = width - len(ids)
        input_ids.append(ids + [pad_token_id] * fill)
        out_labels.append([label for _, y in row for label in y] + [label_fill] * fill)
        positions = [p for i, _ in row for p in range(len(i))]
        position_ids.append(positions + list(range(positions[-1] + 1, positions[-1] + 1 + fill)))
    return {
        "input_ids": torch.tensor(input_ids),
        "labels": torch.tensor(out_labels),
        "position_ids": torch.tensor(position_ids),
    }


class PreferenceCollator:
    """Tokenize preference records into one ``[chosen; rejected]`` batch.

    Each sequence is BOS + prompt + response + EOS (as the official SimPER trainer builds them;
    a BOS or EOS that the tokenizer's chat template already wrote is not added again);
    prompt and padding positions get label -100. When prompt + response exceed ``max_length``,
    the prompt is first cut to its last ``max_prompt_length`` tokens, then the response is cut to
    fit (TRL's ``keep_end`` truncation). Chosen and rejected are padded (right) to one length.

    Returns ``input_ids``, ``attention_mask`` and ``labels`` of shape ``[2P, T]``, plus
    ``ref_chosen_logps`` / ``ref_rejected_logps`` ``[P]`` when every record carries them.

    ``padding_free=True`` packs the batch into one row instead: ``input_ids``, ``labels`` and
    ``position_ids`` of shape ``[1, L]`` (L the total length, no padding), the P chosen sequences
    then the P rejected ones, ``position_ids`` restarting at 0 at each sequence (transformers then
    keeps attention within each sequence), labels -100 on prompts and on each sequence's first token.
    ``max_tokens_per_row`` packs into several rows of at most that many tokens instead (see
    :func:`pack_rows`): attention costs the square of a row's length, so long packed rows give
    back part of what packing saves.
    """

    def __init__(
        self,
        tokenizer,
        max_length: int = 512,
        max_prompt_length: int = 256,
        *,
        padding_free: bool = False,
        max_tokens_per_row: Optional[int] = None,
    ) -> None:
        if max_prompt_length >= max_length:
            raise ValueError(f"max_prompt_length ({max_prompt_length}) must be smaller than max_length ({max_length})")
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.max_prompt_length = int(max_prompt_length)
        self.padding_free = bool(padding_free)
        if max_tokens_per_row is not None and (not padding_free or max_tokens_per_row < 1):
            raise ValueError(
                f"max_tokens_per_row must be a positive int and goes with padding_free=True, got {max_tokens_per_row!r}"
            )
        self.max_tokens_per_row = max_tokens_per_row
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad token nor an EOS token to pad with")
        self.pad_token_id = pad

    def _text(self, value) -> str:
        if isinstance(value, str):
            return value
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(value, tokenize=False)
        return "\n".join(f"{m['role']}: {m['content']}" for m in value)

    def _prompt_and_responses(self, record: Record):
        prompt, chosen, rejected = record["prompt"], record["chosen"], record["rejected"]
        if isinstance(prompt, str):
            return prompt, chosen, rejected
        if getattr(self.tokenizer, "chat_template", None):
            # The response text is what the template adds after the prompt's generation prompt.
            prompt_text = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            full = [self.tokenizer.apply_chat_template(prompt + r, tokenize=False) for r in (chosen, rejected)]
            return prompt_text, *(f[len(prompt_text) :] if f.startswith(prompt_text) else f for f in full)
        return self._text(prompt) + "\n", self._text(chosen), self._text(rejected)

    def _encode(self, text: str) -> List[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _sequence(self, prompt_ids: List[int], response_ids: List[int]):
        if len(prompt_ids) + len(response_ids) > self.max_length:
            prompt_ids = prompt_ids[-self.max_prompt_length :]
        if len(prompt_ids) + len(response_ids) > self.max_length:
            response_ids = response_ids[: self.max_length - len(prompt_ids)]
        return prompt_ids + response_ids, [-100] * len(prompt_ids) + response_ids

    def encode_record(self, record: Record):
        """(chosen ids, chosen labels, rejected ids, rejected labels) of one record."""
        prompt, chosen, rejected = self._prompt_and_responses(record)
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        prompt_ids = self._encode(prompt)
        # A chat template may write the BOS and EOS tokens itself: never twice.
        if prompt_ids[:1] != bos:
            prompt_ids = bos + prompt_ids
        out = []
        for response in (chosen, rejected):
            response_ids = self._encode(response)
            if not eos or response_ids[-1:] != eos:
                response_ids = response_ids + eos
            out.extend(self._sequence(prompt_ids, response_ids))
        return out

    def __call__(self, records: List[Record]) -> Dict[str, torch.Tensor]:
        records = [check_record(i, r) for i, r in enumerate(records)]
        encoded = [self.encode_record(r) for r in records]
        sequences = [e[0] for e in encoded] + [e[2] for e in encoded]
        labels = [e[1] for e in encoded] + [e[3] for e in encoded]
        if self.padding_free:
            batch = self._packed(sequences, labels)
        else:
            batch = self._padded(sequences, labels)
        batch.update(reference_logps(records))
        return batch

    def _packed(self, sequences: List[List[int]], labels: List[List[int]]) -> Dict[str, torch.Tensor]:
        """The sequences one after the other, without padding between them: ``position_ids``
        restart at 0 at each (the model's attention stays within a sequence) and each sequence's
        first label is -100 (it would be predicted from the previous sequence's last token)."""
        return pack_rows(
            [(s, [-100] + y[1:]) for s, y in zip(sequences, labels)], self.pad_token_id, self.max_tokens_per_row
        )

    def _padded(self, sequences: List[List[int]], labels: List[List[int]]) -> Dict[str, torch.Tensor]:
        width = max(len(s) for s in sequences)
        return {
            "input_ids": torch.tensor([s + [self.pad_token_id] * (width - len(s)) for s in sequences]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences]),
            "labels": torch.tensor([y + [-100] * (width - len(y)) for y in labels]),
        }
