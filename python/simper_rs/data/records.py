"""Preference records in TRL's formats: what a record holds, and the checks that name what is wrong.

A record has ``chosen`` and ``rejected`` and, in TRL's explicit-prompt format, ``prompt``; each is
either plain text or a conversation (a list of ``{"role": ..., "content": ...}`` messages). In
TRL's implicit-prompt format there is no prompt (or only a plain-text one beside conversational
answers, as in UltraFeedback): the prompt is the part that ``chosen`` and ``rejected`` share at
their start, and it is split off as TRL's ``extract_prompt`` does.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

__all__ = ["FIELDS", "Record", "PreferenceDataError", "check_record", "extract_prompt", "is_conversation"]

FIELDS = ("prompt", "chosen", "rejected")
Record = Dict[str, Any]


class PreferenceDataError(ValueError):
    """A preference record or file that cannot be used; the message names the record and field."""


def is_conversation(value: Any) -> bool:
    """Whether ``value`` is in TRL's conversational format: a list of messages (dicts)."""
    return isinstance(value, list) and all(isinstance(m, dict) for m in value)


def extract_prompt(chosen: Any, rejected: Any) -> Tuple[Any, Any, Any]:
    """``(prompt, chosen, rejected)`` from two answers that repeat the prompt at their start.

    The prompt is the longest shared beginning: whole messages for conversations, characters
    for text (a space just before the point where they differ stays with the answers), as in
    TRL's ``extract_prompt``.
    """
    shared = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        shared += 1
    if isinstance(chosen, str) and 0 < shared < min(len(chosen), len(rejected)) and chosen[shared - 1] == " ":
        shared -= 1
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _check_messages(index: int, field: str, value: list) -> None:
    if not value:
        raise PreferenceDataError(f"record {index}: field {field!r} is an empty conversation")
    for position, message in enumerate(value):
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise PreferenceDataError(
                f"record {index}: field {field!r} message {position} must be a dict with string 'role' and 'content'"
            )


def check_record(index: int, record: Any) -> Record:
    """The record at position ``index`` (counted from 0), checked, with an implicit prompt split off.

    Raises :class:`PreferenceDataError` naming the record and the field when something is
    missing or of the wrong kind, when an answer is empty, or when a record mixes plain text
    and conversations. Fields other than the three are kept as they are (for example
    ``ref_chosen_logps``).
    """
    if not isinstance(record, dict):
        raise PreferenceDataError(f"record {index}: expected a dict with {list(FIELDS)}, got {type(record).__name__}")
    for field in ("chosen", "rejected"):
        if field not in record:
            raise PreferenceDataError(f"record {index}: field {field!r} is missing")
    prompt = record.get("prompt")
    answers_are_conversations = is_conversation(record["chosen"])
    if prompt is None or (isinstance(prompt, str) and answers_are_conversations):
        # Implicit prompt (TRL): the answers start with it. A plain-text prompt next to
        # conversational answers is a copy of the user's turn, which the answers hold already.
        same_kind = isinstance(record["chosen"], (str, list)) and type(record["chosen"]) is type(record["rejected"])
        shared, chosen, rejected = (
            extract_prompt(record["chosen"], record["rejected"]) if same_kind else (None, None, None)
        )
        if same_kind and (shared or not answers_are_conversations):
            record = {**record, "prompt": shared, "chosen": chosen, "rejected": rejected}
        elif prompt is None and answers_are_conversations and same_kind:
            raise PreferenceDataError(
                f"record {index}: field 'prompt' is missing, and 'chosen' and 'rejected' share no first message to take it from"
            )
        elif prompt is None:
            raise PreferenceDataError(f"record {index}: field 'prompt' is missing")
    for field in FIELDS:
        value = record[field]
        if isinstance(value, str):
            if field != "prompt" and not value.strip():
                raise PreferenceDataError(f"record {index}: field {field!r} is an empty response")
        elif isinstance(value, list):
            if field != "prompt" and not value:
                raise PreferenceDataError(
                    f"record {index}: field {field!r} is an empty response (the same messages as the other answer)"
                )
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


def check_records(raw: List[Any]) -> List[Record]:
    """Every record of ``raw`` through :func:`check_record`."""
    return [check_record(i, r) for i, r in enumerate(raw)]
