"""Every causal-LM architecture of the installed transformers, built tiny and random, offline.

`tiny_causal_lm(model_type)` returns `AutoModelForCausalLM.from_config(config)`, randomly
initialised from `seed`, in train mode, for a config shrunk to tens of thousands of parameters
(hidden 32, 2 layers or one per layer kind, 4 heads of 8, 4 experts, 2-layer vision/audio
towers, a vocabulary of 96), whose `model(input_ids=ids, attention_mask=mask).logits` on a
[4, 12] batch (`example_batch`) is [4, 12, vocab_size].

The tiny config comes from generic rules applied to the config class's own defaults: size-like
fields shrunk by their name, per-layer lists (layer kinds, MLP kinds, per-layer sizes, layer
indices) rebuilt for the new layer count, pad/bos/eos ids moved into the small vocabulary and
media placeholder ids (image, audio, ...) out of it so that random ids never contain one, None
sizes that the model reads filled, tied sizes (Mamba heads x head size, widths equal to some
tower's hidden size) kept tied, and sub-configs (text, vision, audio) shrunk the same way.
OVERRIDES then holds, with the reason for each, what generic rules cannot know; NOTES what a
user of a tiny model should know; NOT_CAUSAL the causal-LM classes whose logits are not causal;
RESEEDS_RNG the models whose train-mode dropout no seed fixes. An architecture that cannot run a
text-only causal-LM forward here raises CannotBuildTiny with the reason (CANNOT_BUILD, REQUIRES).

`python tests/architectures.py [model_type ...] [--checks] [-v]` builds each one as the census
does (build, then a forward and backward with right and with left padding) and prints parameters,
time and peak memory; --checks adds determinism and causality, -v tracebacks.
"""

import dataclasses
import importlib.util
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network: fail rather than download

import torch
import transformers
from transformers import AutoModelForCausalLM, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

CAUSAL_LM_TYPES = sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)

HIDDEN = 32
LAYERS = 2
HEADS = 4
HEAD_DIM = 8
INTERMEDIATE = 64
EXPERT_INTERMEDIATE = 32
EXPERTS = 4
EXPERTS_PER_TOKEN = 2
POSITIONS = 64
WINDOW = 6  # below the 12-token test sequences, and divides them (chunked attention, Reformer)
RANK = 16
STATE = 8
MAX_LAYERS = 4  # layer-type lists with more kinds than LAYERS get one layer per kind, up to this


class CannotBuildTiny(Exception):
    """This architecture cannot be built tiny offline, or cannot run a text-only causal-LM forward."""


# Token ids that are text and must index the vocabulary, and ids of media placeholders that a
# text-only batch must never contain.
_TEXT_TOKEN = re.compile(
    r"^(pad|bos|eos|unk|sep|cls|mask|decoder_start|forced_bos|forced_eos|start|end|eot)_token_(id|ids|index)$"
)
_TOKEN = re.compile(r"_token_(id|ids|index)$")


