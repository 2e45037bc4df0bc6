"""JetMoE (models.hf.jetmoe: a mixture of attention, per-token routed query / output projections around shared key /
value heads, and a MoE MLP with an output bias) from a tiny config with random weights, exported with
onnxattn.export.from_transformers: onnxruntime's logits with our kernels match the transformers model's for a prefill
and three decode steps (fp32, <= 1e-4 relative), with one GroupQueryAttention node per layer; greedy generation from
the exported graph equals transformers'. Each JetMoE feature, switched off in our model, misses transformers' logits
(torch against torch)."""

from __future__ import annotations

import pytest
import torch
from model_helpers import one_torch_thread

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "JetMoeForCausalLM"):
    pytest.skip("this transformers has no JetMoE", allow_module_level=True)

from hf_helpers import (NO_TOKENS, check_export_matches, check_generation_matches, eager_relative_error,  # noqa: E402
                        randomize)

from onnxattn.models.hf.jetmoe import JetMoeAttention, _jetmoe  # noqa: E402

T = transformers
_AUTOUSE = (one_torch_thread,)  # imported for its autouse fixture (one torch thread while these run)
VOCAB = 128
# top-2 of 4 attention / MLP experts, 2 key / value heads of 16 (4 query heads); rms_norm_eps (the final norm's
# only: the blocks' norms keep 1e-6) off the default
SMALL = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_key_value_heads=2, kv_channels=16,
             intermediate_size=48, num_local_experts=4, num_experts_per_tok=2, rms_norm_eps=1e-5, **NO_TOKENS)


def jetmoe(**overrides):
    torch.manual_seed(0)
    return randomize(T.JetMoeForCausalLM(T.JetMoeConfig(**SMALL | overrides)))


def test_logits_match_transformers(tmp_path):
    hf = jetmoe()
    assert hf.config.num_attention_heads == 4
    check_export_matches(hf, tmp_path / "jetmoe.onnx", vocab=VOCAB,
                         node_attrs={"num_heads": [4, 4], "kv_num_heads": [2, 2]})


def test_top1_of_three_matches_transformers(tmp_path):
    """One expert per token (query heads = key / value heads) of 3, 3 key / value heads."""
    hf = jetmoe(num_local_experts=3, num_experts_per_tok=1, num_key_value_heads=3)
    check_export_matches(hf, tmp_path / "jetmoe.onnx", vocab=VOCAB,
                         node_attrs={"num_heads": [3, 3], "kv_num_heads": [3, 3]})


def test_generation_matches_transformers(tmp_path):
    check_generation_matches(jetmoe(), tmp_path, vocab=VOCAB)


def _interleaved_project(self, x):
    """project without the reorder: transformers' query heads [k, Hkv] given to the node as ours [Hkv, k]."""
    chosen, _ = self.o_proj.route
    e, w, _ = self.q_experts.shape
    q = torch.nn.functional.linear(x, self.q_experts.flatten(0, 1)).unflatten(-1, (e, w))
    q = q.gather(-2, chosen[..., None].expand(*chosen.shape, w))
    return q.flatten(-2), self.k_proj(x), self.v_proj(x)


def _break(feature, ours, monkeypatch):
    for layer in ours.layers:
        if feature == "attention_routing":  # every token to the same experts, equal gates
            layer.attn.router.zero_()
        elif feature == "attention_bias":
            layer.attn.o_proj.bias.zero_()
        elif feature == "moe_bias":
            layer.mlp.bias.zero_()
        elif feature == "moe_routing":
            layer.mlp.router.zero_()
    if feature == "head_order":
        monkeypatch.setattr(JetMoeAttention, "project", _interleaved_project)


@pytest.mark.parametrize("feature", ["attention_routing", "attention_bias", "moe_bias", "moe_routing", "head_order"])
def test_each_feature_matters(feature, monkeypatch):
    hf = jetmoe()
    ids = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(1))
    ours = _jetmoe(hf)
    assert eager_relative_error(hf, ours, ids) < 1e-5
    with torch.no_grad():
        _break(feature, ours, monkeypatch)
    assert eager_relative_error(hf, ours, ids) > 1e-2, feature


def test_routing_picks_several_experts():
    """The tiny model routes its tokens to different attention experts (else the routing test would prove little)."""
    hf = jetmoe()
    ids = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(1))
    ours = _jetmoe(hf)
    x = ours.layers[0].input_norm(ours.embed_tokens(ids))
    with torch.no_grad():
        chosen = torch.nn.functional.linear(x, ours.layers[0].attn.router).topk(2, dim=-1).indices
    assert len(torch.unique(chosen)) == 4
    assert len({tuple(sorted(c)) for c in chosen.flatten(0, 1).tolist()}) >= 3
