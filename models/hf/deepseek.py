"""DeepSeek-V3, DeepSeek-V2 / V2-Lite, Sarvam-MLA (transformers runs it as DeepSeek-V3) and MiniCPM3 (MLA without
experts, half-split RoPE, its scale_emb / scale_depth / dim_model_base multipliers), Youtu-LLM (MLA with dense MLPs)
and GLM-4 MoE Lite (DeepSeek-V3's layers, the dense ones listed in mlp_layer_types), Mistral 4 (DeepSeek-V3's layers,
a softmax router, Ministral 3's query scale), DeepSeek-V3.2 and GLM-5 (DeepSeek-V3's layers with DeepSeek's sparse
attention, DSA: a lightning indexer per layer picks each query's keys) -> models.deepseek."""

from __future__ import annotations

import math

import torch

from onnxattn.models import build
from onnxattn.models._base import set_linear
from onnxattn.models.deepseek import DeepSeekMoE, DeepSeekV3Config, DeepSeekV3Model
from onnxattn.models.hf._common import (_activation, _check_rope, _copy, _hf_frequencies, _rope_scaling,
                                       _unsupported)


def _deepseek_router(c) -> dict:
    """DeepSeekV3Config's router fields: V3's sigmoid router (the defaults), Mistral 4's softmax one with V3's groups,
    or V2's softmax one."""
    if c.model_type in ("deepseek_v3", "sarvam_mla", "glm4_moe_lite", "axk1", "deepseek_v32",
                        "glm_moe_dsa"):  # theirs is V3's
        return dict(num_groups=c.n_group or 1, groups_per_token=c.topk_group or 1, norm_topk=bool(c.norm_topk_prob))
    if c.model_type == "mistral4":  # V3's groups (scored by their two best) on softmax scores, no choice bias
        return dict(router_scoring="softmax", group_score="top2_sum", num_groups=c.n_group or 1,
                    groups_per_token=c.topk_group or 1, norm_topk=bool(c.norm_topk_prob))
    freq = getattr(c, "moe_layer_freq", 1)  # not a transformers field: its model has experts in every layer
    if freq != 1:
        raise _unsupported(f"DeepSeek-V2 with moe_layer_freq = {freq} is not supported: transformers puts experts in "
                           f"every layer from first_k_dense_replace on, DeepSeek's code in every {freq}th")
    if c.norm_topk_prob and c.num_experts_per_tok > 1:
        raise _unsupported("DeepSeek-V2 with norm_topk_prob=True is not supported: transformers ignores it (its "
                           "router never renormalises), DeepSeek's code renormalises instead of scaling")
    router = dict(router_scoring="softmax", group_score="max", norm_topk=False)
    if c.topk_method == "greedy":
        return router | dict(num_groups=1, groups_per_token=1)
    if c.topk_method == "group_limited_greedy" and c.n_group and c.topk_group:
        return router | dict(num_groups=c.n_group, groups_per_token=c.topk_group)
    raise _unsupported(f"DeepSeek-V2 with topk_method {c.topk_method!r} (n_group {c.n_group}, topk_group "
                       f"{c.topk_group}) is not supported: greedy, or group_limited_greedy with both set")


def _dense_prefix(c, what: str = "GLM-4 MoE Lite") -> int:
    """GLM-4 MoE Lite's (A.X-K1's) leading dense layers: ours are a prefix (first_dense_layers), its mlp_layer_types
    any list."""
    kinds = list(c.mlp_layer_types)
    dense = kinds.index("sparse") if "sparse" in kinds else len(kinds)
    if any(kind != "sparse" for kind in kinds[dense:]):
        raise _unsupported(f"{what} with mlp_layer_types {kinds} is not supported: only dense layers "
                           f"before all sparse ones (as first_k_dense_replace)")
    return dense


