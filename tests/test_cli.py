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
    out = simper_rs("train", "--data", "mine.jsonl", "--epochs", "1", "--sft-warmup-steps", "2", "--loss", "dil", "--estimator", "bce", "--output-dir", "o", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "54 train / 6 held-out pairs" in out.stdout


@pytest.mark.slow
def test_main_job_on_two_processes(tmp_path):
    """torchrun --nproc_per_node 2 -m simper_rs.cli train: the global batch split over two gloo
    processes, one summary table and one set of files."""
    env = {**os.environ, "SIMPER_RS_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "simper_rs.cli", "train"]
    out = subprocess.run([*command, "--epochs", "0.3", "--sft-warmup-steps", "3", "--output-dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
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
    out = simper_rs("train", "--fused-linear", "--epochs", "0.2", "--sft-warmup-steps", "2", "--output-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    from transformers import AutoModelForCausalLM

    import torch

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear) and "forward" not in model.__dict__
    assert torch.isfinite(model(input_ids=torch.tensor([[2, 5, 6]])).logits).all()


# -- TrainingArguments options, YAML config, checkpoints and resume (issue 17)

_TIMING = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def _rows(path):
    return [{k: v for k, v in json.loads(line).items() if k not in _TIMING} for line in path.read_text().splitlines()]


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model" / "model.safetensors"))


def test_options_come_from_training_arguments_and_a_yaml_file():
    from simper_rs.cli import parse_train_arguments

    opts, ta = parse_train_arguments([])
    assert (ta["num_train_epochs"], ta["learning_rate"], ta["per_device_train_batch_size"], ta["seed"]) == (2.0, 3e-3, 32, 0)
    assert (ta["save_steps"], ta["save_total_limit"], ta["output_dir"]) == (500, 2, os.path.join("simper-rs-output", "checkpoints"))
    assert (opts.sft_warmup_steps, opts.max_prompt_length, opts.batch_size) == (15, 32, 32)
    # snake_case and kebab-case spell the same field; the old flags are aliases
    for argv in (["--learning_rate", "1e-4"], ["--learning-rate", "1e-4"], ["--lr", "1e-4"]):
        assert parse_train_arguments(argv)[1]["learning_rate"] == 1e-4
    assert parse_train_arguments(["--epochs", "3"])[1]["num_train_epochs"] == 3.0
    # --batch-size is pairs per optimizer step: per-device batch x accumulation steps
    _, ta = parse_train_arguments(["--batch-size", "16", "--gradient-accumulation-steps", "4"])
    assert (ta["per_device_train_batch_size"], ta["gradient_accumulation_steps"]) == (4, 4)
    _, ta = parse_train_arguments(["--per_device_train_batch_size", "8"])
    assert ta["per_device_train_batch_size"] == 8
    opts, ta = parse_train_arguments(["--max-prompt-length", "10", "--resume-from-checkpoint", "--fused-linear"])
    assert (opts.max_prompt_length, opts.resume, opts.fused_linear) == (10, "latest", True)


def test_yaml_config_with_command_line_overrides(tmp_path):
    from simper_rs.cli import parse_train_arguments

    config = tmp_path / "run.yaml"
    config.write_text("learning-rate: 0.001\nnum_train_epochs: 0.5\nreport_to: [tensorboard]\npadding_free: true\nmax_prompt_length: 12\n")
    opts, ta = parse_train_arguments([str(config), "--lr", "2e-3"])
    assert (ta["learning_rate"], ta["num_train_epochs"], ta["report_to"], opts.padding_free, opts.max_prompt_length) == (2e-3, 0.5, ["tensorboard"], True, 12)


@pytest.mark.parametrize(
    "config, args, message",
    [
        ("no_such_option: 1\n", [], "unknown option 'no_such_option'"),
        ("- a list\n", [], "must be a mapping"),
        (None, [], "config: no such file"),
        ("lr: 1\n", ["--batch-size", "8", "--per-device-train-batch-size", "4"], "not both"),
        ("lr: 1\n", ["--batch-size", "10", "--gradient-accumulation-steps", "4"], "--batch-size 10 must split evenly"),
        ("lr: 1\n", ["--max-prompt-length", "64"], "--max-prompt-length (64) must be positive and smaller than --max-length (64)"),
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


# Short runs: 1/4 epoch of 3000 pairs in batches of 32 = 24 steps.
_SHORT = ["--epochs", "0.25", "--sft-warmup-steps", "2", "--save-steps", "5", "--logging-steps", "3", "--eval-steps", "10"]


def test_checkpoints_are_rotated_resumed_and_checked_and_tensorboard_is_written(tmp_path, capsys):
    import shutil

    from simper_rs.checkpoints import find_checkpoint
    from simper_rs.cli import main

    out = simper_rs("train", *_SHORT, "--save-total-limit", "2", "--report-to", "tensorboard", "--output-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-20", "checkpoint-24"]  # the last step is always saved
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

    args = ["--epochs", "0.5", "--sft-warmup-steps", "2", "--save-steps", "10", "--logging-steps", "3", "--eval-steps", "25"]
    whole = simper_rs("train", *args, "--output-dir", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]

    run = tmp_path / "killed"
    env = {**os.environ, "SIMPER_RS_NUM_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "simper_rs.cli", "train", *args, "--output-dir", str(run)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    assert summary(run)["before"] == summary(tmp_path / "whole")["before"] and summary(run)["after"] == summary(tmp_path / "whole")["after"]
    assert not (run / "checkpoints" / ".incomplete").exists()
