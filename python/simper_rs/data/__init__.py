"""Preference data in TRL's formats, and the collator that turns it into [chosen; rejected] batches.

A record has ``prompt``, ``chosen`` and ``rejected``, each either plain text or a conversation
(a list of ``{"role": ..., "content": ...}`` messages; the tokenizer's chat template is applied
when it has one). Sources: a JSONL (or JSON list) file, a list of dicts, or a
``datasets.Dataset``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import torch

__all__ = ["PreferenceDataError", "load_preference_data", "PreferenceCollator", "pack_rows", "default_data_dir", "load_default_data"]

FIELDS = ("prompt", "chosen", "rejected")
Record = Dict[str, Any]


class PreferenceDataError(ValueError):
    """A preference record or file that cannot be used; the message names the record and field."""


def default_data_dir() -> Path:
    """The folder of the embedded default data set (``train.jsonl``, ``test.jsonl``)."""
    return Path(__file__).parent / "default"


def load_default_data() -> Dict[str, List[Record]]:
    """The embedded default data set: ``{"train": [...], "test": [...]}`` (see its README)."""
    return {split: load_preference_data(default_data_dir() / f"{split}.jsonl") for split in ("train", "test")}


def _read_file(path: Path) -> List[Any]:
    if not path.exists():
        raise FileNotFoundError(f"no such preference data file: {path}")
    if path.is_dir():
        raise PreferenceDataError(f"{path} is a folder; expected a .jsonl file of preference records")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise PreferenceDataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        if not isinstance(data, list):
            raise PreferenceDataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        return data
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise PreferenceDataError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
    return records


def _check_messages(index: int, field: str, value: list) -> None:
    if not value:
        raise PreferenceDataError(f"record {index}: field {field!r} is an empty conversation")
    for position, message in enumerate(value):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str) and isinstance(message.get("content"), str)):
            raise PreferenceDataError(
                f"record {index}: field {field!r} message {position} must be a dict with string 'role' and 'content'"
            )


def _check_record(index: int, record: Any) -> Record:
    if not isinstance(record, dict):
        raise PreferenceDataError(f"record {index}: expected a dict with {list(FIELDS)}, got {type(record).__name__}")
    for field in FIELDS:
        if field not in record:
            raise PreferenceDataError(f"record {index}: field {field!r} is missing")
        value = record[field]
        if isinstance(value, str):
            if field != "prompt" and not value.strip():
                raise PreferenceDataError(f"record {index}: field {field!r} is an empty response")
        elif isinstance(value, list):
            _check_messages(index, field, value)
        else:
            raise PreferenceDataError(
                f"record {index}: field {field!r} must be a string or a list of {{'role', 'content'}} messages, "
                f"got {type(value).__name__}"
            )
    kinds = {isinstance(record[f], str) for f in FIELDS}
    if len(kinds) > 1:
        raise PreferenceDataError(f"record {index}: mixes plain text and conversations across {list(FIELDS)}")
    return record


def load_preference_data(source: Union[str, os.PathLike, Iterable[Record]]) -> List[Record]:
    """Read and check preference records from a file path, a list of dicts or a ``datasets.Dataset``.

    Raises :class:`PreferenceDataError` (a ``ValueError``) naming the record index and field of
    the first malformed record, and ``FileNotFoundError`` for a missing file.
    """
    if isinstance(source, (str, os.PathLike)):
        raw: Sequence[Any] = _read_file(Path(source))
    elif hasattr(source, "__iter__"):
        raw = list(source)  # a list, or a datasets.Dataset (iterates over dict rows)
    else:
        raise TypeError(f"source must be a path, a list of records or a datasets.Dataset, got {type(source).__name__}")
    if not raw:
        raise PreferenceDataError("the preference data set is empty")
    return [_check_record(i, r) for i, r in enumerate(raw)]


def pack_rows(sequences, pad_token_id: int, max_tokens_per_row: Optional[int] = None, label_fill: int = -100) -> Dict[str, torch.Tensor]:
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
    return {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(out_labels), "position_ids": torch.tensor(position_ids)}


class PreferenceCollator:
    """Tokenize preference records into one ``[chosen; rejected]`` batch.

    Each sequence is BOS + prompt + response + EOS (as the official SimPER trainer builds them);
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
            raise ValueError(f"max_tokens_per_row must be a positive int and goes with padding_free=True, got {max_tokens_per_row!r}")
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
        prompt_ids = bos + self._encode(prompt)
        out = []
        for response in (chosen, rejected):
            out.extend(self._sequence(prompt_ids, self._encode(response) + eos))
        return out

    def __call__(self, records: List[Record]) -> Dict[str, torch.Tensor]:
        records = [_check_record(i, r) for i, r in enumerate(records)]
        encoded = [self.encode_record(r) for r in records]
        sequences = [e[0] for e in encoded] + [e[2] for e in encoded]
        labels = [e[1] for e in encoded] + [e[3] for e in encoded]
        if self.padding_free:
            batch = self._packed(sequences, labels)
        else:
            batch = self._padded(sequences, labels)
        for field in ("ref_chosen_logps", "ref_rejected_logps"):
            if all(field in r for r in records):
                batch[field] = torch.tensor([float(r[field]) for r in records])
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
