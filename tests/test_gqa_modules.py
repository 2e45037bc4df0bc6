"""The torch side of GroupQueryAttention: the modules (GroupedQueryAttention, GlobalAttention, LocalAttention
sliding and band, AttentionHead) against the numpy oracles, metamorphic properties with a KVCache (decode
token by token, chunked prefill, layers sharing a cache, windows, shared buffers, merged QKV), RoPE
positions and scaling schemes against formulas written from their published descriptions, and the norms.

Tolerance: float32 end to end on unit-scale inputs; 2e-5 absolute covers float32 softmax and projection
error (~1e-6) and the RoPE angles (positions < 64, ~4e-6 rad), while a wrong position, window or head
mapping errs by ~1e-2 or more.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from oracle import sdpa_oracle, structural_visibility
from oracle_gqa import default_inv_freq, gqa_oracle, rms_norm_oracle, rope_oracle
from onnxattn.nn import (
    AttentionHead,
    GlobalAttention,
    GroupedQueryAttention,
    KVCache,
    LocalAttention,
    MultiHeadLatentAttention,
    Rope,
    RopeScaling,
    build_causal_sliding_window_mask,
    positions_from_boundaries,
    qk_norm,
    whole_tensor_rms_norm,
)
from onnxattn.nn.functional import group_query_attention
from onnxattn.nn.paged_cache import PagedKVCache
from onnxattn.nn.reference import apply_rope

ATOL = 2e-5
MODEL_DIM = 32


def make(cls=GroupedQueryAttention, *args, seed=0, **kwargs):
    """A module in eval mode with random weights, random QK-norm weights and (with bias) random biases."""
    torch.manual_seed(seed)
    module = cls(*args, **kwargs).eval()
    with torch.no_grad():
        for name in ("q_norm", "k_norm"):
            if getattr(module, name, None) is not None:
                getattr(module, name).uniform_(0.5, 1.5)
    return module


def randn(*shape, seed=1, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def module_oracle(attn: GroupedQueryAttention, x: torch.Tensor, **inputs) -> torch.Tensor:
    """attn(x, **inputs) computed with the module's projections around the numpy GQA oracle."""
    q, k, v = (np64(t) for t in attn.project(x))
    attrs = dict(num_heads=attn.num_query_heads, kv_num_heads=attn.num_kv_heads, causal=int(attn.causal),
                 window=attn.window, softcap=attn.softcap, scale=attn.scale or 0.0, qk_norm_epsilon=attn.qk_norm_eps)
    rope = attn.rope
    inv_freq = None
    if rope is not None:
        rotary = rope.rotary_dim or attn.head_dim
        if rope.scaling is None:
            inv_freq = default_inv_freq(rotary, rope.base)
        else:  # checked against the published formulas below
            inv_freq, attrs["rope_attention_scaling"] = rope.frequencies(attn.head_dim)
            inv_freq = np64(inv_freq)
        attrs.update(rope=1, rotary_dim=rotary, rope_interleaved=int(rope.interleaved))
    norms = {} if attn.q_norm is None else dict(q_norm_weight=np64(attn.q_norm), k_norm_weight=np64(attn.k_norm))
    arrays = {name: (np64(t) if t.is_floating_point() else t.numpy()) for name, t in inputs.items() if t is not None}
    y, _, _ = gqa_oracle(q, k, v, rope_inv_freq=inv_freq, **norms, **arrays, **attrs)
    return attn.o_proj(torch.from_numpy(y).to(x.dtype))


# (id, class, args, kwargs)
MODULE_CASES = [
    ("default-rope", GroupedQueryAttention, (MODEL_DIM, 4, 2), {}),
    ("mha-kv-heads-default", GroupedQueryAttention, (MODEL_DIM, 4), {}),
    ("mqa", GroupedQueryAttention, (MODEL_DIM, 4, 1), {}),
    ("head-dim-override", GroupedQueryAttention, (MODEL_DIM, 4, 2), dict(head_dim=12)),  # D != 32 / 4 (Gemma 3)
    ("qk-norm", GroupedQueryAttention, (MODEL_DIM, 4, 2), dict(qk_norm=True, qk_norm_eps=1e-3)),
    ("rope-partial-interleaved", GroupedQueryAttention, (MODEL_DIM, 4, 2),
     dict(rope=Rope(base=500000.0, rotary_dim=4, interleaved=True))),
    ("rope-linear", GroupedQueryAttention, (MODEL_DIM, 4, 2), dict(rope=Rope(scaling=RopeScaling("linear", 4.0)))),
    ("rope-llama3", GroupedQueryAttention, (MODEL_DIM, 4, 2),
     dict(rope=Rope(base=500000.0, scaling=RopeScaling("llama3", 8.0, original_max_positions=64)))),
    ("rope-yarn", GroupedQueryAttention, (MODEL_DIM, 4, 2),
     dict(rope=Rope(scaling=RopeScaling("yarn", 4.0, original_max_positions=64)))),
    ("no-rope-bidirectional", GroupedQueryAttention, (MODEL_DIM, 4, 2), dict(rope=None, causal=False)),
    ("window-softcap-scale-bias", GroupedQueryAttention, (MODEL_DIM, 4, 2),
     dict(window=3, softcap=2.0, scale=0.5, bias=True)),
    ("global", GlobalAttention, (MODEL_DIM, 4, 2), dict(qk_norm=True)),
    ("local-sliding", LocalAttention, (MODEL_DIM, 4, 2), dict(window=3)),
    # value heads narrower than query / key heads (MiMo-V2-Flash: 128 beside 192), partial RoPE, a window
    ("v-head-dim", GroupedQueryAttention, (MODEL_DIM, 4, 2),
     dict(head_dim=12, v_head_dim=6, window=3, rope=Rope(rotary_dim=4))),
]