def _size_rule(name, default, ctx):
    """The tiny value of a size-like integer field, or None to keep the default."""
    n = name
    if n in ("vocab_size", "unpadded_vocab_size", "vocab_size_per_layer_input"):
        return ctx["vocab"]
    if re.search(r"(multiple_of|divisible_by)$", n):  # widths rounded up to a multiple of this
        return min(default, 8)
    if "vocab" in n:
        return min(default, ctx["vocab"])
    if re.search(
        r"(^|_)(num_hidden_layers|n_layers?|num_layers|num_blocks|num_(en|de)coder_layers|(en|de)coder_layers)$", n
    ):
        return min(default, ctx["layers"])
    if re.search(r"key_value_heads|kv_heads", n):
        heads = ctx["default_heads"] or default
        if default >= heads:
            return min(default, HEADS)
        return 1 if default == 1 else HEADS // 2
    if re.search(
        r"(^|_)(n_heads?|num_heads|.*attention_heads|.*_num_heads|.*_n_heads|index_n_heads|num_key_heads|num_value_heads)$",
        n,
    ):
        return min(default, HEADS)
    if re.search(r"(head_dim|dim_head|d_head|head_size|kv_channels)$", n):
        return min(default, HEAD_DIM)
    if re.search(r"rotary_dim$", n):
        return min(default, HEAD_DIM // 2)
    if n == "n_group":  # group-limited expert routing: 2 groups of 2 experts, 1 group chosen
        return min(default, 2)
    if n == "topk_group":
        return min(default, 1)
    if re.search(r"^(first_k_dense_replace|num_dense_layers|max_window_layers)$", n):
        return min(default, 1)  # leading dense / full-attention layers: one, so later layers differ
    if re.search(r"lora_rank$", n):
        return min(default, RANK)
    if re.search(r"(_rank|lowrank)$", n):
        return min(default, 8)
    if re.search(
        r"^(hidden_size|n_embd|n_embed|d_model|embed_dim|emb_dim|dim|model_dim|hidden_dim|d_embed|embedding_size|embedding_dim|input_embedding_size|output_embedding_size|word_embed_proj_dim)$",
        n,
    ) or n.endswith("_hidden_size"):
        # Dimensions equal to the model width follow it; those that differ stay different.
        if default == ctx["default_hidden"]:
            return ctx["hidden"]
        return ctx["hidden"] // 2 if default < (ctx["default_hidden"] or 0) else ctx["hidden"] * 2
    if n == "query_pre_attn_scalar":  # Gemma's attention scale, the head_dim in every release
        return min(default, HEAD_DIM)
    if n in ("hidden_size_per_layer_input", "mamba_d_ssm"):
        return min(default, 8 if n == "hidden_size_per_layer_input" else 2 * ctx["hidden"])
    if re.search(r"(_embed_dim|_emb_dim)$", n):
        return min(default, ctx["hidden"] // 2)
    if re.search(r"_channels?$", n) and n not in ("num_channels", "in_channels", "audio_channels"):
        return min(default, ctx["hidden"])
    if re.search(r"intermediate|ffn|(^|_)ff(_|$)|d_inner|dff|dim_ff|feed_forward|mlp_dim$", n):
        return min(default, EXPERT_INTERMEDIATE if re.search(r"moe|expert|shared", n) else INTERMEDIATE)
    if re.search(r"max_position|n_positions|n_ctx|max_seq|context_length|max_(source|target)_positions", n):
        return min(default, POSITIONS)
    if re.search(r"(^|_)(num_experts|num_local_experts|n_routed_experts|moe_num_experts|zero_expert_num)$", n):
        return min(default, EXPERTS)
    if re.search(r"experts_per_tok|moe_topk|(^|_)top_?k$", n):
        return min(default, EXPERTS_PER_TOKEN)
    if re.search(r"n_shared_experts|num_shared_experts", n):
        return min(default, 1)
    if re.search(
        r"sliding_window|window_size|window_len|(^|_)local_attention$|attention_window|(^|_)chunk_size$|chunk_length|index_topk",
        n,
    ):
        return min(default, WINDOW)
    if re.search(r"d_state|state_size|ssm_state", n):
        return min(default, STATE)
    return None


def _is_config_class(value):
    return isinstance(value, type) and issubclass(value, PreTrainedConfig)


def _field_defaults(cls):
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _layer_count(config):
    try:
        n = getattr(config, "num_hidden_layers", None)
    except Exception:  # heterogeneous configs refuse some global reads
        n = None
    return n if isinstance(n, int) and not isinstance(n, bool) else None


_INDEX_LIST = re.compile(r"(idxs|indices|indexes|_layers|layer_ids)$")


def _distinct(values):
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _layer_lists(cls, default, ctx, n_forced=None):
    """Per-layer lists of the default config, rebuilt for a few layers.

    A list with one entry per layer (attention kinds, MLP kinds, no-RoPE flags, per-layer sizes)
    becomes its distinct entries in order of first appearance, cycled over the new layer count;
    a list of layer indices (MoE layers, cross-attention layers) becomes the indices of the
    same first-appearance pattern of member / non-member layers. The layer count is the largest
    number of distinct entries (at least LAYERS, at most MAX_LAYERS), so a hybrid model keeps
    one layer of every kind.
    """
    n_default = _layer_count(default)
    if n_default is None:
        return None, {}
    per_layer, index_lists = {}, {}
    for f in dataclasses.fields(cls):
        if f.name in ("architectures",) or _TOKEN.search(f.name):
            continue
        try:
            value = getattr(default, f.name)
        except Exception:
            continue
        if not isinstance(value, (list, tuple)) or not value:
            continue
        if not all(isinstance(v, (str, int, float, bool)) for v in value):
            continue
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        if ints and _INDEX_LIST.search(f.name) and list(value) == sorted(set(value)) and value[-1] < n_default:
            index_lists[f.name] = [i in set(value) for i in range(n_default)]
        elif len(value) == n_default:
            per_layer[f.name] = list(value)
    if not per_layer and not index_lists:
        return None, {}
    kinds = [_distinct(v) for v in per_layer.values()] + [_distinct(v) for v in index_lists.values()]
    n = n_forced or max(ctx["layers"], min(MAX_LAYERS, max(len(k) for k in kinds)))
    out = {}
    for name, value in per_layer.items():
        kind = _distinct(value)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in kind):
            # Per-layer sizes (heads or widths per layer) shrink like their scalar field.
            base = re.sub(r"_per_layer$", "", name)
            kind = [(_size_rule(base, v, ctx) or v) for v in kind]
            kind = _distinct(kind)
        out[name] = [kind[i % len(kind)] for i in range(n)]
    for name, mask in index_lists.items():
        kind = _distinct(mask)
        out[name] = [i for i in range(n) if kind[i % len(kind)]]
    return n, out


# Mamba-2 style mixers need heads * head_dim == expand * hidden_size.
_MAMBA_TRIPLES = [
    ("mamba_n_heads", "mamba_d_head", "mamba_expand"),  # Falcon-H1: mamba_d_ssm, when set, is the width
    ("mamba_num_heads", "mamba_head_dim", "expand"),
    ("n_mamba_heads", "mamba_d_head", "mamba_expand"),
    ("num_heads", "head_dim", "expand"),
]


def _fill_and_tie(defaults, out, ctx):
    """Fill sizes that the defaults leave None but the model reads, and re-tie dependent sizes."""
    value = lambda k: out.get(k, defaults.get(k))
    if "head_dim" in defaults and value("head_dim") is None and value("num_attention_heads"):
        hidden = value("hidden_size")
        if isinstance(hidden, int) and hidden % value("num_attention_heads") == 0:
            out["head_dim"] = hidden // value("num_attention_heads")
    if "num_key_value_heads" in defaults and value("num_key_value_heads") is None and value("num_attention_heads"):
        out["num_key_value_heads"] = value("num_attention_heads")
    expert_keys = [
        k for k in ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts") if k in defaults
    ]
    if expert_keys and all(value(k) is None for k in expert_keys) and "moe_intermediate_size" in defaults:
        out[expert_keys[0]] = EXPERTS  # a MoE config whose expert count has no default
    experts = [value(k) for k in expert_keys]
    if (
        "num_experts_per_tok" in defaults
        and value("num_experts_per_tok") is None
        and any(isinstance(e, int) and e > 1 for e in experts)
    ):
        out["num_experts_per_tok"] = EXPERTS_PER_TOKEN
    hidden = value("hidden_size")
    for heads, head_dim, expand in _MAMBA_TRIPLES:
        if (
            all(k in defaults for k in (heads, head_dim, expand))
            and isinstance(value(expand), int)
            and isinstance(hidden, int)
        ):
            width = value("mamba_d_ssm") or value(expand) * hidden
            if isinstance(value(head_dim), int):  # else "auto" or None: derived from the heads
                out[heads] = width // value(head_dim)


def _default_instance(cls, init_kwargs):
    try:
        return cls(**init_kwargs)
    except Exception:
        return None


def _sub_configs(cls):
    """{name: (config class, its init kwargs, optional)} of the sub-configs of config class `cls`."""
    specs = getattr(cls, "sub_configs_defaults", None) or {}
    out = {}
    for key, spec in specs.items():
        sub_cls = spec.config_class
        if not (_is_config_class(sub_cls) and sub_cls is not PreTrainedConfig and dataclasses.is_dataclass(sub_cls)):
            sub_cls = CONFIG_MAPPING[spec.model_type]
        out[key] = (sub_cls, spec.init_kwargs, spec.optional)
    if not specs:  # older configs declare a plain {name: class} and build the sub-configs themselves
        for key, sub_cls in (cls.__dict__.get("sub_configs") or {}).items():
            if _is_config_class(sub_cls) and dataclasses.is_dataclass(sub_cls):
                out[key] = (sub_cls, {}, False)
    return out


def _default_widths(cls):
    """The default hidden sizes of a config and all its sub-configs (text, vision, audio, ...)."""
    defaults = _field_defaults(cls)
    out = {defaults[k] for k in ("hidden_size", "n_embd", "d_model", "embed_dim") if isinstance(defaults.get(k), int)}
    for sub_cls, init_kwargs, _ in _sub_configs(cls).values():
        if sub_cls is not cls:
            out |= _default_widths(sub_cls)
            out |= {v for k, v in init_kwargs.items() if k == "hidden_size" and isinstance(v, int)}
    return out


def _tiny_kwargs(cls, init_kwargs, ctx, over=None):
    """Keyword arguments that shrink config class `cls`, whose defaults `init_kwargs` amend.

    `over` are per-architecture overrides for this config (nested dicts for its sub-configs); a
    layer count among them also sets the length of the per-layer lists.
    """
    over = over or {}
    defaults = _field_defaults(cls)
    defaults.update(init_kwargs)
    hidden_keys = [
        k for k in ("hidden_size", "n_embd", "d_model", "embed_dim", "dim") if isinstance(defaults.get(k), int)
    ]
    head_keys = [
        k for k in ("num_attention_heads", "n_head", "num_heads", "n_heads") if isinstance(defaults.get(k), int)
    ]
    ctx = dict(
        ctx,
        default_hidden=defaults[hidden_keys[0]] if hidden_keys else None,
        default_heads=defaults[head_keys[0]] if head_keys else None,
    )
    n_forced = next((over[k] for k in ("num_hidden_layers", "n_layer", "n_layers", "num_layers") if k in over), None)
    n_layers, lists = _layer_lists(cls, _default_instance(cls, init_kwargs), ctx, n_forced)
    if n_layers is not None or n_forced is not None:
        ctx["layers"] = n_forced or n_layers
    ctx["used_ids"] = {
        v for k, v in defaults.items() if _TOKEN.search(k) and isinstance(v, int) and 0 <= v < ctx["vocab"]
    }
    out = {}
    for name, value in defaults.items():
        if name in ("chunk_size_feed_forward",) or isinstance(value, bool):
            continue
        if isinstance(value, int) and _TOKEN.search(name):
            out[name] = _token_id(name, value, ctx)
        elif (
            isinstance(value, (list, tuple))
            and value
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            and _TOKEN.search(name)
        ):
            out[name] = [_token_id(name, v, ctx) for v in value]
        elif isinstance(value, int):
            new = _size_rule(name, value, ctx)
            for alias in (a for a, target in getattr(cls, "attribute_map", {}).items() if target == name):
                new = _size_rule(alias, value, ctx) if new is None else new
            if new is None and value in ctx["widths"] and re.search(r"(size|dim)", name):
                new = ctx["hidden"]  # an adapter or projection width tied to some tower's hidden size
            if new is not None and new != value:
                out[name] = new
    out.update(lists)
    _fill_and_tie(defaults, out, ctx)
    if "is_decoder" in defaults and not defaults.get("is_encoder_decoder"):
        out["is_decoder"] = True
    # Sub-configs (text, vision, audio, ...) are shrunk by the same rules.
    for key, (sub_cls, init_kwargs, optional) in _sub_configs(cls).items():
        if key == "backbone_config":
            continue
        if defaults.get(key) is None and optional:
            continue
        sub = dict(init_kwargs)
        sub.update(_tiny_kwargs(sub_cls, init_kwargs, dict(ctx, layers=LAYERS), over.get(key)))
        if sub_cls.model_type:
            sub["model_type"] = sub_cls.model_type
        out[key] = sub
    out.update({k: v for k, v in over.items() if k not in out or not isinstance(out[k], dict)})
    return out


def _token_id(name, value, ctx):
    """A special token id that fits the tiny vocabulary."""
    vocab = ctx["vocab"]
    if value is None or 0 <= value < vocab:
        return value
    if _TEXT_TOKEN.match(name):
        # Text tokens (pad, bos, eos, ...) index the embedding: the smallest id no other uses.
        new = min(i for i in range(vocab) if i not in ctx["used_ids"])
        ctx["used_ids"].add(new)
        return new
    # A media placeholder (image, audio, ...): outside the text vocabulary, so random ids never
    # contain it and a text-only forward never looks for pixel or audio inputs.
    ctx["next_media_id"] = ctx.get("next_media_id", vocab - 1) + 1
    return ctx["next_media_id"]


# Per-architecture overrides where the generic rules cannot know a constraint: merged over the
# generic keyword arguments (nested dicts for sub-configs; a layer count here also sets the
# length of the per-layer lists). Each says why.

# Dots3's sliding-window layers take their attention sizes from swa_* keyword arguments.
_DOTS3_SWA = {
    "swa_num_attention_heads": HEADS,
    "swa_num_key_value_heads": HEADS,
    "swa_q_lora_rank": RANK,
    "swa_kv_lora_rank": RANK,
    "swa_head_dim": 2 * HEAD_DIM,
    "swa_qk_nope_head_dim": HEAD_DIM,
    "swa_qk_rope_head_dim": HEAD_DIM,
    "swa_v_head_dim": HEAD_DIM,
}
# The last num_kv_shared_layers reuse the KV cache of the last earlier layer of their type, so the
# unshared layers must include every type: sliding, full, then the same two shared.
_GEMMA3N_TEXT = {
    "num_hidden_layers": 4,
    "num_kv_shared_layers": 2,
    "layer_types": ["sliding_attention", "full_attention"] * 2,
}
# Full-attention layers take their head size from a global_head_dim keyword argument (512).
_GEMMA4_TEXT = {"global_head_dim": 2 * HEAD_DIM}
# The assistant (draft) models validate that per-layer inputs are off.
_GEMMA4_ASSISTANT = {"text_config": dict(_GEMMA4_TEXT, hidden_size_per_layer_input=0, vocab_size_per_layer_input=0)}
# Indexed-attention layers need the QSA indexer sizes, which default to None.
_QWEN4_EXP_TEXT = {
    "indexer_n_heads": 2,
    "indexer_kv_heads": 1,
    "indexer_head_dim": HEAD_DIM,
    "indexer_budget": 4,
    "indexer_compress_ratio": 2,
}

OVERRIDES = {
    # Hybrids whose default layer pattern has no attention layer among the first few (or none at
    # all, where the forward then raises): one attention layer, as in the released models.
    "bamba": {"attn_layer_indices": [1]},
    "granitemoehybrid": {"layer_types": ["linear_attention", "full_attention"]},
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1},
    "recurrent_gemma": {"block_types": ["recurrent", "attention"]},
    # The shared transformer block is tied across hybrid layers: it needs two of them.
    "zamba": {"num_hidden_layers": 3, "layers_block_type": ["linear_attention", "hybrid", "hybrid"]},
    # Stacks that must add up to num_hidden_layers, or [pattern, repeats] expanded per layer.
    "dory": {
        "num_hidden_layers": 3,
        "n_input_layers": 1,
        "n_output_layers": 1,
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
    },
    "gpt_neo": {"attention_types": [[["global", "local"], 1]]},
    "gemma3n_text": _GEMMA3N_TEXT,
    "gemma3n": {"text_config": _GEMMA3N_TEXT},
    "gemma4_text": _GEMMA4_TEXT,
    "gemma4": {"text_config": _GEMMA4_TEXT},
    "gemma4_unified_text": _GEMMA4_TEXT,
    "gemma4_unified": {"text_config": _GEMMA4_TEXT},
    "gemma4_assistant": _GEMMA4_ASSISTANT,
    "gemma4_unified_assistant": _GEMMA4_ASSISTANT,
    "dots3_note_text": _DOTS3_SWA,
    "dots3_note": {"text_config": _DOTS3_SWA},
    "qwen4_exp_text": _QWEN4_EXP_TEXT,
    "qwen4_exp": {"text_config": _QWEN4_EXP_TEXT},
    # Defaults from which transformers cannot build a model at all: DbrxAttention reads
    # attn_config.rope_theta, which the attention config does not declare, and clamps with
    # clip_qkv=None (8 as DBRX ships); Dots1 has MoE layers but no shared-expert count; LFM2-MoE
    # reads layer_types, default None; Cohere Compass looks up rope_parameters[layer_type] in
    # an empty default.
    "dbrx": {"attn_config": {"rope_theta": 10000.0, "clip_qkv": 8.0}},
    "dots1": {"n_shared_experts": 1},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"]},
    "cohere_compass_text": {
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
        }
    },
    # Its forward builds DynamicCache(config=BltConfig), which has no num_hidden_layers, so
    # use_cache must be off; the local encoder/decoder read the global transformer's width.
    "blt": {
        "use_cache": False,
        "encoder_config": {"hidden_size_global": HIDDEN},
        "decoder_config": {"hidden_size_global": HIDDEN},
    },
    # The config rounds the mLSTM q/k and v widths up to multiples of 64 but the layer does not,
    # so they agree only when hidden_size * qk_dim_factor is one; with use_cache=True the mLSTM
    # state is updated in place and backward raises.
    "xlstm": {"hidden_size": 64, "qk_dim_factor": 1.0, "use_cache": False},
    # Training-mode axial position embeddings need prod(axial_pos_shape) == the sequence length
    # (12 here) and dims adding up to hidden_size; chunked attention needs chunks dividing it.
    "reformer": {
        "attn_layers": ["local", "lsh"],
        "axial_pos_shape": [3, 4],
        "axial_pos_embds_dim": [16, 16],
        "max_position_embeddings": 12,
        "local_attn_chunk_length": 6,
        "lsh_attn_chunk_length": 6,
        "num_buckets": 2,
        "hash_seed": 0,
    },  # else the LSH rotations are drawn afresh at every forward
    "xmod": {"default_language": "en_XX"},  # the forward raises until a language adapter is chosen
    "xlm": {"causal": True},  # XLM is a masked LM unless causal=True (then a triangular mask)
    # Block-sparse attention needs sequences of over 700 tokens; on shorter ones transformers
    # switches the model to full attention during its first forward, so that forward differs.
    "big_bird": {"attention_type": "original_full"},
    "bigbird_pegasus": {"attention_type": "original_full"},
    # One codebook: each batch row is one sequence (with k codebooks, k rows make one sample).
    "musicgen": {"decoder": {"num_codebooks": 1}},
    "musicgen_melody": {"decoder": {"num_codebooks": 1}},
}

