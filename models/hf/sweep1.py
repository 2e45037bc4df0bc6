"""Older GPT-like decoders and a Llama-like MoE onto our models, no new ops: OpenAI GPT (GPT-1: post-norm blocks, no
final norm) and CTRL (sinusoidal positions copied into the table, embeddings times sqrt(n_embd), ReLU MLP, a biased
tied head) -> our GPT-2; GPT-NeoX-Japanese (GPT-NeoX's per-head fused qkv in sequential bias-free blocks, the last
layer's dense_bias as an output bias) and Aria's text model (Llama's attention, softmax over the top-k logits, experts
stored [in, out], shared experts added ungated) -> our Llama."""

from __future__ import annotations

import math

import torch
from torch import nn

from onnxattn.models._base import set_linear
from onnxattn.models.gpt2 import GPT2Config, GPT2Model
from onnxattn.models.hf._common import _activation, _check_rope, _copy, _rope_scaling, _rotary_dim, _unsupported
from onnxattn.models.hf.gpt2 import _build_gpt2
from onnxattn.models.hf.llama import _build_llama, _copy_head, _hf_frequencies, _llama, _parallel_fields
from onnxattn.models.llama import LlamaModel
from onnxattn.models.moe import MixtureOfExperts

# OpenAI GPT's own activation table (modeling_openai.ACT_FNS): its "gelu" is the tanh approximation (gelu_new)
_OPENAI_ACTIVATIONS = {"relu": "relu", "silu": "silu", "swish": "silu", "gelu": "gelu_tanh"}


def _require_tied(c, what: str) -> None:
    if not c.tie_word_embeddings:  # our GPT-2's head is the input embedding
        raise _unsupported(f"{what} with an output embedding other than the input one (tie_word_embeddings=False) "
                           f"is not supported")


def _copy_conv1d_blocks(ours: GPT2Model, blocks) -> None:
    """GPT-2-layout blocks with Conv1D weights ([in, out]) into ours. Call under torch.no_grad()."""
    for mine, theirs in zip(ours.layers, blocks):
        set_linear(mine.attn.qkv_proj, theirs.attn.c_attn.weight.T, theirs.attn.c_attn.bias)
        set_linear(mine.attn.o_proj, theirs.attn.c_proj.weight.T, theirs.attn.c_proj.bias)
        set_linear(mine.c_fc, theirs.mlp.c_fc.weight.T, theirs.mlp.c_fc.bias)
        set_linear(mine.c_proj, theirs.mlp.c_proj.weight.T, theirs.mlp.c_proj.bias)
        mine.ln_1.load_state_dict(theirs.ln_1.state_dict())
        mine.ln_2.load_state_dict(theirs.ln_2.state_dict())


def _openai_gpt(hf) -> GPT2Model:
    """OpenAI GPT (GPT-1): learned positions from 0, Conv1D c_attn / c_proj, scores scaled by 1/sqrt(head_dim), each
    LayerNorm after its residual add (n = ln_1(x + attn(x)), h = ln_2(n + mlp(n))) and no final norm; tied head.
    transformers keeps no KV cache for it (each step re-reads the whole sequence): the logits are the same."""
    c = hf.config
    _require_tied(c, "OpenAI GPT")
    if c.afn not in _OPENAI_ACTIVATIONS:
        raise _unsupported(f"OpenAI GPT with afn {c.afn!r} is not supported (known: {', '.join(_OPENAI_ACTIVATIONS)})")
    ours = _build_gpt2(c, dict(
        vocab_size=c.vocab_size, n_positions=c.n_positions, hidden=c.n_embd, num_layers=c.n_layer, num_heads=c.n_head,
        intermediate=4 * c.n_embd, layer_norm_eps=c.layer_norm_epsilon, activation=_OPENAI_ACTIVATIONS[c.afn],
        post_norm=True, final_norm=False))
    src = hf.transformer
    with torch.no_grad():
        ours.wte.weight.copy_(src.tokens_embed.weight)
        _copy(ours.wpe.weight, src.positions_embed.weight, "the position table")
        _copy_conv1d_blocks(ours, src.h)
    return ours


class _GPT2WithHeadBias(GPT2Model):
    """Our GPT-2 whose tied head adds a bias (CTRL's lm_head: the input embedding as weight, a bias of its own)."""

    def __init__(self, cfg: GPT2Config):
        super().__init__(cfg)
        self.lm_head_bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def head(self, x):
        return super().head(x) + self.lm_head_bias