@pytest.mark.parametrize("cls, args, kwargs", [pytest.param(*c[1:], id=c[0]) for c in MODULE_CASES])
def test_module_matches_oracle(cls, args, kwargs):
    attn = make(cls, *args, **kwargs)
    x = randn(2, 7, MODEL_DIM)
    with torch.no_grad():
        np.testing.assert_allclose(attn(x).numpy(), module_oracle(attn, x).numpy(), atol=ATOL)


@pytest.mark.parametrize("cls, args, kwargs", [pytest.param(*c[1:], id=c[0]) for c in MODULE_CASES])
def test_module_with_past_and_mask_matches_oracle(cls, args, kwargs):
    """Explicit past_key/past_value (a chunk after 5 cached tokens) and a left-padding key mask."""
    attn = make(cls, *args, **kwargs)
    x = randn(2, 3, MODEL_DIM)
    pk = randn(2, attn.num_kv_heads, 5, attn.head_dim, seed=2)
    pv = randn(2, attn.num_kv_heads, 5, attn.v_head_dim, seed=3)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, :2] = False
    with torch.no_grad():
        got, (present_k, present_v) = attn(x, past_key=pk, past_value=pv, attention_mask=mask, return_present=True)
        expected = module_oracle(attn, x, past_key=pk, past_value=pv, attention_mask=mask)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=ATOL)
    assert present_k.shape == (2, attn.num_kv_heads, 8, attn.head_dim)
    assert torch.equal(present_k[:, :, :5], pk) and torch.equal(present_v[:, :, :5], pv)


# ---------------------------------------------------------------------------------------------------------
# Metamorphic: KV cache

DECODE_CONFIGS = [
    pytest.param(dict(), id="default"),
    pytest.param(dict(window=3), id="window"),
    pytest.param(dict(num_kv_heads=1, qk_norm=True), id="mqa-qk-norm"),
    pytest.param(dict(rope=Rope(rotary_dim=4, interleaved=True)), id="rope-partial-interleaved"),
    pytest.param(dict(rope=Rope(scaling=RopeScaling("yarn", 4.0, original_max_positions=16))), id="yarn"),
    pytest.param(dict(softcap=1.5, bias=True), id="softcap-bias"),
    pytest.param(dict(head_dim=12, v_head_dim=6, window=3), id="v-head-dim-window"),
]


def gqa(**kwargs) -> GroupedQueryAttention:
    kwargs.setdefault("num_kv_heads", 2)
    return make(GroupedQueryAttention, MODEL_DIM, 4, **kwargs)


@pytest.mark.parametrize("kwargs", DECODE_CONFIGS)
def test_prefill_then_decode_token_by_token_equals_one_pass(kwargs):
    attn = gqa(**kwargs)
    x = randn(2, 9, MODEL_DIM)
    cache = KVCache()
    with torch.no_grad():
        full, (full_k, full_v) = attn(x, return_present=True)
        steps = [attn(x[:, :5], cache=cache)] + [attn(x[:, t:t + 1], cache=cache) for t in range(5, 9)]
    np.testing.assert_allclose(torch.cat(steps, dim=1).numpy(), full.numpy(), atol=ATOL)
    assert cache.length(attn.layer_idx) == 9 and len(cache) == 1
    cached_k, cached_v = cache.get(attn.layer_idx)
    np.testing.assert_allclose(cached_k.numpy(), full_k.numpy(), atol=ATOL)  # keys after RoPE
    np.testing.assert_allclose(cached_v.numpy(), full_v.numpy(), atol=ATOL)