def _minicpm3_multipliers(c) -> dict:
    """MiniCPM3's muP-style scales: embeddings times scale_emb, each residual branch times scale_depth /
    sqrt(num_hidden_layers), the final hidden states divided by hidden_size / dim_model_base."""
    if not c.dim_model_base:
        raise _unsupported(f"MiniCPM3 with dim_model_base {c.dim_model_base} is not supported (transformers divides "
                           f"by it)")
    return dict(embedding_multiplier=float(c.scale_emb),
                residual_multiplier=float(c.scale_depth) / math.sqrt(c.num_hidden_layers),
                logits_scaling=c.hidden_size / c.dim_model_base)


def _mistral4_query_scale(c) -> dict:
    """Mistral 4 scales q by 1 + beta * log(1 + floor(position / period)) (Ministral 3's get_llama_4_attn_scale), the
    period being YaRN's original_max_position_embeddings."""
    params = c.rope_parameters
    beta, period = params.get("llama_4_scaling_beta"), params.get("original_max_position_embeddings")
    if beta is None or not period:
        raise _unsupported(f"Mistral 4 with rope_parameters llama_4_scaling_beta {beta} and "
                           f"original_max_position_embeddings {period} is not supported (transformers cannot run it "
                           f"either)")
    return dict(query_scale_beta=float(beta), query_scale_period=int(period))


def _dsa_fields(c) -> dict:
    """DeepSeek-V3.2's and GLM-5's indexer (DSA) as DeepSeekV3Config fields. GLM-5's indexer rotates interleaved pairs
    (V3.2's half-split), and its indexer_types 'shared' layers run no indexer, reusing the previous layer's picks."""
    glm = c.model_type == "glm_moe_dsa"
    kinds = list(getattr(c, "indexer_types", None) or ["full"] * c.num_hidden_layers) if glm else []
    if any(kind not in ("full", "shared") for kind in kinds) or kinds[:1] == ["shared"]:
        raise _unsupported(f"GLM-5 with indexer_types {kinds} is not supported: 'full' or 'shared' per layer, the "
                           f"first 'full' (a shared layer reuses the previous layer's picks)")
    if not c.index_topk or c.index_topk < 1:
        raise _unsupported(f"index_topk {c.index_topk} is not supported (>= 1)")
    return dict(index_topk=c.index_topk, index_n_heads=c.index_n_heads, index_head_dim=c.index_head_dim,
                index_rope_interleaved=glm, index_shared_layers=tuple(i for i, k in enumerate(kinds) if k == "shared"))