# What a user of the tiny model needs to know beyond the overrides.
NOTES = {
    "reformer": "trains only on sequences of exactly 12 tokens (axial position embeddings of shape 3 x 4); "
    "in train mode its reversible layers reseed torch's global RNG with torch.seed(), so dropout "
    "masks differ between forwards whatever the seed: deterministic only with dropout off",
    "xlstm": "use_cache=False (with the cache on, backward raises)",
    "blt": "use_cache=False (with the cache on, the forward raises)",
    "musicgen": "built as MusicgenForCausalLM(config.decoder) with one codebook",
    "musicgen_melody": "built as MusicgenMelodyForCausalLM(config.decoder) with one codebook",
}

# Causal-LM classes whose logits are not causal (a position sees later tokens), with the reason.
NOT_CAUSAL = {
    "cpmant": "CpmAntForCausalLM marks every input token as context, attended in both directions "
    "(and ignores attention_mask, building its own from the sequence length)",
    "xlnet": "a permutation LM: without perm_mask every position attends to the whole sequence "
    "(attn_type='uni', the one-directional variant, raises with an attention_mask)",
}

# Models that reseed torch's global RNG during a train-mode forward: seeding before the forward
# does not fix their dropout masks.
RESEEDS_RNG = {"reformer"}

# Composite configs whose causal-LM class takes only one sub-config: AutoModelForCausalLM.from_config
# hands it the whole config, which it cannot read, so the class is built from that sub-config.
_FROM_SUB_CONFIG = {"musicgen": "decoder", "musicgen_melody": "decoder"}