@pytest.mark.parametrize("chunks", [(3, 4, 2), (1, 7, 1), (5, 4)], ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("kwargs", DECODE_CONFIGS[:3])
def test_chunked_prefill_equals_one_pass(kwargs, chunks):
    attn = gqa(**kwargs)
    x = randn(2, sum(chunks), MODEL_DIM)
    cache = KVCache()
    with torch.no_grad():
        full = attn(x)
        starts = np.cumsum((0, *chunks))
        parts = [attn(x[:, a:b], cache=cache) for a, b in zip(starts[:-1], starts[1:])]
    np.testing.assert_allclose(torch.cat(parts, dim=1).numpy(), full.numpy(), atol=ATOL)


def test_cache_shared_by_layers_uses_each_layers_own_length():
    """Two layers share one KVCache; layer 1 skips step 5. At step 6 layer 1 continues at its own position
    (5), as if it had only ever seen tokens 0..4 and 6 — not at layer 0's position 6."""
    layer0, layer1 = gqa(layer_idx=0), gqa(layer_idx=1, seed=7)
    x = randn(1, 7, MODEL_DIM)
    cache = KVCache()
    with torch.no_grad():
        layer0(x[:, :5], cache=cache)
        layer1(x[:, :5], cache=cache)
        layer0(x[:, 5:6], cache=cache)
        y0 = layer0(x[:, 6:7], cache=cache)
        y1 = layer1(x[:, 6:7], cache=cache)
        assert (cache.length(0), cache.length(1), len(cache)) == (7, 6, 2)
        np.testing.assert_allclose(y0.numpy(), layer0(x)[:, -1:].numpy(), atol=ATOL)
        seen_by_1 = torch.cat([x[:, :5], x[:, 6:7]], dim=1)
        np.testing.assert_allclose(y1.numpy(), layer1(seen_by_1)[:, -1:].numpy(), atol=ATOL)
        # and it differs from continuing at layer 0's position (the test can tell the two apart)
        wrong = layer1(x[:, 6:7], past_key=cache.get(1)[0][:, :, :5], past_value=cache.get(1)[1][:, :, :5],
                       position_ids=torch.tensor([[6]]))
        assert not np.allclose(wrong.numpy(), y1.numpy(), atol=1e-3)


def test_cache_truncate_rolls_back():
    attn = gqa()
    x = randn(1, 6, MODEL_DIM)
    cache = KVCache()
    with torch.no_grad():
        attn(x[:, :4], cache=cache)
        attn(randn(1, 2, MODEL_DIM, seed=9), cache=cache)  # draft tokens, rejected
        cache.truncate(4)
        assert cache.length(0) == 4
        y = attn(x[:, 4:], cache=cache)
        np.testing.assert_allclose(y.numpy(), attn(x)[:, 4:].numpy(), atol=ATOL)


@pytest.mark.parametrize("window", [1, 3, 6])
def test_sliding_window_decode_equals_full_attention_on_the_window(window):
    """LocalAttention decode with a window W equals unwindowed attention over the W - 1 most recent cached
    keys plus the new one (keys are cached after RoPE, so only the query's position must be given)."""
    local = make(LocalAttention, MODEL_DIM, 4, 2, window=window)
    full = make(GroupedQueryAttention, MODEL_DIM, 4, 2)
    full.load_state_dict(local.state_dict())
    x = randn(2, 10, MODEL_DIM)
    cache = KVCache()
    with torch.no_grad():
        local(x[:, :9], cache=cache)
        past_k, past_v = cache.get(0)
        y = local(x[:, 9:], cache=cache)
        keep = slice(9 - (window - 1), 9)
        expected = full(x[:, 9:], past_key=past_k[:, :, keep], past_value=past_v[:, :, keep],
                        position_ids=torch.full((2, 1), 9))
    np.testing.assert_allclose(y.numpy(), expected.numpy(), atol=ATOL)


def test_shared_buffer_equals_concatenation_per_sequence():
    """past_lengths mode: each sequence of a batch reads only its own valid prefix of the buffer (stale
    slots hold NaN) and gets the output of concatenation mode over that prefix; the buffer gets the new keys
    at its own offset."""
    attn = gqa(qk_norm=True, window=5)
    x = randn(3, 2, MODEL_DIM)
    lengths = torch.tensor([4, 0, 7])
    buf_k, buf_v = randn(3, 2, 12, 8, seed=4), randn(3, 2, 12, 8, seed=5)
    for b, n in enumerate(lengths.tolist()):
        buf_k[b, :, n:], buf_v[b, :, n:] = float("nan"), float("nan")
    with torch.no_grad():
        y, (present_k, _) = attn(x, past_key=buf_k, past_value=buf_v, past_lengths=lengths, return_present=True)
        assert torch.isfinite(y).all()
        for b, n in enumerate(lengths.tolist()):
            yb, (kb, _) = attn(x[b:b + 1], past_key=buf_k[b:b + 1, :, :n], past_value=buf_v[b:b + 1, :, :n],
                               return_present=True)
            np.testing.assert_allclose(y[b:b + 1].numpy(), yb.numpy(), atol=ATOL)
            np.testing.assert_allclose(present_k[b, :, : n + 2].numpy(), kb[0].numpy(), atol=ATOL)
            assert torch.isnan(present_k[b, :, n + 2:]).all()


def test_merge_qkv_gives_the_same_outputs():
    attn = gqa(bias=True, qk_norm=True)
    x = randn(2, 5, MODEL_DIM)
    with torch.no_grad():
        before = attn(x)
        attn.merge_qkv()
        assert hasattr(attn, "qkv_proj") and not hasattr(attn, "q_proj")
        assert attn.qkv_proj.weight.shape == (32 + 2 * 16, MODEL_DIM)
        np.testing.assert_allclose(attn(x).numpy(), before.numpy(), atol=1e-6)
        attn.merge_qkv()  # idempotent
        np.testing.assert_allclose(attn(x).numpy(), before.numpy(), atol=1e-6)


def test_merged_qkv_constructor_has_one_projection():
    attn = gqa(merged_qkv=True)
    names = {name for name, _ in attn.named_parameters()}
    assert names == {"qkv_proj.weight", "o_proj.weight"}
    with torch.no_grad():
        x = randn(1, 4, MODEL_DIM)
        np.testing.assert_allclose(attn(x).numpy(), module_oracle(attn, x).numpy(), atol=ATOL)


# ---------------------------------------------------------------------------------------------------------
# Positions

def test_max_positions_raises_a_clear_error():
    attn = gqa(max_positions=8)
    with torch.no_grad():
        attn(randn(1, 8, MODEL_DIM))  # positions 0..7 are fine
        with pytest.raises(ValueError, match=r"GroupedQueryAttention: position 8 is out of range for max_positions 8"):
            attn(randn(1, 9, MODEL_DIM))
        cache = KVCache()
        attn(randn(1, 6, MODEL_DIM), cache=cache)
        attn(randn(1, 2, MODEL_DIM), cache=cache)
        with pytest.raises(ValueError, match=r"position 8 is out of range for max_positions 8"):
            attn(randn(1, 1, MODEL_DIM), cache=cache)
        with pytest.raises(ValueError, match=r"position 9 is out of range"):
            attn(randn(1, 1, MODEL_DIM), position_ids=torch.tensor([[9]]))
        lengths = torch.tensor([7])
        buf = torch.zeros(1, 2, 12, 8)
        with pytest.raises(ValueError, match=r"position 8 is out of range"):
            attn(randn(1, 2, MODEL_DIM), past_key=buf, past_value=buf, past_lengths=lengths)
        # positions that restart at document boundaries stay in range
        attn(randn(1, 12, MODEL_DIM), doc_boundaries=[6])


@pytest.mark.parametrize("seq_len, boundaries, offset, expected", [
    (8, [3, 6], 0, [0, 1, 2, 0, 1, 2, 0, 1]),
    (8, [3, 6], 2, [2, 3, 4, 0, 1, 2, 0, 1]),
    (5, [0], 4, [0, 1, 2, 3, 4]),
    (5, [], 1, [1, 2, 3, 4, 5]),
    (6, [4, 1], 0, [0, 0, 1, 2, 0, 1]),  # unsorted
])
def test_positions_from_boundaries(seq_len, boundaries, offset, expected):
    assert positions_from_boundaries(seq_len, boundaries, offset).tolist() == expected


@pytest.mark.parametrize("boundary", [-1, 5, 9])
def test_positions_from_boundaries_rejects_out_of_range(boundary):
    with pytest.raises(ValueError, match=rf"document boundary {boundary} is outside \[0, 5\)"):
        positions_from_boundaries(5, [boundary])


def test_doc_boundaries_reset_rope_positions():
    attn = gqa()
    x = randn(2, 8, MODEL_DIM)
    with torch.no_grad():
        y = attn(x, doc_boundaries=[3, 6])
        positions = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]).expand(2, 8)
        np.testing.assert_allclose(y.numpy(), attn(x, position_ids=positions).numpy(), atol=1e-6)
        np.testing.assert_allclose(y.numpy(), module_oracle(attn, x, position_ids=positions).numpy(), atol=ATOL)
        assert not np.allclose(y.numpy(), attn(x).numpy(), atol=1e-3)
        np.testing.assert_allclose(y[:, :3].numpy(), attn(x)[:, :3].numpy(), atol=1e-6)  # first document: same
        # with a cache, the first document continues from the cache length
        cache = KVCache()
        attn(x[:, :2], cache=cache)
        y2 = attn(x[:, 2:], cache=cache, doc_boundaries=[2])
        restarted = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]).expand(2, 8)
        np.testing.assert_allclose(y2.numpy(), attn(x, position_ids=restarted)[:, 2:].numpy(), atol=ATOL)