def _ctrl(hf) -> GPT2Model:
    """CTRL: token embeddings times sqrt(n_embd) plus a sinusoidal position table (its pos_encoding buffer, copied
    into ours), pre-LayerNorm blocks (epsilon 1e-6) with biased Wq / Wk / Wv / dense, a ReLU MLP, a final LayerNorm
    and a tied head with a bias."""
    c = hf.config
    _require_tied(c, "CTRL")
    if c.layer_norm_epsilon != 1e-6:  # the blocks' LayerNorms are fixed at 1e-6; ours share one epsilon
        raise _unsupported(f"CTRL with layer_norm_epsilon {c.layer_norm_epsilon} is not supported: its blocks' "
                           f"LayerNorms use 1e-6 and ours share one epsilon with the final norm")
    src = hf.transformer
    fields = dict(vocab_size=c.vocab_size, n_positions=c.n_positions, hidden=c.n_embd, num_layers=c.n_layer,
                  num_heads=c.n_head, intermediate=c.dff, layer_norm_eps=1e-6, activation="relu",
                  embedding_multiplier=math.sqrt(c.n_embd))
    _build_gpt2(c, fields)  # validates the fields (UnsupportedModel) before ours is built
    ours = _GPT2WithHeadBias(GPT2Config(**fields))
    with torch.no_grad():
        ours.wte.weight.copy_(src.w.weight)
        _copy(ours.wpe.weight, src.pos_encoding.float(), "the position table")
        ours.ln_f.load_state_dict(src.layernorm.state_dict())
        _copy(ours.lm_head_bias, hf.lm_head.bias, "the lm_head bias")
        for mine, theirs in zip(ours.layers, src.h):
            t = theirs.multi_head_attention
            set_linear(mine.attn.qkv_proj, torch.cat([t.Wq.weight, t.Wk.weight, t.Wv.weight]),
                       torch.cat([t.Wq.bias, t.Wk.bias, t.Wv.bias]))
            set_linear(mine.attn.o_proj, t.dense.weight, t.dense.bias)
            set_linear(mine.c_fc, theirs.ffn[0].weight, theirs.ffn[0].bias)
            set_linear(mine.c_proj, theirs.ffn[2].weight, theirs.ffn[2].bias)
            mine.ln_1.load_state_dict(theirs.layernorm1.state_dict())
            mine.ln_2.load_state_dict(theirs.layernorm2.state_dict())
    return ours.eval()


def _gpt_neox_japanese(hf) -> LlamaModel:
    """GPT-NeoX-Japanese: sequential pre-LayerNorm blocks, GPT-NeoX's fused query_key_value (rows per head
    [q_h | k_h | v_h]) and dense without biases, partial rotary (half-split), an ungated bias-free MLP
    hidden * intermediate_multiple_size wide; only the last layer adds a dense_bias to its attention output (the
    others get a zero output bias here)."""
    c = hf.config
    heads = c.num_attention_heads
    head_dim = c.hidden_size // heads
    ours = _build_llama(c, _parallel_fields(
        c, hidden=c.hidden_size, heads=heads, layers=c.num_hidden_layers,
        intermediate=int(c.hidden_size * c.intermediate_multiple_size), eps=c.layer_norm_eps, activation=c.hidden_act,
        rope_theta=c.rope_parameters["rope_theta"], rope_scaling=_rope_scaling(c.rope_parameters),
        rotary_dim=_rotary_dim(c, head_dim), qkv_bias=False, o_bias=True, mlp_bias=False, parallel_residual=False))
    src = hf.gpt_neox_japanese
    with torch.no_grad():
        _copy_head(ours, src.embed_in, hf.embed_out, src.final_layer_norm)
        for mine, theirs in zip(ours.layers, src.layers):
            a, t = mine.attn, theirs.attention
            w = t.query_key_value.weight.unflatten(0, (heads, 3, head_dim))
            for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
                set_linear(getattr(a, name), w[:, i].flatten(0, 1))
            set_linear(a.o_proj, t.dense.weight, t.dense_bias)  # None: zeros
            set_linear(mine.mlp.c_fc, theirs.mlp.dense_h_to_4h.weight)
            set_linear(mine.mlp.c_proj, theirs.mlp.dense_4h_to_h.weight)
            mine.input_norm.load_state_dict(theirs.input_layernorm.state_dict())
            mine.post_attn_norm.load_state_dict(theirs.post_attention_layernorm.state_dict())
    short, long = _hf_frequencies(src.rotary_emb)
    _check_rope(ours, short, src.rotary_emb.attention_scaling, "GPT-NeoX-Japanese", long)
    return ours


def _aria_experts(c) -> dict:
    """Aria's MoE block in every layer: softmax over the top-k router logits (a softmax over all experts
    renormalised over the chosen ones), SiLU-gated experts intermediate_size wide, moe_num_shared_experts SwiGLUs as
    one wider shared expert added ungated."""
    if _activation(c.hidden_act) != "silu":  # the routed experts are always SiLU, ours share the shared expert's
        raise _unsupported(f"Aria with hidden_act {c.hidden_act!r} is not supported: its routed experts are SiLU-gated "
                           f"whatever hidden_act says, and ours share one activation with the shared experts")
    return dict(num_experts=c.moe_num_experts, experts_per_token=c.moe_topk, moe_intermediate=c.intermediate_size,
                router_scoring="softmax", norm_topk=True,
                shared_expert_intermediate=c.intermediate_size * c.moe_num_shared_experts, shared_expert_gated=False,
                shared_expert_bias=bool(c.mlp_bias))


def _copy_aria_experts(m: MixtureOfExperts, h) -> None:
    _copy(m.router, h.router.weight, "the router weight")
    # Aria stores the experts [E, in, out] (gate_up columns [gate | up]); ours are [E, out, in]
    _copy(m.gate_up_proj, h.experts.gate_up_proj.transpose(1, 2), "the experts' gate_up_proj")
    _copy(m.down_proj, h.experts.down_proj.transpose(1, 2), "the experts' down_proj")
    if m.shared_expert is not None:
        m.shared_expert.load_state_dict(h.shared_experts.state_dict())


def _aria_text(hf) -> LlamaModel:
    """Aria's text model (AriaTextForCausalLM): Llama's attention and norms, Aria's MoE block (_aria_experts)."""
    return _llama(hf, variant=_aria_experts, copy_experts=_copy_aria_experts)


__all__ = ["_aria_text", "_ctrl", "_gpt_neox_japanese", "_openai_gpt"]
