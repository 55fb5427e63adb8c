"""The training curves ``simper-rs train`` draws from its metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["plot_metrics"]


def plot_metrics(metrics_path: Path, png_path: Path, title: str) -> None:
    """Loss, margin and average log-probs per logged step (train) and per evaluation (held-out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    train = [r for r in rows if "loss" in r and "rewards/margins" in r]
    evals = [r for r in rows if "eval_rewards/margins" in r]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    step = [r["step"] for r in train]
    axes[0].plot(step, [r["loss"] for r in train], label="train")
    axes[0].plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="held-out")
    axes[0].set_title("loss")
    axes[1].plot(step, [r["rewards/margins"] for r in train], label="train")
    axes[1].plot([r["step"] for r in evals], [r["eval_rewards/margins"] for r in evals], "o-", label="held-out")
    axes[1].set_title("margin (logp chosen - rejected)")
    axes[2].plot(step, [r["logps/chosen"] for r in train], label="chosen")
    axes[2].plot(step, [r["logps/rejected"] for r in train], label="rejected")
    axes[2].set_title("average log-prob (train)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