def test_exporting_tensor_doc_boundaries_says_to_pass_ints():
    # eager takes a tensor of boundaries; export bakes them into the graph, and torch buried the reason in pages of
    # GuardOnDataDependentSymNode trace: now our message, the one the exporter raises
    import onnxattn

    with pytest.raises(ValueError, match="document boundaries must be Python ints when exporting"):
        onnxattn.export(gqa(), (randn(1, 6, MODEL_DIM),), kwargs={"doc_boundaries": torch.tensor([0, 3])})


def test_rope_is_relative_shifting_all_positions_changes_nothing():
    """q.k after RoPE depends only on position differences: shifting every position by a constant leaves
    attention unchanged (half-split and interleaved, partial rotation)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 6, n, generator=g) for n in (4 * 16, 2 * 16, 2 * 16))
    base = torch.arange(6).expand(2, 6)
    for interleaved in (False, True):
        attrs = dict(num_heads=4, kv_num_heads=2, rope=True, rotary_dim=8, rope_interleaved=interleaved)
        y0 = group_query_attention(q, k, v, position_ids=base, **attrs)[0]
        y1 = group_query_attention(q, k, v, position_ids=base + 11, **attrs)[0]
        np.testing.assert_allclose(y1.numpy(), y0.numpy(), atol=ATOL)
        assert not np.allclose(y0.numpy(), group_query_attention(q, k, v, **dict(attrs, rope=False))[0].numpy(),
                               atol=1e-3)


# ---------------------------------------------------------------------------------------------------------
# RoPE scaling schemes

def test_linear_scaling_equals_positions_divided_by_the_factor():
    rope = Rope(scaling=RopeScaling("linear", 4.0))
    inv_freq, attention = rope.frequencies(16)
    assert attention == 1.0
    np.testing.assert_allclose(np64(inv_freq), default_inv_freq(16, 10000.0) / 4, rtol=1e-6)
    x = randn(1, 2, 5, 16)
    positions = torch.tensor([[0, 3, 8, 13, 40]])
    scaled = apply_rope(x, positions, inv_freq)
    divided = apply_rope(x, positions.to(torch.float32) / 4, Rope().frequencies(16)[0])
    np.testing.assert_allclose(scaled.numpy(), divided.numpy(), atol=1e-5)


def llama3_inv_freq(dim, base, factor, low_freq_factor, high_freq_factor, old_context_len):
    """Meta's `apply_scaling` for Llama 3.1 (llama-models reference code), element by element."""
    out = []
    for i in range(0, dim, 2):
        freq = 1.0 / base ** (i / dim)
        wavelen = 2 * math.pi / freq
        if wavelen < old_context_len / high_freq_factor:
            out.append(freq)
        elif wavelen > old_context_len / low_freq_factor:
            out.append(freq / factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return np.array(out)


def yarn_inv_freq(dim, base, factor, original_max, beta_fast=32.0, beta_slow=1.0, truncate=True):
    """YaRN's NTK-by-parts frequencies and attention factor (Peng et al. 2023; the Hugging Face
    `_compute_yarn_parameters` form): frequencies that turn fewer than beta_slow times over the original
    context are interpolated (divided by the factor), those turning more than beta_fast times are kept,
    with a linear ramp over the dims in between (its ends rounded out to whole dims unless not `truncate`,
    as GPT-OSS's); attention factor 0.1 ln(factor) + 1."""
    def correction_dim(rotations):
        return dim * math.log(original_max / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    out = []
    for c in range(dim // 2):
        freq = 1.0 / base ** (2 * c / dim)
        ramp = min(max((c - low) / (high - low), 0.0), 1.0)  # 0: keep (high frequency), 1: interpolate
        out.append(freq / factor * ramp + freq * (1 - ramp))
    return np.array(out), 0.1 * math.log(factor) + 1.0


@pytest.mark.parametrize("dim, base, factor, low, high, old", [
    (128, 500000.0, 8.0, 1.0, 4.0, 8192),  # Llama 3.1 8B
    (64, 500000.0, 32.0, 1.0, 4.0, 8192),  # Llama 3.2 1B
    (16, 10000.0, 4.0, 1.0, 4.0, 64),
])
def test_llama3_scaling_matches_the_published_formula(dim, base, factor, low, high, old):
    rope = Rope(base=base, scaling=RopeScaling("llama3", factor, original_max_positions=old, low_freq_factor=low,
                                               high_freq_factor=high))
    inv_freq, attention = rope.frequencies(dim)
    expected = llama3_inv_freq(dim, base, factor, low, high, old)
    assert attention == 1.0 and inv_freq.dtype == torch.float32
    np.testing.assert_allclose(np64(inv_freq), expected, rtol=1e-5)
    assert np.isfinite(expected).all() and np.all(np.diff(np64(inv_freq)) < 0), "frequencies must decrease"
    unscaled = default_inv_freq(dim, base)
    assert np.all(np64(inv_freq) <= unscaled * (1 + 1e-6)) and np.all(np64(inv_freq) >= unscaled / factor * (1 - 1e-6))
    # both regimes occur: the highest frequency kept, the lowest divided by the factor
    np.testing.assert_allclose(np64(inv_freq)[[0, -1]], [unscaled[0], unscaled[-1] / factor], rtol=1e-5)


@pytest.mark.parametrize("dim, base, factor, original_max, attention_factor, truncate", [
    (128, 10000.0, 4.0, 32768, None, True),  # Qwen2.5 long context
    (64, 1000000.0, 16.0, 4096, None, True),
    (16, 10000.0, 4.0, 64, None, True),
    (16, 10000.0, 4.0, 64, 1.5, True),  # explicit attention factor
    (64, 150000.0, 32.0, 4096, None, False),  # GPT-OSS: the ramp's ends not rounded
])
def test_yarn_scaling_matches_the_published_formula(dim, base, factor, original_max, attention_factor, truncate):
    rope = Rope(base=base, scaling=RopeScaling("yarn", factor, original_max_positions=original_max,
                                               attention_factor=attention_factor, truncate=truncate))
    inv_freq, attention = rope.frequencies(dim)
    expected, expected_attention = yarn_inv_freq(dim, base, factor, original_max, truncate=truncate)
    if not truncate:  # differs from the rounded ramp (by up to 76% at GPT-OSS's shape)
        assert not np.allclose(expected, yarn_inv_freq(dim, base, factor, original_max)[0], rtol=1e-2)
    np.testing.assert_allclose(np64(inv_freq), expected, rtol=1e-5)
    assert attention == pytest.approx(attention_factor if attention_factor is not None else expected_attention)
    assert np.isfinite(np64(inv_freq)).all() and np.all(np.diff(np64(inv_freq)) < 0), "frequencies must decrease"
    unscaled = default_inv_freq(dim, base)
    np.testing.assert_allclose(np64(inv_freq)[0], unscaled[0], rtol=1e-6)  # highest frequency kept


def test_partial_rotary_scaling_uses_the_rotary_dim():
    inv_freq, _ = Rope(rotary_dim=8, scaling=RopeScaling("linear", 2.0)).frequencies(32)
    np.testing.assert_allclose(np64(inv_freq), default_inv_freq(8, 10000.0) / 2, rtol=1e-6)


@pytest.mark.parametrize("factor, attention_factor, expected_attention", [
    (32.0, None, math.sqrt(1 + math.log(32.0) / math.log(4096))),  # Phi-3-mini-128k: 131072 / 4096
    (1.0, None, 1.0),  # no extension: no scaling
    (32.0, 1.19, 1.19),  # explicit attention factor
])
def test_longrope_frequencies_match_the_published_formula(factor, attention_factor, expected_attention):
    """LongRoPE (Ding et al. 2024; the Hugging Face `_compute_longrope_parameters` form): each frequency divided by
    its own factor, short or long set; attention factor sqrt(1 + ln(factor) / ln(original context)). Partial rotary
    (Phi-4-mini's 0.75): the factors are per frequency of the rotated channels."""
    short, long = (1.0, 1.2, 1.5, 2.0, 3.0, 4.0), (1.5, 3.0, 6.0, 12.0, 24.0, 48.0)
    scaling = RopeScaling("longrope", factor, original_max_positions=4096, attention_factor=attention_factor,
                          short_factor=short, long_factor=long)
    rope = Rope(rotary_dim=12, scaling=scaling)
    assert rope.switches and not Rope(scaling=RopeScaling("yarn", 4.0)).switches
    for factors, is_long in ((short, False), (long, True)):
        inv_freq, attention = rope.frequencies(16, long=is_long)
        np.testing.assert_allclose(np64(inv_freq), default_inv_freq(12, 10000.0) / np.array(factors), rtol=1e-6)
        assert attention == pytest.approx(expected_attention)


LONGROPE = dict(short_factor=(1.0, 1.3, 2.0), long_factor=(2.5, 4.0, 8.0))  # rotary 6 of head_dim 8


def longrope_modules(cls=GroupedQueryAttention, **kwargs):
    """A module with LongRoPE (original context 8, so position 8 switches to the long factors) and its twins with
    the same weights whose two sets are both the short ones, or both the long ones."""
    def build(short, long):
        scaling = RopeScaling("longrope", 4.0, original_max_positions=8, short_factor=short, long_factor=long)
        return make(cls, MODEL_DIM, 4, 2, rope=Rope(rotary_dim=6, scaling=scaling), **kwargs)

    short, long = LONGROPE["short_factor"], LONGROPE["long_factor"]
    return build(short, long), build(short, short), build(long, long)


def _past(past: int, batch: int = 2, seed: int = 2):
    return dict(past_key=randn(batch, 2, past, 8, seed=seed), past_value=randn(batch, 2, past, 8, seed=seed + 1))


def _shared(lengths: list[int]):
    return dict(**_past(10, len(lengths), seed=4), past_lengths=torch.tensor(lengths))


# (id, tokens per row, forward inputs, the set transformers would use: the largest position + 1 > 8 is long)
LONGROPE_FORWARDS = [
    ("8-tokens", 8, {}, "short"),  # positions 0..7
    ("9-tokens", 9, {}, "long"),
    ("past-7-decode", 1, _past(7), "short"),  # position 7
    ("past-8-decode", 1, _past(8), "long"),
    ("past-6-chunk-crossing", 3, _past(6), "long"),  # positions 6, 7, 8: the whole chunk uses the long set
    ("documents-reset-positions", 10, dict(doc_boundaries=[5]), "short"),  # positions 0..4, 0..4
    ("position-ids", 3, dict(position_ids=torch.tensor([[0, 1, 2], [6, 7, 8]])), "long"),  # any row decides
    ("shared-buffer-short", 1, _shared([2, 7]), "short"),
    ("shared-buffer-one-row-long", 1, _shared([2, 8]), "long"),  # row 0 too, as transformers' max over the batch
]


@pytest.mark.parametrize("tokens, inputs, expected", [pytest.param(*c[1:], id=c[0]) for c in LONGROPE_FORWARDS])
def test_longrope_module_picks_the_factor_set_by_its_positions(tokens, inputs, expected):
    """Each forward uses the long factors for all of its tokens once its largest position reaches the original
    context, else the short ones (cached keys are as given); the two sets give clearly different outputs here."""
    attn, short, long = longrope_modules()
    want, other = (short, long) if expected == "short" else (long, short)
    x = randn(2, tokens, MODEL_DIM)
    with torch.no_grad():
        got, want, other = attn(x, **inputs), want(x, **inputs), other(x, **inputs)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=ATOL)
    assert np.abs(got.numpy() - other.numpy()).max() > 1e-2


def test_longrope_band_and_paged_pick_the_factor_set_by_their_positions():
    """The other consumers of the frequencies: LocalAttention(kind="band") rotates in torch, and a paged step
    decides by the largest position of all its sequences."""
    attn, short, long = longrope_modules(LocalAttention, window=2, kind="band")
    for tokens, want in ((8, short), (9, long)):
        x = randn(1, tokens, MODEL_DIM)
        with torch.no_grad():
            np.testing.assert_allclose(attn(x).numpy(), want(x).numpy(), atol=ATOL)
    attn, short, long = longrope_modules()

    def run(module, lengths):  # one step over fresh sequences of these lengths, packed
        cache = PagedKVCache([(2, 8, 8)], 8, 4)
        for i in range(len(lengths)):
            cache.add(i)
        with torch.no_grad():
            return module(randn(sum(lengths), MODEL_DIM), paged=cache.step(range(len(lengths)), lengths))

    for lengths, want, other in (([3, 8], short, long), ([3, 9], long, short)):
        got = run(attn, lengths)
        np.testing.assert_allclose(got.numpy(), run(want, lengths).numpy(), atol=ATOL)
        assert np.abs(got[:3].numpy() - run(other, lengths)[:3].numpy()).max() > 1e-2  # the short sequence too


def test_longrope_sets_stay_float32_in_a_cast_model():
    """The op takes rope_inv_freq as float; a float16 export must not round either set."""
    from onnxattn.models._base import cast_model

    attn = cast_model(longrope_modules()[0], torch.float16)
    assert attn.q_proj.weight.dtype == torch.float16
    assert attn.rope_inv_freq.dtype == attn.long_rope_inv_freq.dtype == torch.float32


@pytest.mark.parametrize("kwargs, message", [
    (dict(short_factor=(1.0, 2.0), long_factor=(1.0,)), "longrope needs short_factor and long_factor of one length"),
    (dict(short_factor=(1.0, 0.0), long_factor=(1.0, 2.0)), "all > 0"),
    (dict(short_factor=(1.0,), long_factor=(1.0,), original_max_positions=1), "original_max_positions must be >= 2"),
])
def test_longrope_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RopeScaling("longrope", 2.0, **kwargs)


def test_longrope_factors_must_fit_and_only_mla_seed_form_refuses_them():
    """The deepseek form of MultiHeadLatentAttention takes LongRoPE (MiniCPM3: both sets, picked per forward, as
    GroupedQueryAttention); the seed form rotates with fixed frequencies and refuses it."""
    with pytest.raises(ValueError, match="short_factor / long_factor belong to kind 'longrope', not 'yarn'"):
        RopeScaling("yarn", 2.0, short_factor=(1.0,))
    longrope = Rope(scaling=RopeScaling("longrope", 2.0, **LONGROPE))
    with pytest.raises(ValueError, match=r"one factor per frequency \(rotary_dim / 2 = 4\), got 3"):
        GroupedQueryAttention(MODEL_DIM, 4, 2, rope=longrope)
    mla = MultiHeadLatentAttention(MODEL_DIM, 4, kv_rank=16, nope_head_dim=8, rope_head_dim=6, v_head_dim=8,
                                   rope=longrope)
    assert mla.long_rope_inv_freq.shape == mla.rope_inv_freq.shape == (3,)
    assert not torch.equal(mla.long_rope_inv_freq, mla.rope_inv_freq)
    with pytest.raises(ValueError, match=r"one factor per frequency \(rotary_dim / 2 = 4\), got 3"):
        MultiHeadLatentAttention(MODEL_DIM, 4, kv_rank=16, nope_head_dim=8, rope_head_dim=8, v_head_dim=8,
                                 rope=longrope)
    with pytest.raises(ValueError, match="LongRoPE scaling is not supported by the seed form"):
        MultiHeadLatentAttention(MODEL_DIM, 4, form="seed", latent_dim=16, rope_head_dim=6, rope=longrope)


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="ntk", factor=2.0), r"kind must be 'linear', 'llama3', 'yarn' or 'longrope', got 'ntk'"),
    (dict(kind="linear", factor=0.0), r"factor must be > 0, got 0.0"),
    (dict(kind="yarn", factor=-2.0), r"factor must be > 0"),
])
def test_rope_scaling_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RopeScaling(**kwargs)


