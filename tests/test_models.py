"""The reference models eagerly: registry and configs (clear errors for bad ones), deterministic weights,
and the one forward's cache modes agreeing with each other (no cache, KVCache, concatenated pasts,
shared buffers; token-by-token decode equals one prefill); the GPT-OSS preset's options; GPT-2/BERT
position tables bound the length; RoBERTa positions skip padding; ModernBERT's local layers see only their band.
Everything float32; torch vs torch in a different order of the same math, so 2e-5 absolute."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
from model_helpers import one_torch_thread  # noqa: F401  (autouse fixture)

from onnxattn import models
from onnxattn.models.bert import BertConfig
from onnxattn.models.gemma3 import Gemma3Config
from onnxattn.models.gpt2 import GPT2Config
from onnxattn.models.llama import GptOssConfig, LlamaConfig, LlamaModel, SwiGLU
from onnxattn.models.modernbert import ModernBertConfig
from onnxattn.models.moe import ClampedSwiGLU, MixtureOfExperts
from onnxattn.nn import KVCache

DECODERS = ["llama", "gemma3", "gpt2", "gpt-oss", "llama4"]
ATOL = 2e-5


def _ids(batch=2, seq=11, seed=0):
    return torch.randint(0, 256, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_registry_lists_the_families():
    assert {"llama", "gemma3", "gpt2", "bert", "modernbert"} <= set(models.MODELS)
    assert models.DEFAULT_MODEL == "llama"
    assert isinstance(models.build("llama").config, LlamaConfig)
    assert models.build(LlamaConfig(hidden=32, num_heads=2, num_kv_heads=1)).config.hidden == 32


def test_weights_are_deterministic_and_scalable():
    a, b = models.build("llama"), models.build("llama")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = models.build("llama", seed=1)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    big = models.build("llama", hidden=512, num_layers=4, num_heads=8, num_kv_heads=2, intermediate=1024)
    assert len(big.layers) == 4 and big.layers[0].attn.head_dim == 64


@pytest.mark.parametrize("name", DECODERS)
def test_cache_modes_agree(name):
    model = models.build(name)
    ids = _ids()
    with torch.no_grad():
        full = model(ids)
        cache = KVCache()
        prefill = model(ids[:, :6], cache=cache)  # before the steps: they read its cache
        eager = torch.cat([prefill] + [model(ids[:, t:t + 1], cache=cache) for t in range(6, 11)], 1)
        first, presents = model(ids[:, :7], model.empty_past(2))
        second, presents = model(ids[:, 7:], presents)
        buffers, lengths = model.empty_past(2, 16), torch.zeros(2, dtype=torch.int64)
        shared_a, buffers = model(ids[:, :7], buffers, lengths)
        shared_b, _ = model(ids[:, 7:], buffers, lengths + 7)
        last = model(ids, cache=KVCache(), logits_to_keep=1)
    torch.testing.assert_close(eager, full, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(torch.cat([first, second], 1), full, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(torch.cat([shared_a, shared_b], 1), full, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(last, full[:, -1:], atol=ATOL, rtol=1e-5)
    assert presents[0][0].shape == (2, model.kv_shapes()[0][0], 11, model.kv_shapes()[0][1])


def test_gemma3_layers_alternate_and_differ_from_hidden_over_heads():
    model = models.build("gemma3", num_layers=4)
    windows = [layer.attn.window for layer in model.layers]
    assert windows == [8, 0, 8, 0]
    assert [layer.attn.rope.base for layer in model.layers] == [10000.0, 1e6, 10000.0, 1e6]
    attn = model.layers[0].attn
    assert attn.head_dim == 32 != 64 // 4 and attn.q_norm is not None and attn.softcap == 50.0
    assert models.build("gemma3", sliding_window_pattern=6, num_layers=6).layers[5].attn.window == 0


def test_gemma3_without_post_norms_is_gemma1_pre_norm():
    """post_norms=False (Gemma 1): x + attn(input_norm(x)), then + mlp(pre_mlp_norm(x)), no post norms."""
    model = models.build("gemma3", post_norms=False, layer_types=("full_attention",) * 2, attn_logit_softcap=0.0,
                         final_logit_softcap=0.0)
    block = model.layers[0]
    assert not hasattr(block, "post_attn_norm") and not hasattr(block, "post_mlp_norm")
    x = torch.randn(1, 5, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = x + block.attn(block.input_norm(x))
        torch.testing.assert_close(block(x)[0], h + block.mlp(block.pre_mlp_norm(h)))


def test_sliding_window_limits_what_a_token_sees():
    """A token beyond the window of every layer cannot change the last logits (Mistral-style, 1 layer)."""
    model = models.build("llama", num_layers=1, sliding_window=4)
    ids = _ids(1, 10)
    changed = ids.clone()
    changed[0, 2] = (changed[0, 2] + 1) % 256
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[:, -1], model(changed)[:, -1])
        assert not torch.allclose(model(ids)[:, 3], model(changed)[:, 3])


def test_bert_padding_is_invisible():
    model = models.build("bert")
    ids, mask, types = model.example_inputs(2, 7)
    with torch.no_grad():
        hidden, pooled = model(ids, mask, types)
        garbage = ids.clone()
        garbage[1, 5:] = 0  # padded positions (mask 0) may hold anything
        hidden2, _ = model(garbage, mask, types)
        alone, _ = model(ids[1:, :5], mask[1:, :5], types[1:, :5])
    torch.testing.assert_close(hidden2[1, :5], hidden[1, :5])
    torch.testing.assert_close(alone[0], hidden[1, :5], atol=ATOL, rtol=1e-5)
    assert pooled.shape == (2, 64)


def test_roberta_positions_skip_left_padding():
    """position_padding_idx (RoBERTa): pad tokens in front, masked, leave the real tokens' outputs as without them."""
    model = models.build("bert", position_padding_idx=1, type_vocab_size=1)
    ids = torch.randint(2, 256, (1, 6), generator=torch.Generator().manual_seed(0))
    padded = torch.cat([torch.ones(1, 3, dtype=torch.int64), ids], 1)
    mask = (padded != 1).to(torch.int64)
    with torch.no_grad():
        alone, _ = model(ids)
        hidden, _ = model(padded, mask)
        shifted, _ = models.build("bert", type_vocab_size=1)(padded, mask)  # arange positions: not the same
    torch.testing.assert_close(hidden[:, 3:], alone, atol=ATOL, rtol=1e-5)
    assert not torch.allclose(shifted[:, 3:], alone, atol=1e-2)
    with pytest.raises(ValueError, match="127 tokens exceed the position table of 128 .max_positions. from position 2"):
        model(torch.full((1, 127), 5))


