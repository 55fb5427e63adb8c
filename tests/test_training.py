"""A small causal LM trained with SimPERLoss on generated preference data improves its margin."""

import os
import sys

import torch

import simper_rs

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
from train_simper import TinyCausalLM, evaluate, main, preference_batch  # noqa: E402


def test_simper_training_grows_the_margin():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    vocab = 12
    model = TinyCausalLM(vocab)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = simper_rs.SimPERLoss()
    held_out = preference_batch(64, vocab, generator=g)
    before = evaluate(model, *held_out)
    losses = []
    for _ in range(60):
        input_ids, labels = preference_batch(32, vocab, generator=g)
        out = loss_fn(model(input_ids), labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(float(out.loss))
    after = evaluate(model, *held_out)
    assert after["margin"] > before["margin"] + 0.5, (before, after)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    assert after["accuracy"] > 0.8


def test_example_script_runs(capsys):
    main(["--steps", "20"])
    out = capsys.readouterr().out
    assert "held-out" in out and "margin" in out