@pytest.mark.parametrize("rotary_dim", [5, 40])
def test_rope_rejects_odd_or_too_wide_rotary_dim(rotary_dim):
    with pytest.raises(ValueError, match=rf"rotary_dim must be even and <= head_dim \(32\), got {rotary_dim}"):
        Rope(rotary_dim=rotary_dim).frequencies(32)
    with pytest.raises(ValueError, match=r"rotary_dim must be even"):
        GroupedQueryAttention(128, 4, 2, rope=Rope(rotary_dim=rotary_dim))


@pytest.mark.parametrize("interleaved", [False, True])
def test_apply_rope_matches_oracle(interleaved):
    x = randn(2, 3, 5, 12)
    positions = torch.tensor([[0, 1, 2, 7, 30], [4, 0, 1, 2, 3]])
    inv_freq = torch.tensor([1.0, 0.3, 0.05, 0.01])  # rotary 8 of 12
    got = apply_rope(x, positions, inv_freq, interleaved=interleaved, attention_scaling=1.1)
    expected = rope_oracle(np64(x), positions.numpy(), np64(inv_freq), interleaved=interleaved, scaling=1.1)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    assert torch.equal(got[..., 8:], x[..., 8:])  # the channels past rotary_dim pass through


# ---------------------------------------------------------------------------------------------------------
# LocalAttention band, AttentionHead, norms, masks

