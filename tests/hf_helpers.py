"""Tiny Hugging Face models and the checks the HF interop tests share (test_hf_*.py): small configs, model
factories with routing that needs choice biases or several layers, random weights far from the init, transformers'
own prefill / decode logits, and the two end-to-end checks (export with our ops + onnxruntime's logits; greedy
generation) against transformers."""

from __future__ import annotations

import inspect
import math

import numpy as np
import onnx
import pytest
import torch
from model_helpers import relative_error, run_steps, session

from onnxattn.export import from_transformers
from onnxattn.generate import generate

transformers = pytest.importorskip("transformers")


SMALL = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128)
NO_TOKENS = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)  # Phi-3's defaults exceed the vocab
MHA = {k: v for k, v in SMALL.items() if k != "num_key_value_heads"}  # GPT-NeoX has no GQA
BIGCODE = dict(vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4, n_inner=128, **NO_TOKENS)
OPT = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
           max_position_embeddings=64, word_embed_proj_dim=64, **NO_TOKENS)
# Falcon's names: ffn_hidden_size; num_kv_heads only with new_decoder_architecture
FALCON = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_hidden_size=128,
              **NO_TOKENS)
T = transformers
# GPT-OSS: attention sinks, Q/K/V/O biases, head_dim 32 != 64 / 4, layer 0 sliding (window < prompt) and layer 1 full,
# GptOssConfig's own RoPE (YaRN, factor 32, correction range not truncated), top-2 of 4 biased experts routed with a
# biased router, gate / up interleaved; swiglu_limit 0.5 clamps ~15% of the gates and ~30% of the ups here (the
# default 7 would clamp none)
GPT_OSS = SMALL | dict(head_dim=32, num_local_experts=4, num_experts_per_tok=2, sliding_window=6, swiglu_limit=0.5)


def glm4_moe():
    """GLM-4.5: layer 0 dense (first_k_dense_replace), layer 1 top-3 of 8 experts from the 2 best of 4 groups (a group
    scored by its two best), sigmoid scores steered by a random correction bias, renormalised then times 2.5, plus
    an ungated shared expert; q / k / v biases, per-head QK-norm, half-split RoPE on 8 of 16 channels."""
    hf = T.Glm4MoeForCausalLM(T.Glm4MoeConfig(
        **SMALL, **NO_TOKENS, head_dim=16, n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2,
        moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1, routed_scaling_factor=2.5,
        attention_bias=True, use_qk_norm=True))
    bias = hf.model.layers[1].mlp.gate.e_score_correction_bias  # a buffer: randomize leaves it zero
    with torch.no_grad():
        bias.copy_(torch.randn(bias.shape, generator=torch.Generator().manual_seed(3)) * 0.1)
    return hf



def minimax_m2():
    """MiniMax-M2: RMSNorm over all heads of q_proj / k_proj (pre-norm blocks), half-split RoPE on 8 of 16 channels
    (the released checkpoints' legacy rotary_dim field), top-2 of 4 experts in every layer by sigmoid scores
    steered by a random correction bias, renormalised."""
    hf = T.MiniMaxM2ForCausalLM(T.MiniMaxM2Config(**SMALL, **NO_TOKENS, head_dim=16, num_local_experts=4,
                                                  num_experts_per_tok=2, rotary_dim=8))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # buffers: randomize leaves them zero
        for layer in hf.model.layers:
            bias = layer.mlp.e_score_correction_bias
            bias.copy_(torch.randn(bias.shape, generator=g) * 0.1)
    return hf


def dots1():
    """dots.llm1: Qwen3's attention (per-head QK-norm: off, the logits miss by ~0.7), layer 0 full and layer 1 sliding
    (max_window_layers 1, window 6 < prompt: no window misses by ~0.3); DeepSeek-V3's MoE: layer 0 dense
    (first_k_dense_replace), layer 1 top-3 of 8 experts from the 2 best of 4 groups (no groups: ~0.5) by sigmoid scores
    steered by a random correction bias (zeroed: ~0.4), renormalised (off: ~0.3) then times 2.5 (times 1: ~0.4), plus
    an ungated shared expert (dropped: ~0.4)."""
    hf = T.Dots1ForCausalLM(T.Dots1Config(
        **SMALL, head_dim=16, n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2,
        moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1, routed_scaling_factor=2.5,
        norm_topk_prob=True, sliding_window=6, max_window_layers=1))
    bias = hf.model.layers[1].mlp.gate.e_score_correction_bias  # a buffer: randomize leaves it zero
    with torch.no_grad():
        bias.copy_(torch.randn(bias.shape, generator=torch.Generator().manual_seed(3)) * 0.1)
    return hf