def _deepseek(hf, **fields) -> DeepSeekV3Model:
    """DeepSeek-V3, and DeepSeek-V2 / V2-Lite: the same MLA decoder with V2's router (softmax scores, groups
    scored by their best expert, no choice bias); V2's RoPE always pairs channels (interleaved). Sarvam-MLA is V3's
    model with its own config class; MiniCPM3 has a dense MLP in every layer and MiniCPM's multipliers; Mistral 4 is
    V3 with a softmax router and q scaled per position. `fields`: more DeepSeekV3Config fields, set by a caller that
    copies their weights itself (models.hf.axk1)."""
    c = hf.config
    what = {"deepseek_v2": "DeepSeek-V2", "deepseek_v3": "DeepSeek-V3", "sarvam_mla": "Sarvam-MLA",
            "minicpm3": "MiniCPM3", "youtu": "Youtu-LLM", "glm4_moe_lite": "GLM-4 MoE Lite",
            "mistral4": "Mistral 4", "axk1": "A.X-K1", "deepseek_v32": "DeepSeek-V3.2",
            "glm_moe_dsa": "GLM-5"}[c.model_type]
    dsa = c.model_type in ("deepseek_v32", "glm_moe_dsa")
    minicpm3 = c.model_type == "minicpm3"
    params = c.rope_parameters
    # MiniCPM3-4B's LongRoPE: the MLA layer picks the factor set per forward, as transformers' rotary embedding
    scaling = _rope_scaling(params, c.max_position_embeddings if minicpm3 else None)
    num_layers = c.num_hidden_layers
    if minicpm3 or c.model_type == "youtu":  # no experts
        dense = num_layers
    elif c.model_type in ("glm4_moe_lite", "axk1", "deepseek_v32", "glm_moe_dsa"):  # dense / sparse per layer
        dense = _dense_prefix(c, what)
    else:
        dense = c.first_k_dense_replace
    moe = dense < num_layers  # transformers gives layers >= first_k_dense_replace the MoE
    if moe and (not c.n_routed_experts or not c.num_experts_per_tok):
        raise _unsupported(f"{what} with MoE layers (first_k_dense_replace = {dense} < num_hidden_layers = "
                           f"{num_layers}) needs n_routed_experts and num_experts_per_tok >= 1, got "
                           f"{c.n_routed_experts} and {c.num_experts_per_tok}")
    if getattr(c, "mlp_bias", False):  # a DeepseekV2Config field; DeepSeek's MLPs have none
        raise _unsupported(f"{what} with mlp_bias=True is not supported")
    src = hf.model
    # num_key_value_heads has no role: MLA expands the one latent to every head (the cache is per token)
    experts = dict(num_experts=c.n_routed_experts, experts_per_token=c.num_experts_per_tok,
                   moe_intermediate=c.moe_intermediate_size, num_shared_experts=c.n_shared_experts,
                   first_dense_layers=dense, routed_scaling=c.routed_scaling_factor, **_deepseek_router(c)) if moe \
        else dict(num_experts=0)
    query_scale = _mistral4_query_scale(c) if c.model_type == "mistral4" else {}  # refused outside the try below
    if dsa:
        fields = _dsa_fields(c) | fields
    try:
        cfg = DeepSeekV3Config(
            vocab_size=c.vocab_size, hidden=c.hidden_size, num_layers=num_layers, num_heads=c.num_attention_heads,
            q_rank=c.q_lora_rank, kv_rank=c.kv_lora_rank, nope_head_dim=c.qk_nope_head_dim,
            rope_head_dim=c.qk_rope_head_dim, v_head_dim=c.v_head_dim, intermediate=c.intermediate_size, **experts,
            rope_theta=params["rope_theta"], rope_scaling=scaling,
            mscale_all_dim=float(params.get("mscale_all_dim") or 0.0) if scaling else 0.0,
            # V2 rotates channel pairs (complex numbers), V3.2 and GLM-5 always; V3 does when rope_interleave
            rope_interleaved=c.model_type == "deepseek_v2" or dsa or bool(getattr(c, "rope_interleave", False)),
            attention_bias=bool(c.attention_bias), **(_minicpm3_multipliers(c) if minicpm3 else {}),
            **query_scale,
            rms_norm_eps=c.rms_norm_eps,
            # transformers builds the latent norms with RMSNorm's default eps, not rms_norm_eps
            latent_norm_eps=src.layers[0].self_attn.kv_a_layernorm.variance_epsilon,
            activation=_activation(c.hidden_act), tie_embeddings=bool(c.tie_word_embeddings), **fields)
    except ValueError as e:  # e.g. an expert count the group-limited routing cannot split
        raise _unsupported(f"this {type(c).__name__} does not map onto ours: {e}") from e
    hf_scale = src.layers[0].self_attn.scaling
    ours_scale = cfg.softmax_scale or 1.0 / math.sqrt(cfg.nope_head_dim + cfg.rope_head_dim)
    if abs(ours_scale - hf_scale) > 1e-6 * hf_scale:  # transformers applies mscale_all_dim to any scaled RoPE
        raise _unsupported(f"{what}'s softmax scale {hf_scale} (rope_parameters {params}) is only reproduced "
                           f"for YaRN (ours: {ours_scale})")
    ours = build(cfg)
    with torch.no_grad():
        ours.embed_tokens.weight.copy_(src.embed_tokens.weight)
        if not cfg.tie_embeddings:
            ours.lm_head.weight.copy_(hf.lm_head.weight)
        ours.norm.weight.copy_(src.norm.weight)
        for mine, theirs in zip(ours.layers, src.layers):
            a, t = mine.attn, theirs.self_attn
            if cfg.q_rank:
                set_linear(a.q_a_proj, t.q_a_proj.weight, t.q_a_proj.bias)
                a.q_a_norm.copy_(t.q_a_layernorm.weight)
                set_linear(a.q_b_proj, t.q_b_proj.weight)
            else:
                set_linear(a.q_proj, t.q_proj.weight)
            # [latent R | rope key Dr] in both; RoPE pairs are interleaved in both when rope_interleave
            set_linear(a.kv_a_proj, t.kv_a_proj_with_mqa.weight, t.kv_a_proj_with_mqa.bias)
            a.kv_a_norm.copy_(t.kv_a_layernorm.weight)
            a.load_kv_b_proj(t.kv_b_proj.weight)
            set_linear(a.o_proj, t.o_proj.weight, t.o_proj.bias)
            if getattr(a, "indexer", None) is not None:  # DSA (GLM-5's shared layers have none, as transformers')
                _copy_indexer(a.indexer, t.indexer)
            mine.input_norm.weight.copy_(theirs.input_layernorm.weight)
            mine.post_attn_norm.weight.copy_(theirs.post_attention_layernorm.weight)
            m, h = mine.mlp, theirs.mlp
            if isinstance(m, DeepSeekMoE):
                m.router.copy_(h.gate.weight)
                if m.e_score_correction_bias is not None:  # V3's; V2's router has none
                    m.e_score_correction_bias.copy_(h.gate.e_score_correction_bias)
                m.gate_up_proj.copy_(h.experts.gate_up_proj)
                m.down_proj.copy_(h.experts.down_proj)
                m, h = m.shared_experts, h.shared_experts  # None when n_shared_experts = 0 (HF's is zero-width)
            if m is not None:
                for name in ("gate_proj", "up_proj", "down_proj"):
                    set_linear(getattr(m, name), getattr(h, name).weight)
    short, long = _hf_frequencies(src.rotary_emb)  # long: LongRoPE's second set (MiniCPM3), else None
    _check_rope(ours, short, src.rotary_emb.attention_scaling, c.model_type, long)
    return ours


