"""The DeepSeek-V3-style reference decoder (models/deepseek.py): multi-head latent attention layers whose
caches hold R + Dr values per token, a dense MLP then DeepSeek-V3's mixture of experts (its routing checked
token by token against a plain loop that runs only the chosen experts). It exports to one graph (one
MultiHeadLatentAttention node per layer) and generates greedily in onnxruntime — with our kernels and with
the reference functions, in both cache modes — token for token as eager torch does; the exported caches
have the latent layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_helpers import kernel_ops_ran, one_torch_thread, session  # noqa: F401  (fixture)
from onnxattn import models
from onnxattn.export import export_model
from onnxattn.generate import generate, generate_torch
from onnxattn.models.deepseek import DeepSeekMoE
from onnxattn.models.llama import SwiGLU
from onnxattn.nn import LatentCache, RopeScaling

YARN = dict(rope_scaling=RopeScaling("yarn", factor=4.0, original_max_positions=8, attention_factor=1.0),
            mscale_all_dim=0.7)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, {cache mode: path}): the tiny default in concatenation mode, a YaRN variant in shared mode."""
    out = tmp_path_factory.mktemp("deepseek")
    plain = models.build("deepseek-v3")
    yarn = models.build("deepseek-v3", **YARN)
    paths = {"concat": export_model(plain, out / "concat.onnx", cache="concat", logits="last", progress=False).path,
             "shared": export_model(yarn, out / "shared.onnx", cache="shared", logits="last", progress=False).path}
    return {"concat": plain, "shared": yarn}, paths


def test_deepseek_v32_is_registered_with_its_indexer_on():
    # `onnxattn export deepseek-v3.2` / `onnxattn demo --model deepseek-v3.2`: DSA without --set overrides
    m = models.build("deepseek-v3.2")
    assert type(m).__name__ == "DeepSeekV3Model" and m.config.index_topk == 8
    assert all(layer.attn.indexer is not None for layer in m.layers)
    assert [sorted(entry) for entry in m.cache_layout()] == [["index_key", "key", "value"]] * len(m.layers)
    assert models.build("deepseek-v3.2", index_topk=4).config.index_topk == 4


def test_registered_and_configurable():
    assert "deepseek-v3" in models.MODELS and "deepseek-v3" not in models.PLANNED
    m = models.build("deepseek-v3", q_rank=None, num_layers=1)
    assert m.config.q_rank is None and len(m.layers) == 1 and hasattr(m.layers[0].attn, "q_proj")
    assert m.kv_shapes() == [(1, 32, 8)]  # one shared "KV head": the latent (R) and the rope keys (Dr)
    with pytest.raises(ValueError, match="rope_head_dim must be even"):
        models.build("deepseek-v3", rope_head_dim=5)
    assert models.build("deepseek-v3", **YARN).config.softmax_scale == pytest.approx(
        (0.07 * np.log(4.0) + 1) ** 2 / np.sqrt(16 + 8))
    kinds = [type(layer.mlp) for layer in models.build("deepseek-v3", num_layers=3).layers]
    assert kinds == [SwiGLU, DeepSeekMoE, DeepSeekMoE]  # first_dense_layers = 1
    assert all(type(layer.mlp) is SwiGLU for layer in models.build("deepseek-v3", num_experts=0).layers)


@pytest.mark.parametrize("options, message", [
    (dict(num_experts=6, num_groups=4), r"num_groups \(4\) must be >= 1 and divide num_experts \(6\)"),
    (dict(num_experts=4, num_groups=4, groups_per_token=1), r"each group needs >= 2 experts"),
    (dict(groups_per_token=5), r"groups_per_token must be in \[1, num_groups = 4\]"),
    (dict(experts_per_token=5), r"experts_per_token must be in \[1, 4\]"),
    (dict(moe_intermediate=0), r"moe_intermediate must be >= 1"),
])
def test_moe_config_errors(options, message):
    with pytest.raises(ValueError, match=message):
        models.build("deepseek-v3", **options)


