"""The simper-rs command line: help, one-line errors, and the main job end to end."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")


def simper_rs(*args, cwd=None):
    env = {**os.environ, "SIMPER_RS_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-m", "simper_rs.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def test_help():
    out = simper_rs("--help")
    assert out.returncode == 0 and all(command in out.stdout for command in ("train", "eval", "bench", "doctor"))
    out = simper_rs("train", "--help")
    assert out.returncode == 0 and "--estimator" in out.stdout and "--data" in out.stdout
    # both recipes are stated where the options are
    help_text = " ".join(out.stdout.split())
    assert "learning rate 3e-3 constant" in help_text and "learning rate 5e-7 cosine with 10% warm-up" in help_text
    assert "None: 3e-3 (toy), 5e-7 (--model)" in help_text
    # python -m simper_rs is the same command line
    out = subprocess.run(
        [sys.executable, "-m", "simper_rs", "eval", "--help"], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0 and "--max-eval-pairs" in out.stdout


def test_importing_the_command_line_changes_no_environment():
    code = (
        "import os, simper_rs.cli, simper_rs.cli.train; print(sorted(k for k in os.environ if k.endswith('OFFLINE')))"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("OFFLINE")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "missing.jsonl"], "--data: no such preference data file: missing.jsonl"),
        (["train", "--model", "no-such-dir"], "--model: no-such-dir is not a folder"),
        (
            ["train", "--data", "bad.jsonl"],
            "--data: bad preference data: bad.jsonl: record 1: field 'rejected' is missing",
        ),
        (["train", "--device", "nonsense"], "--device: nonsense is not usable here"),
        (["train", "--lr", "-1"], "must be positive"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, args, message):
    (tmp_path / "bad.jsonl").write_text(
        json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
        + "\n"
        + json.dumps({"prompt": "p", "chosen": "a"})
        + "\n"
    )
    out = simper_rs(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_unknown_choice_is_rejected_by_argparse():
    out = simper_rs("train", "--loss", "dpo")
    assert out.returncode == 2 and "invalid choice" in out.stderr


ROOT = Path(__file__).resolve().parent.parent


def _readme_main_job():
    """The main job's table in the README (its first table: held-out, before, after, change) and the
    band around it that the README states for preference accuracy and margin."""
    text = (ROOT / "README.md").read_text()
    start = text.index("SimPER: held-out evaluation on")
    rows = {}
    for line in text[start:].splitlines()[2:]:
        if not line.strip() or line.startswith("```"):
            break
        if line.startswith("held-out"):
            continue
        rows[line[:22].strip()] = [float(x) for x in line[22:].split()]
    band = re.search(r"preference accuracy within ±([0-9.]+) and the margin within ±([0-9.]+)", " ".join(text.split()))
    assert band, "the README states the band the main job's table is checked against"
    return rows, float(band.group(1)), float(band.group(2))


def test_main_job_improves_held_out_preference_accuracy(tmp_path):
    out = simper_rs("train", "--output-dir", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "SimPER: held-out evaluation on 300 pairs before and after preference training" in out.stdout
    assert "preference accuracy" in out.stdout and "generation accuracy" in out.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    before, after = summary["before"], summary["after"]
    assert summary["held_out_pairs"] == 300 and summary["train_pairs"] == 3000
    assert after["preference accuracy"] > before["preference accuracy"] + 0.1
    assert after["generation accuracy"] > before["generation accuracy"] + 0.3
    assert after["mean logp chosen"] > before["mean logp chosen"]  # SimPER keeps the chosen likelihood up
    # The README's table is this run's, within the band it states (what varies between CPUs is
    # float rounding, which moves greedy generations and log-probs a little).
    readme, accuracy_band, margin_band = _readme_main_job()
    assert list(readme) == list(after)  # the same rows, in the same order
    assert readme["preference accuracy"][:2] == pytest.approx(
        [before["preference accuracy"], after["preference accuracy"]], abs=accuracy_band
    )
    assert readme["margin"][:2] == pytest.approx([before["margin"], after["margin"]], abs=margin_band)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/margins" in r for r in rows) and any("eval_rewards/margins" in r for r in rows)
    assert (tmp_path / "run" / "training.png").read_bytes()[:4] == b"\x89PNG"
    # the trained model is kept, and is the one evaluated
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from simper_rs.cli import evaluate
    from simper_rs.data import PreferenceCollator, load_default_data

    model_dir = tmp_path / "run" / "model"
    assert f"saved the trained model and tokenizer to {model_dir}" in out.stdout
    assert (model_dir / "model.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    collator = PreferenceCollator(tokenizer, max_length=64, max_prompt_length=32)
    again = evaluate(model, tokenizer, collator, load_default_data()["test"])
    assert again == pytest.approx(after, abs=1e-3)
    # simper-rs eval on the saved model prints the same numbers, in the rows of train's table
    table = simper_rs("eval", "--model", str(model_dir))
    assert table.returncode == 0, table.stderr[-2000:]
    printed = {line[:22].strip(): float(line[22:]) for line in table.stdout.splitlines()[3:] if line.strip()}
    assert printed == pytest.approx({k: round(v, 3) for k, v in after.items()}, abs=1.1e-3)
    missing = simper_rs("eval", "--model", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "is not a folder" in missing.stderr


def test_train_on_a_user_file_with_a_split(tmp_path):
    from simper_rs.data import load_default_data

    records = load_default_data()["train"][:60]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = simper_rs(
        "train",
        "--data",
        "mine.jsonl",
        "--epochs",
        "1",
        "--sft-warmup-steps",
        "2",
        "--loss",
        "dil",
        "--estimator",
        "bce",
        "--output-dir",
        "o",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "54 train / 6 held-out pairs" in out.stdout


# -- the real-use path: a user's own model, saved with save_pretrained, and data as users keep it (issue 24)

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A user's model: a tiny Llama and its tokenizer (with a chat template) saved with save_pretrained."""
    from simper_rs.cli.tiny import build_tiny_model, build_tokenizer
    from simper_rs.data import load_default_data

    data = load_default_data()
    tokenizer = build_tokenizer(data["train"] + data["test"])
    tokenizer.chat_template = CHAT_TEMPLATE
    model = build_tiny_model(tokenizer, seed=3)
    folder = tmp_path_factory.mktemp("user-model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _moved(saved_model, run):
    """(largest change of any weight between the user's model and the one the run saved, the same
    less the float32 rounding of each weight: one unit in the last place of the larger of its two values)."""
    import torch
    from safetensors.torch import load_file

    given, trained = (
        load_file(str(saved_model / "model.safetensors")),
        load_file(str(run / "model" / "model.safetensors")),
    )
    assert given.keys() == trained.keys()
    largest = beyond_rounding = 0.0
    for name, before in given.items():
        before, after = before.double(), trained[name].double()
        change = (after - before).abs()
        rounding = torch.finfo(torch.float32).eps * torch.maximum(before.abs(), after.abs())
        largest = max(largest, float(change.max()))
        beyond_rounding = max(beyond_rounding, float((change - rounding).max()))
    return largest, beyond_rounding


# AdamW moves a weight by at most the learning rate times |m/sqrt(v)|, which is 1 on the first step
# and at most 1.0014 on the second (beta1 0.9, beta2 0.999).
ADAMW_SECOND_STEP = 1.0014


def _as_given(saved_model, records, max_length=64, max_prompt_length=56):
    """The held-out table of the user's model as it was saved, computed here (the run's "before")."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from simper_rs.cli import evaluate
    from simper_rs.data import PreferenceCollator

    model = AutoModelForCausalLM.from_pretrained(saved_model)
    tokenizer = AutoTokenizer.from_pretrained(saved_model)
    collator = PreferenceCollator(tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)
    return evaluate(model, tokenizer, collator, records, batch_size=4, generation=False)


def test_real_use_on_parquet_moves_the_weights_only_as_far_as_two_steps_allow(tmp_path, saved_model):
    """The real-use line of docs/cli.md on a model saved with save_pretrained: two AdamW steps at learning
    rate 1e-6 move no weight by more than 2e-6 (AdamW moves a weight by at most about the learning
    rate per step), so nothing else trained the model; "before" is the model as given."""
    datasets = pytest.importorskip("datasets")
    from simper_rs.data import load_default_data

    records = load_default_data()["train"][:60]
    datasets.Dataset.from_list(records).to_parquet(str(tmp_path / "prefs.parquet"))
    out = simper_rs(
        "train",
        "--model",
        str(saved_model),
        "--data",
        "prefs.parquet",
        "--learning-rate",
        "1e-6",
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--output-dir",
        "run",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SimPER on 54 train / 6 held-out pairs (the last 10% of prefs.parquet (train))" in out.stdout
    assert (
        "SimPER paper's recipe: learning rate 1e-06 (cosine, 10% warm-up), 2 steps, 8 pairs per step (2 per device x 4 "
        "accumulation steps), max length 64 (prompt 56), float32 on cpu, no supervised warm-up"
    ) in out.stdout
    assert "SimPER: held-out evaluation on 6 pairs before and after preference training" in out.stdout
    assert "generation accuracy" not in out.stdout  # exact-match decoding is for the embedded data set unless asked
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["held_out_pairs"], summary["train_pairs"], summary["sft_warmup_steps"]) == (6, 54, 0)
    assert summary["before"] == pytest.approx(_as_given(saved_model, records[54:]), abs=1e-5)
    # The first step is the cosine schedule's warm-up step (learning rate 0), the second moves each
    # weight by about the learning rate: well under the 2e-6 that two full steps allow.
    largest, beyond_rounding = _moved(saved_model, tmp_path / "run")
    assert largest > 0.5e-6 and beyond_rounding <= 1e-6 * ADAMW_SECOND_STEP < 2e-6


def test_real_use_on_save_to_disk_splits(tmp_path, saved_model):
    datasets = pytest.importorskip("datasets")
    from simper_rs.data import load_default_data

    data = load_default_data()
    datasets.DatasetDict(
        {
            "train_prefs": datasets.Dataset.from_list(data["train"][:40]),
            "test_prefs": datasets.Dataset.from_list(data["test"][:12]),
        }
    ).save_to_disk(str(tmp_path / "prefs"))
    out = simper_rs(
        "train",
        "--model",
        str(saved_model),
        "--data",
        "prefs",
        "--data-split",
        "train_prefs",
        "--max-eval-pairs",
        "5",
        "--generation-accuracy",
        "--learning-rate",
        "1e-6",
        "--max-steps",
        "1",
        "--batch-size",
        "4",
        "--output-dir",
        "run",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SimPER on 40 train / 5 held-out pairs (prefs (test_prefs))" in out.stdout  # the paired test split, capped
    assert "SimPER: held-out evaluation on 5 pairs" in out.stdout and "generation accuracy" in out.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["held_out_pairs"] == 5 and "generation accuracy" in summary["before"]
    assert (
        _moved(saved_model, tmp_path / "run")[0] == 0
    )  # one step, and it is the schedule's warm-up step (learning rate 0)


def _conversation(record):
    """A record in TRL's implicit-prompt conversational format: whole chats, the user's turn in both."""
    user = {"role": "user", "content": record["prompt"]}
    return {
        "chosen": [user, {"role": "assistant", "content": record["chosen"]}],
        "rejected": [user, {"role": "assistant", "content": record["rejected"]}],
    }


def test_real_use_on_chat_data_with_an_asked_for_warm_up(tmp_path, saved_model):
    from simper_rs.data import check_record, load_default_data

    data = load_default_data()
    folder = tmp_path / "chats"  # a dataset folder: data files named by split
    folder.mkdir()
    for split, records in (("train", data["train"][:24]), ("test", data["test"][:8])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(_conversation(r)) + "\n" for r in records))
    out = simper_rs(
        "train",
        "--model",
        str(saved_model),
        "--data",
        "chats",
        "--sft-warmup-steps",
        "1",
        "--sft-learning-rate",
        "1e-6",
        "--learning-rate",
        "1e-6",
        "--max-steps",
        "1",
        "--batch-size",
        "4",
        "--output-dir",
        "run",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SimPER on 24 train / 8 held-out pairs (chats (test))" in out.stdout
    assert "1 supervised warm-up steps at 1e-06" in out.stdout
    assert "before and after training (1 supervised warm-up steps, then preference training)" in out.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    held_out = [check_record(i, _conversation(r)) for i, r in enumerate(data["test"][:8])]
    assert summary["before"] == pytest.approx(_as_given(saved_model, held_out), abs=1e-5)  # measured before the warm-up
    # One warm-up step at 1e-6 and one preference step at the schedule's warm-up rate 0.
    largest, beyond_rounding = _moved(saved_model, tmp_path / "run")
    assert largest > 0.5e-6 and beyond_rounding <= 1e-6


def _cache_a_hub_dataset(hf_home, name, splits):
    """Leave ``splits`` in the datasets cache under HF_HOME as ``load_dataset(name)`` leaves a hub
    dataset it has downloaded: <namespace>___<name>/<config>/<version>/<hash>/<name>-<split>.arrow."""
    import datasets
    import pyarrow as pa

    owner, short = name.split("/")
    folder = hf_home / "datasets" / f"{owner}___{short}" / "default" / "0.0.0" / ("0" * 16)
    folder.mkdir(parents=True)
    parts = {split: datasets.Dataset.from_list(records) for split, records in splits.items()}
    for split, part in parts.items():
        with (
            pa.OSFile(str(folder / f"{short}-{split}.arrow"), "wb") as sink,
            pa.ipc.new_stream(sink, part.data.table.schema) as writer,
        ):
            writer.write_table(part.data.table)
    info = parts[next(iter(parts))].info
    info.config_name, info.dataset_name = "default", short
    info.splits = datasets.SplitDict(
        {s: datasets.SplitInfo(name=s, num_examples=len(p), dataset_name=short) for s, p in parts.items()}
    )
    info.write_to_directory(str(folder))


def test_a_cached_hub_dataset_by_name_offline(tmp_path, saved_model):
    pytest.importorskip("datasets")
    from simper_rs.data import load_default_data

    data = load_default_data()
    _cache_a_hub_dataset(tmp_path / "hf", "someone/prefs", {"train": data["train"][:6], "test": data["test"][:3]})
    # No *_OFFLINE variable: the command sets offline mode itself (the hub is never asked).
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf"), SIMPER_RS_NUM_THREADS="2")
    run = lambda *args: subprocess.run(
        [sys.executable, "-m", "simper_rs.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )
    out = run("eval", "--model", str(saved_model), "--data", "someone/prefs")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "on 3 preference pairs" in out.stdout  # the test split by default
    out = run("eval", "--model", str(saved_model), "--data", "someone/typo")
    assert out.returncode == 2 and "someone/typo: no such file or folder, and no dataset of that name" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--data", "columns.parquet"],
            "--data: bad preference data: columns.parquet has no column 'rejected' (its columns: prompt, chosen, answer)",
        ),
        (["--data", "empty.parquet"], "--data: bad preference data: empty.parquet is empty"),
        (["--data", "saved"], "--data: saved has the splits train_prefs, test_prefs: choose one with --data-split"),
        (
            ["--data", "saved", "--data-split", "nope"],
            "--data: saved has no split 'nope' (its splits: train_prefs, test_prefs)",
        ),
        (
            ["--data", "saved", "--data-split", "train_prefs", "--eval-split", "nope"],
            "--eval-split: saved has no split 'nope'",
        ),
        (["--data", "prefs.txt"], "--data: prefs.txt: unknown kind of file '.txt'"),
        (["--data-split", "train"], "--data-split goes with --data"),
        (["--max-eval-pairs", "0"], "--max-eval-pairs (0) must be at least 1"),
        (["--sft-warmup-steps", "2", "--sft-learning-rate", "-1"], "--sft-learning-rate (-1.0) must be positive"),
    ],
)
def test_bad_real_use_input_is_a_one_line_error(tmp_path, monkeypatch, capsys, saved_model, args, message):
    datasets = pytest.importorskip("datasets")
    from simper_rs.cli import main

    monkeypatch.chdir(tmp_path)
    datasets.Dataset.from_list([{"prompt": "p", "chosen": "a", "answer": "b"}]).to_parquet("columns.parquet")
    datasets.Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []}).to_parquet("empty.parquet")
    part = datasets.Dataset.from_list([{"prompt": "p", "chosen": "a", "rejected": "b"}] * 3)
    datasets.DatasetDict({"train_prefs": part, "test_prefs": part}).save_to_disk("saved")
    (tmp_path / "prefs.txt").write_text("p a b\n")
    capsys.readouterr()  # the progress bars of writing the files above
    assert main(["train", "--model", str(saved_model), *args]) == 2  # in this process: the checks come before training
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_main_job_on_two_processes(tmp_path):
    """torchrun --nproc_per_node 2 -m simper_rs.cli train: the global batch split over two gloo
    processes, one summary table and one set of files."""
    env = {**os.environ, "SIMPER_RS_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "simper_rs.cli",
        "train",
    ]
    out = subprocess.run(
        [*command, "--epochs", "0.3", "--sft-warmup-steps", "3", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("held-out evaluation on 300 pairs before and after") == 1 and "on 2 processes" in out.stdout
    assert "preference accuracy" in out.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["after"]["margin"] > summary["before"]["margin"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    keys = [(row["step"], "eval_loss" in row, "train_runtime" in row) for row in rows]
    assert rows and len(keys) == len(set(keys))  # each log written once (by rank 0), not once per process
    odd = subprocess.run([*command, "--batch-size", "31"], capture_output=True, text=True, env=env, timeout=600)
    assert odd.returncode != 0 and "--batch-size 31 must split evenly over the 2 processes" in odd.stderr


def test_fused_linear_run_saves_the_ordinary_model(tmp_path):
    out = simper_rs(
        "train", "--fused-linear", "--epochs", "0.2", "--sft-warmup-steps", "2", "--output-dir", str(tmp_path)
    )
    assert out.returncode == 0, out.stderr[-2000:]
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear) and "forward" not in model.__dict__
    assert torch.isfinite(model(input_ids=torch.tensor([[2, 5, 6]])).logits).all()


# -- TrainingArguments options, YAML config, checkpoints and resume (issue 17)

_TIMING = (
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
)


def _rows(path):
    return [{k: v for k, v in json.loads(line).items() if k not in _TIMING} for line in path.read_text().splitlines()]


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model" / "model.safetensors"))


def test_options_come_from_training_arguments_and_a_yaml_file():
    from simper_rs.cli import parse_train_arguments

    opts, ta = parse_train_arguments([])
    assert (ta["num_train_epochs"], ta["learning_rate"], ta["per_device_train_batch_size"], ta["seed"]) == (
        2.0,
        3e-3,
        32,
        0,
    )
    assert (ta["save_steps"], ta["save_total_limit"], ta["output_dir"]) == (
        500,
        2,
        os.path.join("simper-rs-output", "checkpoints"),
    )
    assert (
        opts.sft_warmup_steps,
        opts.sft_learning_rate,
        opts.max_length,
        opts.max_prompt_length,
        opts.batch_size,
    ) == (15, 3e-3, 64, 32, 32)
    # snake_case and kebab-case spell the same field; the old flags are aliases
    for argv in (["--learning_rate", "1e-4"], ["--learning-rate", "1e-4"], ["--lr", "1e-4"]):
        assert parse_train_arguments(argv)[1]["learning_rate"] == 1e-4
    assert parse_train_arguments(["--epochs", "3"])[1]["num_train_epochs"] == 3.0
    # --batch-size is pairs per optimizer step: per-device batch x accumulation steps; what is not given follows
    _, ta = parse_train_arguments(["--batch-size", "16", "--gradient-accumulation-steps", "4"])
    assert (ta["per_device_train_batch_size"], ta["gradient_accumulation_steps"]) == (4, 4)
    _, ta = parse_train_arguments(["--batch-size", "16", "--per-device-train-batch-size", "4"])
    assert (ta["per_device_train_batch_size"], ta["gradient_accumulation_steps"]) == (4, 4)
    opts, ta = parse_train_arguments(["--per_device_train_batch_size", "8"])  # the recipe's 32 pairs per step stay
    assert (ta["per_device_train_batch_size"], ta["gradient_accumulation_steps"], opts.batch_size) == (8, 4, 32)
    opts, ta = parse_train_arguments(["--per_device_train_batch_size", "8", "--gradient-accumulation-steps", "1"])
    assert (ta["per_device_train_batch_size"], ta["gradient_accumulation_steps"], opts.batch_size) == (8, 1, 8)
    opts, ta = parse_train_arguments(["--max-prompt-length", "10", "--resume-from-checkpoint", "--fused-linear"])
    assert (opts.max_prompt_length, opts.resume, opts.fused_linear) == (10, "latest", True)
    opts, ta = parse_train_arguments(["--report-to", "tensorboard", "wandb"])
    assert ta["report_to"] == ["tensorboard", "wandb"]


def test_a_user_model_gets_the_papers_recipe_and_nothing_else(monkeypatch):
    import torch

    from simper_rs.cli import parse_train_arguments

    opts, ta = parse_train_arguments(["--model", "m"])
    recipe = {
        k: ta[k]
        for k in (
            "num_train_epochs",
            "learning_rate",
            "lr_scheduler_type",
            "warmup_steps",
            "seed",
            "per_device_eval_batch_size",
        )
    }
    assert recipe == {
        "num_train_epochs": 1.0,
        "learning_rate": 5e-7,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.1,
        "seed": 42,
        "per_device_eval_batch_size": 4,
    }
    assert (opts.batch_size, ta["per_device_train_batch_size"], ta["gradient_accumulation_steps"]) == (128, 2, 64)
    assert (
        opts.sft_warmup_steps == 0 and opts.max_length is None and opts.max_prompt_length is None
    )  # lengths: from the model
    assert opts.generation_accuracy is True  # on the embedded data set; off for --data unless asked
    assert parse_train_arguments(["--model", "m", "--data", "prefs.jsonl"])[0].generation_accuracy is False
    assert (
        parse_train_arguments(["--model", "m", "--data", "prefs.jsonl", "--generation-accuracy"])[0].generation_accuracy
        is True
    )
    opts, ta = parse_train_arguments(
        ["--model", "m", "--batch-size", "8", "--learning-rate", "1e-6", "--sft-warmup-steps", "3"]
    )
    assert (ta["per_device_train_batch_size"], ta["gradient_accumulation_steps"]) == (2, 4)
    assert (opts.sft_warmup_steps, opts.sft_learning_rate) == (
        3,
        1e-6,
    )  # the warm-up runs at the run's rate unless told
    assert (
        parse_train_arguments(["--model", "m", "--sft-warmup-steps", "3", "--sft-learning-rate", "1e-5"])[
            0
        ].sft_learning_rate
        == 1e-5
    )
    _, ta = parse_train_arguments(["--model", "m", "--batch-size", "7"])  # odd: one pair per forward
    assert (ta["per_device_train_batch_size"], ta["gradient_accumulation_steps"]) == (1, 7)
    _, ta = parse_train_arguments(["--model", "m", "--per-device-train-batch-size", "16"])
    assert (ta["per_device_train_batch_size"], ta["gradient_accumulation_steps"]) == (16, 8)
    opts, _ = parse_train_arguments(["--model", "m", "--max-length", "1024"])
    assert (opts.max_length, opts.max_prompt_length) == (1024, 900)  # the paper's 1800 of 2048
    # --device auto: CUDA when torch sees it, with bfloat16 where the GPU supports it
    assert parse_train_arguments(["--model", "m"])[0].device == "cpu"
    assert parse_train_arguments(["--model", "m"])[1]["bf16"] is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    opts, ta = parse_train_arguments(["--model", "m"])
    assert (opts.device, ta["bf16"], ta["use_cpu"]) == ("cuda", True, False)
    assert parse_train_arguments(["--model", "m", "--bf16", "false"])[1]["bf16"] is False
    assert parse_train_arguments(["--model", "m", "--fp16"])[1]["bf16"] is False
    assert parse_train_arguments(["--model", "m", "--device", "cpu"])[1]["bf16"] is False
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert parse_train_arguments(["--model", "m"])[1]["bf16"] is False


def test_yaml_config_with_command_line_overrides(tmp_path):
    from simper_rs.cli import parse_train_arguments

    config = tmp_path / "run.yaml"
    config.write_text(
        "learning-rate: 0.001\nnum_train_epochs: 0.5\nreport_to: [tensorboard]\npadding_free: true\nmax_prompt_length: 12\n"
    )
    opts, ta = parse_train_arguments([str(config), "--lr", "2e-3"])
    assert (
        ta["learning_rate"],
        ta["num_train_epochs"],
        ta["report_to"],
        opts.padding_free,
        opts.max_prompt_length,
    ) == (2e-3, 0.5, ["tensorboard"], True, 12)


@pytest.mark.parametrize(
    "config, args, message",
    [
        ("no_such_option: 1\n", [], "unknown option 'no_such_option'"),
        ("- a list\n", [], "must be a mapping"),
        (None, [], "config: no such file"),
        (
            "lr: 1\n",
            ["--batch-size", "8", "--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "4"],
            "give two of the three",
        ),
        ("lr: 1\n", ["--batch-size", "10", "--gradient-accumulation-steps", "4"], "--batch-size 10 must split evenly"),
        (
            "lr: 1\n",
            ["--max-prompt-length", "64"],
            "--max-prompt-length (64) must be positive and smaller than --max-length (64)",
        ),
        ("lr: 1\n", ["--resume-from-checkpoint"], "no checkpoint to resume from"),
        ("lr: 1\n", ["--resume-from-checkpoint", "nowhere"], "nowhere is not a checkpoint folder"),
    ],
)
def test_bad_configs_and_options_are_one_line_errors(tmp_path, monkeypatch, capsys, config, args, message):
    from simper_rs.cli import main

    if config is not None:
        (tmp_path / "run.yaml").write_text(config)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "run.yaml", *args]) == 2  # in this process: the checks come before any model is built
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_old_warmup_flag_is_now_the_learning_rate_warmup_with_a_note(capsys):
    from simper_rs.cli import main, parse_train_arguments

    assert main(["train", "--warmup-steps", "3", "--lr", "-1"]) == 2  # stops at the bad --lr, after the note
    err = capsys.readouterr().err
    assert "--warmup-steps is TrainingArguments' learning-rate warm-up" in err and "--sft-warmup-steps" in err
    opts, ta = parse_train_arguments(["--warmup-steps", "3"])
    assert (ta["warmup_steps"], opts.sft_warmup_steps) == (3, 15)
    opts, ta = parse_train_arguments(["--model", "m", "--warmup-steps", "3"])
    assert (ta["warmup_steps"], opts.sft_warmup_steps) == (3, 0)


# Short runs: 1/4 epoch of 3000 pairs in batches of 32 = 24 steps.
_SHORT = [
    "--epochs",
    "0.25",
    "--sft-warmup-steps",
    "2",
    "--save-steps",
    "5",
    "--logging-steps",
    "3",
    "--eval-steps",
    "10",
]


def test_checkpoints_are_rotated_resumed_and_checked_and_tensorboard_is_written(tmp_path, capsys):
    import shutil

    from simper_rs.cli import main
    from simper_rs.integrations.checkpoints import find_checkpoint

    out = simper_rs(
        "train", *_SHORT, "--save-total-limit", "2", "--report-to", "tensorboard", "--output-dir", str(tmp_path)
    )
    assert out.returncode == 0, out.stderr[-2000:]
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "checkpoint-20",
        "checkpoint-24",
    ]  # the last step is always saved
    assert "checkpoints: checkpoint-20, checkpoint-24" in out.stdout
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    # resuming a finished run trains nothing more and ends with the same model and metrics
    weights, rows = _weights(tmp_path), _rows(tmp_path / "metrics.jsonl")
    again = simper_rs("train", *_SHORT, "--output-dir", str(tmp_path), "--resume-from-checkpoint", "latest")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from" in again.stdout and _rows(tmp_path / "metrics.jsonl") == rows
    assert all(weights[k].equal(v) for k, v in _weights(tmp_path).items())
    # a checkpoint being written (or left by a run killed while saving) lies under .incomplete, which 'latest' skips
    shutil.copytree(checkpoints / "checkpoint-24", checkpoints / ".incomplete" / "checkpoint-99")
    assert find_checkpoint("latest", checkpoints).name == "checkpoint-24"
    # damaged checkpoints are one-line errors (in this process: they stop the run before it trains)
    shutil.copytree(checkpoints / "checkpoint-20", checkpoints / "checkpoint-15")
    (checkpoints / "checkpoint-15" / "scheduler.pt").unlink()
    (checkpoints / "checkpoint-20" / "trainer_state.json").write_text("{")
    (checkpoints / "checkpoint-24" / "optimizer.pt").write_bytes(b"cut short")
    for spec, message in [
        ("latest", "checkpoint-24: cannot load the optimizer or scheduler state"),
        (str(checkpoints / "checkpoint-20"), "checkpoint-20 is corrupt"),
        (str(checkpoints / "checkpoint-15"), "checkpoint-15 is not a complete checkpoint (missing scheduler.pt)"),
    ]:
        capsys.readouterr()
        assert main(["train", *_SHORT, "--output-dir", str(tmp_path), "--resume-from-checkpoint", spec]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and err[-1].startswith("simper-rs train: error: --resume-from-checkpoint:"), err


def test_resume_after_sigkill_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    """Kill a run (SIGKILL) just after a checkpoint that holds a partial logging window (saved at
    step 10, logged every 3), resume it, and compare with a run that was never interrupted."""
    import signal
    import time

    args = [
        "--epochs",
        "0.5",
        "--sft-warmup-steps",
        "2",
        "--save-steps",
        "10",
        "--logging-steps",
        "3",
        "--eval-steps",
        "25",
    ]
    whole = simper_rs("train", *args, "--output-dir", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]

    run = tmp_path / "killed"
    env = {**os.environ, "SIMPER_RS_NUM_THREADS": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "simper_rs.cli", "train", *args, "--output-dir", str(run)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (run / "checkpoints" / "checkpoint-10").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run / "model").exists()
    resumed = simper_rs("train", *args, "--output-dir", str(run), "--resume-from-checkpoint")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout

    expected, got = _rows(tmp_path / "whole" / "metrics.jsonl"), _rows(run / "metrics.jsonl")
    steps = [(r["step"], tuple(sorted(r))) for r in got]
    assert len(steps) == len(set(steps))  # nothing logged twice
    assert got == expected  # every value, to the last bit
    a, b = _weights(tmp_path / "whole"), _weights(run)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    summary = lambda p: json.loads((p / "summary.json").read_text())
    assert (
        summary(run)["before"] == summary(tmp_path / "whole")["before"]
        and summary(run)["after"] == summary(tmp_path / "whole")["after"]
    )
    assert not (run / "checkpoints" / ".incomplete").exists()


@pytest.mark.parametrize("coef", [None, "0.0"], ids=["config-coefficient", "switched-off"])
def test_a_mixture_of_experts_model_trains_with_its_router_loss(tmp_path, coef):
    """A user's Mixtral: the router load-balancing loss is added with the config's coefficient
    (as TRL adds it) and logged as aux_loss; --router-aux-loss-coef 0.0 turns it off."""
    from simper_rs.cli.tiny import build_tokenizer
    from simper_rs.data import load_default_data
    from tiny_models import tiny_mixtral

    data = load_default_data()
    tokenizer = build_tokenizer(data["train"] + data["test"])
    tiny_mixtral(tokenizer, router_aux_loss_coef=0.02).save_pretrained(tmp_path / "moe")
    tokenizer.save_pretrained(tmp_path / "moe")
    with open(tmp_path / "prefs.jsonl", "w") as f:
        for record in data["train"][:20]:
            f.write(json.dumps(record) + "\n")
    extra = [] if coef is None else ["--router-aux-loss-coef", coef]
    out = simper_rs(
        "train",
        "--model",
        "moe",
        "--data",
        "prefs.jsonl",
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--logging-steps",
        "1",
        "--fused-linear",
        "--output-dir",
        "run",
        *extra,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    logged = [row for row in _rows(tmp_path / "run" / "metrics.jsonl") if "loss" in row]
    assert logged
    if coef is None:
        assert all(row["aux_loss"] > 0 for row in logged)
    else:
        assert not any("aux_loss" in row for row in logged)


def test_a_transformers_without_the_trainer_internals_resume_needs_is_a_clear_error(monkeypatch):
    import transformers

    from simper_rs.integrations import checkpoints

    monkeypatch.delattr(transformers.Trainer, "_run_epoch")
    with pytest.raises(
        checkpoints.CheckpointError,
        match=r"Trainer internals that transformers \S+ does not have \(_run_epoch\); it is tested with transformers 5.20 to 5.24",
    ):
        checkpoints.ResumableTrainer(model=None)
    monkeypatch.undo()

    class NoLoggingState:
        pass

    with pytest.raises(checkpoints.CheckpointError, match=r"\(_tr_loss, _total_loss_scalar, _globalstep_last_logged\)"):
        checkpoints._logging_state(NoLoggingState())
