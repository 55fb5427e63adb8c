"""The model census: every causal-LM architecture of the installed transformers, built tiny and
random offline (tests/architectures.py), one SimPER step on both log-prob paths of
``simper_rs.trainer.preference_loss`` (the model's logits through the fused kernel, and the
fused-linear path that is the trainers' default), loss and every parameter's gradient against
plain PyTorch SimPER computed here from the model's own ``logits`` (plus the router
load-balancing loss as TRL adds it, for Mixture-of-Experts models).

Each architecture's outcome must be the one docs/census.md states, so the published table cannot
drift from what the code does: ``python tests/test_model_census.py`` rewrites that page from a
fresh run (the table, the counts, the transformers version).
"""

import re
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import reference  # noqa: E402
from architectures import CAUSAL_LM_TYPES, RESEEDS_RNG, CannotBuildTiny, example_batch, tiny_causal_lm  # noqa: E402
from simper_rs.integrations.transforms import model_transform  # noqa: E402
from simper_rs.trainer import make_loss, preference_loss, resolve_aux_loss_coef  # noqa: E402

PAGE = Path(__file__).resolve().parent.parent / "docs" / "census.md"
VOCAB = 96
PROMPT = 3  # the first tokens of every row are prompt (label -100)
LOGIT_GAIN = 10.0  # the output projection's weight is multiplied by this


def census_batch():
    ids, mask = example_batch(VOCAB, batch=4, seq_len=12, padding="right")
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :PROMPT] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def plain_loss(model, inputs, coef):
    """Plain PyTorch SimPER from the model's own logits (+ coef × its router loss), and the
    per-sequence average log-probs."""
    extra = {"output_router_logits": True} if coef else {}
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **extra)
    logps = reference.sequence_logps(out.logits, inputs["labels"])
    loss = reference.simper(*logps.chunk(2))
    return (loss + coef * out.aux_loss if coef and out.aux_loss is not None else loss), logps


def compare(model, inputs, fused, coef, seed=11):
    """None when loss and every gradient equal plain PyTorch, else what differs."""
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(seed)
    out = preference_loss(model, inputs, make_loss("simper"), fused_linear=fused, aux_loss_coef=coef)
    torch.manual_seed(seed)  # the same dropout masks for the plain forward
    want, want_logps = plain_loss(model, inputs, coef)
    logps = torch.cat([out.chosen_logps, out.rejected_logps])
    if not torch.allclose(logps, want_logps, rtol=1e-4, atol=1e-5):
        return f"average log-probs differ by up to {float((logps - want_logps).abs().max()):.3g}"
    if not torch.allclose(out.loss, want, rtol=1e-4, atol=1e-7):
        return f"loss {float(out.loss):.6g} against {float(want):.6g}"
    g_got = torch.autograd.grad(out.loss, params, allow_unused=True)
    g_want = torch.autograd.grad(want, params, allow_unused=True)
    g_want = [torch.zeros_like(p) if b is None else b for p, b in zip(params, g_want)]
    # float32 rounding in the layers below the head reaches every gradient relative to the
    # largest one (seen: 5e-7 of it), so a tensor whose own gradient is all but zero (a router
    # whose routing weights sum to one: 1e-12) is compared at that floor, not its own scale
    largest = max(float(b.abs().max()) for b in g_want)
    for (name, p), a, b in zip(((n, p) for n, p in model.named_parameters() if p.requires_grad), g_got, g_want):
        a = torch.zeros_like(p) if a is None else a
        # relative to the tensor's own scale: SimPER's gradients are exp(ℓ)-sized, far below 1e-6
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()) + 1e-5 * largest):
            return f"gradient of {name} differs by up to {float((a - b).abs().max()):.3g} (its largest entry {float(b.abs().max()):.3g})"
    return None