# Architectures that cannot run a text-only causal-LM forward: the reason, and a fragment of the
# error transformers raises when it is tried anyway (test_architectures_build.py checks it still
# does, so that an entry goes away when transformers changes).
CANNOT_BUILD = {
    "gemma4_assistant": (
        "a speculative-decoding draft model: its forward needs the target model's inputs_embeds and "
        "shared_kv_states and raises without them, so there is no forward from input_ids alone",
        "inputs_embeds and shared_kv_states cannot be None",
    ),
    "gemma4_unified_assistant": (
        "a speculative-decoding draft model: its forward needs the target model's inputs_embeds and "
        "shared_kv_states and raises without them, so there is no forward from input_ids alone",
        "inputs_embeds and shared_kv_states cannot be None",
    ),
}

# Architectures that need a package this environment may lack: (module, why).
REQUIRES = {
    "gemma3n": ("timm", "its vision tower is a timm MobileNet-V5 (TimmWrapperModel), built with every model"),
}


def tiny_config(model_type, *, vocab_size=96):
    """The tiny config of `model_type` and the keyword arguments that made it."""
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(f"{model_type!r} is not a causal-LM model type of transformers {transformers.__version__}")
    cls = CONFIG_MAPPING[model_type]
    ctx = {"vocab": vocab_size, "hidden": HIDDEN, "layers": LAYERS, "widths": _default_widths(cls)}
    kwargs = _tiny_kwargs(cls, {}, ctx, OVERRIDES.get(model_type))
    return cls(**kwargs), kwargs


