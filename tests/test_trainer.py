"""PreferenceTrainer and preference_loss on the tiny offline model."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

import simper_rs  # noqa: E402
from simper_rs.cli.tiny import build_tiny_model, build_tokenizer  # noqa: E402
from simper_rs.data import PreferenceCollator, load_default_data  # noqa: E402
from simper_rs.trainer import PreferenceTrainer, make_loss, preference_loss  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    data = load_default_data()
    tokenizer = build_tokenizer(data["train"])
    collator = PreferenceCollator(tokenizer, max_length=32, max_prompt_length=16)
    return data, tokenizer, collator


def args(tmp_path, **kw):
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
    )
    base.update(kw)
    return transformers.TrainingArguments(**base)


def test_fused_linear_loss_equals_logits_loss(setup):
    data, tokenizer, collator = setup
    model = build_tiny_model(tokenizer)
    head = model.lm_head
    batch = collator(data["train"][:4])
    for loss_fn in (make_loss("simper"), make_loss("dil", "bce")):
        plain = preference_loss(model, batch, loss_fn)
        fused = preference_loss(model, batch, loss_fn, fused_linear=True)
        torch.testing.assert_close(fused.loss, plain.loss)
        g_plain = torch.autograd.grad(plain.loss, list(model.parameters()))
        g_fused = torch.autograd.grad(fused.loss, list(model.parameters()))
        for a, b in zip(g_fused, g_plain):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # the lm_head is the model's own again, with its own forward (the op ran as an instance forward)
    assert model.lm_head is head and "forward" not in head.__dict__


def test_reference_model_and_precomputed_reference_agree(setup):
    data, tokenizer, collator = setup
    model, reference = build_tiny_model(tokenizer, seed=1), build_tiny_model(tokenizer, seed=2)
    records = data["train"][:3]
    batch = collator(records)
    with torch.no_grad():
        ref = simper_rs.sequence_logps(
            reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
        )
    loss_fn = make_loss("dil", "lsif")
    with_model = preference_loss(model, batch, loss_fn, ref_model=reference)
    precomputed = collator(
        [dict(r, ref_chosen_logps=float(c), ref_rejected_logps=float(j)) for r, c, j in zip(records, ref[:3], ref[3:])]
    )
    with_columns = preference_loss(model, precomputed, loss_fn)
    torch.testing.assert_close(with_model.loss, with_columns.loss)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"gradient_accumulation_steps": 2},
        {"bf16": True},
        {"gradient_checkpointing": True},
    ],
    ids=["plain", "grad-accumulation", "bf16-autocast", "grad-checkpointing"],
)
@pytest.mark.parametrize("fused_linear", [False, True])
def test_trainer_trains_and_logs_trl_metrics(setup, tmp_path, options, fused_linear):
    data, tokenizer, _ = setup
    model = build_tiny_model(tokenizer)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = PreferenceTrainer(
        model=model,
        args=args(tmp_path, eval_strategy="steps", eval_steps=2, **options),
        train_dataset=data["train"][:32],
        eval_dataset=data["test"][:8],
        processing_class=tokenizer,
        fused_linear=fused_linear,
        max_length=32,
        max_prompt_length=16,
    )
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    logs = trainer.state.log_history
    train_logs = [row for row in logs if "loss" in row]
    eval_logs = [row for row in logs if "eval_loss" in row]
    for name in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "entropy",
        "mean_token_accuracy",
    ):
        assert name in train_logs[-1], name
        assert "eval_" + name in eval_logs[-1], name


def test_trainer_dil_with_reference_model(setup, tmp_path):
    data, tokenizer, _ = setup
    trainer = PreferenceTrainer(
        model=build_tiny_model(tokenizer, seed=3),
        args=args(tmp_path),
        loss="dil",
        estimator="cpc",
        beta=0.5,
        ref_model=build_tiny_model(tokenizer, seed=4),
        train_dataset=data["train"][:16],
        processing_class=tokenizer,
        max_length=32,
        max_prompt_length=16,
    )
    trainer.train()
    assert "rewards/margins" in trainer.state.log_history[0]


def test_trainer_bad_arguments(setup, tmp_path):
    data, tokenizer, _ = setup
    model = build_tiny_model(tokenizer)
    with pytest.raises(ValueError, match="loss must be one of"):
        PreferenceTrainer(model=model, args=args(tmp_path), loss="dpo", processing_class=tokenizer)
    with pytest.raises(ValueError, match="SimPER needs no reference model"):
        PreferenceTrainer(model=model, args=args(tmp_path), ref_model=model, processing_class=tokenizer)
    with pytest.raises(ValueError, match="processing_class"):
        PreferenceTrainer(model=model, args=args(tmp_path), train_dataset=data["train"][:4])