@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [1, 3])
def test_local_band_matches_sdpa_oracle(window, causal):
    """kind='band': |i - j| <= window (plus causality when asked), projections around one SDPA."""
    band = make(LocalAttention, MODEL_DIM, 4, 2, window=window, kind="band", causal=causal, rope=None)
    x = randn(2, 9, MODEL_DIM)
    q, k, v = (np64(t.unflatten(-1, (h, 8)).transpose(1, 2)) for t, h in zip(band.project(x), (4, 2, 2)))
    y, _ = sdpa_oracle(q, k, v, band=window, causal=int(causal))
    expected = band.o_proj(torch.from_numpy(y).transpose(1, 2).flatten(2).float())
    with torch.no_grad():
        np.testing.assert_allclose(band(x).numpy(), expected.detach().numpy(), atol=ATOL)


def test_local_band_with_rope_qk_norm_and_mask_matches_oracle():
    band = make(LocalAttention, MODEL_DIM, 4, 2, window=2, kind="band", qk_norm=True,
                rope=Rope(rotary_dim=4, interleaved=True))
    x = randn(2, 7, MODEL_DIM)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    q, k, v = (np64(t.unflatten(-1, (h, 8)).transpose(1, 2)) for t, h in zip(band.project(x), (4, 2, 2)))
    q, k = (rms_norm_oracle(t, np64(w), 1e-6) for t, w in ((q, band.q_norm), (k, band.k_norm)))
    positions = np.arange(7)[None].repeat(2, 0)
    q, k = (rope_oracle(t, positions, default_inv_freq(4, 10000.0), interleaved=True) for t in (q, k))
    y, _ = sdpa_oracle(q, k, v, mask[:, None, None, :].numpy(), band=2)
    expected = band.o_proj(torch.from_numpy(y).transpose(1, 2).flatten(2).float())
    with torch.no_grad():
        np.testing.assert_allclose(band(x, attention_mask=mask).numpy(), expected.detach().numpy(), atol=ATOL)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_head_matches_sdpa_oracle(causal):
    head = make(AttentionHead, MODEL_DIM, 6, causal=causal, bias=True)
    x = randn(2, 5, MODEL_DIM)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 0]], dtype=torch.bool)
    q, k, v = (np64(proj(x)[:, None]) for proj in (head.q, head.k, head.v))
    for m in (None, mask):
        y, _ = sdpa_oracle(q, k, v, None if m is None else m[:, None, None, :].numpy(), causal=int(causal))
        with torch.no_grad():
            got = head(x, m)
        assert got.shape == (2, 5, 6)
        np.testing.assert_allclose(got.numpy(), y[:, 0], atol=ATOL)