def _moe_oracle(moe: DeepSeekMoE, x: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V3's (or V2's) MoE token by token, running only the chosen experts."""
    e, g = moe.num_experts, moe.num_groups
    out = torch.zeros_like(x)
    for b, s in np.ndindex(*x.shape[:2]):
        t = x[b, s]
        v2 = moe.scoring == "softmax"
        scores = torch.softmax(moe.router @ t, -1) if v2 else torch.sigmoid(moe.router @ t)
        choice = scores if v2 else scores + moe.e_score_correction_bias
        best = [choice[i * e // g:(i + 1) * e // g].topk(2 if moe.group_score == "top2_sum" else 1).values
                for i in range(g)]
        group_score = [float(b.sum()) if g > 1 else 0.0 for b in best]
        groups = sorted(range(g), key=lambda i: -group_score[i])[:moe.topk_groups]
        allowed = [j for j in range(e) if j // (e // g) in groups]
        chosen = sorted(allowed, key=lambda j: -float(choice[j]))[:moe.top_k]
        weights = scores[chosen] / (scores[chosen].sum() if moe.norm_topk else 1.0) * moe.routed_scaling
        for j, w in zip(chosen, weights):
            gate, up = (moe.gate_up_proj[j] @ t).chunk(2)
            out[b, s] += w * (moe.down_proj[j] @ (torch.nn.functional.silu(gate) * up))
        out[b, s] += moe.shared_experts(t)
    return out


@pytest.mark.parametrize("options", [
    dict(), dict(num_groups=1, groups_per_token=1, norm_topk=False, experts_per_token=3),
    # DeepSeek-V2's group_limited_greedy: softmax, a group scored by its best expert, scaled only
    dict(router_scoring="softmax", group_score="max", norm_topk=False, experts_per_token=3),
], ids=["grouped", "ungrouped", "v2-grouped"])
def test_moe_matches_per_token_routing(options):
    moe = models.build("deepseek-v3", **options).layers[1].mlp
    x = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        weights = moe.route(x)
        assert ((weights > 0).sum(-1) == moe.top_k).all()
        torch.testing.assert_close(moe(x), _moe_oracle(moe, x), atol=1e-5, rtol=1e-5)


def test_eager_cache_is_latent_and_matches_one_pass():
    m = models.build("deepseek-v3")
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = m(ids)
        cache = LatentCache()
        steps = torch.cat([m(ids[:, :6], cache=cache), m(ids[:, 6:7], cache=cache), m(ids[:, 7:], cache=cache)], 1)
    torch.testing.assert_close(steps, full, atol=2e-5, rtol=1e-4)
    for layer in range(len(m.layers)):
        latent, rope = cache.get(layer)
        assert latent.shape == (2, 1, 9, 32) and rope.shape == (2, 1, 9, 8)
        assert cache.bytes_per_token(layer) == (32 + 8) * 4


@pytest.mark.parametrize("cache", ["concat", "shared"])
def test_exported_graph(exported, cache):
    _, paths = exported
    sess = session(paths[cache], profile=True)
    inputs = {i.name: i for i in sess.get_inputs()}
    latent, rope = inputs["past_key_values.0.key"], inputs["past_key_values.0.value"]
    assert latent.shape[1:] == [1, latent.shape[2], 32] and rope.shape[1:] == [1, rope.shape[2], 8]
    assert ("past_lengths" in inputs) == (cache == "shared")
    ids = np.array([[5, 9, 3]], dtype=np.int64)
    feeds = {"input_ids": ids}
    for name, info in inputs.items():
        if name.startswith("past_key_values."):
            feeds[name] = np.zeros((1, 1, 8 if cache == "shared" else 0, info.shape[3]), np.float32)
    if cache == "shared":
        feeds["past_lengths"] = np.zeros(1, np.int64)
    outputs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    assert outputs["present.1.key"].shape == (1, 1, 8 if cache == "shared" else 3, 32)
    assert outputs["present.1.value"].shape == (1, 1, 8 if cache == "shared" else 3, 8)
    assert kernel_ops_ran(sess) == {"MultiHeadLatentAttention"}


@pytest.mark.parametrize("use_library", [True, False], ids=["kernels", "functions"])
@pytest.mark.parametrize("cache", ["concat", "shared"])
def test_generation_matches_eager_torch(exported, cache, use_library):
    modules, paths = exported
    ids = np.array([[17, 200, 3, 45, 99], [1, 2, 3, 4, 5]], dtype=np.int64)
    want = generate_torch(modules[cache], ids, 16)
    got = generate(str(paths[cache]), ids, 16, use_library=use_library, providers=["CPUExecutionProvider"],
                   progress=False)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    assert len(np.unique(want.new_tokens)) >= 4, "the tiny model should not collapse onto one token"
