"""GPT-2, GPT-BigCode (StarCoder 1 / SantaCoder), OPT -> our GPT-2."""

from __future__ import annotations

import torch

from onnxattn.models import build
from onnxattn.models._base import set_linear
from onnxattn.models.gpt2 import GPT2Config, GPT2Model
from onnxattn.models.hf._common import _activation, _copy, _unsupported


def _gpt2(hf) -> GPT2Model:
    c = hf.config
    cfg = GPT2Config(vocab_size=c.vocab_size, n_positions=c.n_positions, hidden=c.n_embd, num_layers=c.n_layer,
                     num_heads=c.n_head, intermediate=c.n_inner, layer_norm_eps=c.layer_norm_epsilon,
                     activation=_activation(c.activation_function), scale_attn_weights=c.scale_attn_weights,
                     scale_attn_by_inverse_layer_idx=c.scale_attn_by_inverse_layer_idx)
    # HF's Conv1D stores weights [in, out]
    return _copy_gpt2(build(cfg), hf.transformer, lambda w: w.T)


def _copy_gpt2(ours: GPT2Model, src, as_linear, qkv=lambda w, b: (w, b)) -> GPT2Model:
    """GPT-2-layout weights (wte, wpe, ln_f; per block c_attn, c_proj, mlp.c_fc / c_proj, ln_1 / ln_2) into ours:
    `as_linear` turns a stored weight into nn.Linear's [out, in], `qkv` reorders c_attn's rows and bias."""
    with torch.no_grad():
        ours.wte.weight.copy_(src.wte.weight)
        ours.wpe.weight.copy_(src.wpe.weight)
        ours.ln_f.load_state_dict(src.ln_f.state_dict())
        for mine, theirs in zip(ours.layers, src.h):
            set_linear(mine.attn.qkv_proj, *qkv(as_linear(theirs.attn.c_attn.weight), theirs.attn.c_attn.bias))
            set_linear(mine.attn.o_proj, as_linear(theirs.attn.c_proj.weight), theirs.attn.c_proj.bias)
            set_linear(mine.c_fc, as_linear(theirs.mlp.c_fc.weight), theirs.mlp.c_fc.bias)
            set_linear(mine.c_proj, as_linear(theirs.mlp.c_proj.weight), theirs.mlp.c_proj.bias)
            mine.ln_1.load_state_dict(theirs.ln_1.state_dict())
            mine.ln_2.load_state_dict(theirs.ln_2.state_dict())
    return ours


def _gpt_bigcode(hf) -> GPT2Model:
    """GPT-BigCode (StarCoder 1, SantaCoder): GPT-2's blocks with nn.Linear weights, multi-query attention
    (multi_query: c_attn rows [q | k | v], one KV head) or multi-head (rows per head [q_h | k_h | v_h])."""
    c = hf.config
    if c.add_cross_attention:
        raise _unsupported("GPT-BigCode with add_cross_attention is not supported (decoder-only here)")
    if not c.tie_word_embeddings:
        raise _unsupported("GPT-BigCode with an output embedding other than the input one (tie_word_embeddings="
                           "False) is not supported")
    heads, head_dim = c.n_head, c.n_embd // c.n_head
    kv_heads = 1 if c.multi_query else heads
    ours = _build_gpt2(c, dict(
        vocab_size=c.vocab_size, n_positions=c.n_positions, hidden=c.n_embd, num_layers=c.n_layer, num_heads=heads,
        num_kv_heads=kv_heads, intermediate=c.n_inner, layer_norm_eps=c.layer_norm_epsilon,
        activation=_activation(c.activation_function), scale_attn_weights=c.scale_attn_weights))

    def qkv(w, b):
        if c.multi_query:
            return w, b
        # per head [q_h | k_h | v_h] -> [q | k | v]
        return (w.unflatten(0, (heads, 3, head_dim)).transpose(0, 1).flatten(0, 2),
                b.unflatten(0, (heads, 3, head_dim)).transpose(0, 1).flatten())

    return _copy_gpt2(ours, hf.transformer, lambda w: w, qkv)  # nn.Linear weights


def _opt(hf) -> GPT2Model:
    """OPT: learned positions offset by 2, separate q / k / v (merged here), ReLU fc1 / fc2, LayerNorm before
    (do_layer_norm_before) or after each residual add (OPT-350m, with no final norm), word_embed_proj_dim as
    project_in / project_out, biases with enable_bias; tied output embedding."""
    c = hf.config
    if not c.layer_norm_elementwise_affine:
        raise _unsupported("OPT with layer_norm_elementwise_affine=False is not supported")
    if not c.tie_word_embeddings:
        raise _unsupported("OPT with an output embedding other than the input one (tie_word_embeddings=False) is "
                           "not supported")
    bias, pre_norm = bool(c.enable_bias), bool(c.do_layer_norm_before)
    src = hf.model.decoder
    ours = _build_gpt2(c, dict(
        vocab_size=c.vocab_size, n_positions=c.max_position_embeddings, hidden=c.hidden_size,
        num_layers=c.num_hidden_layers, num_heads=c.num_attention_heads, intermediate=c.ffn_dim,
        layer_norm_eps=1e-5,  # nn.LayerNorm's default: OPT has no epsilon setting
        activation=_activation(c.activation_function), position_offset=src.embed_positions.offset,
        post_norm=not pre_norm, bias=bias, final_norm=src.final_layer_norm is not None,
        embed_dim=c.word_embed_proj_dim if c.word_embed_proj_dim != c.hidden_size else None))
    with torch.no_grad():
        ours.wte.weight.copy_(src.embed_tokens.weight)
        _copy(ours.wpe.weight, src.embed_positions.weight, "the position table")
        if ours.ln_f is not None:
            ours.ln_f.load_state_dict(src.final_layer_norm.state_dict())
        if ours.config.embed_dim is not None:
            set_linear(ours.project_in, src.project_in.weight)
            set_linear(ours.project_out, src.project_out.weight)
        _copy_fairseq_layers(ours, src.layers, bias)
    return ours


def _copy_fairseq_layers(ours: GPT2Model, layers, bias: bool = True) -> None:
    """fairseq's decoder layers (OPT, BioGPT, XGLM): self_attn.{q,k,v,out}_proj, self_attn_layer_norm, fc1 / fc2,
    final_layer_norm, into our blocks (q / k / v merged into qkv_proj). Call under torch.no_grad()."""
    for mine, theirs in zip(ours.layers, layers):
        t = theirs.self_attn
        names = ("q_proj", "k_proj", "v_proj")
        set_linear(mine.attn.qkv_proj, torch.cat([getattr(t, n).weight for n in names]),
                   torch.cat([getattr(t, n).bias for n in names]) if bias else None)
        set_linear(mine.attn.o_proj, t.out_proj.weight, t.out_proj.bias)
        set_linear(mine.c_fc, theirs.fc1.weight, theirs.fc1.bias)
        set_linear(mine.c_proj, theirs.fc2.weight, theirs.fc2.bias)
        mine.ln_1.load_state_dict(theirs.self_attn_layer_norm.state_dict())
        mine.ln_2.load_state_dict(theirs.final_layer_norm.state_dict())


def _build_gpt2(c, fields: dict) -> GPT2Model:
    try:
        return build(GPT2Config(**fields))
    except ValueError as e:  # e.g. hidden not divisible by the heads
        raise _unsupported(f"this {type(c).__name__} does not map onto ours: {e}") from e
