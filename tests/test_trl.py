"""simper_rs.trl: SimPER and DIL inside TRL's DPOTrainer, against plain-PyTorch references."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import trl  # noqa: E402
from datasets import Dataset  # noqa: E402

import reference  # noqa: E402
import simper_rs.integrations.trl as strl  # noqa: E402  (the implementation, whose release switches the tests check)
from simper_rs.cli.tiny import build_tiny_model, build_tokenizer  # noqa: E402
from simper_rs.data import load_default_data  # noqa: E402
from simper_rs.trl import DILConfig, DILTrainer, SimPERConfig, SimPERTrainer  # noqa: E402
from tiny_models import tiny_mixtral  # noqa: E402

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)
WORKER = str(Path(__file__).with_name("trl_worker.py"))


def text_records(n, start=0):
    # TRL concatenates prompt and completion strings: a leading space keeps the word boundary.
    return [
        dict(r, chosen=" " + r["chosen"], rejected=" " + r["rejected"])
        for r in load_default_data()["train"][start : start + n]
    ]


def chat_records(n):
    return [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"].strip()}],
            "rejected": [{"role": "assistant", "content": r["rejected"].strip()}],
        }
        for r in text_records(n)
    ]


@pytest.fixture(scope="module")
def tokenizer():
    data = load_default_data()
    tok = build_tokenizer(data["train"] + [{"prompt": "user :", "chosen": "assistant", "rejected": "system"}])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def config(tmp_path, cls=SimPERConfig, **kw):
    base = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_steps=2,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        learning_rate=1e-3,
        train_sampling_strategy="sequential",
        bf16=False,  # TRL's default is bf16 autocast; compare in float32
    )
    base.update(kw)
    return cls(**base)


def first_batch(trainer):
    return next(iter(trainer.get_train_dataloader()))


def reference_average_logps(model, batch):
    """Average completion log-probs from the model's plain logits (TRL's completion mask, docs/design.md)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    return reference.sequence_logps(logits, labels)


@pytest.mark.parametrize("fused_linear", [True, False], ids=["fused-linear", "logits"])
@pytest.mark.parametrize("records", [text_records, chat_records], ids=["text", "conversational"])
def test_simper_first_batch_loss_equals_plain_pytorch(tmp_path, tokenizer, records, fused_linear):
    model = build_tiny_model(tokenizer, seed=3)
    trainer = SimPERTrainer(
        model=model,
        args=config(tmp_path, use_fused_linear=fused_linear),
        train_dataset=Dataset.from_list(records(8)),
        processing_class=tokenizer,
    )
    batch = first_batch(trainer)
    assert batch["completion_mask"].sum() > 0 and (batch["completion_mask"] == 0).any()  # prompts are masked
    loss = trainer.compute_loss(trainer.model, batch)
    logps = reference_average_logps(model, batch)
    expected = reference.simper(*logps.chunk(2))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    # the logged metrics, by TRL's definitions
    logged = {name: values[-1] for name, values in trainer._metrics["train"].items()}
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].double()
        mask = batch["completion_mask"][:, 1:].bool()
        logp = torch.log_softmax(logits, -1)
        entropy = -(logp.exp() * logp).sum(-1)
        hit = logits.argmax(-1) == batch["input_ids"][:, 1:]
        chosen_mask, rejected_mask = mask.chunk(2)
        chosen_logits, rejected_logits = logits.mean(-1).chunk(2)
        chosen, rejected = logps.chunk(2)
        want = {
            "entropy": entropy[mask].mean(),
            "mean_token_accuracy": hit.chunk(2)[0][chosen_mask].double().mean(),  # chosen completions, as TRL
            "logits/chosen": chosen_logits[chosen_mask].mean(),
            "logits/rejected": rejected_logits[rejected_mask].mean(),
            "logps/chosen": chosen.mean(),  # averages over completion tokens (TRL's DPO logs sums)
            "logps/rejected": rejected.mean(),
            "rewards/chosen": chosen.mean(),
            "rewards/margins": (chosen - rejected).mean(),
            "rewards/accuracies": (chosen > rejected).double().mean(),
            "num_tokens": batch["attention_mask"].sum(),
        }
    for name, value in want.items():
        assert logged[name] == pytest.approx(float(value), rel=1e-4, abs=1e-5), name
    # and the gradient of every parameter
    got = torch.autograd.grad(loss, list(model.parameters()))
    want = torch.autograd.grad(expected, list(model.parameters()))
    for name_param, a, b in zip(model.named_parameters(), got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name_param[0])