def test_modernbert_layers_and_band():
    """Global layers every third (GroupQueryAttention, RoPE base 160k), local ones a band of local_attention // 2
    (LocalAttention, base 10k); a local layer does not see a key beyond the band; padded keys are invisible."""
    model = models.build("modernbert", num_layers=4)
    assert [layer.attn.band if hasattr(layer.attn, "band") else None for layer in model.layers] == [None, 4, 4, None]
    assert [layer.attn.rope.base for layer in model.layers] == [160_000.0, 10_000.0, 10_000.0, 160_000.0]
    local = models.build("modernbert", num_layers=1, layer_types=("sliding_attention",), local_attention=4)
    ids = _ids(1, 9)
    changed = ids.clone()
    changed[0, 0] = (changed[0, 0] + 1) % 256
    mask = torch.ones(1, 9, dtype=torch.int64)
    mask[0, 7:] = 0
    garbage = ids.clone()
    garbage[0, 7:] = 0
    with torch.no_grad():
        out = local(ids, mask)
        torch.testing.assert_close(local(changed, mask)[:, 3:], out[:, 3:])  # |3 - 0| > 2
        assert not torch.allclose(local(changed, mask)[:, 2], out[:, 2])
        torch.testing.assert_close(model(garbage, mask)[:, :7], model(ids, mask)[:, :7])


