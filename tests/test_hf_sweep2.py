"""BitNet, DiffLlama and Gemma 4 unified's text model (models.hf.sweep2) from tiny configs with random weights, exported
with onnxattn.export.from_transformers: onnxruntime's logits with our kernels match transformers' for a prefill and
three decode steps (fp32, <= 1e-4 relative); greedy generation from the exported graph equals transformers'. Each
feature, switched off in our model, misses transformers' logits (torch against torch); what is not modelled is
refused by name."""

from __future__ import annotations

import pytest
import torch
from model_helpers import one_torch_thread

transformers = pytest.importorskip("transformers")
for _name in ("BitNetForCausalLM", "DiffLlamaForCausalLM", "Gemma4UnifiedForCausalLM"):
    if not hasattr(transformers, _name):
        pytest.skip(f"this transformers has no {_name}", allow_module_level=True)

from hf_helpers import (NO_TOKENS, check_export_matches, check_generation_matches, eager_relative_error,  # noqa: E402
                        randomize)

from onnxattn.models.hf import UnsupportedModel, from_transformers  # noqa: E402

T = transformers
_AUTOUSE = (one_torch_thread,)  # imported for its autouse fixture (one torch thread while these run)
VOCAB = 128
SMALL = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=96, **NO_TOKENS)
IDS = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(1))


def bitnet(**overrides):
    torch.manual_seed(0)
    return randomize(T.BitNetForCausalLM(T.BitNetConfig(**SMALL | overrides)))


def diffllama(**overrides):
    torch.manual_seed(0)
    return randomize(T.DiffLlamaForCausalLM(T.DiffLlamaConfig(**SMALL | overrides)))


S, F = "sliding_attention", "full_attention"
# sliding layers: head dim 16, default RoPE; full layers: head dim 32, proportional RoPE; window 6 < the prompt of 8
GEMMA4_UNIFIED = SMALL | dict(head_dim=16, global_head_dim=32, sliding_window=6, final_logit_softcapping=30.0,
                              num_hidden_layers=4, layer_types=[S, F, S, F], attn_implementation="eager")


def gemma4_unified(**overrides):
    torch.manual_seed(0)
    return randomize(T.Gemma4UnifiedForCausalLM(T.Gemma4UnifiedTextConfig(**GEMMA4_UNIFIED | overrides)))


CASES = {
    # relu2 MLP (BitNet's default) with both sub-norms
    "bitnet": (bitnet, {}, dict(num_heads=[4, 4], kv_num_heads=[2, 2]), 2),
    "bitnet-silu-bias": (bitnet, dict(hidden_act="silu", attention_bias=True), {}, 2),
    # 4 KV heads: value heads [V_{g mod 2} | V_{2 + g mod 2}], each node 4 query heads of 16 over 4 KV heads
    "diffllama": (diffllama, dict(num_key_value_heads=4), dict(num_heads=[4, 4], kv_num_heads=[4, 4]), 2),
    # GQA 8 / 2, head_dim 8, three layers (lambda_init per layer), biased projections
    "diffllama-gqa": (diffllama, dict(num_attention_heads=8, num_hidden_layers=3, attention_bias=True),
                      dict(num_heads=[8] * 3, kv_num_heads=[2] * 3), 3),
    "gemma4_unified": (gemma4_unified, {}, dict(window=[6, 0, 6, 0]), 4),
}


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(name, tmp_path):
    factory, overrides, attrs, layers = CASES[name]
    check_export_matches(factory(**overrides), tmp_path / f"{name}.onnx", vocab=VOCAB, node_attrs=attrs,
                         layers=layers)


# Gemma 4 unified is left out: its tiny random models (tied embeddings times sqrt(hidden)) greedily repeat two or
# three tokens, which says little; its logits over decode steps are checked above
@pytest.mark.parametrize("name", ["bitnet", "diffllama-gqa"])
def test_generation_matches_transformers(name, tmp_path):
    factory, overrides, _, _ = CASES[name]
    check_generation_matches(factory(**overrides), tmp_path, vocab=VOCAB)


def test_bitnet_sub_norms_matter():
    hf = bitnet()
    ours = from_transformers(hf)
    assert eager_relative_error(hf, ours, IDS) <= 1e-5
    for module in ("attn.o_proj", "mlp.down_proj"):
        ours = from_transformers(hf)
        for layer in ours.layers:  # the projection without its norm
            parent, name = layer.get_submodule(module.split(".")[0]), module.split(".")[1]
            setattr(parent, name, getattr(parent, name).linear)
        assert eager_relative_error(hf, ours, IDS) > 1e-2, module


def test_bitnet_quantized_is_refused():
    hf = bitnet()
    hf.config.quantization_config = {"quant_method": "bitnet"}
    with pytest.raises(UnsupportedModel, match="1.58-bit quantization"):
        from_transformers(hf)


def test_diffllama_features_matter():
    hf = diffllama(num_attention_heads=8)
    ours = from_transformers(hf)
    assert eager_relative_error(hf, ours, IDS) <= 1e-5
    changes = {"no lambda": _no_lambda, "no second softmax term": lambda o: setattr(o, "forward", _first_half_only(o))}
    for what, change in changes.items():
        ours = from_transformers(hf)
        with torch.no_grad():
            for layer in ours.layers:
                change(layer.attn.o_proj)
        assert eager_relative_error(hf, ours, IDS) > 1e-2, what


def _no_lambda(o):  # lambda_init 0 and exp(0) - exp(0): lambda 0, the output unscaled
    o.lambda_init = 0.0
    o.lambda_q1.zero_()
    o.lambda_q2.zero_()


def _first_half_only(o):
    def forward(x):  # [V1 | V2] of the first half of the heads only, normed as transformers
        first = x.unflatten(-1, (o.heads, 2 * o.head_dim)).chunk(2, dim=-2)[0]
        first = first * torch.rsqrt(first.pow(2).mean(-1, keepdim=True) + o.eps)
        return o.proj(((1 - o.lambda_init) * first).flatten(-2))
    return forward


def test_diffllama_odd_heads_refused():
    hf = diffllama()
    hf.config.num_attention_heads = 3  # after construction: transformers' own checks pass at 4
    with pytest.raises(UnsupportedModel, match="odd num_attention_heads"):
        from_transformers(hf)


def test_gemma4_unified_bidirectional_refused():
    hf = gemma4_unified()
    hf.config.use_bidirectional_attention = "all"
    with pytest.raises(UnsupportedModel, match="use_bidirectional_attention='all'"):
        from_transformers(hf)


def test_gemma4_unified_matches_eager():
    hf = gemma4_unified()
    assert eager_relative_error(hf, from_transformers(hf), IDS) <= 1e-5