@pytest.mark.parametrize("estimator", ["lsif", "bce", "ukl", "cpc"])
@pytest.mark.parametrize("reference_mode", ["free", "ref_model", "precompute"])
def test_dil_first_batch_loss_equals_plain_pytorch(tmp_path, tokenizer, estimator, reference_mode):
    model, ref_model = build_tiny_model(tokenizer, seed=3), build_tiny_model(tokenizer, seed=4)
    beta = 0.5 if estimator == "cpc" else 1.0
    options = dict(estimator=estimator, beta=beta, reference_free=reference_mode == "free")
    if reference_mode == "precompute":
        options["precompute_ref_log_probs"] = True
    trainer = DILTrainer(
        model=model,
        ref_model=None if reference_mode == "free" else ref_model,
        args=config(tmp_path, DILConfig, **options),
        train_dataset=Dataset.from_list(text_records(8)),
        processing_class=tokenizer,
    )
    batch = first_batch(trainer)
    loss = trainer.compute_loss(trainer.model, batch)
    chosen, rejected = reference_average_logps(model, batch).chunk(2)
    refs = (None, None)
    if reference_mode != "free":
        with torch.no_grad():
            refs = reference_average_logps(ref_model, batch).chunk(2)
    if reference_mode == "precompute":  # computed once before training, stored as averages
        torch.testing.assert_close(batch["ref_chosen_logps"], refs[0])
        torch.testing.assert_close(batch["ref_rejected_logps"], refs[1])
    expected = reference.dil(chosen, rejected, *refs, estimator=estimator, beta=beta)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_dil_peft_reference_is_the_adapter_disabled_model(tmp_path, tokenizer):
    peft = pytest.importorskip("peft")
    model = build_tiny_model(tokenizer, seed=3)
    base_copy = build_tiny_model(tokenizer, seed=3)
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    trainer = DILTrainer(
        model=model,
        args=config(tmp_path, DILConfig, reference_free=False),
        train_dataset=Dataset.from_list(text_records(8)),
        processing_class=tokenizer,
        peft_config=lora,
    )
    assert trainer.ref_model is None
    batch = first_batch(trainer)
    with torch.no_grad():
        ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.model, batch)
        want = reference_average_logps(base_copy, batch)
        policy = reference_average_logps(trainer.model, batch)
    torch.testing.assert_close(torch.cat([ref_chosen, ref_rejected]), want)
    assert not torch.allclose(policy, want)  # the adapter (non-zero init) does change the policy
    loss = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(loss, reference.dil(*policy.chunk(2), ref_chosen, ref_rejected), rtol=1e-5, atol=1e-6)


TRL_METRICS = {
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
    "entropy",
    "mean_token_accuracy",
    "num_tokens",
}


