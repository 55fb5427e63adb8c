"""Smoke test of an installed simper_rs (a wheel, or `pip install <checkout>`), run outside the
checkout: kernels against plain PyTorch, both losses with gradients, numpy, and one
PreferenceTrainer step on the embedded data. Prints one line per check; exit status 1 on failure.

    python scripts/smoke_test.py
"""

import sys
import tempfile
from pathlib import Path

import torch

import simper_rs

checks = 0


def check(name, ok):
    global checks
    checks += 1
    print(f"{'ok  ' if ok else 'FAIL'} {name}")
    if not ok:
        sys.exit(1)


here = Path(simper_rs.__file__).resolve()
check(
    f"simper_rs {simper_rs.__version__} imported from {here.parent} (built for torch {simper_rs._core.TORCH_VERSION})",
    "site-packages" in here.parts,
)

g = torch.Generator().manual_seed(0)
logits = torch.randn(4, 9, 50, generator=g, dtype=torch.float64).float().requires_grad_()
labels = torch.randint(0, 50, (4, 9), generator=g)
labels[:, :3] = -100
for backend in ("rust", "torch"):
    got = simper_rs.sequence_logps(logits, labels, backend=backend)
    logp = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None]).squeeze(-1)
    mask = labels[:, 1:] != -100
    want = (logp * mask).sum(-1) / mask.sum(-1)
    check(f"sequence_logps backend={backend} matches log_softmax", torch.allclose(got.double(), want, atol=1e-5))

out = simper_rs.SimPERLoss()(logits, labels)
out.loss.backward()
check("SimPERLoss forward and backward", logits.grad is not None and torch.isfinite(logits.grad).all().item())
# SimPER's loss and its gradient against plain PyTorch in float64: -exp(chosen) + exp(rejected) of
# the average log-probs, rows [chosen; rejected].
plain = logits.detach().double().requires_grad_()
logp = torch.log_softmax(plain[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None]).squeeze(-1)
average = (logp * mask).sum(-1) / mask.sum(-1)
plain_loss = (-average[:2].exp() + average[2:].exp()).mean()
plain_loss.backward()
check(
    f"SimPERLoss {out.loss.item():.6f} and its gradient equal plain PyTorch's ({plain_loss.item():.6f})",
    abs(out.loss.item() - plain_loss.item()) < 1e-5 and torch.allclose(logits.grad.double(), plain.grad, atol=1e-6),
)
chosen, rejected = want[:2].float(), want[2:].float()
check(
    "simper_loss formula",
    torch.allclose(simper_rs.simper_loss(chosen, rejected), (-chosen.exp() + rejected.exp()).mean()),
)
for estimator in simper_rs.ESTIMATORS:
    check(
        f"dil_loss {estimator} is finite",
        torch.isfinite(simper_rs.dil_loss(chosen, rejected, estimator=estimator)).item(),
    )

hidden = torch.randn(4, 9, 16, generator=g, requires_grad=True)
weight = torch.randn(50, 16, generator=g, requires_grad=True)
fused = simper_rs.linear_sequence_logps(hidden, weight, labels)
check(
    "linear_sequence_logps matches the materialised logits",
    torch.allclose(fused, simper_rs.sequence_logps(hidden @ weight.T, labels), atol=1e-5),
)

import simper_rs.numpy as snp  # noqa: E402

check(
    "numpy sequence_logps", abs(snp.sequence_logps(logits.detach().numpy(), labels.numpy())[0] - want[0].item()) < 1e-5
)

from transformers import TrainingArguments  # noqa: E402

from simper_rs.cli.tiny import build_tiny_model, build_tokenizer  # noqa: E402
from simper_rs.data import load_default_data  # noqa: E402
from simper_rs.trainer import PreferenceTrainer  # noqa: E402

data = load_default_data()
tokenizer = build_tokenizer(data["train"])
model = build_tiny_model(tokenizer)
before = [p.detach().clone() for p in model.parameters()]
with tempfile.TemporaryDirectory() as out_dir:
    args = TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=4,
        max_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        learning_rate=1e-3,
    )
    trainer = PreferenceTrainer(
        model=model,
        args=args,
        train_dataset=data["train"][:8],
        processing_class=tokenizer,
        fused_linear=True,
        max_length=32,
        max_prompt_length=16,
    )
    result = trainer.train()
check(
    f"PreferenceTrainer step (loss {result.training_loss:.4f})",
    any(not torch.equal(a, b) for a, b in zip(before, model.parameters())),
)
print(f"{checks} passed, 0 failed")
