"""The tiny-architecture builder of tests/architectures.py keeps its promises on every causal LM.

Each architecture of the installed transformers is built tiny and random: small, in train mode,
giving finite [4, 12, vocab] logits with left and right padding, the same weights for the same
seed, causal where the builder says so; each one it cannot build is refused with its listed
reason, and that reason is checked to still hold.
"""

import re

import pytest
import torch
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

import architectures as arch

VOCAB = 96
MAX_PARAMETERS = 1_000_000
MAX_BYTES = 8 * 2**20  # parameters and buffers


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The models are tiny: a second intra-op thread only adds synchronisation, and on a loaded
    # machine its spin-waiting costs several times the work.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_types_are_the_installed_causal_lm_types():
    assert arch.CAUSAL_LM_TYPES == sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    assert len(arch.CAUSAL_LM_TYPES) == len(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    for table in (arch.OVERRIDES, arch.NOTES, arch.CANNOT_BUILD, arch.REQUIRES, arch.NOT_CAUSAL, arch.RESEEDS_RNG):
        assert set(table) <= set(arch.CAUSAL_LM_TYPES), "an entry for a model type transformers no longer has"


def test_unknown_model_type_is_refused():
    with pytest.raises(ValueError, match="'llama5' is not a causal-LM model type"):
        arch.tiny_causal_lm("llama5")


def logits(model, ids, mask, seed=0):
    torch.manual_seed(seed)
    return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("model_type", arch.CAUSAL_LM_TYPES)
def test_builds_tiny(model_type):
    reason = arch.cannot_build_reason(model_type)
    if reason is not None:
        with pytest.raises(arch.CannotBuildTiny, match=re.escape(reason)):
            arch.tiny_causal_lm(model_type, vocab_size=VOCAB)
        return
    model, info = arch.tiny_causal_lm(model_type, vocab_size=VOCAB)
    assert model.training
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["parameters"] <= MAX_PARAMETERS, f"{info['parameters']:,} parameters"
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    assert size <= MAX_BYTES, f"{size:,} bytes of parameters and buffers"
    assert all(p.dtype == torch.float32 for p in model.parameters())

    for padding in ("right", "left"):
        ids, mask = arch.example_batch(VOCAB, padding=padding)
        assert (mask == 0).any(dim=1).tolist() == [False, True, True, True]
        with torch.no_grad():
            out = logits(model, ids, mask)
        assert tuple(out.shape) == (4, 12, VOCAB)
        assert torch.isfinite(out).all(), f"non-finite logits with {padding} padding"

    # The same seed gives the same weights, another seed other weights.
    again, _ = arch.tiny_causal_lm(model_type, vocab_size=VOCAB)
    other, _ = arch.tiny_causal_lm(model_type, vocab_size=VOCAB, seed=1)
    weights = [p.detach() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(weights, again.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(weights, other.parameters()))

    # The same seed gives the same forward, dropout included (in eval mode for a model that
    # reseeds torch's RNG itself in train mode).
    ids, mask = arch.example_batch(VOCAB)
    if model_type in arch.RESEEDS_RNG:
        again.eval()
    with torch.no_grad():
        assert torch.equal(logits(again, ids, mask), logits(again, ids, mask))

    # Causal: changing the last token changes no earlier position's logits.
    again.eval()
    full = torch.ones_like(mask)
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % VOCAB
    with torch.no_grad():
        difference = (logits(again, ids, full) - logits(again, changed, full))[:, :-1].abs().max().item()
    if info["causal"]:
        assert difference <= 1e-5, f"position t sees later tokens: logits change by {difference:.2e}"
    else:
        assert difference > 1e-5, "listed as not causal, but is"


@pytest.mark.parametrize("model_type", sorted(arch.CANNOT_BUILD))
def test_cannot_build_reason_still_holds(model_type):
    model, _ = arch._build(model_type, vocab_size=VOCAB)
    ids, mask = arch.example_batch(VOCAB)
    with pytest.raises(Exception, match=re.escape(arch.CANNOT_BUILD[model_type][1])):
        model(input_ids=ids, attention_mask=mask)


@pytest.mark.parametrize("model_type", sorted(arch.REQUIRES))
def test_required_package_is_what_fails(model_type):
    module, _ = arch.REQUIRES[model_type]
    if arch.cannot_build_reason(model_type) is None:
        pytest.skip(f"{module} is installed")
    with pytest.raises(ImportError, match=module):
        arch._build(model_type, vocab_size=VOCAB)