def dbrx_config(attn: dict | None = None, ffn: dict | None = None, **overrides):
    """DBRX: fused Wqkv (rows [q | k | v], GQA 4 / 2) clamped by clip_qkv 1 (unclamped: the logits miss by ~1),
    bias-free LayerNorms, half-split RoPE at base 500k, top-2 of 4 experts in every layer by a softmax over all,
    renormalised by the 2-norm of the chosen weights (moe_normalize_expert_weights 2; released: 1, the sum: ~0.3; not
    renormalised: ~0.5). Its attention reads attn_config.rope_theta (unused: rope_parameters rule)."""
    return T.DbrxConfig(**dict(
        d_model=64, n_heads=4, n_layers=2, vocab_size=256, max_seq_len=64,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        attn_config=dict(kv_n_heads=2, clip_qkv=1.0, rope_theta=500000.0) | (attn or {}),
        ffn_config=dict(ffn_hidden_size=32, moe_num_experts=4, moe_top_k=2, moe_normalize_expert_weights=2.0) |
        (ffn or {})) | overrides)


def _choice_biases(hf):
    """Random choice biases for every DeepSeek-V3-style router (buffers: randomize leaves them zero)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in hf.model.layers:
            if hasattr(layer.mlp, "gate"):
                bias = layer.mlp.gate.e_score_correction_bias
                bias.copy_(torch.randn(bias.shape, generator=g) * 0.1)
    return hf


def solar_open():
    """Solar Open: Llama's attention with q / k / v biases (off: the logits miss by ~1) and none on o_proj; GLM-4.5's
    MoE in every layer: top-3 of 8 experts from the 2 best of 4 groups (no groups: ~0.8) by sigmoid scores steered by
    a random correction bias (zeroed: ~0.7), renormalised then times 2.5 (times 1: ~0.7), an ungated shared expert
    (dropped: ~0.9). Its config has no intermediate_size (no dense layers)."""
    return _choice_biases(T.SolarOpenForCausalLM(T.SolarOpenConfig(
        **{k: v for k, v in SMALL.items() if k != "intermediate_size"}, **NO_TOKENS, head_dim=16, n_routed_experts=8,
        num_experts_per_tok=3, n_group=4, topk_group=2, moe_intermediate_size=32, n_shared_experts=1,
        routed_scaling_factor=2.5, attention_bias=True)))


def exaone_moe():
    """K-EXAONE (exaone_moe): EXAONE 4's attention (per-head QK-norm: off, the logits miss by ~0.7; layer 0 sliding
    with RoPE and a window < prompt (no window: ~0.9), layer 1 full without RoPE (with RoPE: ~0.8)) in pre-norm blocks
    (EXAONE 4's post-norm: ~1); layer 0 dense (mlp_layer_types), layer 1 DeepSeek-V3's MoE: top-3 of 8 experts from
    the 2 best of 4 groups (no groups: ~0.5), sigmoid scores steered by a random correction bias (zeroed: ~0.5),
    renormalised then times 2.5 (times 1: ~0.4), a shared expert (dropped: ~0.8)."""
    return _choice_biases(T.ExaoneMoeForCausalLM(T.ExaoneMoeConfig(
        **SMALL, **NO_TOKENS, num_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2, moe_intermediate_size=32,
        num_shared_experts=1, routed_scaling_factor=2.5, sliding_window=6, sliding_window_pattern=2,
        first_k_dense_replace=1)))


def llama4(**overrides):
    """Llama 4: layer 0 RoPE (llama3-scaled, interleaved pairs) with chunked attention (chunks of 4 < the prompt of 8)
    and the weightless QK-norm, dense MLP (intermediate_size_mlp 96); layer 1 NoPE, full attention, q scaled by
    1 + 0.5 * log(1 + floor((position + 1) / 2)) (attn_temperature_tuning; the released floor_scale 8192 shortened),
    top-1 of 4 experts weighted at their inputs by the sigmoid of the router logit, plus the ungated shared expert."""
    return T.Llama4ForCausalLM(T.Llama4TextConfig(**(SMALL | dict(
        head_dim=16, intermediate_size_mlp=96, num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=2,
        no_rope_layer_interval=2, attention_chunk_size=4, floor_scale=2, attn_scale=0.5, max_position_embeddings=64,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 4}) | overrides), **NO_TOKENS))


def randomize(model, seed=0):
    """Weights far from the init (HF initializes norms to their neutral value and biases to zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and not name.endswith("norm.weight"):  # Cohere's QK-norm weights are [heads, head_dim]
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:
                p.add_(torch.rand(p.shape, generator=g) - 0.5)
    return model.eval()


def hf_steps(model, ids: torch.Tensor, prefill: int) -> list[np.ndarray]:
    # transformers 5.x renames past_key_values to cache (argument and output)
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        out = model(ids[:, :prefill], use_cache=True)
        logits, cache = [out.logits.numpy()], getattr(out, key)
        for t in range(prefill, ids.shape[1]):
            out = model(ids[:, t:t + 1], use_cache=True, **{key: cache})
            logits.append(out.logits.numpy())
            cache = getattr(out, key)
    return logits


def eager_relative_error(hf, ours, ids: torch.Tensor, prefill: int = 8) -> float:
    """Relative error of our eager model's logits (a prefill of `prefill` tokens, then one decode step per token
    left) against transformers' logits of the whole `ids`: the feature-ablation tests' measure."""
    with torch.no_grad():
        want = hf(ids).logits
        logits, presents = ours(ids[:, :prefill], ours.empty_past(ids.shape[0]))
        steps = [logits]
        for t in range(prefill, ids.shape[1]):
            logits, presents = ours(ids[:, t:t + 1], presents)
            steps.append(logits)
    return relative_error(torch.cat(steps, 1).numpy(), want.numpy())


def check_export_matches(hf, path, *, vocab: int, node_attrs: dict | None = None, op: str = "GroupQueryAttention",
                         layers: int = 2) -> None:
    """Exports `hf` (random weights, eval) with our ops to `path`: `layers` nodes of `op` carrying `node_attrs`
    (attribute -> value per layer), and onnxruntime's logits with our kernels within 1e-4 of transformers' for a
    prefill of 8 tokens and 3 decode steps (batch 2)."""
    result = from_transformers(hf, path, progress=False)
    assert result.report.ok
    nodes = [n for n in onnx.load(result.path).graph.node if n.op_type == op]
    assert len(nodes) == layers
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
    for attr, values in (node_attrs or {}).items():
        assert [a[attr] for a in attrs] == pytest.approx(values), attr
    ids = torch.randint(0, vocab, (2, 11), generator=torch.Generator().manual_seed(1))
    want = hf_steps(hf, ids, 8)
    got = run_steps(session(result.path), ids.numpy(), 8)  # prefill of 8, then 3 decode steps
    assert got[0].shape == want[0].shape
    errors = [relative_error(g, w) for g, w in zip(got, want)]
    assert max(errors) <= 1e-4, errors


def check_generation_matches(hf, tmp_path, *, vocab: int, caches: tuple[str, ...] = ("shared",)) -> None:
    """Greedy generation of 12 tokens after a prompt of 5 (batch 2) through onnxruntime with our kernels equals
    transformers' generate, with each cache mode of `caches`; exports to tmp_path/{mode}.onnx. By default the shared
    buffer only: every caller's family also has a logits test (check_export_matches) of the concatenated cache's
    prefill and decode steps at 1e-4, and an export costs more than the rest of the check (2-5 s on 2 cores)."""
    prompt = torch.randint(0, vocab, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = hf.generate(prompt, max_new_tokens=12, do_sample=False).numpy()
    for cache_mode in caches:
        result = from_transformers(hf, tmp_path / f"{cache_mode}.onnx", cache=cache_mode, progress=False)
        got = generate(str(result.path), prompt.numpy(), 12, providers=["CPUExecutionProvider"], progress=False)
        np.testing.assert_array_equal(got.tokens, want, err_msg=cache_mode)
    assert len(np.unique(want[:, 5:])) >= 4, "the tiny model should not collapse onto one token"
