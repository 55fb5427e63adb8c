"""Preference data loading (TRL formats) and the collator."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from simper_rs.cli.tiny import build_tokenizer
from simper_rs.data import (
    PreferenceCollator,
    PreferenceDataError,
    default_data_dir,
    load_default_data,
    load_preference_data,
)

ROOT = Path(__file__).resolve().parent.parent
RECORDS = [
    {"prompt": "sort : b a =", "chosen": "a b", "rejected": "b a"},
    {"prompt": "sort : c b a d =", "chosen": "a b c d", "rejected": "a b d c"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(load_default_data()["train"])


def test_default_data_regenerates_exactly(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_default_data.py"), str(tmp_path)], check=True, capture_output=True
    )
    for split in ("train", "test"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (default_data_dir() / f"{split}.jsonl").read_bytes()


def test_default_data_is_verifiable_and_split():
    data = load_default_data()
    assert len(data["train"]) == 3000 and len(data["test"]) == 300
    assert not {r["prompt"] for r in data["train"]} & {r["prompt"] for r in data["test"]}
    for r in data["test"]:
        letters = r["prompt"].split()[2:-1]
        assert r["chosen"].split() == sorted(letters) and r["rejected"] != r["chosen"]


def test_sources_jsonl_json_list_and_dataset(tmp_path):
    import datasets

    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    as_json = tmp_path / "p.json"
    as_json.write_text(json.dumps(RECORDS))
    for source in (jsonl, str(jsonl), as_json, RECORDS, datasets.Dataset.from_list(RECORDS)):
        assert load_preference_data(source) == RECORDS


BAD = [
    ({"prompt": "x", "chosen": "a"}, "record 1: field 'rejected' is missing"),
    ({"prompt": "x", "chosen": "", "rejected": "b"}, "record 1: field 'chosen' is an empty response"),
    ({"prompt": "x", "chosen": 3, "rejected": "b"}, "record 1: field 'chosen' must be a string or a list"),
    (
        {
            "prompt": [{"role": "user"}],
            "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        },
        "record 1: field 'prompt' message 0",
    ),
    (
        {"prompt": "x", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"},
        "record 1: mixes plain text and conversations",
    ),
    ("not a dict", "record 1: expected a dict"),
]


@pytest.mark.parametrize("bad, message", BAD)
def test_malformed_records_name_index_and_field(bad, message):
    with pytest.raises(PreferenceDataError, match=message.replace("[", r"\[")):
        load_preference_data([RECORDS[0], bad])


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such preference data file"):
        load_preference_data(tmp_path / "missing.jsonl")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(RECORDS[0]) + "\n{not json\n")
    with pytest.raises(PreferenceDataError, match="line 2 is not valid JSON"):
        load_preference_data(broken)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(PreferenceDataError, match="empty"):
        load_preference_data(empty)


def test_collator_layout_masks_and_special_tokens(tokenizer):
    batch = PreferenceCollator(tokenizer, max_length=32, max_prompt_length=16)(RECORDS)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape == mask.shape == (4, 13)  # [chosen x2; rejected x2], padded
    tokens = tokenizer.convert_ids_to_tokens(ids[1].tolist())
    assert tokens == ["<bos>", "sort", ":", "c", "b", "a", "d", "=", "a", "b", "c", "d", "<eos>"]
    # chosen of record 0: BOS + 5 prompt tokens masked, then "a b <eos>", then padding masked
    assert labels[0].tolist()[:6] == [-100] * 6
    assert tokenizer.convert_ids_to_tokens(labels[0, 6:9].tolist()) == ["a", "b", "<eos>"]
    assert (labels[0, 9:] == -100).all() and (mask[0, 9:] == 0).all() and (ids[0, 9:] == tokenizer.pad_token_id).all()
    # rejected of record 1 sits at row P + 1
    assert tokenizer.convert_ids_to_tokens(labels[3, 8:13].tolist()) == ["a", "b", "d", "c", "<eos>"]


def test_collator_truncates_like_trl(tokenizer):
    long = {
        "prompt": "sort : " + " ".join("abcdefghijklmnop") + " =",
        "chosen": " ".join("abcdefghijklmnop"),
        "rejected": "a b",
    }
    collator = PreferenceCollator(tokenizer, max_length=12, max_prompt_length=5)
    chosen_ids, chosen_labels, rejected_ids, _ = collator.encode_record(long)
    assert len(chosen_ids) == 12
    # the prompt keeps its last 5 tokens, the response fills the rest
    assert tokenizer.convert_ids_to_tokens(chosen_ids[:5]) == ["m", "n", "o", "p", "="]
    assert chosen_labels[:5] == [-100] * 5 and chosen_labels[5] == tokenizer.convert_tokens_to_ids("a")
    assert len(rejected_ids) == 8  # a short response: the prompt is still cut to its last 5 tokens
    with pytest.raises(ValueError, match="max_prompt_length"):
        PreferenceCollator(tokenizer, max_length=8, max_prompt_length=8)


def test_collator_passes_precomputed_reference_logps(tokenizer):
    records = [dict(r, ref_chosen_logps=-1.0, ref_rejected_logps=-2.0) for r in RECORDS]
    batch = PreferenceCollator(tokenizer, max_length=32, max_prompt_length=16)(records)
    assert torch.equal(batch["ref_chosen_logps"], torch.tensor([-1.0, -1.0]))


def test_conversations_use_the_chat_template(tokenizer):
    conv = [
        {
            "prompt": [{"role": "user", "content": "sort : b a ="}],
            "chosen": [{"role": "assistant", "content": "a b"}],
            "rejected": [{"role": "assistant", "content": "b a"}],
        }
    ]
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    try:
        batch = PreferenceCollator(tokenizer, max_length=32, max_prompt_length=16)(conv)
    finally:
        tokenizer.chat_template = None
    response = [t for t in batch["labels"][0].tolist() if t != -100]
    assert tokenizer.convert_ids_to_tokens(response) == ["a", "b", "<eos>"]


# -- every kind of source a user keeps preference data in (issue 24)

CONVERSATIONS = [
    {
        "prompt": [{"role": "user", "content": "sort : b a ="}],
        "chosen": [{"role": "assistant", "content": "a b"}],
        "rejected": [{"role": "assistant", "content": "b a"}],
    },
    {
        "prompt": [{"role": "user", "content": "sort : c a b ="}],
        "chosen": [{"role": "assistant", "content": "a b c"}],
        "rejected": [{"role": "assistant", "content": "a c b"}],
    },
]


def _write(kind, records, folder):
    """``records`` saved as a user would keep them; returns the source to pass and the split to read."""
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        (folder / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return folder / "p.jsonl", None
    if kind == "json":
        (folder / "p.json").write_text(json.dumps(records))
        return folder / "p.json", None
    if kind == "json lines in .json":
        (folder / "p.json").write_text("".join(json.dumps(r) + "\n" for r in records))
        return folder / "p.json", None
    if kind == "csv":
        import csv

        with open(folder / "p.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
        return folder / "p.csv", None
    if kind == "parquet":
        datasets.Dataset.from_list(records).to_parquet(str(folder / "p.parquet"))
        return folder / "p.parquet", None
    if kind == "save_to_disk Dataset":
        datasets.Dataset.from_list(records).save_to_disk(str(folder / "saved"))
        return folder / "saved", None
    if kind == "save_to_disk DatasetDict":
        other = [dict(r, prompt=r["prompt"] + " again") if isinstance(r["prompt"], str) else r for r in records]
        datasets.DatasetDict(
            {"train_prefs": datasets.Dataset.from_list(other), "test_prefs": datasets.Dataset.from_list(records)}
        ).save_to_disk(str(folder / "saved"))
        return folder / "saved", "test_prefs"
    if kind == "dataset folder":  # data files by split, as a clone of a hub dataset repository holds them
        (folder / "repo" / "data").mkdir(parents=True)
        datasets.Dataset.from_list(records).to_parquet(str(folder / "repo" / "data" / "test-00000-of-00001.parquet"))
        datasets.Dataset.from_list(records[:1]).to_parquet(
            str(folder / "repo" / "data" / "train-00000-of-00001.parquet")
        )
        return folder / "repo", "test"
    if kind == "Dataset":
        return datasets.Dataset.from_list(records), None
    raise AssertionError(kind)


KINDS = [
    "jsonl",
    "json",
    "json lines in .json",
    "csv",
    "parquet",
    "save_to_disk Dataset",
    "save_to_disk DatasetDict",
    "dataset folder",
    "Dataset",
]


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_source_reads_the_same_records(tmp_path, kind):
    pytest.importorskip("datasets")
    source, split = _write(kind, RECORDS, tmp_path)
    assert load_preference_data(source, split=split) == RECORDS
    if kind not in ("csv", "json lines in .json"):
        source, split = _write(kind, CONVERSATIONS, tmp_path / "chat")
        assert load_preference_data(source, split=split) == CONVERSATIONS


def test_numbers_beside_the_records_survive_a_table(tmp_path):
    pytest.importorskip("datasets")
    records = [dict(r, ref_chosen_logps=-1.5, ref_rejected_logps=-2.5, score=3) for r in RECORDS]
    source, _ = _write("parquet", records, tmp_path)
    loaded = load_preference_data(source)
    assert [r["ref_chosen_logps"] for r in loaded] == [-1.5, -1.5] and "score" not in loaded[0]


def test_splits_by_name_and_the_default_split(tmp_path):
    import datasets

    from simper_rs.data import preference_splits

    folder = tmp_path / "saved"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(RECORDS), "test": datasets.Dataset.from_list(RECORDS[:1])}
    ).save_to_disk(str(folder))
    assert sorted(preference_splits(folder)) == ["test", "train"]
    assert load_preference_data(folder) == RECORDS  # the train split by default
    assert load_preference_data(folder, split="test") == RECORDS[:1]
    with pytest.raises(PreferenceDataError, match=r"has no split 'validation' \(its splits: train, test\)"):
        load_preference_data(folder, split="validation")
    two = tmp_path / "two"
    datasets.DatasetDict(
        {"a": datasets.Dataset.from_list(RECORDS), "b": datasets.Dataset.from_list(RECORDS)}
    ).save_to_disk(str(two))
    with pytest.raises(PreferenceDataError, match="has the splits a, b: choose one with split"):
        load_preference_data(two)


@pytest.mark.parametrize("kind", ["csv", "parquet", "save_to_disk Dataset"])
def test_a_missing_column_is_named(tmp_path, kind):
    pytest.importorskip("datasets")
    source, _ = _write(
        kind, [{"prompt": r["prompt"], "chosen": r["chosen"], "answer": r["rejected"]} for r in RECORDS], tmp_path
    )
    with pytest.raises(
        PreferenceDataError, match=r"has no column 'rejected' \(its columns: prompt, chosen, answer\)"
    ) as err:
        load_preference_data(source)
    assert len(str(err.value).splitlines()) == 1


def test_an_empty_split_and_odd_files_are_named(tmp_path):
    import datasets

    empty = datasets.Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []})
    with pytest.raises(PreferenceDataError, match=r"the records \(split 'test'\) is empty"):
        load_preference_data(
            datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS), "test": empty}), split="test"
        )
    empty.to_parquet(str(tmp_path / "empty.parquet"))
    with pytest.raises(PreferenceDataError, match="empty.parquet is empty"):
        load_preference_data(tmp_path / "empty.parquet")
    (tmp_path / "p.txt").write_text("prompt chosen rejected\n")
    with pytest.raises(PreferenceDataError, match="unknown kind of file '.txt'"):
        load_preference_data(tmp_path / "p.txt")
    (tmp_path / "broken.parquet").write_text("not parquet")
    with pytest.raises(PreferenceDataError, match="broken.parquet: not a readable parquet file"):
        load_preference_data(tmp_path / "broken.parquet")
    with pytest.raises(FileNotFoundError, match="no such preference data file"):
        load_preference_data(tmp_path / "missing.parquet")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(PreferenceDataError, match="nothing: cannot read this folder as a dataset"):
        load_preference_data(tmp_path / "nothing")


# -- TRL's implicit-prompt formats, against TRL's own prompt extraction

IMPLICIT = [
    # text: the prompt is the shared start, the space before the answers stays with them
    {"chosen": "Human: sort b a Assistant: a b", "rejected": "Human: sort b a Assistant: b a"},
    # conversational: the shared messages
    {
        "chosen": [{"role": "user", "content": "sort : b a ="}, {"role": "assistant", "content": "a b"}],
        "rejected": [{"role": "user", "content": "sort : b a ="}, {"role": "assistant", "content": "b a"}],
    },
    # UltraFeedback: a plain-text copy of the prompt beside conversations that hold it
    {
        "prompt": "sort : b a =",
        "chosen": [{"role": "user", "content": "sort : b a ="}, {"role": "assistant", "content": "a b"}],
        "rejected": [{"role": "user", "content": "sort : b a ="}, {"role": "assistant", "content": "b a"}],
    },
    # explicit prompts are kept as they are
    {"prompt": "sort : b a =", "chosen": "a b", "rejected": "b a"},
    CONVERSATIONS[0],
]


@pytest.mark.parametrize("record", IMPLICIT)
def test_implicit_prompts_are_split_off_as_trl_does(record):
    trl_data_utils = pytest.importorskip("trl.data_utils")
    from simper_rs.data import check_record

    expected = trl_data_utils.maybe_extract_prompt(dict(record))
    got = check_record(0, dict(record))
    assert {k: got[k] for k in ("prompt", "chosen", "rejected")} == {
        k: expected[k] for k in ("prompt", "chosen", "rejected")
    }


def test_implicit_prompt_that_cannot_be_found_is_named():
    conv = {"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}
    with pytest.raises(
        PreferenceDataError,
        match="record 1: field 'prompt' is missing, and 'chosen' and 'rejected' share no first message",
    ):
        load_preference_data([RECORDS[0], conv])
    with pytest.raises(PreferenceDataError, match="record 0: field 'chosen' is an empty response"):
        load_preference_data([{"chosen": "same", "rejected": "same"}])


def test_chat_template_that_writes_bos_and_eos_gets_them_once(tokenizer):
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ m['content'] }} {% endfor %}"
        "{% if not add_generation_prompt %}{{ eos_token }}{% endif %}"
    )
    try:
        collator = PreferenceCollator(tokenizer, max_length=32, max_prompt_length=16)
        chosen_ids, chosen_labels, _, _ = collator.encode_record(CONVERSATIONS[0])
    finally:
        tokenizer.chat_template = None
    assert tokenizer.convert_ids_to_tokens(chosen_ids) == ["<bos>", "sort", ":", "b", "a", "=", "a", "b", "<eos>"]
    assert tokenizer.convert_ids_to_tokens([y for y in chosen_labels if y != -100]) == ["a", "b", "<eos>"]


def test_both_collators_take_reference_log_probs_by_one_rule():
    from simper_rs.data import PreferenceDataError, reference_logps
    from simper_rs.integrations.trl import PackedPreferenceCollator

    with_refs = [
        {"ref_chosen_logps": -1.0, "ref_rejected_logps": -2.0},
        {"ref_chosen_logps": -0.5, "ref_rejected_logps": -3.0},
    ]
    got = reference_logps(with_refs)
    assert got["ref_chosen_logps"].tolist() == [-1.0, -0.5] and got["ref_rejected_logps"].tolist() == [-2.0, -3.0]
    assert reference_logps([{}, {}]) == {}
    with pytest.raises(PreferenceDataError, match="record 1 of the batch has no ref_chosen_logps / ref_rejected_logps"):
        reference_logps([with_refs[0], {"ref_chosen_logps": -1.0}])
    tokenized = [dict(prompt_ids=[1, 2], chosen_ids=[3], rejected_ids=[4], **r) for r in with_refs]
    packed = PackedPreferenceCollator()(tokenized)
    assert packed["ref_chosen_logps"].tolist() == [-1.0, -0.5]
    with pytest.raises(PreferenceDataError, match="record 0 of the batch"):
        PackedPreferenceCollator()([dict(prompt_ids=[1], chosen_ids=[3], rejected_ids=[4]), tokenized[1]])