def cannot_build_reason(model_type):
    """Why `model_type` cannot be built tiny here, or None."""
    if model_type in CANNOT_BUILD:
        return CANNOT_BUILD[model_type][0]
    if model_type in REQUIRES and importlib.util.find_spec(REQUIRES[model_type][0]) is None:
        module, why = REQUIRES[model_type]
        return f"needs the {module} package, which is not installed: {why}"
    return None


def tiny_causal_lm(model_type, *, vocab_size=96, seed=0, dtype=torch.float32):
    """A tiny, randomly initialised causal LM of `model_type` in train mode, and a dict about it.

    The same arguments give the same weights. `info` holds "config_kwargs" (every keyword the
    config was built with), "overrides" (the per-architecture part of them), "notes",
    "parameters" and "layers". Raises CannotBuildTiny with the reason where it cannot be built.
    """
    reason = cannot_build_reason(model_type)
    if reason is not None:
        raise CannotBuildTiny(f"{model_type}: {reason}")
    return _build(model_type, vocab_size=vocab_size, seed=seed, dtype=dtype)


def _build(model_type, *, vocab_size=96, seed=0, dtype=torch.float32):
    config, kwargs = tiny_config(model_type, vocab_size=vocab_size)
    notes = [NOTES[model_type]] if model_type in NOTES else []
    if kwargs.get("is_decoder"):
        notes.append("is_decoder=True (the default, False, makes BERT-style models bidirectional)")
    extra = {}
    if dtype == torch.float64:
        # The default grouped-GEMM experts kernel has no float64 version.
        extra["experts_implementation"] = "eager"
    torch.manual_seed(seed)
    if model_type in _FROM_SUB_CONFIG:
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
        model = model_class._from_config(getattr(config, _FROM_SUB_CONFIG[model_type]), dtype=dtype, **extra)
    else:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, **extra)
    model.train()
    info = {
        "config_kwargs": kwargs,
        "overrides": OVERRIDES.get(model_type, {}),
        "notes": notes,
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": _layer_count(model.config.get_text_config(decoder=True)),
        "causal": model_type not in NOT_CAUSAL,
    }
    if model_type in NOT_CAUSAL:
        notes.append("not causal: " + NOT_CAUSAL[model_type])
    return model, info


