"""GPT-2 -> our GPT-2."""

from __future__ import annotations

import torch

from onnxattn.models import build
from onnxattn.models._base import set_linear
from onnxattn.models.gpt2 import GPT2Config, GPT2Model
from onnxattn.models.hf._common import _activation


def _gpt2(hf) -> GPT2Model:
    c = hf.config
    cfg = GPT2Config(vocab_size=c.vocab_size, n_positions=c.n_positions, hidden=c.n_embd, num_layers=c.n_layer,
                     num_heads=c.n_head, intermediate=c.n_inner, layer_norm_eps=c.layer_norm_epsilon,
                     activation=_activation(c.activation_function), scale_attn_weights=c.scale_attn_weights,
                     scale_attn_by_inverse_layer_idx=c.scale_attn_by_inverse_layer_idx)
    ours = build(cfg)
    src = hf.transformer
    with torch.no_grad():
        ours.wte.weight.copy_(src.wte.weight)
        ours.wpe.weight.copy_(src.wpe.weight)
        ours.ln_f.load_state_dict(src.ln_f.state_dict())
        for mine, theirs in zip(ours.layers, src.h):
            # HF's Conv1D stores weights [in, out]
            set_linear(mine.attn.qkv_proj, theirs.attn.c_attn.weight.T, theirs.attn.c_attn.bias)
            set_linear(mine.attn.o_proj, theirs.attn.c_proj.weight.T, theirs.attn.c_proj.bias)
            set_linear(mine.c_fc, theirs.mlp.c_fc.weight.T, theirs.mlp.c_fc.bias)
            set_linear(mine.c_proj, theirs.mlp.c_proj.weight.T, theirs.mlp.c_proj.bias)
            mine.ln_1.load_state_dict(theirs.ln_1.state_dict())
            mine.ln_2.load_state_dict(theirs.ln_2.state_dict())
    return ours