@pytest.mark.parametrize("make, message", [
    (lambda: LlamaConfig(hidden=65), "hidden (65) is not divisible by num_heads (4)"),
    (lambda: GPT2Config(hidden=66, num_heads=4), "hidden (66) is not divisible by num_heads (4)"),
    (lambda: BertConfig(hidden=30, num_heads=4), "hidden (30) is not divisible by num_heads (4)"),
    (lambda: LlamaConfig(num_heads=4, num_kv_heads=3), "num_heads (4) must be a positive multiple of num_kv_heads (3)"),
    (lambda: Gemma3Config(num_heads=6, num_kv_heads=4), "num_heads (6) must be a positive multiple"),
    (lambda: LlamaConfig(layer_types=("sliding_attention",) * 2), "sliding_attention layers need sliding_window"),
    (lambda: LlamaConfig(activation="swish2"), "activation must be one of"),
    (lambda: BertConfig(position_padding_idx=127), "position_padding_idx must be in [0, max_positions - 1 = 127)"),
    (lambda: ModernBertConfig(local_attention=1), "local_attention must be >= 2, got 1"),
    (lambda: ModernBertConfig(layer_types=("full_attention",)), "layer_types must list one of"),
    (lambda: LlamaConfig(rotary_dim=5), "rotary_dim must be even and in [2, head_dim = 16], got 5"),
    (lambda: LlamaConfig(num_experts=4, experts_per_token=5), "experts_per_token must be in [1, 4]"),
    (lambda: LlamaConfig(num_experts=4, router_scoring="relu"), "router scoring must be one of softmax, sigmoid"),
    (lambda: LlamaConfig(num_experts=4, dense_layers=(2,)), "dense_layers must be layer indices in [0, 2)"),
    (lambda: LlamaConfig(nope_layers=(-1,)), "nope_layers must be layer indices in [0, 2)"),
    (lambda: LlamaConfig(attention_scale=0.0), "attention_scale must be > 0 and finite"),
    (lambda: LlamaConfig(logits_scaling=0.0), "logits_scaling divides the logits; it must not be 0"),
    (lambda: LlamaConfig(residual_multiplier=math.nan), "residual_multiplier must be finite, got nan"),
    (lambda: LlamaConfig(norm="batch"), "norm must be one of rms, layer, layer_no_bias, layer_no_affine, got 'batch'"),
    (lambda: LlamaConfig(clip_qkv=0.0), "clip_qkv must be > 0 and finite (None: no clamp), got 0.0"),
    (lambda: LlamaConfig(sandwich_norm=True, post_norm=True),
     "sandwich_norm cannot be combined with post_norm or parallel_residual"),
    (lambda: LlamaConfig(num_experts=4, shared_expert_intermediate=-1), "shared_expert_intermediate must be >= 0"),
    (lambda: LlamaConfig(shared_block_norm=True), "shared_block_norm needs parallel_residual"),
    (lambda: LlamaConfig(parallel_residual=True, post_norm=True), "parallel_residual and post_norm cannot be combined"),
    (lambda: LlamaConfig(qk_layer_norm="rms"), "qk_layer_norm must be None or one of shared, per_head, got 'rms'"),
    (lambda: LlamaConfig(qk_layer_norm="shared", qk_proj_norm=True),
     "qk_layer_norm and qk_proj_norm cannot be combined"),
    (lambda: ClampedSwiGLU(limit=-1.0), "ClampedSwiGLU: limit must be >= 0, got -1.0"),
    (lambda: ClampedSwiGLU(alpha=math.inf), "ClampedSwiGLU: alpha must be finite, got inf"),
])
def test_bad_configs_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_llama_experts_route_softmax_top_k():
    """Mixtral / Qwen3-MoE routing: softmax over all experts, the top k mixed with their probabilities
    (renormalised with norm_topk), equal to running only the chosen experts; dense_layers keep the MLP; the
    registry's default stays dense."""
    assert all(type(layer.mlp) is SwiGLU for layer in models.build("llama").layers)
    for norm_topk in (True, False):
        model = models.build("llama", num_experts=4, moe_intermediate=32, dense_layers=(0,), norm_topk=norm_topk)
        assert type(model.layers[0].mlp) is SwiGLU
        moe = model.layers[1].mlp
        assert isinstance(moe, MixtureOfExperts) and moe.down_proj.shape == (4, 64, 32)
        x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0))
        want = torch.zeros_like(x)
        with torch.no_grad():
            for b, s in itertools.product(range(2), range(5)):
                top = torch.softmax(moe.router @ x[b, s], -1).topk(2)
                weights = top.values / top.values.sum() if norm_topk else top.values
                for j, w in zip(top.indices, weights):
                    gate, up = (moe.gate_up_proj[j] @ x[b, s]).chunk(2)
                    want[b, s] += w * (moe.down_proj[j] @ (torch.nn.functional.silu(gate) * up))
            torch.testing.assert_close(moe(x), want, atol=ATOL, rtol=1e-5)