def example_batch(vocab_size=96, *, batch=4, seq_len=12, padding="right", seed=0):
    """Random token ids in [0, vocab_size) and an attention mask padding rows 1-3 on one side."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, seq_len), generator=g)
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    for row in range(1, batch):
        pad = [3, 1, 5][(row - 1) % 3]
        if padding == "right":
            mask[row, seq_len - pad :] = 0
        else:
            mask[row, :pad] = 0
    return ids, mask


def _forward(model, ids, mask, seed=0):
    torch.manual_seed(seed)  # the same dropout masks for the same seed
    return model(input_ids=ids, attention_mask=mask).logits


def _main(argv):
    """Build every architecture (or those named), as the census does: build, then a forward and
    backward with right padding and one with left padding. --checks adds causality and
    determinism checks (not timed); -v prints tracebacks."""
    import resource
    import signal
    import time
    import traceback
    import warnings

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)  # tiny models: a second thread only adds synchronisation
    types = [a for a in argv if not a.startswith("-")] or CAUSAL_LM_TYPES

    def alarm(*_):
        raise TimeoutError("took over 60 s")

    signal.signal(signal.SIGALRM, alarm)
    built, cannot, bad, total, total_cpu = [], [], [], 0.0, 0.0
    for mt in types:
        signal.alarm(60)
        try:
            t, cpu = time.perf_counter(), time.process_time()
            model, info = tiny_causal_lm(mt)
            for padding in ("right", "left"):
                ids, mask = example_batch(padding=padding)
                logits = _forward(model, ids, mask)
                assert tuple(logits.shape) == (4, 12, 96), f"logits of shape {tuple(logits.shape)}"
                assert torch.isfinite(logits).all(), f"non-finite logits with {padding} padding"
                logits.float().square().mean().backward()
            dt, dcpu = time.perf_counter() - t, time.process_time() - cpu
            total += dt
            total_cpu += dcpu
            extra = ""
            if "--checks" in argv:
                ids, mask = example_batch()
                full = torch.ones_like(mask)
                again, _ = tiny_causal_lm(mt)
                same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
                changed = ids.clone()
                changed[:, -1] = (changed[:, -1] + 1) % 96
                with torch.no_grad():
                    base = _forward(again, ids, full)
                    repeat = _forward(again, ids, full)
                    causal = torch.allclose(base[:, :-1], _forward(again, changed, full)[:, :-1], atol=1e-5)
                extra = f"  same weights {same}, same logits {torch.equal(base, repeat)}, causal {causal}"
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
            built.append(mt)
            print(
                f"OK     {mt:28s} {info['parameters']:>9,d} params {info['layers']} layers "
                f"{dt:5.2f} s ({dcpu:5.2f} s CPU)  peak {rss} MiB{extra}",
                flush=True,
            )
        except CannotBuildTiny as e:
            cannot.append(mt)
            print(f"CANNOT {e}", flush=True)
        except Exception as e:
            bad.append(mt)
            print(f"BAD    {mt:28s} {type(e).__name__}: {str(e).strip().splitlines()[0][:200]}", flush=True)
            if "-v" in argv:
                traceback.print_exc()
        finally:
            signal.alarm(0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(
        f"built {len(built)}, cannot build {len(cannot)}, failed {len(bad)}; "
        f"build + 2 forward/backward: {total:.1f} s ({total_cpu:.1f} s CPU); peak RSS {rss} MiB"
    )
    if bad:
        print("failed:", " ".join(bad))


if __name__ == "__main__":
    import sys

    _main(sys.argv[1:])
