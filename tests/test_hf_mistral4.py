"""Mistral 4 (transformers' Mistral4ForCausalLM) exported with onnxattn.export.from_transformers onto models.deepseek:
DeepSeek-V3's MLA and experts with a softmax router, and Ministral 3's per-position query scale applied in torch before
each MultiHeadLatentAttention node. onnxruntime's logits with our kernels equal the transformers model's for a prefill
and three decode steps (fp32, <= 1e-4 relative, as tests/test_hf_mla.py), greedy generation equals transformers'
generate with concatenated and shared-buffer caches, the shared buffers' per-row positions scale q per row, and a
config transformers cannot run is named."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from model_helpers import one_torch_thread, relative_error, run_steps, session


transformers = pytest.importorskip("transformers")

from hf_helpers import NO_TOKENS, check_generation_matches, hf_steps, randomize  # noqa: E402

from onnxattn.export import from_transformers  # noqa: E402
from onnxattn.models import hf as hf_mapping  # noqa: E402
from onnxattn.models.deepseek import ScaledQueryMLA  # noqa: E402
from onnxattn.models.llama import QueryScale  # noqa: E402
from onnxattn.nn import LatentCache  # noqa: E402

T = transformers
_AUTOUSE = (one_torch_thread,)  # imported for its autouse fixture (one torch thread while these run)
VOCAB = 128
PERIOD = 4  # YaRN's original_max_position_embeddings, also the query scale's period (released: 8192)
# layer 0 dense, layer 1 top-3 of 8 experts from the 2 best of 4 groups (a group scored by its two best: by its best
# the logits miss by ~0.4, without groups ~0.4) by softmax scores, renormalised (off: ~0.2) then times 2.5 (times 1:
# ~0.5), one shared expert; low-rank queries, interleaved RoPE, YaRN with mscale != mscale_all_dim (an attention
# factor and a softmax scale); q times 1 + 0.5 * log(1 + floor(position / 4)): positions 4..10 are scaled (unscaled
# the logits miss by ~0.4 and more)
CONFIG = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
              num_attention_heads=4, q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
              v_head_dim=16, n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2, n_shared_experts=1,
              first_k_dense_replace=1, routed_scaling_factor=2.5, max_position_embeddings=64, **NO_TOKENS,
              rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 16.0, "beta_fast": 32.0,
                               "beta_slow": 1.0, "original_max_position_embeddings": PERIOD, "mscale": 1.0,
                               "mscale_all_dim": 0.8, "llama_4_scaling_beta": 0.5})


def mistral4(**overrides):
    torch.manual_seed(0)
    return randomize(T.Mistral4ForCausalLM(T.Mistral4Config(**CONFIG | overrides)))


def eager_steps(model, ids: torch.Tensor, prefill: int) -> list[np.ndarray]:
    """Our torch model's logits for the prefill, then one decode step per token, with a LatentCache."""
    cache = LatentCache()
    with torch.no_grad():
        return [model(ids[:, :prefill], cache=cache).numpy()] + [
            model(ids[:, t:t + 1], cache=cache).numpy() for t in range(prefill, ids.shape[1])]


def test_mistral4_matches_transformers(tmp_path):
    hf = mistral4()
    assert [hasattr(layer.mlp, "experts") for layer in hf.model.layers] == [False, True]
    assert hf.config.rope_interleave and not hasattr(hf.model.layers[1].mlp.gate, "e_score_correction_bias")
    result = from_transformers(hf, tmp_path / "mistral4.onnx", progress=False)
    assert result.report.ok
    assert all(isinstance(layer.attn, ScaledQueryMLA) for layer in result.model.layers)
    assert result.model.layers[0].attn.query_scale == QueryScale(0.5, PERIOD)
    ops = [n.op_type for n in onnx.load(result.path).graph.node]
    assert ops.count("MultiHeadLatentAttention") == 2 and "GroupQueryAttention" not in ops
    ids = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(1))
    want = hf_steps(hf, ids, 8)
    got = run_steps(session(result.path), ids.numpy(), 8)  # prefill of 8, then 3 decode steps
    errors = [relative_error(g, w) for g, w in zip(got, want)]
    assert max(errors) <= 1e-4, errors
    assert max(relative_error(g, w) for g, w in zip(eager_steps(result.model, ids, 8), want)) <= 1e-4

    # the scale is not trivially 1 here: positions 0..10 cross two periods (transformers' own function), and our
    # model without it misses every step, the decode steps (positions 8..10, scale 1 + 0.5 ln 3) too
    from transformers.models.mistral4.modeling_mistral4 import get_llama_4_attn_scale

    scale = get_llama_4_attn_scale(torch.arange(11)[None], 0.5, PERIOD).flatten()
    assert scale[:PERIOD].eq(1).all() and scale[PERIOD:].gt(1.3).all()
    for layer in result.model.layers:
        layer.attn.query_scale = QueryScale(0.0, PERIOD)
    errors = [relative_error(g, w) for g, w in zip(eager_steps(result.model, ids, 8), want)]
    assert min(errors) > 1e-2, errors


def test_mistral4_shared_buffers_scale_each_row_at_its_position():
    """Shared-buffer mode with rows of different past lengths (5 and 8: period 1 and 2 of the scale): each row's next
    token equals transformers' run of that row alone."""
    hf = mistral4()
    ours = hf_mapping.from_transformers(hf)
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(4))
    lengths = [5, 8]
    with torch.no_grad():
        rows = [ours(ids[r:r + 1, :n], ours.empty_past(1, 12), torch.zeros(1, dtype=torch.int64))[1]
                for r, n in enumerate(lengths)]
        buffers = [tuple(torch.cat(parts) for parts in zip(*layers)) for layers in zip(*rows)]
        step = torch.stack([ids[r, n] for r, n in enumerate(lengths)])[:, None]
        got, _ = ours(step, buffers, torch.tensor(lengths))
        for r, n in enumerate(lengths):
            want = hf(ids[r:r + 1, :n + 1]).logits[:, -1]
            assert relative_error(got[r, -1].numpy(), want[0].numpy()) <= 1e-4, r


def test_mistral4_generation_matches_transformers(tmp_path):
    """Greedy generation over 17 positions (the scale steps up at 4, 8, 12 and 16) equals transformers' generate, with
    concatenated and shared-buffer caches (the positions then come from past_lengths)."""
    check_generation_matches(mistral4(), tmp_path, vocab=VOCAB, caches=("concat", "shared"))  # positions past 11


def test_mistral4_without_query_scale_parameters_is_named(tmp_path):
    # its attention scales q by llama_4_scaling_beta and original_max_position_embeddings, which default RoPE lacks
    hf = T.Mistral4ForCausalLM(T.Mistral4Config(**CONFIG | dict(num_hidden_layers=1, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0})))
    with pytest.raises(hf_mapping.UnsupportedModel, match="Mistral 4 with rope_parameters llama_4_scaling_beta None "
                                                          "and original_max_position_embeddings None"):
        from_transformers(hf, tmp_path / "x.onnx")