def test_qk_norm_matches_formula():
    x = randn(2, 3, 4, 8)
    w = torch.linspace(0.5, 1.5, 8)
    expected = np64(x) / np.sqrt((np64(x) ** 2).mean(-1, keepdims=True) + 1e-3) * np64(w)
    np.testing.assert_allclose(qk_norm(x, w, eps=1e-3).numpy(), expected, rtol=1e-5, atol=1e-6)
    no_weight = np64(x) / np.sqrt((np64(x) ** 2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(qk_norm(x).numpy(), no_weight, rtol=1e-5, atol=1e-6)


def test_whole_tensor_rms_norm_matches_formula():
    x = randn(2, 3, 8) * 3
    expected = np64(x) / np.sqrt((np64(x) ** 2).mean() + 1e-6)  # one scalar for the whole tensor
    got = whole_tensor_rms_norm(x)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert float(got.pow(2).mean()) == pytest.approx(1.0, rel=1e-4)
    assert not np.allclose(got.numpy(), qk_norm(x).numpy(), atol=1e-3)  # not the per-head norm


@pytest.mark.parametrize("seq_len, window", [(7, 1), (7, 3), (7, 0), (5, 9)])
def test_sliding_window_mask_equals_the_ops_window(seq_len, window):
    """build_causal_sliding_window_mask(S, W) (additive, [1,1,S,S]) gives the attention of
    GroupQueryAttention with window=W (0: plain causal)."""
    mask = build_causal_sliding_window_mask(seq_len, window)
    assert mask.shape == (1, 1, seq_len, seq_len)
    visible = structural_visibility(seq_len, seq_len, causal=1, window=window)
    np.testing.assert_array_equal(mask[0, 0].numpy() == 0, visible)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, seq_len, n, generator=g) for n in (32, 16, 16))
    y = group_query_attention(q, k, v, num_heads=4, kv_num_heads=2, window=window)[0]
    heads = lambda t, h: np64(t.unflatten(-1, (h, 8)).transpose(1, 2))  # noqa: E731
    expected, _ = sdpa_oracle(heads(q, 4), heads(k, 2), heads(v, 2), np64(mask))
    np.testing.assert_allclose(np64(y), expected.transpose(0, 2, 1, 3).reshape(1, seq_len, 32), atol=ATOL)


# ---------------------------------------------------------------------------------------------------------
# Configuration errors