def test_llama_gpt_oss_options():
    """GPT-OSS's options: each layer's attention has sinks; the experts add the router bias to the logits, take
    the softmax over the chosen logits only, and run (up + 1) * gate * sigmoid(alpha * gate) on the clamped
    gate / up with biases; equal to running only the chosen experts; token-by-token decode equals one prefill."""
    glu = ClampedSwiGLU(alpha=1.702, limit=0.5)
    model = models.build("llama", num_experts=4, attention_sinks=True, router_bias=True, expert_bias=True,
                         expert_glu=glu, sliding_window=4, layer_types=("sliding_attention", "full_attention"))
    assert [layer.attn.sinks.shape for layer in model.layers] == [(4,), (4,)]
    assert all(layer.attn.sinks.abs().min() > 0 for layer in model.layers)  # init_weights moves them off zero
    assert models.build("llama").layers[0].attn.sinks is None
    moe = model.layers[1].mlp
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0))
    want = torch.zeros_like(x)
    with torch.no_grad():
        for b, s in itertools.product(range(2), range(5)):
            top = (moe.router @ x[b, s] + moe.router_bias).topk(2)
            for j, w in zip(top.indices, torch.softmax(top.values, -1)):
                gate, up = (moe.gate_up_proj[j] @ x[b, s] + moe.gate_up_proj_bias[j]).chunk(2)
                gate, up = gate.clamp(max=0.5), up.clamp(-0.5, 0.5)
                want[b, s] += w * (moe.down_proj[j] @ ((up + 1) * gate * torch.sigmoid(1.702 * gate)) +
                                   moe.down_proj_bias[j])
        torch.testing.assert_close(moe(x), want, atol=ATOL, rtol=1e-5)
        ids = _ids()
        cache = KVCache()
        steps = [model(ids[:, :6], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(6, 11)]
        torch.testing.assert_close(torch.cat(steps, 1), model(ids), atol=ATOL, rtol=1e-5)


def test_gpt_oss_preset():
    """"gpt-oss" is LlamaModel with GptOssConfig's GPT-OSS options: sliding layers alternate with full ones for
    any depth (sliding first), sinks (not zero), biases, head dim 32, untruncated YaRN, biased clamped experts in
    every layer; layer_types overrides the alternation; the sinks change the logits."""
    model = models.build("gpt-oss", num_layers=5)
    assert type(model) is LlamaModel and type(model.config) is GptOssConfig
    assert [layer.attn.window for layer in model.layers] == [8, 0, 8, 0, 8]
    cfg = model.config
    assert cfg.rope_scaling.kind == "yarn" and not cfg.rope_scaling.truncate
    for layer in model.layers:
        attn, moe = layer.attn, layer.mlp
        assert attn.head_dim == 32 != 64 // 4 and attn.sinks.shape == (4,) and attn.sinks.abs().min() > 0
        assert attn.q_proj.bias is not None and attn.o_proj.bias is not None
        assert isinstance(moe, MixtureOfExperts) and moe.num_experts == 4 and moe.top_k == 2
        assert moe.router_bias is not None and moe.down_proj_bias is not None and moe.glu == cfg.expert_glu
    assert [layer.attn.window for layer in models.build(
        cfg, num_layers=2, layer_types=("full_attention", "sliding_attention")).layers] == [0, 8]
    assert [layer.attn.window for layer in models.build("gpt-oss", sliding_window=0).layers] == [0, 0]
    model = models.build("gpt-oss")
    ids = _ids()
    with torch.no_grad():
        logits = model(ids)
        for layer in model.layers:
            layer.attn.sinks.fill_(-1e4)  # exp(-1e4) = 0: no sinks
        assert not torch.allclose(model(ids), logits, atol=1e-2)


MOE_VARIANTS = {
    "softmax-top2": dict(),
    "sigmoid-groups-shared": dict(scoring="sigmoid", num_groups=2, groups_per_token=1, shared_intermediate=16,
                                  routed_scaling=2.5),
    "gpt-oss-biases-glu": dict(router_bias=True, expert_bias=True, glu=ClampedSwiGLU(1.702, 0.5)),
    "llama4-scaled-inputs": dict(experts_per_token=1, scoring="sigmoid", norm_topk=False, scale_inputs=True,
                                 rank_by_logits=True,
                                 shared_intermediate=16, shared_gated=False),
    "sparsemixer": dict(scoring="sparsemixer", jitter_eps=0.3),
    # chosen weights below zero (Gemma 4's learned per-expert scale can make them so): picked by magnitude
    "negative-weights": dict(routed_scaling=-0.7),
    # LongCat-Flash: 3 of 8 MLP experts + 3 identity experts, so a token may pick fewer than 3 MLP experts
    "identity-experts": dict(experts_per_token=3, identity_experts=3, norm_topk=False, routed_scaling=6.0),
    # DBRX: renormalised by the chosen weights' 2-norm; Cohere 2 MoE: an ungated shared expert averaged with them
    "dbrx-p-norm": dict(norm_p=2.0),
    "cohere2-moe-shared-average": dict(shared_intermediate=16, shared_gated=False, shared_average=True),
}


@pytest.mark.parametrize("variant", list(MOE_VARIANTS))
def test_moe_gathered_experts_equal_all_experts(variant):
    """The two exact ways to run the experts (models.moe): a token's k gathered experts give what all E give
    mixed by the routing weights, for every routing and expert option; the forward picks gathered only when
    T * k < E (decode steps), all experts otherwise."""
    options = dict(experts_per_token=2) | MOE_VARIANTS[variant]
    torch.manual_seed(0)
    moe = MixtureOfExperts(32, 8, options.pop("experts_per_token"), 24, **options)
    with torch.no_grad():
        for p in moe.parameters():
            p.copy_(torch.randn(p.shape) / math.sqrt(p.shape[-1]))
        if moe.e_score_correction_bias is not None:
            moe.e_score_correction_bias.copy_(torch.randn(8) * 0.1)
        x = torch.randn(5, 3, 32)
        tokens = x.reshape(-1, 32)
        weights = moe.route(tokens)
        assert (weights > 0).sum(-1).max() <= moe.routed_per_token
        mixed = {}
        for dispatch in ("gathered", "all"):
            moe.dispatch = dispatch
            mixed[dispatch] = moe.mix(tokens, weights)
        moe.dispatch = "auto"
        torch.testing.assert_close(mixed["gathered"], mixed["all"], atol=ATOL, rtol=1e-5)
        calls = []
        for name in ("_gathered_experts", "_all_experts"):
            original = getattr(moe, name)
            setattr(moe, name, lambda *a, original=original, name=name: calls.append(name) or original(*a))
        moe(x), moe(x[:1, :1])
        gathered = 1 * moe.routed_per_token < 8  # one token
        assert calls == ["_all_experts", "_gathered_experts" if gathered else "_all_experts"]
        moe.dispatch = "all"
        moe(x[:1, :1])
        assert calls[-1] == "_all_experts"
        moe.dispatch = "sparse"
        with pytest.raises(ValueError, match="MixtureOfExperts: dispatch must be one of auto, gathered, all"):
            moe(x)


def test_moe_rank_by_logits_breaks_saturated_sigmoid_ties():
    """Llama 4 ranks experts by the raw router logits: logits 30 and 20 both give sigmoid 1.0 in float32, and only
    the logits say that expert 0 wins (ranked by the sigmoids, torch's top-k picks expert 1 here); other options
    refuse rank_by_logits."""
    moe = MixtureOfExperts(4, 4, 1, 8, scoring="sigmoid", norm_topk=False, rank_by_logits=True)
    with torch.no_grad():
        moe.router.copy_(torch.tensor([[30.0, 0, 0, 0], [20.0, 0, 0, 0], [0.0] * 4, [-5.0, 0, 0, 0]]))
        weights = moe.route(torch.tensor([[1.0, 0, 0, 0]]))
    assert torch.sigmoid(torch.tensor(20.0)) == torch.sigmoid(torch.tensor(30.0)) == 1.0
    assert weights.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="rank_by_logits is for sigmoid scoring without a choice bias or groups"):
        MixtureOfExperts(4, 4, 1, 8, rank_by_logits=True)


