"""The command line's data and model loading: the user's sources, or the embedded defaults, with
every failure a one-line :class:`CommandError` naming the option."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .common import CommandError

__all__ = ["load_split", "load_train_and_eval", "load_eval_records", "load_model", "context_length"]


def _splits(source: str, option: str) -> Dict[str, Any]:
    from ..data import PreferenceDataError, preference_splits

    try:
        return preference_splits(source)
    except FileNotFoundError as err:
        raise CommandError(f"{option}: {err}") from None
    except PreferenceDataError as err:
        raise CommandError(f"{option}: {err}") from None


def _records(splits: Dict[str, Any], name: str, source: str, option: str) -> List[dict]:
    from ..data import PreferenceDataError, records_from_rows

    where = f"{source} (split {name!r})" if len(splits) > 1 else source
    try:
        return records_from_rows(splits[name], where)
    except PreferenceDataError as err:
        raise CommandError(f"{option}: bad preference data: {err}") from None


def _pick(splits: Dict[str, Any], split: Optional[str], preferred, source: str, option: str, split_option: str) -> str:
    from ..data import PreferenceDataError, select_split

    try:
        return select_split(splits, split, preferred, where=source, argument=split_option)
    except PreferenceDataError as err:
        raise CommandError(f"{option}: {err}") from None


def load_split(source: str, split: Optional[str], preferred, option: str, split_option: str) -> Tuple[List[dict], str]:
    """(records, split name) of one split of ``source``."""
    splits = _splits(source, option)
    name = _pick(splits, split, preferred, source, option, split_option)
    return _records(splits, name, source, option), name


def _test_names(train_split: str) -> Tuple[str, ...]:
    # UltraFeedback-style names pair up: train_prefs with test_prefs.
    return ("test", train_split.replace("train", "test")) if "train" in train_split else ("test",)


def load_train_and_eval(opts) -> Tuple[List[dict], List[dict], str]:
    """(train records, held-out records, where the held-out records came from)."""
    from ..data import load_default_data

    if opts.data is None:
        if opts.data_split is not None:
            raise CommandError("--data-split goes with --data (the embedded data set has a train and a test split)")
        embedded = load_default_data()
        if opts.eval_data is None:
            if opts.eval_split not in (None, "test", "train"):
                raise CommandError(
                    f"--eval-split: the embedded data set has no split {opts.eval_split!r} (its splits: train, test)"
                )
            held_out, where = embedded[opts.eval_split or "test"], f"the embedded {opts.eval_split or 'test'} split"
        else:
            held_out, name = load_split(opts.eval_data, opts.eval_split, ("test",), "--eval-data", "--eval-split")
            where = f"{opts.eval_data} ({name})"
        return embedded["train"], _cap(held_out, opts), where
    splits = _splits(opts.data, "--data")
    train_name = _pick(splits, opts.data_split, ("train",), opts.data, "--data", "--data-split")
    train = _records(splits, train_name, opts.data, "--data")
    if opts.eval_data is not None:
        held_out, name = load_split(opts.eval_data, opts.eval_split, ("test",), "--eval-data", "--eval-split")
        return train, _cap(held_out, opts), f"{opts.eval_data} ({name})"
    test_name = opts.eval_split
    if test_name is None:
        test_name = next((n for n in _test_names(train_name) if n in splits and n != train_name), None)
    elif test_name not in splits:
        raise CommandError(f"--eval-split: {opts.data} has no split {test_name!r} (its splits: {', '.join(splits)})")
    if test_name is not None:
        return train, _cap(_records(splits, test_name, opts.data, "--data"), opts), f"{opts.data} ({test_name})"
    if len(train) < 10:
        raise CommandError(f"--data: {opts.data} has {len(train)} records; give at least 10, or --eval-data")
    cut = len(train) - max(1, len(train) // 10)
    return train[:cut], _cap(train[cut:], opts), f"the last 10% of {opts.data} ({train_name})"


def _cap(records: List[dict], opts) -> List[dict]:
    return records if opts.max_eval_pairs is None else records[: opts.max_eval_pairs]


def load_eval_records(data: Optional[str], split: Optional[str]) -> List[dict]:
    """The records of ``simper-rs eval``: a split of ``data`` (its 'test' split by preference), or
    the embedded held-out split."""
    from ..data import load_default_data

    if data is None:
        if split not in (None, "test", "train"):
            raise CommandError(f"--split: the embedded data set has no split {split!r} (its splits: train, test)")
        return load_default_data()[split or "test"]
    return load_split(data, split, ("test",), "--data", "--split")[0]


def load_model(model_path: Optional[Path], records: List[dict], seed: int):
    """(model, tokenizer, description): a local HuggingFace causal LM in float32 (the weights an
    optimizer updates; bf16 runs as mixed precision), or the tiny Llama built offline from the
    words of ``records``."""
    from .tiny import build_tiny_model, build_tokenizer

    if model_path is None:
        tokenizer = build_tokenizer(records)
        return build_tiny_model(tokenizer, seed=seed), tokenizer, "tiny Llama (built offline)"
    if not model_path.is_dir():
        raise CommandError(f"--model: {model_path} is not a folder (expected a local HuggingFace model)")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers 4.56 renamed torch_dtype to dtype (the old name warns from then on).
    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    dtype = {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": torch.float32}
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(model_path, local_files_only=True, **dtype)
    except (OSError, ValueError) as err:
        raise CommandError(f"--model: cannot load {model_path}: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, str(model_path)


def context_length(model, tokenizer) -> Optional[int]:
    """The longest sequence the model takes, from its config and its tokenizer (None if neither says)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    lengths = [
        getattr(config, name, None)
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
    ]
    lengths.append(getattr(tokenizer, "model_max_length", None))
    # Tokenizers without a limit report a huge sentinel (transformers' VERY_LARGE_INTEGER).
    known = [n for n in lengths if isinstance(n, int) and 0 < n < 10**7]
    return min(known) if known else None