@pytest.mark.parametrize("make_module, message", [
    (lambda: GroupedQueryAttention(32, 4, 3),
     r"num_query_heads \(4\) must be a positive multiple of num_kv_heads \(3\)"),
    (lambda: GroupedQueryAttention(30, 4, 2),
     r"model_dim \(30\) is not divisible by num_query_heads \(4\); pass head_dim"),
    (lambda: GroupedQueryAttention(32, 4, 2, window=-1), r"window must be >= 0"),
    (lambda: GlobalAttention(32, 4, 2, window=4), r"GlobalAttention: has no window"),
    (lambda: LocalAttention(32, 4, 2, window=0), r"LocalAttention: window must be >= 1, got 0"),
    (lambda: LocalAttention(32, 4, 2, window=2, kind="ring"), r"kind must be 'sliding' or 'band', got 'ring'"),
    (lambda: LocalAttention(32, 4, 2, window=2, causal=False), r"the sliding window is causal"),
], ids=["heads-not-divisible", "model-dim-not-divisible", "negative-window", "global-window", "local-window-0",
        "local-kind", "sliding-bidirectional"])
def test_module_configuration_errors(make_module, message):
    with pytest.raises(ValueError, match=message):
        make_module()


def test_band_has_no_cache_and_cache_excludes_explicit_past():
    band = make(LocalAttention, MODEL_DIM, 4, 2, window=2, kind="band")
    x = randn(1, 3, MODEL_DIM)
    with pytest.raises(ValueError, match=r"kind='band'\) has no KV cache support"):
        band(x, cache=KVCache())
    attn = gqa()
    pk = torch.zeros(1, 2, 2, 8)
    with pytest.raises(ValueError, match=r"pass either cache or past_key/past_value, not both"):
        attn(x, cache=KVCache(), past_key=pk, past_value=pk)


def test_head_dim_override_shapes():
    attn = gqa(head_dim=12)
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.o_proj.in_features) == (48, 24, 48)
    with torch.no_grad():
        y, (k, v) = attn(randn(2, 3, MODEL_DIM), return_present=True)
    assert y.shape == (2, 3, MODEL_DIM) and k.shape == v.shape == (2, 2, 3, 12)


# ---------------------------------------------------------------------------------------------------------
# Value heads of their own width (v_head_dim)

def test_v_head_dim_shapes_and_cache_layout():
    """v_proj gives num_kv_heads * Dv, o_proj reads num_query_heads * Dv; the value cache is [B, Hkv, P, Dv]."""
    attn = gqa(head_dim=12, v_head_dim=6)
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features,
            attn.o_proj.in_features) == (48, 24, 12, 24)
    with torch.no_grad():
        y, (k, v) = attn(randn(2, 3, MODEL_DIM), return_present=True)
    assert y.shape == (2, 3, MODEL_DIM) and k.shape == (2, 2, 3, 12) and v.shape == (2, 2, 3, 6)
    assert gqa(head_dim=12).v_head_dim == 12  # None: head_dim


def test_v_head_dim_merged_qkv_and_merge_match_oracle():
    x = randn(2, 5, MODEL_DIM)
    attn = gqa(head_dim=12, v_head_dim=6, bias=True)
    merged = gqa(head_dim=12, v_head_dim=6, merged_qkv=True)
    assert merged.qkv_proj.weight.shape == (48 + 24 + 12, MODEL_DIM)
    with torch.no_grad():
        np.testing.assert_allclose(merged(x).numpy(), module_oracle(merged, x).numpy(), atol=ATOL)
        before = attn(x)
        np.testing.assert_allclose(before.numpy(), module_oracle(attn, x).numpy(), atol=ATOL)
        attn.merge_qkv()
        assert attn.qkv_proj.weight.shape == (48 + 24 + 12, MODEL_DIM)
        np.testing.assert_allclose(attn(x).numpy(), before.numpy(), atol=1e-6)


def test_v_head_dim_with_sinks_matches_oracle():
    """MiMo-V2-Flash's sliding layers: Dv != D with attention sinks and a window."""
    attn = gqa(head_dim=12, v_head_dim=6, sinks=True, window=3)
    with torch.no_grad():
        attn.sinks.copy_(randn(4, seed=5))
        x = randn(2, 5, MODEL_DIM)
        expected = module_oracle(attn, x, sinks=attn.sinks)
        np.testing.assert_allclose(attn(x).numpy(), expected.numpy(), atol=ATOL)
        no_sinks = gqa(head_dim=12, v_head_dim=6, window=3)
        no_sinks.load_state_dict({k: t for k, t in attn.state_dict().items() if k != "sinks"})
        assert np.abs(no_sinks(x).numpy() - attn(x).numpy()).max() > 1e-3  # the sinks take part


def test_v_head_dim_band_matches_sdpa_oracle():
    band = make(LocalAttention, MODEL_DIM, 4, 2, window=2, kind="band", rope=None, head_dim=12, v_head_dim=6)
    x = randn(2, 7, MODEL_DIM)
    q, k, v = (np64(t.unflatten(-1, (h, d)).transpose(1, 2))
               for t, h, d in zip(band.project(x), (4, 2, 2), (12, 12, 6)))
    y, _ = sdpa_oracle(q, k, v, band=2, causal=0)
    expected = band.o_proj(torch.from_numpy(y).transpose(1, 2).flatten(2).float())
    with torch.no_grad():
        np.testing.assert_allclose(band(x).numpy(), expected.detach().numpy(), atol=ATOL)


def test_v_head_dim_paged_equals_concatenation():
    """Paged pools [N, block, Hkv, Dv] for the values: one packed step over two fresh sequences equals each
    sequence run alone."""
    attn = gqa(head_dim=12, v_head_dim=6)
    cache = PagedKVCache([(2, 12, 6)], 8, 4)
    lengths = [3, 6]
    x = randn(sum(lengths), MODEL_DIM)
    for i in range(len(lengths)):
        cache.add(i)
    with torch.no_grad():
        got = attn(x, paged=cache.step(range(len(lengths)), lengths))
        np.testing.assert_allclose(got[:3].numpy(), attn(x[None, :3])[0].numpy(), atol=ATOL)
        np.testing.assert_allclose(got[3:].numpy(), attn(x[None, 3:])[0].numpy(), atol=ATOL)


def test_v_head_dim_must_be_positive():
    with pytest.raises(ValueError, match=r"v_head_dim must be >= 1 \(None: head_dim\), got 0"):
        gqa(v_head_dim=0)
