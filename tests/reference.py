"""Independent plain-PyTorch references the tests compare simper_rs against.

Written from the conventions and formulas of docs/design.md directly, with none of the package's code.
"""

import torch
import torch.nn.functional as F


def token_logps(logits, labels, ignore_index=-100, shift=True):
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    work = logits.double() if logits.dtype == torch.float64 else logits.float()
    logp = torch.log_softmax(work, dim=-1)
    mask = labels != ignore_index
    picked = torch.gather(logp, -1, torch.where(mask, labels, 0).unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, picked, torch.zeros_like(picked))


def sequence_logps(logits, labels, average=True, ignore_index=-100, shift=True):
    tok = token_logps(logits, labels, ignore_index, shift)
    lab = labels[:, 1:] if shift else labels
    mask = (lab != ignore_index).to(tok.dtype)
    total = (tok * mask).sum(-1)
    return total / mask.sum(-1) if average else total


def reduce(loss, reduction):
    return {"mean": loss.mean, "sum": loss.sum, "none": lambda: loss}[reduction]()


def simper(chosen, rejected, reduction="mean"):
    return reduce(-torch.exp(chosen) + torch.exp(rejected), reduction)


def dil(chosen, rejected, ref_chosen=None, ref_rejected=None, estimator="lsif", beta=1.0, reduction="mean"):
    u_w = chosen - (ref_chosen.detach() if ref_chosen is not None else 0.0)
    u_l = rejected - (ref_rejected.detach() if ref_rejected is not None else 0.0)
    if estimator == "lsif":
        loss = -torch.exp(u_w) + 0.5 * torch.exp(2 * u_l)
    elif estimator == "bce":
        loss = -F.logsigmoid(u_w) - F.logsigmoid(-u_l)
    elif estimator == "ukl":
        loss = -chosen + torch.exp(u_l)
    elif estimator == "cpc":
        loss = -F.logsigmoid(beta * (u_w - u_l))
    else:
        raise AssertionError(estimator)
    return reduce(loss, reduction)


def make_batch(pairs=3, seq_len=7, vocab=11, dtype=torch.float32, prompt_len=2, seed=0, requires_grad=True):
    """A [chosen; rejected] batch: prompt positions and right padding carry -100."""
    g = torch.Generator().manual_seed(seed)
    batch = 2 * pairs
    logits = (torch.randn(batch, seq_len, vocab, generator=g, dtype=torch.float64) * 2).to(dtype)
    labels = torch.randint(0, vocab, (batch, seq_len), generator=g)
    labels[:, :prompt_len] = -100
    for row in range(batch):
        pad = int(torch.randint(0, max(1, seq_len - prompt_len - 1), (1,), generator=g))
        if pad:
            labels[row, seq_len - pad :] = -100
    logits.requires_grad_(requires_grad)
    return logits, labels
