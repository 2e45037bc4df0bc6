"""DeepSeek-V3.2 and GLM-5 (DeepSeek's sparse attention, DSA) exported with onnxattn.export.from_transformers onto
models.deepseek: per layer a LightningIndexer (projections, LayerNorm and RoPE as standard ONNX ops, scores and
top-k as one onnxattn::LightningIndexer node) feeding key_indices to the one MultiHeadLatentAttention node, its keys
a third cache tensor (past_key_values.{i}.index_key). onnxruntime's logits with our kernels equal transformers' for
a prefill and three decode steps, greedy generation equals transformers' with both cache modes, and the indexer
matters (index_topk below the sequence length).

Ties: our picks break them toward the lower position and list them in ascending order, transformers' (torch.topk)
promise neither; the tiny models' index scores are checked to differ at every top-k boundary (no_boundary_ties), so
the picks are the same set in both (compared as sets)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from model_helpers import one_torch_thread, relative_error, run_steps, session  # noqa: F401  (autouse fixture)

from onnxattn.generate import generate
from onnxattn.models.deepseek import DeepSeekMoE
from onnxattn.nn import LightningIndexer, Rope, functional
from onnxattn.nn.dsa import lightning_indexer_scores

transformers = pytest.importorskip("transformers")

from hf_helpers import eager_relative_error, hf_steps, randomize  # noqa: E402

from onnxattn.export import from_transformers  # noqa: E402
from onnxattn.models import hf as hf_mapping  # noqa: E402
from onnxattn.models.hf import UnsupportedModel  # noqa: E402

T = transformers
VOCAB = 256
# one dense layer then MoE ones (V3's router), index_topk 4 < the 11 tokens the checks run: the picks matter; 16
# index heads: a key scores exactly 0 (a tie) only when all heads' ReLUs are off
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
             num_attention_heads=4, q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
             v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, n_shared_experts=1,
             first_k_dense_replace=1, index_topk=4, index_n_heads=16, index_head_dim=16, bos_token_id=None,
             eos_token_id=None)


def deepseek_v32(**overrides):
    return randomize(T.DeepseekV32ForCausalLM(T.DeepseekV32Config(**SMALL | overrides)))


def glm5(**overrides):
    # layer 1 reuses layer 0's picks, layer 2 has its own indexer
    config = SMALL | dict(num_hidden_layers=3, indexer_types=["full", "shared", "full"]) | overrides
    return randomize(T.GlmMoeDsaForCausalLM(T.GlmMoeDsaConfig(**config)))


def no_boundary_ties(ours, ids: torch.Tensor, monkeypatch) -> float:
    """The smallest relative gap between the k-th and (k+1)-th visible index score over all queries and layers of
    our eager model on `ids` (inf when no query sees more than topk keys)."""
    gaps = []
    pick = functional.lightning_indexer

    def recording(query, key, weights, past_lengths=None, *, num_heads, top_k, scale=None):
        index = lightning_indexer_scores(query, key, weights, past_lengths, num_heads=num_heads, scale=scale or 0.0)
        values = index.sort(dim=-1, descending=True).values  # hidden keys score -inf: last
        if values.shape[-1] > top_k:
            kth, next_ = values[..., top_k - 1], values[..., top_k]
            seen = torch.isfinite(next_)
            gaps.append(((kth - next_) / kth.abs().clamp_min(1e-6))[seen].min().item() if seen.any() else np.inf)
        return pick(query, key, weights, past_lengths, num_heads=num_heads, top_k=top_k, scale=scale)

    monkeypatch.setattr(functional, "lightning_indexer", recording)  # the module calls it through the module
    with torch.no_grad():
        ours(ids)
    monkeypatch.undo()
    return min(gaps, default=np.inf)


def check(hf, path, monkeypatch, *, shared: bool = True) -> None:
    """One MLA node with key_indices per layer, logits (prefill of 8, three decode steps) and greedy generation with
    concatenated caches, greedy generation with shared buffers when `shared`."""
    ids = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(1))
    prompt = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(2))
    ours = hf_mapping.from_transformers(hf)
    with torch.no_grad():
        tokens = hf.generate(prompt, max_new_tokens=12, do_sample=False)
    for seq in (ids, tokens):
        assert no_boundary_ties(ours, seq, monkeypatch) > 1e-4, "tied index scores: choose other weights"
    result = from_transformers(hf, path, progress=False)
    assert result.report.ok
    layers = hf.config.num_hidden_layers
    graph = onnx.load(result.path).graph
    nodes = [n for n in graph.node if n.op_type == "MultiHeadLatentAttention"]
    assert len(nodes) == layers and all(len(n.input) == 11 and n.input[10] for n in nodes)
    # the indexer's scores and top-k are one LightningIndexer node per layer with an indexer, feeding its MLA node
    # (GLM-5's shared layers reuse the previous one's picks); the main graph's only TopKs are the MoE routers'
    indexers = [n for n in graph.node if n.op_type == "LightningIndexer"]
    assert len(indexers) == sum(layer.attn.indexer is not None for layer in ours.layers)
    assert {n.output[0] for n in indexers} == {n.input[10] for n in nodes}
    ops = [n.op_type for n in graph.node]
    assert ops.count("TopK") == sum(isinstance(layer.mlp, DeepSeekMoE) for layer in ours.layers)
    assert "Relu" not in ops
    assert [n for n in result.input_names if n.endswith("index_key")] == [
        f"past_key_values.{i}.index_key" for i, layer in enumerate(hf.model.layers) if layer.self_attn.indexer]
    want = hf_steps(hf, ids, 8)
    got = run_steps(session(result.path), ids.numpy(), 8)
    errors = [relative_error(g, w) for g, w in zip(got, want)]
    assert max(errors) <= 1e-4, errors
    for mode in ("concat", "shared") if shared else ("concat",):
        path_ = result.path if mode == "concat" else from_transformers(
            hf, path.with_name(f"{path.stem}_shared.onnx"), cache="shared", validate=False, progress=False).path
        got = generate(str(path_), prompt.numpy(), 12, providers=["CPUExecutionProvider"], progress=False)
        np.testing.assert_array_equal(got.tokens, tokens.numpy(), err_msg=mode)
    assert len(np.unique(tokens[:, 5:])) >= 4, "the tiny model should not collapse onto one token"


def test_deepseek_v32_matches_transformers(tmp_path, monkeypatch):
    torch.manual_seed(0)
    check(deepseek_v32(), tmp_path / "v32.onnx", monkeypatch)


def test_glm5_matches_transformers(tmp_path, monkeypatch):
    torch.manual_seed(0)
    hf = glm5()
    assert hf.model.layers[1].self_attn.indexer is None
    check(hf, tmp_path / "glm5.onnx", monkeypatch, shared=False)


@pytest.mark.parametrize("make", [deepseek_v32, glm5], ids=["v32", "glm5"])
def test_indexer_matters_and_large_topk_is_dense(make):
    ids = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(1))
    hf = make()
    ours = hf_mapping.from_transformers(hf)
    assert eager_relative_error(hf, ours, ids) <= 1e-4
    with torch.no_grad():
        sparse = ours(ids)
        for layer in ours.layers:  # every key of the 11 picked: dense attention
            if layer.attn.indexer is not None:
                layer.attn.indexer.topk = 32
        dense = ours(ids)
    assert relative_error(sparse.numpy(), dense.numpy()) > 1e-2
    # index_topk >= the sequence: transformers' model degenerates to dense attention too
    wide = make(index_topk=32)
    assert eager_relative_error(wide, hf_mapping.from_transformers(wide), ids) <= 1e-4


@pytest.mark.parametrize("interleaved", [False, True], ids=["v32-half-split", "glm5-interleaved"])
def test_lightning_indexer_matches_transformers(interleaved):
    """Our LightningIndexer against transformers' indexer module directly: the same top-k sets per query."""
    if interleaved:
        config = T.GlmMoeDsaConfig(**SMALL | dict(index_topk=5))
        module, rotary = T.models.glm_moe_dsa.modeling_glm_moe_dsa, T.models.glm_moe_dsa.modeling_glm_moe_dsa
        theirs = randomize(module.GlmMoeDsaIndexer(config, 0))
        emb = rotary.GlmMoeDsaRotaryEmbedding(config)
    else:
        config = T.DeepseekV32Config(**SMALL | dict(index_topk=5))
        module = T.models.deepseek_v32.modeling_deepseek_v32
        theirs = randomize(module.DeepseekV32Indexer(config, 0))
        emb = module.DeepseekV32RotaryEmbedding(config)
    ours = LightningIndexer(64, 48, 16, 16, 8, 5, rope=Rope(config.rope_parameters["rope_theta"],
                                                          interleaved=interleaved))
    ours.load_state_dict(theirs.state_dict())
    g = torch.Generator().manual_seed(0)
    x, q_resid = torch.randn(2, 12, 64, generator=g), torch.randn(2, 12, 48, generator=g)
    positions = torch.arange(12)[None]
    mask = torch.ones(12, 12, dtype=torch.bool).tril()[None].expand(2, 12, 12)
    with torch.no_grad():
        want = theirs(x, q_resid, emb(x, positions), mask, positions).long()
        got, keys = ours(x, q_resid)
    assert got.shape == (2, 12, 5) and keys.shape == (2, 1, 12, 16)
    for i in range(5, 12):  # queries that see more than topk keys (before: all they see, padded)
        assert torch.equal(got[:, i].sort().values, want[:, i].sort().values), i
    for i in range(5):
        assert all(set(got[b, i].tolist()) - {-1} >= set(range(i + 1)) for b in range(2))
    # decode: the cached keys give the same picks for the last query as the whole sequence did
    with torch.no_grad():
        step, _ = ours(x[:, -1:], q_resid[:, -1:], past_keys=keys[:, :, :11])
    assert torch.equal(step[:, 0].sort().values, got[:, -1].sort().values)


def test_dsa_settings_are_named(tmp_path):
    bad = T.GlmMoeDsaForCausalLM(T.GlmMoeDsaConfig(**SMALL | dict(indexer_types=["shared", "full"])))
    with pytest.raises(UnsupportedModel, match=r"GLM-5 with indexer_types \['shared', 'full'\] is not supported"):
        from_transformers(bad, tmp_path / "x.onnx")