@pytest.mark.parametrize("trainer_class", [SimPERTrainer, DILTrainer])
def test_train_and_eval_log_trl_metric_names(tmp_path, tokenizer, trainer_class):
    cls = SimPERConfig if trainer_class is SimPERTrainer else DILConfig
    trainer = trainer_class(
        model=build_tiny_model(tokenizer),
        args=config(
            tmp_path,
            cls,
            max_steps=3,
            eval_strategy="steps",
            eval_steps=3,
            bf16=True,
            save_strategy="steps",
            save_steps=3,
        ),
        train_dataset=text_records(12),
        eval_dataset=text_records(8, start=100),
        processing_class=tokenizer,
    )
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    train_logs = [log for log in trainer.state.log_history if "loss" in log]
    eval_logs = [log for log in trainer.state.log_history if "eval_loss" in log]
    assert len(train_logs) == 3 and len(eval_logs) == 1
    for log in train_logs:
        assert TRL_METRICS <= set(log), TRL_METRICS - set(log)
        assert 0.0 <= log["rewards/accuracies"] <= 1.0 and 0.0 <= log["mean_token_accuracy"] <= 1.0
        assert log["rewards/chosen"] == log["logps/chosen"] < 0  # reference-free: the reward is the average log-prob
        assert log["entropy"] > 0
    assert {f"eval_{m}" for m in TRL_METRICS} <= set(eval_logs[0])
    assert train_logs[-1]["num_tokens"] > train_logs[0]["num_tokens"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert (tmp_path / "checkpoint-3" / "model.safetensors").exists()  # TRL's checkpointing and model card
    assert trainer_class._name in (tmp_path / "README.md").read_text()


def test_precomputed_reference_averages_never_reuse_dpo_sums(tmp_path, tokenizer):
    """TRL caches precomputed reference log-probs per (data set, model): DPO's sums must not be read as averages.
    (With max_length=None the tokenized data set has the same fingerprint under both trainers.)"""
    from datasets import load_from_disk

    Dataset.from_list(text_records(8)).save_to_disk(str(tmp_path / "data"))
    dataset = load_from_disk(str(tmp_path / "data"))  # backed by files, so TRL's cache is used, as with load_dataset
    ref_model = build_tiny_model(tokenizer, seed=4)
    common = dict(precompute_ref_log_probs=True)
    # TRL 1.15's own DPOTrainer runs its Triton log-prob kernel on CPU tensors when triton is
    # installed (and fails; 1.16 checks the device), so there DPO's half of this cannot run.
    dpo_runs = trl.__version__.split(".")[:2] != ["1", "15"] or not _triton_installed()
    dpo = dpo_runs and trl.DPOTrainer(
        model=build_tiny_model(tokenizer, seed=3),
        ref_model=ref_model,
        args=trl.DPOConfig(
            output_dir=str(tmp_path),
            use_cpu=True,
            bf16=False,
            report_to=[],
            train_sampling_strategy="sequential",
            per_device_train_batch_size=4,
            max_length=None,
            **common,
        ),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    dil = DILTrainer(
        model=build_tiny_model(tokenizer, seed=3),
        ref_model=ref_model,
        args=config(tmp_path, DILConfig, reference_free=False, max_length=None, **common),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    averages = first_batch(dil)["ref_chosen_logps"]
    with torch.no_grad():
        want = reference_average_logps(ref_model, first_batch(dil)).chunk(2)[0]
    torch.testing.assert_close(averages, want)
    if dpo_runs:
        assert (first_batch(dpo)["ref_chosen_logps"] < averages * 2).all()  # DPO's are sums over several tokens


def _triton_installed():
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def test_simper_never_builds_or_runs_a_reference_model(tmp_path, tokenizer, monkeypatch):
    from trl.trainer import dpo_trainer

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded from a path")

    monkeypatch.setattr(dpo_trainer, "create_model_from_path", no_loading)
    monkeypatch.setattr(dpo_trainer.DPOTrainer, "_precompute_ref_logps", lambda *a, **k: pytest.fail("reference pass"))
    model = build_tiny_model(tokenizer)
    model.config._name_or_path = "/nonexistent/model/dir"  # built in memory: nothing to reload
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    trainer = SimPERTrainer(
        model=model, args=config(tmp_path, max_steps=2), train_dataset=text_records(8), processing_class=tokenizer
    )
    assert trainer.ref_model is None
    trainer.train()
    assert len(calls) == 2  # one forward per step: the policy's; no reference forward
    with pytest.raises(ValueError, match="uses no reference model"):
        SimPERTrainer(
            model=model,
            ref_model=build_tiny_model(tokenizer),
            args=config(tmp_path),
            train_dataset=text_records(8),
            processing_class=tokenizer,
        )


def test_the_model_keeps_its_own_forward_and_generation(tmp_path, tokenizer):
    model = build_tiny_model(tokenizer)
    ids = torch.tensor([[tokenizer.bos_token_id, 5, 6, 7]])
    before = model(input_ids=ids).logits
    trainer = SimPERTrainer(
        model=model, args=config(tmp_path), train_dataset=text_records(8), processing_class=tokenizer
    )
    torch.testing.assert_close(trainer.model(input_ids=ids).logits, before)
    assert trainer.model.generate(ids, max_new_tokens=2, do_sample=False).shape == (1, 6)


@pytest.mark.parametrize(
    "cls, options, match",
    [
        (SimPERConfig, dict(beta=0.5), "beta=0.5 does not apply"),
        (SimPERConfig, dict(loss_type="ipo"), "loss_type=\\['ipo'\\] does not apply"),
        (SimPERConfig, dict(label_smoothing=0.1), "label_smoothing"),
        (SimPERConfig, dict(precompute_ref_log_probs=True), "SimPER uses no reference model"),
        (SimPERConfig, dict(sync_ref_model=True), "sync_ref_model"),
        (DILConfig, dict(estimator="kl"), "estimator must be one of"),
        (DILConfig, dict(beta=0.5), "used by estimator='cpc' only"),
        (DILConfig, dict(estimator="cpc", beta=-1.0), "positive finite"),
        (DILConfig, dict(precompute_ref_log_probs=True), "reference_free=True uses no reference model"),
        (DILConfig, dict(loss_type="hinge"), "DIL uses its own loss"),
    ],
)
def test_config_refuses_options_that_do_not_apply(tmp_path, cls, options, match):
    with pytest.raises(ValueError, match=match):
        config(tmp_path, cls, **options)


def test_configs_accept_what_applies(tmp_path):
    assert config(tmp_path, DILConfig, estimator="cpc", beta=0.1).beta == 0.1
    assert config(tmp_path, DILConfig, reference_free=False, precompute_ref_log_probs=True).precompute_ref_log_probs
    assert config(tmp_path, SimPERConfig, use_fused_linear=False, max_length=64).max_length == 64


def test_bad_trainer_arguments(tmp_path, tokenizer):
    model = build_tiny_model(tokenizer)
    with pytest.raises(TypeError, match="args must be a simper_rs.trl.SimPERConfig, got DPOConfig"):
        SimPERTrainer(
            model=model,
            args=trl.DPOConfig(output_dir=str(tmp_path), use_cpu=True),
            train_dataset=text_records(4),
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="reference-free"):
        DILTrainer(
            model=model,
            ref_model=build_tiny_model(tokenizer),
            args=config(tmp_path, DILConfig),
            train_dataset=text_records(4),
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="not a Mixture-of-Experts model"):
        SimPERTrainer(
            model=model,
            args=config(tmp_path, router_aux_loss_coef=0.1),
            train_dataset=text_records(4),
            processing_class=tokenizer,
        )


@pytest.mark.parametrize("fused_linear", [True, False], ids=["fused-linear", "logits"])
@pytest.mark.parametrize("coef", [None, 0.0], ids=["config-coefficient", "switched-off"])
def test_mixture_of_experts_trains_with_trls_router_loss(tmp_path, tokenizer, fused_linear, coef):
    model = tiny_mixtral(tokenizer, router_aux_loss_coef=0.02)
    trainer = SimPERTrainer(
        model=model,
        args=config(tmp_path, use_fused_linear=fused_linear, router_aux_loss_coef=coef),
        train_dataset=Dataset.from_list(text_records(8)),
        processing_class=tokenizer,
    )
    batch = first_batch(trainer)
    loss = trainer.compute_loss(trainer.model, batch)
    own = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_router_logits=True)
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    expected = reference.simper(*reference.sequence_logps(own.logits, labels).chunk(2))
    if coef is None:  # TRL's rule: the config's coefficient times the model's own aux_loss
        expected = expected + 0.02 * own.aux_loss
        assert trainer._metrics["train"]["aux_loss"][-1] == pytest.approx(float(own.aux_loss.detach()), rel=1e-5)
    else:
        assert "aux_loss" not in trainer._metrics["train"]
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    params = list(model.parameters())
    for a, b in zip(torch.autograd.grad(loss, params), torch.autograd.grad(expected, params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("release", ["1.13.0", "1.17.0", "2.0.0"])
def test_unsupported_trl_release_is_a_clear_import_error(monkeypatch, release):
    monkeypatch.setattr(trl, "__version__", release)
    with pytest.raises(
        ImportError,
        match=(
            rf"TRL >=1.14,<1.17 .*but TRL {re.escape(release)} is installed: "
            r'pip install "simper_rs\[trl\]" \(trl>=1.14,<1.17 with transformers>=5.20\)'
        ),
    ):
        strl._import_trl()
    monkeypatch.setitem(sys.modules, "trl", None)
    with pytest.raises(ImportError, match=r'needs TRL: pip install "simper_rs\[trl\]"'):
        strl._import_trl()


@pytest.mark.parametrize("release", ["1.14.0", "1.14.1", "1.15.0", "1.16.0", "1.16.9"])
def test_supported_trl_releases_import(monkeypatch, release):
    monkeypatch.setattr(trl, "__version__", release)
    assert strl._import_trl() is trl


def test_transformers_older_than_tested_is_a_clear_import_error(monkeypatch):
    import transformers

    monkeypatch.setattr(transformers, "__version__", "5.19.0")
    with pytest.raises(
        ImportError,
        match=r"supports transformers >=5.20 \(with TRL >=1.14,<1.17\), but transformers 5.19.0 is installed",
    ):
        strl._import_trl()


def test_trl_release_differences_follow_the_installed_trl(tmp_path, tokenizer):
    """The compatibility section's switch is the installed release, and what it changes happens."""
    from packaging.version import Version

    assert strl._TRL_1_15 == (Version(trl.__version__) >= Version("1.15"))
    from trl.trainer import dpo_trainer

    # 1.15+ keeps the precompute cache's model hash in the trainer; 1.14 computes it in _precompute_ref_logps
    assert ("_precompute_model_hash" in Path(dpo_trainer.__file__).read_text()) == strl._TRL_1_15
    args = config(tmp_path, use_liger_kernel=True)
    if strl._TRL_1_15:
        strl._check_release_options(args)  # only Liger's layer kernels there
    else:
        with pytest.raises(
            ValueError, match="use_liger_kernel=True: on TRL 1.14 it routes the loss through TRL's chunked"
        ):
            SimPERTrainer(
                model=build_tiny_model(tokenizer), args=args, train_dataset=text_records(4), processing_class=tokenizer
            )


def run_worker(args, out, fused, zero3=False):
    env = {
        **os.environ,
        "FUSED_LINEAR": "1" if fused else "0",
        "ZERO3": "1" if zero3 else "0",
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        "SIMPER_RS_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, *args, WORKER, str(out)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out)


@pytest.mark.slow
@pytest.mark.parametrize("fused", [True, False], ids=["fused-linear", "logits"])
def test_two_processes_through_accelerate_match_one(tmp_path, fused):
    """DDP through Accelerate (Accelerate turns FSDP on for accelerator devices only; FSDP2 on CPU is
    tested on the same model forward in tests/test_fsdp.py)."""
    two = run_worker(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], tmp_path / "two.pt", fused)
    one = run_worker([], tmp_path / "one.pt", fused)
    assert two["world"] == 2 and one["world"] == 1
    for name, grad in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    for name, value in one["metrics"].items():  # averaged over the processes' batches
        assert two["metrics"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


@pytest.mark.slow
@pytest.mark.parametrize("fused", [True, False], ids=["fused-linear", "logits"])
def test_deepspeed_zero3_through_accelerate_matches_one_process(tmp_path, fused):
    """SimPERTrainer under DeepSpeed ZeRO-3 (CPU accelerator, gloo, every parameter partitioned):
    the SGD step (learning rate 1, so minus the gradient) of every parameter equals one process's."""
    pytest.importorskip("deepspeed")
    two = run_worker(
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], tmp_path / "two.pt", fused, zero3=True
    )
    one = run_worker([], tmp_path / "one.pt", fused, zero3=True)
    assert two["world"] == 2 and one["world"] == 1 and len(one["grads"]) == len(two["grads"]) > 0
    for name, step in one["grads"].items():
        assert step.abs().max() > 0, name
        ulps = 4 * torch.finfo(torch.float32).eps * one["scales"][name]  # w - step is rounded to float32
        torch.testing.assert_close(two["grads"][name], step, rtol=1e-5, atol=ulps, msg=name)
    assert two["metrics"]["loss"] == pytest.approx(one["metrics"]["loss"], rel=1e-5)


@pytest.mark.parametrize("rows", [None, 50], ids=["one-row", "rows-of-50"])
@pytest.mark.parametrize("fused_linear", [True, False], ids=["fused-linear", "logits"])
def test_padding_free_equals_padded(tmp_path, tokenizer, fused_linear, rows):
    """SimPERConfig(padding_free=True): packed batches, same loss, metrics and gradients."""
    losses, metrics, grads = [], [], []
    for padding_free in (False, True):
        model = build_tiny_model(tokenizer, seed=3)
        packing = dict(padding_free=True, max_tokens_per_row=rows) if padding_free else {}
        trainer = SimPERTrainer(
            model=model,
            args=config(tmp_path, use_fused_linear=fused_linear, max_length=24, truncation_mode="keep_end", **packing),
            train_dataset=Dataset.from_list(text_records(8)),
            processing_class=tokenizer,
        )
        batch = first_batch(trainer)
        assert ("position_ids" in batch) == padding_free
        assert batch["input_ids"].shape[0] == (8 if not padding_free else 1 if rows is None else 3)
        loss = trainer.compute_loss(trainer.model, batch)
        losses.append(loss)
        metrics.append({k: v[-1] for k, v in trainer._metrics["train"].items()})
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-7)
    for name, value in metrics[0].items():
        assert metrics[1][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    for a, e in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-7)