def _copy_indexer(mine, theirs) -> None:
    """DeepseekV32Indexer's (GlmMoeDsaIndexer's) weights: wq_b, wk, k_norm (a LayerNorm with bias), weights_proj."""
    if abs(theirs.k_norm.eps - mine.k_norm.eps) > 1e-12 or abs(theirs.softmax_scale - mine.head_dim ** -0.5) > 1e-9:
        raise _unsupported(f"an indexer with k_norm eps {theirs.k_norm.eps} and softmax_scale {theirs.softmax_scale} "
                           f"is not supported ({mine.k_norm.eps} and index_head_dim^-0.5)")
    for name in ("wq_b", "wk", "weights_proj"):
        set_linear(getattr(mine, name), getattr(theirs, name).weight)
    _copy(mine.k_norm.weight, theirs.k_norm.weight, "the indexer's k_norm weight")
    _copy(mine.k_norm.bias, theirs.k_norm.bias, "the indexer's k_norm bias")


def _longcat_flash(hf) -> DeepSeekV3Model:
    """LongCat-Flash: each transformers layer holds two MLA sublayers with their own dense MLPs and one MoE that reads
    the first MLP's input and joins the residual at the layer's end: our layers in pairs (shortcut_moe). Its router
    (classifier) scores n_routed_experts + zero_expert_num experts by softmax, the choice steered by
    e_score_correction_bias, the chosen scores times routed_scaling_factor, not renormalised; the zero experts are
    identities. MLA scales q by sqrt(hidden / q_lora_rank) and the normed latent by sqrt(hidden / kv_lora_rank): folded
    into q_b_proj and the latent norm's weight. transformers never adds the classifier's bias (router_bias)."""
    c = hf.config
    params = c.rope_parameters
    scaling = _rope_scaling(params)
    zero = c.zero_expert_num or 0
    if not c.n_routed_experts or not c.moe_topk:
        raise _unsupported(f"LongCat-Flash needs n_routed_experts and moe_topk >= 1, got {c.n_routed_experts} and "
                           f"{c.moe_topk}")
    if getattr(c, "mlp_bias", False):
        raise _unsupported("LongCat-Flash with mlp_bias=True is not supported")
    src = hf.model
    try:
        cfg = DeepSeekV3Config(
            vocab_size=c.vocab_size, hidden=c.hidden_size, num_layers=2 * c.num_layers,
            num_heads=c.num_attention_heads, q_rank=c.q_lora_rank, kv_rank=c.kv_lora_rank,
            nope_head_dim=c.qk_nope_head_dim, rope_head_dim=c.qk_rope_head_dim, v_head_dim=c.v_head_dim,
            intermediate=c.ffn_hidden_size, num_experts=c.n_routed_experts, experts_per_token=c.moe_topk,
            moe_intermediate=c.expert_ffn_hidden_size, num_shared_experts=0, num_groups=1, groups_per_token=1,
            routed_scaling=float(c.routed_scaling_factor), norm_topk=False, router_scoring="softmax",
            router_choice_bias=True, identity_experts=zero, shortcut_moe=True,
            rope_theta=params["rope_theta"], rope_scaling=scaling,
            mscale_all_dim=float(params.get("mscale_all_dim") or 0.0) if scaling else 0.0,
            rope_interleaved=True, attention_bias=bool(c.attention_bias), rms_norm_eps=c.rms_norm_eps,
            latent_norm_eps=src.layers[0].self_attn[0].kv_a_layernorm.variance_epsilon,
            activation=_activation(c.hidden_act), tie_embeddings=bool(c.tie_word_embeddings))
    except ValueError as e:  # e.g. more experts per token than there are
        raise _unsupported(f"this {type(c).__name__} does not map onto ours: {e}") from e
    hf_scale = src.layers[0].self_attn[0].scaling
    ours_scale = cfg.softmax_scale or 1.0 / math.sqrt(cfg.nope_head_dim + cfg.rope_head_dim)
    if abs(ours_scale - hf_scale) > 1e-6 * hf_scale:
        raise _unsupported(f"LongCat-Flash's softmax scale {hf_scale} (rope_parameters {params}, qk_head_dim "
                           f"{c.qk_head_dim}) is only reproduced for YaRN (ours: {ours_scale})")
    ours = build(cfg)
    e = c.n_routed_experts
    with torch.no_grad():
        ours.embed_tokens.weight.copy_(src.embed_tokens.weight)
        if not cfg.tie_embeddings:
            ours.lm_head.weight.copy_(hf.lm_head.weight)
        ours.norm.weight.copy_(src.norm.weight)
        for i, mine in enumerate(ours.layers):
            theirs, j = src.layers[i // 2], i % 2
            a, t = mine.attn, theirs.self_attn[j]
            set_linear(a.q_a_proj, t.q_a_proj.weight, t.q_a_proj.bias)
            a.q_a_norm.copy_(t.q_a_layernorm.weight)
            set_linear(a.q_b_proj, t.q_b_proj.weight * t.mla_scale_q_lora)
            set_linear(a.kv_a_proj, t.kv_a_proj_with_mqa.weight, t.kv_a_proj_with_mqa.bias)
            a.kv_a_norm.copy_(t.kv_a_layernorm.weight * t.mla_scale_kv_lora)
            a.load_kv_b_proj(t.kv_b_proj.weight)
            set_linear(a.o_proj, t.o_proj.weight, t.o_proj.bias)
            mine.input_norm.weight.copy_(theirs.input_layernorm[j].weight)
            mine.post_attn_norm.weight.copy_(theirs.post_attention_layernorm[j].weight)
            for name in ("gate_proj", "up_proj", "down_proj"):
                set_linear(getattr(mine.mlp, name), getattr(theirs.mlps[j], name).weight)
            if mine.shortcut is not None:
                m, h = mine.shortcut, theirs.mlp
                _copy(m.router, h.router.classifier.weight, "the router weight")
                _copy(m.e_score_correction_bias, h.router.e_score_correction_bias, "the e_score_correction_bias")
                # gate_up_proj holds a row per expert, zero ones included (unused); down_proj the MLP experts'
                _copy(m.gate_up_proj, h.experts.gate_up_proj[:e], "the experts' gate_up_proj")
                _copy(m.down_proj, h.experts.down_proj, "the experts' down_proj")
    _check_rope(ours, src.rotary_emb.inv_freq, src.rotary_emb.attention_scaling, "LongCat-Flash")
    return ours
