"""Train a tiny causal LM with SimPER on generated preference data, offline, in seconds.

Task: after a prompt of random tokens, the preferred (chosen) response repeats the prompt in
reverse; the rejected response is random. SimPER needs no reference model and no
hyperparameters: the loss is -exp(ℓ_w) + exp(ℓ_l) on average log-probs.

    python examples/train_simper.py [--steps 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import torch

import simper_rs


class TinyCausalLM(torch.nn.Module):
    """Embedding -> GRU -> vocabulary head: causal, tiny, and fast on a CPU."""

    def __init__(self, vocab: int, hidden: int = 32) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.rnn = torch.nn.GRU(hidden, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, vocab)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.rnn(self.embed(input_ids))
        return self.head(hidden)


def preference_batch(pairs: int, vocab: int, prompt_len: int = 4, generator=None):
    """A [chosen; rejected] batch of token ids and labels (prompt positions masked with -100)."""
    prompt = torch.randint(0, vocab, (pairs, prompt_len), generator=generator)
    chosen = torch.cat([prompt, prompt.flip(1)], dim=1)
    rejected = torch.cat([prompt, torch.randint(0, vocab, (pairs, prompt_len), generator=generator)], dim=1)
    input_ids = torch.cat([chosen, rejected])
    labels = input_ids.clone()
    labels[:, :prompt_len] = -100
    return input_ids, labels


def evaluate(model, input_ids, labels) -> dict:
    with torch.no_grad():
        logps = simper_rs.sequence_logps(model(input_ids), labels)
    pairs = logps.shape[0] // 2
    chosen, rejected = logps[:pairs], logps[pairs:]
    return {
        "margin": float((chosen - rejected).mean()),
        "accuracy": float((chosen > rejected).float().mean()),
        "logps/chosen": float(chosen.mean()),
        "logps/rejected": float(rejected.mean()),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=32, help="preference pairs per batch")
    parser.add_argument("--vocab", type=int, default=12)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    model = TinyCausalLM(args.vocab)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = simper_rs.SimPERLoss()
    held_out = preference_batch(256, args.vocab, generator=g)

    before = evaluate(model, *held_out)
    start = time.perf_counter()
    print(f"{'step':>5} {'loss':>8} {'margin':>8} {'acc':>6} {'logp_w':>8} {'logp_l':>8}")
    for step in range(1, args.steps + 1):
        input_ids, labels = preference_batch(args.pairs, args.vocab, generator=g)
        out = loss_fn(model(input_ids), labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        if step == 1 or step % 20 == 0:
            m = out.metrics
            print(
                f"{step:>5} {out.loss.item():>8.4f} {m['rewards/margins']:>8.3f} {m['rewards/accuracies']:>6.2f} "
                f"{m['logps/chosen']:>8.3f} {m['logps/rejected']:>8.3f}"
            )
    after = evaluate(model, *held_out)
    print(f"\nheld-out ({held_out[0].shape[0] // 2} pairs), {time.perf_counter() - start:.1f} s of training:")
    print(f"{'':>16} {'before':>8} {'after':>8}")
    for key in before:
        print(f"{key:>16} {before[key]:>8.3f} {after[key]:>8.3f}")


if __name__ == "__main__":
    main()
