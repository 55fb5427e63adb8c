"""Preference data loading (TRL formats) and the collator."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from simper_rs.data import PreferenceCollator, PreferenceDataError, default_data_dir, load_default_data, load_preference_data
from simper_rs.tiny import build_tokenizer

ROOT = Path(__file__).resolve().parent.parent
RECORDS = [
    {"prompt": "sort : b a =", "chosen": "a b", "rejected": "b a"},
    {"prompt": "sort : c b a d =", "chosen": "a b c d", "rejected": "a b d c"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(load_default_data()["train"])


def test_default_data_regenerates_exactly(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_default_data.py"), str(tmp_path)], check=True, capture_output=True)
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
    ({"prompt": [{"role": "user"}], "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}, "record 1: field 'prompt' message 0"),
    ({"prompt": "x", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}, "record 1: mixes plain text and conversations"),
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
    long = {"prompt": "sort : " + " ".join("abcdefghijklmnop") + " =", "chosen": " ".join("abcdefghijklmnop"), "rejected": "a b"}
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
    conv = [{
        "prompt": [{"role": "user", "content": "sort : b a ="}],
        "chosen": [{"role": "assistant", "content": "a b"}],
        "rejected": [{"role": "assistant", "content": "b a"}],
    }]
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    try:
        batch = PreferenceCollator(tokenizer, max_length=32, max_prompt_length=16)(conv)
    finally:
        tokenizer.chat_template = None
    response = [t for t in batch["labels"][0].tolist() if t != -100]
    assert tokenizer.convert_ids_to_tokens(response) == ["a", "b", "<eos>"]
