"""Preference data in TRL's formats, and the collator that turns it into [chosen; rejected] batches.

A record has ``prompt``, ``chosen`` and ``rejected``, each either plain text or a conversation
(a list of ``{"role": ..., "content": ...}`` messages; the tokenizer's chat template is applied
when it has one); without a prompt (TRL's implicit-prompt format) the prompt is the start that
``chosen`` and ``rejected`` share (:mod:`simper_rs.data.records`). Sources: JSONL, JSON, CSV and
parquet files, ``datasets`` folders (``save_to_disk`` or data files by split), a hub dataset
name (from the local cache when offline), a list of dicts, or a ``datasets.Dataset``
(:mod:`simper_rs.data.sources`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from .collator import REFERENCE_FIELDS, PreferenceCollator, pack_rows, reference_logps
from .records import FIELDS, PreferenceDataError, Record, check_record, extract_prompt, is_conversation
from .sources import FILE_SUFFIXES, load_preference_data, preference_splits, records_from_rows, select_split

__all__ = [
    "PreferenceDataError",
    "load_preference_data",
    "preference_splits",
    "select_split",
    "records_from_rows",
    "check_record",
    "extract_prompt",
    "is_conversation",
    "reference_logps",
    "REFERENCE_FIELDS",
    "PreferenceCollator",
    "pack_rows",
    "default_data_dir",
    "load_default_data",
    "FIELDS",
    "FILE_SUFFIXES",
    "Record",
]


def default_data_dir() -> Path:
    """The folder of the embedded default data set (``train.jsonl``, ``test.jsonl``)."""
    return Path(__file__).parent / "default"


def load_default_data() -> Dict[str, List[Record]]:
    """The embedded default data set: ``{"train": [...], "test": [...]}`` (see its README)."""
    return {split: load_preference_data(default_data_dir() / f"{split}.jsonl") for split in ("train", "test")}
