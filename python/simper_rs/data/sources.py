"""Preference data where users keep it: files, ``datasets`` folders, and the ``datasets`` cache.

A source is one of

* a file: ``.jsonl`` (one record per line), ``.json`` (a list of records, or JSON Lines),
  ``.csv`` (a header row with the column names; plain text), ``.parquet``;
* a folder written by ``datasets``' ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``);
* any other folder ``datasets.load_dataset`` reads (data files named by split, such as a
  clone of a dataset repository from the Hugging Face hub);
* the name of a hub dataset (``owner/name``), read by ``datasets.load_dataset``: from the local
  cache when the hub is offline (``HF_HUB_OFFLINE=1``, which ``simper-rs`` sets);
* records already in memory: a list of dicts, a ``datasets.Dataset`` or a ``DatasetDict``.

A file is one split, named ``train``, as ``datasets`` names it.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from .records import PreferenceDataError, Record, check_records

__all__ = ["FILE_SUFFIXES", "preference_splits", "select_split", "records_from_rows", "load_preference_data"]

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# Columns a record needs (the prompt may be implicit: see simper_rs.data.records) and the optional
# ones the loss uses; other columns are dropped when records are read from a table.
_REQUIRED = ("chosen", "rejected")
_KEPT = ("prompt", "chosen", "rejected", "ref_chosen_logps", "ref_rejected_logps")

Source = Union[str, "os.PathLike[str]", Iterable[Record]]


def _read_jsonl(path: Path, text: str) -> List[Any]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise PreferenceDataError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
    return records


def _read_json(path: Path, text: str) -> List[Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # JSON Lines in a .json file, which datasets reads too
            return _read_jsonl(path, text)
        raise PreferenceDataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, list):
        raise PreferenceDataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _read_csv(path: Path) -> "_Table":
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return _Table(list(reader.fieldnames or []), rows)


def _read_parquet(path: Path) -> "_Table":
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PreferenceDataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow, or datasets)") from None
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several kinds on a file that is not parquet
        raise PreferenceDataError(f"{path}: not a readable parquet file ({_first_line(err)})") from None
    kept = [c for c in table.column_names if c in _KEPT]
    return _Table(table.column_names, table.select(kept).to_pylist())


class _Table:
    """Rows read from a file with named columns (CSV, parquet), before the records are checked."""

    def __init__(self, columns: List[str], rows: List[dict]) -> None:
        self.column_names = columns
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _datasets():
    try:
        import datasets
    except ImportError:
        raise PreferenceDataError(
            "reading a dataset folder or a hub dataset needs datasets (pip install datasets)"
        ) from None
    return datasets


def _as_splits(data: Any) -> Dict[str, Any]:
    """``{split name: rows}`` of a ``Dataset`` / ``DatasetDict`` (the name of a single Dataset is train)."""
    if hasattr(data, "column_names") and isinstance(data.column_names, dict):  # DatasetDict
        return {str(name): split for name, split in data.items()}
    return {"train": data}


def _looks_like_a_path(text: str) -> bool:
    """Whether a missing ``text`` was meant as a file or folder rather than a hub dataset name."""
    return (
        text.lower().endswith(FILE_SUFFIXES)
        or text.startswith((".", "/", "~"))
        or text.count("/") > 1
        or os.sep != "/"
        and os.sep in text
    )


def preference_splits(source: Source) -> Dict[str, Any]:
    """The splits of a preference data source, by name, as they are stored (not yet checked).

    Use :func:`records_from_rows` on one of them, or :func:`load_preference_data` for both steps.
    Raises ``FileNotFoundError`` for a missing file and :class:`PreferenceDataError` for one
    that cannot be read, with a one-line message naming it.
    """
    if not isinstance(source, (str, os.PathLike)):
        if hasattr(source, "column_names"):  # a datasets.Dataset or DatasetDict
            return _as_splits(source)
        if hasattr(source, "__iter__"):
            return {"train": list(source)}
        raise TypeError(
            f"source must be a path, a dataset name, a list of records or a datasets.Dataset, got {type(source).__name__}"
        )
    path = Path(source)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return {"train": _read_parquet(path)}
        if suffix == ".csv":
            return {"train": _read_csv(path)}
        if suffix in (".json", ".jsonl"):
            text = path.read_text(encoding="utf-8")
            return {"train": _read_json(path, text) if suffix == ".json" else _read_jsonl(path, text)}
        raise PreferenceDataError(
            f"{path}: unknown kind of file {path.suffix or '(no suffix)'!r}; expected one of {', '.join(FILE_SUFFIXES)} or a dataset folder"
        )
    if path.is_dir():
        datasets = _datasets()
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            try:
                return _as_splits(datasets.load_from_disk(str(path)))
            except Exception as err:  # datasets raises many kinds on a damaged folder
                raise PreferenceDataError(
                    f"{path}: cannot read this save_to_disk folder ({_first_line(err)})"
                ) from None
        try:
            return _as_splits(datasets.load_dataset(str(path)))
        except Exception as err:
            raise PreferenceDataError(f"{path}: cannot read this folder as a dataset ({_first_line(err)})") from None
    text = str(source)
    if _looks_like_a_path(text):
        raise FileNotFoundError(f"no such preference data file: {text}")
    datasets = _datasets()
    try:
        return _as_splits(datasets.load_dataset(text))
    except Exception as err:
        raise PreferenceDataError(
            f"{text}: no such file or folder, and no dataset of that name that datasets could load "
            f"(offline, only what is in the local cache: {_first_line(err)})"
        ) from None


def select_split(
    splits: Dict[str, Any],
    split: Optional[str],
    preferred: Sequence[str] = ("train",),
    *,
    where: str = "the data",
    argument: str = "split",
) -> str:
    """The name of the split to use: ``split`` when given, else the only one, else the first of
    ``preferred`` that exists; a :class:`PreferenceDataError` naming ``argument`` otherwise."""
    names = ", ".join(splits) or "none"
    if split is not None:
        if split not in splits:
            raise PreferenceDataError(f"{where} has no split {split!r} (its splits: {names})")
        return split
    if len(splits) == 1:
        return next(iter(splits))
    for name in preferred:
        if name in splits:
            return name
    raise PreferenceDataError(f"{where} has the splits {names}: choose one with {argument}")


def records_from_rows(rows: Any, where: str = "the data") -> List[Record]:
    """Checked records (see :func:`simper_rs.data.check_record`) from one split of
    :func:`preference_splits`; a missing column or an empty split is a
    :class:`PreferenceDataError` naming it."""
    columns = getattr(rows, "column_names", None)
    if columns is not None:
        for column in _REQUIRED:
            if column not in columns:
                raise PreferenceDataError(
                    f"{where} has no column {column!r} (its columns: {', '.join(columns) or 'none'})"
                )
    if len(rows) == 0:
        raise PreferenceDataError(f"{where} is empty")
    if isinstance(rows, _Table):
        raw: Sequence[Any] = rows.rows
    elif columns is not None:  # a datasets.Dataset: only the columns the loss reads
        raw = rows.select_columns([c for c in columns if c in _KEPT]).to_list()
    else:
        raw = rows
    try:
        return check_records(list(raw))
    except PreferenceDataError as err:
        raise PreferenceDataError(f"{where}: {err}") from None


def load_preference_data(source: Source, split: Optional[str] = None) -> List[Record]:
    """Read and check preference records from any source of :func:`preference_splits`.

    ``split`` picks one split of a source that has several (default: the only one, else
    ``train``). Raises :class:`PreferenceDataError` (a ``ValueError``) naming the record index
    and field of the first malformed record, a missing column or split, or an empty split, and
    ``FileNotFoundError`` for a missing file.
    """
    what = str(source) if isinstance(source, (str, os.PathLike)) else "the records"
    splits = preference_splits(source)
    name = select_split(splits, split, where=what)
    return records_from_rows(splits[name], f"{what} (split {name!r})" if len(splits) > 1 else what)