def outcome(model_type):
    """(outcome class, detail): "equal", "equal (fallback)", "different", "error", "not built"."""
    try:
        model, _ = tiny_causal_lm(model_type, vocab_size=VOCAB)
    except CannotBuildTiny as why:
        return "not built", str(why).split(": ", 1)[-1]
    with torch.no_grad():
        # Logits of a few units, not a few hundredths as at random initialisation: a scale or a
        # softcap that the fused path missed would change the loss well beyond the tolerance.
        head = model.get_output_embeddings()
        if head is not None and isinstance(getattr(head, "weight", None), torch.Tensor):
            head.weight.mul_(LOGIT_GAIN)
    if model_type in RESEEDS_RNG:
        # Its train-mode forward reseeds the RNG, so no two forwards draw the same dropout masks: compare without dropout.
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            if isinstance(getattr(module, "dropout", None), float):
                module.dropout = 0.0
    inputs = census_batch()
    coef = resolve_aux_loss_coef(model)
    notes = []
    if coef:
        with torch.no_grad():
            returns_one = model(input_ids=inputs["input_ids"][:1], output_router_logits=True).aux_loss is not None
        notes.append(
            f"router loss × {coef:g}"
            if returns_one
            else "config has router_aux_loss_coef, the model returns no router loss"
        )
    steps = model_transform(model).describe()
    if not steps.startswith("none"):
        notes.append(steps)
    for fused in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                difference = compare(model, inputs, fused, coef)
            except Exception as err:  # noqa: BLE001 - the census reports what happened
                return (
                    "error",
                    f"{'fused-linear' if fused else 'logits'} path: {type(err).__name__}: {str(err).splitlines()[0][:200]}",
                )
        if difference is not None:
            return "different", f"{'fused-linear' if fused else 'logits'} path: {difference}"
        fallback = [w for w in caught if "fused-linear path cannot run" in str(w.message)]
        if fused and fallback:
            reason = re.search(r"cannot run on \w+: (.*?)\. Its own logits", str(fallback[0].message)).group(1)
            return "equal (fallback)", "; ".join(notes + [f"fused linear falls back to the model's logits: {reason}"])
    return "equal", "; ".join(notes)


def documented():
    """model type -> outcome class, from docs/census.md."""
    rows = {}
    for line in PAGE.read_text().splitlines():
        match = re.match(r"^\| `([^`]+)` \| ([^|]+) \|", line)
        if match:
            rows[match.group(1)] = match.group(2).strip()
    return rows


@pytest.fixture
def one_thread():
    """Tiny models: a second thread only adds synchronisation (and the census must fit in minutes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("model_type", CAUSAL_LM_TYPES)
def test_every_causal_lm(model_type, one_thread):
    expected = documented().get(model_type)
    got, detail = outcome(model_type)
    assert got in ("equal", "equal (fallback)", "not built"), f"{model_type}: {got}: {detail}"
    assert got == expected, (
        f"{model_type}: {got} ({detail}), but docs/census.md says {expected!r}; rerun python tests/test_model_census.py"
    )


def write_page(results, seconds):
    counts = {}
    for kind, _ in results.values():
        counts[kind] = counts.get(kind, 0) + 1
    lines = [
        "# Model census",
        "",
        f"Every causal-LM architecture of transformers {transformers.__version__} (its `AutoModelForCausalLM` mapping),",
        "built tiny and random offline by `tests/architectures.py`, one SimPER step through",
        "`simper_rs.trainer.preference_loss` on both log-prob paths: the model's logits reduced by the",
        "fused kernel (`fused_linear=False`), and the fused-linear path (the default of `SimPERTrainer`",
        "and `DILTrainer`). Loss and every parameter's gradient are compared with plain PyTorch SimPER",
        "computed from the model's own `logits` (for Mixture-of-Experts models, plus the router",
        "load-balancing loss weighted by the config's `router_aux_loss_coef`, as TRL adds it). float32,",
        "relative tolerance 1e-4. `tests/test_model_census.py` checks in CI that every row still holds;",
        "`python tests/test_model_census.py` regenerates this page.",
        "",
        "Outcomes: **equal** (both paths equal plain PyTorch); **equal (fallback)** (the fused-linear path",
        "cannot replace only this model's projection, says why once and reduces the model's own logits,",
        "equal to plain PyTorch); **not built** (transformers cannot build or run it tiny and text-only",
        "here; the reason is given).",
        "",
        "| outcome | count |",
        "| --- | --- |",
    ]
    lines += [f"| {kind} | {n} |" for kind, n in sorted(counts.items())]
    lines += [
        "",
        f"{len(results)} architectures in {seconds:.0f} s on this machine.",
        "",
        "| model type | outcome | notes (logit transform, router loss, reason) |",
        "| --- | --- | --- |",
    ]
    for model_type, (kind, detail) in sorted(results.items()):
        lines.append(f"| `{model_type}` | {kind} | {detail.replace('|', '/')} |")
    PAGE.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    start = time.time()
    results = {}
    for model_type in sys.argv[1:] or CAUSAL_LM_TYPES:
        results[model_type] = outcome(model_type)
        print(f"{model_type}: {results[model_type][0]} {results[model_type][1]}", flush=True)
    if not sys.argv[1:]:
        write_page(results, time.time() - start)
        print(f"wrote {PAGE}")
