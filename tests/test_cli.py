"""The simper-rs command line: help, one-line errors, and the main job end to end."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")


def simper_rs(*args, cwd=None):
    env = {**os.environ, "SIMPER_RS_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "simper_rs.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_help():
    out = simper_rs("--help")
    assert out.returncode == 0 and "train" in out.stdout and "bench" in out.stdout
    out = simper_rs("train", "--help")
    assert out.returncode == 0 and "--estimator" in out.stdout and "--data" in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "missing.jsonl"], "no such preference data file: missing.jsonl"),
        (["train", "--model", "no-such-dir"], "--model: no-such-dir is not a folder"),
        (["train", "--data", "bad.jsonl"], "bad preference data: record 1: field 'rejected' is missing"),
        (["train", "--device", "nonsense"], "--device: nonsense is not usable here"),
        (["train", "--lr", "-1"], "must be positive"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, args, message):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n" + json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
    out = simper_rs(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_unknown_choice_is_rejected_by_argparse():
    out = simper_rs("train", "--loss", "dpo")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_main_job_improves_held_out_preference_accuracy(tmp_path):
    out = simper_rs("train", "--output-dir", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "preference accuracy" in out.stdout and "generation accuracy" in out.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    before, after = summary["before"], summary["after"]
    assert after["preference accuracy"] > before["preference accuracy"] + 0.1
    assert after["generation accuracy"] > before["generation accuracy"] + 0.3
    assert after["mean logp chosen"] > before["mean logp chosen"]  # SimPER keeps the chosen likelihood up
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/margins" in r for r in rows) and any("eval_rewards/margins" in r for r in rows)
    assert (tmp_path / "run" / "training.png").read_bytes()[:4] == b"\x89PNG"
    # the trained model is kept, and is the one evaluated
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import torch
    from simper_rs.cli import evaluate
    from simper_rs.data import PreferenceCollator, load_default_data

    model_dir = tmp_path / "run" / "model"
    assert f"saved the trained model and tokenizer to {model_dir}" in out.stdout
    assert (model_dir / "model.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    collator = PreferenceCollator(tokenizer, max_length=64, max_prompt_length=32)
    again = evaluate(model, tokenizer, collator, load_default_data()["test"], torch.device("cpu"))
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
    out = simper_rs("train", "--data", "mine.jsonl", "--epochs", "1", "--warmup-steps", "2", "--loss", "dil", "--estimator", "bce", "--output-dir", "o", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "54 train / 6 held-out pairs" in out.stdout


@pytest.mark.slow
def test_main_job_on_two_processes(tmp_path):
    """torchrun --nproc_per_node 2 -m simper_rs.cli train: the global batch split over two gloo
    processes, one summary table and one set of files."""
    env = {**os.environ, "SIMPER_RS_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "simper_rs.cli", "train"]
    out = subprocess.run([*command, "--epochs", "0.3", "--warmup-steps", "3", "--output-dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("held-out evaluation before and after") == 1 and "on 2 processes" in out.stdout
    assert "preference accuracy" in out.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["after"]["margin"] > summary["before"]["margin"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    keys = [(row["step"], "eval_loss" in row, "train_runtime" in row) for row in rows]
    assert rows and len(keys) == len(set(keys))  # each log written once (by rank 0), not once per process
    odd = subprocess.run([*command, "--batch-size", "31"], capture_output=True, text=True, env=env, timeout=600)
    assert odd.returncode != 0 and "--batch-size 31 must split evenly over the 2 processes" in odd.stderr


def test_fused_linear_run_saves_the_ordinary_model(tmp_path):
    out = simper_rs("train", "--fused-linear", "--epochs", "0.2", "--warmup-steps", "2", "--output-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    from transformers import AutoModelForCausalLM

    import torch

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear) and "forward" not in model.__dict__
    assert torch.isfinite(model(input_ids=torch.tensor([[2, 5, 6]])).logits).all()
