"""Moshi's text decoder and Cohere Compass's text model (models.hf.sweep3) from tiny configs with random weights,
exported with onnxattn.export.from_transformers: onnxruntime's logits with our kernels match transformers' for a
prefill and three decode steps (fp32, <= 1e-4 relative); greedy generation from the exported graph equals
transformers'. Each feature, switched off in our model, misses transformers' cached logits (torch against torch)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from model_helpers import one_torch_thread

transformers = pytest.importorskip("transformers")
for _name in ("MoshiForCausalLM", "CohereCompassForCausalLM"):
    if not hasattr(transformers, _name):
        pytest.skip(f"this transformers has no {_name}", allow_module_level=True)

from hf_helpers import NO_TOKENS, check_export_matches, check_generation_matches, hf_steps, randomize  # noqa: E402

from onnxattn.models.hf import UnsupportedModel, from_transformers  # noqa: E402
from onnxattn.models import build  # noqa: E402

T = transformers
_AUTOUSE = (one_torch_thread,)  # imported for its autouse fixture (one torch thread while these run)
VOCAB = 128
# window 9: the prefill of 8 fits it (transformers' prefill is full-causal), the decode steps at 9 and 10 pass it
MOSHI = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             ffn_dim=192, sliding_window=9, max_position_embeddings=64, audio_encoder_config={},
             depth_decoder_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64),
             **NO_TOKENS)
IDS = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(1))


def moshi(**overrides):
    torch.manual_seed(0)
    return randomize(T.MoshiForCausalLM(T.MoshiConfig(**MOSHI | overrides)))


def cached_error(hf, ours, ids: torch.Tensor = IDS, prefill: int = 8) -> float:
    """Our eager logits against transformers' cached ones (a prefill, then one decode step per token left)."""
    want = hf_steps(hf, ids, prefill)
    with torch.no_grad():
        logits, presents = ours(ids[:, :prefill], ours.empty_past(ids.shape[0]))
        got = [logits.numpy()]
        for t in range(prefill, ids.shape[1]):
            logits, presents = ours(ids[:, t:t + 1], presents)
            got.append(logits.numpy())
    return max(float(np.abs(g - w).max() / np.abs(w).max()) for g, w in zip(got, want))


@pytest.mark.parametrize("overrides, window", [({}, 9), (dict(num_key_value_heads=4, sliding_window=3000), 3000)])
def test_logits_match_transformers(overrides, window, tmp_path):
    check_export_matches(moshi(**overrides), tmp_path / "moshi.onnx", vocab=VOCAB,
                         node_attrs=dict(window=[window, window]))


def test_generation_matches_transformers(tmp_path):
    check_generation_matches(moshi(sliding_window=3000), tmp_path, vocab=VOCAB)


def test_extra_embedding_row_matches():
    hf = moshi()
    ids = IDS.clone()
    ids[:, 2] = VOCAB  # the "initial" token: the embedding table's extra row
    ours = from_transformers(hf)
    assert ours.embed_tokens.weight.shape[0] == VOCAB + 1 and ours.lm_head.weight.shape[0] == VOCAB
    assert cached_error(hf, ours, ids) <= 1e-5


def test_moshi_features_matter():
    hf = moshi()
    assert cached_error(hf, from_transformers(hf)) <= 1e-5
    ours = from_transformers(hf)  # without the window, the decode steps past it see too many keys
    for layer in ours.layers:
        layer.attn.window = 0
    assert cached_error(hf, ours) > 1e-2, "window"
    ours = from_transformers(hf)  # fc1's halves the other way round: [up | gate]
    with torch.no_grad():
        for layer in ours.layers:
            gate, up = layer.mlp.gate_proj.weight.clone(), layer.mlp.up_proj.weight.clone()
            layer.mlp.gate_proj.weight.copy_(up)
            layer.mlp.up_proj.weight.copy_(gate)
    assert cached_error(hf, ours) > 1e-2, "fc1 split"


def test_moshi_conditional_generation_refused():
    hf = T.MoshiForConditionalGeneration(T.MoshiConfig(**MOSHI))
    with pytest.raises(UnsupportedModel, match="pass a MoshiForCausalLM for moshi"):
        from_transformers(hf)


S, F = "sliding_attention", "full_attention"
# three sliding layers (window 6 < the prompt of 8) with RoPE, a full one without (rope_parameters None)
COMPASS = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=96, sliding_window=6, layer_types=[S, S, S, F], logit_scale=0.5,
               rope_parameters={S: {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]},
                                F: None}, **NO_TOKENS)
BOTH_ROPES = {S: {"rope_type": "default", "rope_theta": 10000.0}, F: {"rope_type": "default", "rope_theta": 5e5}}


def compass(**overrides):
    torch.manual_seed(0)
    return randomize(T.CohereCompassForCausalLM(T.CohereCompassTextConfig(**COMPASS | overrides)))


COMPASS_CASES = {
    "compass": ({}, dict(window=[6, 6, 6, 0], rope=[1, 1, 1, 0])),
    "compass-both-ropes": (dict(rope_parameters=BOTH_ROPES, attention_bias=True), dict(rope=[1, 1, 1, 1])),
    "compass-all-full": (dict(layer_types=[F] * 4, rope_parameters={F: {"rope_type": "default", "rope_theta": 1e3}}),
                         dict(window=[0, 0, 0, 0])),
}


@pytest.mark.parametrize("name", list(COMPASS_CASES))
def test_compass_logits_match_transformers(name, tmp_path):
    overrides, attrs = COMPASS_CASES[name]
    check_export_matches(compass(**overrides), tmp_path / f"{name}.onnx", vocab=VOCAB, node_attrs=attrs, layers=4)


def test_compass_generation_matches_transformers(tmp_path):
    check_generation_matches(compass(), tmp_path, vocab=VOCAB)


def _variant(ours, **changes):
    """Our model rebuilt with other LlamaConfig fields, the same weights."""
    other = build(dataclasses.replace(ours.config, **changes))
    other.load_state_dict(ours.state_dict())
    return other.eval()


def test_compass_features_matter():
    hf = compass()
    ours = from_transformers(hf)
    assert cached_error(hf, ours) <= 1e-5
    for what, changes in {"interleaved RoPE (Cohere's)": dict(rope_interleaved=True), "RoPE on the full layer too":
                          dict(nope_layers=()), "no window": dict(sliding_window=0, layer_types=None),
                          "no logit_scale": dict(logits_scaling=1.0)}.items():
        assert cached_error(hf, _variant(ours, **changes)) > 1e-2, what
    hf = compass(rope_parameters=BOTH_ROPES)  # the sliding layers' own RoPE base
    ours = from_transformers(hf)
    assert cached_error(hf, ours) <= 1e-5
    assert cached_error(hf, _variant(ours, sliding_rope=None)) > 1e-2, "sliding_rope"


def test_compass_mrope_is_rope_for_text_positions():
    """position_ids None or [batch, seq] put one position on every M-RoPE axis: plain RoPE, as ours."""
    hf = compass(rope_parameters=BOTH_ROPES)
    ours = from_transformers(hf)
    positions = torch.arange(IDS.shape[1]).expand(IDS.shape[0], -1)
    with torch.no_grad():
        assert torch.equal(hf(IDS).logits, hf(IDS, position_ids=positions).logits)
    assert cached_error(hf, ours) <= 1e-5