def test_moe_export_runs_both_branches_in_onnxruntime(tmp_path):
    """Exported, the choice between gathered and all experts is an If node on the token count: a prompt of
    2 x 6 tokens runs all 8 experts (12 * 2 >= 8), each decode step of 2 tokens gathers its 2 (2 * 2 < 8), and
    both give eager torch's logits."""
    import onnx
    from model_helpers import run_steps, session

    from onnxattn.export import export_model

    model = models.build("llama", num_experts=8, moe_intermediate=32, dense_layers=(0,)).eval()
    path = export_model(model, tmp_path / "moe.onnx", progress=False).path
    ifs = [n for n in onnx.load(path).graph.node if n.op_type == "If"]
    assert len(ifs) == 1
    ids = _ids(seq=9)
    got = run_steps(session(path), ids.numpy(), 6)
    cache = KVCache()
    with torch.no_grad():
        want = [model(ids[:, :6], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(6, 9)]
    for g, w in zip(got, want):
        torch.testing.assert_close(torch.from_numpy(g), w, atol=1e-4, rtol=1e-4)


def test_unknown_names_and_options():
    available = "available: bert, .*gemma3, gemma4, gpt-oss, gpt2, llama, llama4, moba, modernbert, nsa"
    with pytest.raises(KeyError, match=f"unknown model 'llama5'; {available}"):
        models.build("llama5")
    with pytest.raises(ValueError, match="LlamaConfig: unknown option.*hiden"):
        models.build("llama", hiden=64)


def test_past_beyond_the_position_table_is_a_clear_error():
    gpt2 = models.build("gpt2", n_positions=16)
    with torch.no_grad():
        gpt2(_ids(1, 16))  # exactly the table: fine
        with pytest.raises(ValueError, match="17 tokens .past \\+ new. exceed the position table of 16"):
            gpt2(_ids(1, 1), gpt2.empty_past(1, 16))
        cache = KVCache()
        gpt2(_ids(1, 15), cache=cache)
        with pytest.raises(ValueError, match="exceed the position table of 16"):
            gpt2(_ids(1, 2), cache=cache)
    bert = models.build("bert", max_positions=8)
    with pytest.raises(ValueError, match="9 tokens exceed the position table of 8"):
        bert(_ids(1, 9))
