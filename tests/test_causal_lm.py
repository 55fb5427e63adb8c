"""The log-prob forward of HuggingFace causal LMs (simper_rs.integrations): the fused-linear path
against plain PyTorch SimPER from the model's own logits, the first-step check, the logit-transform
table, the MoE router loss, and that nothing of the user's model is changed."""

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

import reference  # noqa: E402
import simper_rs  # noqa: E402
from simper_rs.integrations.causal_lm import FusedHeadMismatch, add_logps_forward, verify_fused_head  # noqa: E402
from simper_rs.integrations.transforms import TRANSFORMS, model_transform  # noqa: E402
from simper_rs.trainer import make_loss, preference_loss, resolve_aux_loss_coef  # noqa: E402

VOCAB = 64
SIZES = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)


def tiny(config_class, seed=0, **overrides):
    torch.manual_seed(seed)
    config = config_class(**{**SIZES, **overrides})
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # logits large enough that a softcap or a scale matters
        model.get_output_embeddings().weight.mul_(30.0)
    return model


def batch(pairs=2, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (2 * pairs, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding on one row
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100  # the prompt
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def plain_simper(model, inputs):
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    logps = reference.sequence_logps(logits, inputs["labels"])
    return reference.simper(*logps.chunk(2))


def assert_fused_equals_plain(model, inputs, rtol=1e-4, atol=1e-6):
    """Loss and every gradient; both forwards draw the same dropout masks (the same seed, and the
    fused path's first-step check draws no random numbers)."""
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(7)
    out = preference_loss(model, inputs, make_loss("simper"), fused_linear=True)
    torch.manual_seed(7)
    want = plain_simper(model, inputs)
    torch.testing.assert_close(out.loss, want, rtol=rtol, atol=atol)
    got_grads = torch.autograd.grad(out.loss, params, allow_unused=True)
    want_grads = torch.autograd.grad(want, params, allow_unused=True)
    for (name, p), a, b in zip(model.named_parameters(), got_grads, want_grads):
        zero = torch.zeros_like(p)  # a parameter the forward does not use (a pooler) gets no gradient on either path
        torch.testing.assert_close(zero if a is None else a, zero if b is None else b, rtol=rtol, atol=atol, msg=name)


FAMILIES = {
    "gemma2 (softcap)": lambda: tiny(
        transformers.Gemma2Config, head_dim=8, final_logit_softcapping=3.0, attn_logit_softcapping=None
    ),
    "cohere (logit scale)": lambda: tiny(transformers.CohereConfig, logit_scale=0.0625),
    "granite (logits divided)": lambda: tiny(transformers.GraniteConfig, logits_scaling=8.0),
    "roberta (head transform + bias)": lambda: tiny(
        transformers.RobertaConfig, is_decoder=True, num_key_value_heads=None, max_position_embeddings=80
    ),
    "llama": lambda: tiny(transformers.LlamaConfig),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fused_path_equals_plain_pytorch_on_the_models_own_logits(family):
    model = FAMILIES[family]()
    assert_fused_equals_plain(model, batch())


def test_a_learned_per_token_logit_scale_inside_the_head_gets_its_gradient():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model = tiny(
        CONFIG_MAPPING["dory"],
        head_dim=8,
        num_hidden_layers=3,
        n_input_layers=1,
        n_recurrent_layers=1,
        n_output_layers=1,
        n_recurrent_loops=1,
    )
    scale = model.get_output_embeddings().logit_scale
    with torch.no_grad():
        scale.mul_(torch.linspace(0.5, 2.0, scale.numel()))  # not all equal
    assert_fused_equals_plain(model, batch())


class DoubledLogits(transformers.LlamaForCausalLM):
    """A model whose forward does something to the logits that no table knows."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 2
        return out


def test_an_unknown_logit_transform_is_caught_on_the_first_step():
    model = tiny(transformers.LlamaConfig)
    model.__class__ = DoubledLogits
    with pytest.raises(
        FusedHeadMismatch,
        match=r"DoubledLogits \(model type 'llama'\) differ from log_softmax of the model's own logits by up to \S+ \(tolerance",
    ):
        preference_loss(model, batch(), make_loss("simper"), fused_linear=True)


def test_the_check_passes_once_and_costs_one_forward(monkeypatch):
    model = tiny(transformers.LlamaConfig)
    calls = []
    original = model.model.forward
    monkeypatch.setattr(
        model.model, "forward", lambda *a, **k: calls.append(a or k["input_ids"].shape) or original(*a, **k)
    )
    inputs = batch()
    preference_loss(model, inputs, make_loss("simper"), fused_linear=True)
    assert len(calls) == 2  # the check (one sequence) and the step
    assert calls[0] == (1, inputs["input_ids"].shape[1])
    calls.clear()
    preference_loss(model, inputs, make_loss("simper"), fused_linear=True)
    assert len(calls) == 1


def test_the_check_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("SIMPER_RS_FUSED_CHECK", "off")
    model = tiny(transformers.LlamaConfig)
    model.__class__ = DoubledLogits
    preference_loss(model, batch(), make_loss("simper"), fused_linear=True)  # unchecked: the user asked


def test_the_check_reports_its_numbers():
    model = tiny(transformers.Gemma2Config, head_dim=8, final_logit_softcapping=3.0)
    inputs = batch()
    result = verify_fused_head(
        model,
        None,
        (),
        {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]},
        inputs["labels"],
    )
    assert result["positions"] > 0 and result["max_difference"] <= result["tolerance"] < 1e-2


def test_the_model_is_left_as_it_was(monkeypatch):
    model = tiny(transformers.LlamaConfig)
    head = model.lm_head
    before = {k: v.clone() for k, v in model.state_dict().items()}
    children = [name for name, _ in model.named_modules()]
    torch.manual_seed(123)
    expected_random = torch.rand(3)
    torch.manual_seed(123)
    preference_loss(model, batch(), make_loss("simper"), fused_linear=True)
    assert torch.equal(torch.rand(3), expected_random)  # the check consumed no random numbers
    assert model.lm_head is head and "forward" not in head.__dict__  # the stand-in and the op's forward are gone
    assert [name for name, _ in model.named_modules()] == children
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    # generation and the plain forward are the model's own
    ids = batch()["input_ids"][:1, :4]
    plain = transformers.LlamaForCausalLM.forward(model, input_ids=ids).logits
    torch.testing.assert_close(model(input_ids=ids).logits, plain)


class HeadTwice(transformers.LlamaForCausalLM):
    """Calls the lm_head twice: the fused path cannot know which call gives the logits."""

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = 0.5 * (self.lm_head(hidden) + self.lm_head(hidden))
        return transformers.modeling_outputs.CausalLMOutputWithPast(logits=logits)


def test_a_forward_the_fused_path_cannot_run_falls_back_to_the_models_logits_with_one_warning():
    model = tiny(transformers.LlamaConfig)
    model.__class__ = HeadTwice
    with pytest.warns(RuntimeWarning, match="calls the lm_head 2 times.*Its own logits are reduced instead"):
        assert_fused_equals_plain(model, batch())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_fused_equals_plain(model, batch(seed=1))  # warned once


def test_mixture_of_experts_adds_the_router_loss_as_trl_does():
    model = tiny(transformers.MixtralConfig, num_local_experts=4, num_experts_per_tok=2, router_aux_loss_coef=0.02)
    inputs = batch()
    coef = resolve_aux_loss_coef(model)
    assert coef == 0.02
    for fused in (True, False):
        out = preference_loss(model, inputs, make_loss("simper"), fused_linear=fused, aux_loss_coef=coef)
        own = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], output_router_logits=True)
        want = reference.simper(*reference.sequence_logps(own.logits, inputs["labels"]).chunk(2)) + coef * own.aux_loss
        torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-6)
        assert out.metrics["aux_loss"] == pytest.approx(float(own.aux_loss.detach()))
        params = list(model.parameters())
        for a, b in zip(torch.autograd.grad(out.loss, params), torch.autograd.grad(want, params)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    off = preference_loss(
        model, inputs, make_loss("simper"), fused_linear=True, aux_loss_coef=resolve_aux_loss_coef(model, 0.0)
    )
    assert "aux_loss" not in off.metrics
    with pytest.raises(
        ValueError, match="router_aux_loss_coef=0.5, but LlamaForCausalLM is not a Mixture-of-Experts model"
    ):
        resolve_aux_loss_coef(tiny(transformers.LlamaConfig), 0.5)


def test_a_lora_adapter_on_the_head_is_refused_by_name():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        tiny(transformers.LlamaConfig), peft.LoraConfig(target_modules=["lm_head", "q_proj"], r=2)
    )
    with pytest.raises(ValueError, match="the lm_head is adapted by PEFT"):
        preference_loss(model, batch(), make_loss("simper"), fused_linear=True)


def test_a_trained_copy_of_the_head_is_the_one_used():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        tiny(transformers.LlamaConfig), peft.LoraConfig(target_modules=["q_proj"], modules_to_save=["lm_head"], r=2)
    )
    wrapper = model.base_model.model.lm_head
    with torch.no_grad():
        next(iter(wrapper.modules_to_save.values())).weight.mul_(0.5)  # the copy differs from the original
    assert_fused_equals_plain(model.base_model.model, batch())


def test_the_table_names_only_known_model_types_and_valid_steps():
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    for model_type, steps in TRANSFORMS.items():
        assert model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, model_type
        for step in steps:
            assert step.kind in ("scale", "divide", "softcap", "vocab_limit", "first_stream"), step
    model = tiny(transformers.CohereConfig, logit_scale=0.25)
    assert model_transform(model).transform(model.lm_head) == simper_rs.LogitTransform(scale=0.25)
    model = tiny(transformers.Gemma2Config, head_dim=8, final_logit_softcapping=None)
    assert model_transform(model).transform(model.lm_head).is_identity()  # the config skips the step


def test_add_logps_forward_is_idempotent_and_generation_is_untouched():
    model = tiny(transformers.LlamaConfig)
    add_logps_forward(model)
    forward = model.forward
    add_logps_forward(model)
    assert model.forward is forward
    out = model.generate(batch()["input_ids"][:1, :3], max_new_tokens=2, do_sample=False)
    assert out.shape == (1, 5)


def test_a_vocabulary_padded_beyond_the_real_one_keeps_only_the_real_entries():
    # Inkling's logits are logits[..., :unpadded_vocab_size]: the fused op uses those rows of the head.
    from architectures import tiny_config

    config, kwargs = tiny_config("inkling_text", vocab_size=VOCAB)
    config = type(config)(**{**kwargs, "unpadded_vocab_size": 50})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(30.0)
    inputs = batch()
    inputs = {k: v.remainder(50) if k != "attention_mask" else v for k, v in inputs.items()}
    inputs["labels"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    inputs["labels"][:, :3] = -100
    assert model_transform(model).vocab_limit == 50
    assert_fused_equals_plain(model, inputs)
