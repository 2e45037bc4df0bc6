"""The torch side of ScaledDotProductAttention: the module and the functional against the oracle,
gradients (gradcheck in float64), the custom-op registration, and the structural mask helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from oracle import sdpa_oracle, structural_visibility
from onnxattn.export import _torch_ops
from onnxattn.nn import AttentionMask, ScaledDotProductAttention, build_causal_sliding_window_mask
from onnxattn.nn.functional import scaled_dot_product_attention as sdpa

ATOL = 1e-5  # float32, unit-normal inputs (see test_sdpa_numerics.py)


def qkv(b=1, hq=2, hkv=2, sq=5, skv=5, d=8, dv=None, dtype=torch.float32, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    dv = d if dv is None else dv
    shapes = ((b, hq, sq, d), (b, hkv, skv, d), (b, hkv, skv, dv))
    return tuple(torch.randn(s, generator=g, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)
                 for s in shapes)


def oracle(q, k, v, mask=None, **attrs):
    np_mask = None if mask is None else mask.detach().double().numpy() if mask.is_floating_point() else mask.numpy()
    return sdpa_oracle(q.detach().double().numpy(), k.detach().double().numpy(), v.detach().double().numpy(),
                       np_mask, **attrs)


# (id, module kwargs, shapes, mask kind) for module vs oracle
MODULE_CASES = [
    ("default-is-causal", {}, dict(sq=5, skv=9), None),
    ("bidirectional", {"causal": False}, dict(sq=5, skv=9), None),
    ("window", dict(window=3), dict(sq=9, skv=9), None),
    ("band-noncausal", dict(causal=False, band=2), dict(sq=9, skv=9), None),
    ("gqa", dict(num_query_heads=6, num_kv_heads=2), dict(hq=6, hkv=2, sq=4, skv=7), None),
    ("scale-softcap", dict(scale=0.7, softcap=1.5), dict(d=16), None),
    ("bool-mask", {}, dict(b=2, sq=6, skv=6), "bool"),
    ("additive-mask", dict(causal=False), dict(b=2, sq=6, skv=6), "additive"),
    ("empty-rows", {}, dict(sq=7, skv=3), None),
    ("dv-ne-d", {}, dict(d=8, dv=3), None),
]


def make_mask(kind, q, k, seed=1):
    if kind is None:
        return None
    g = torch.Generator().manual_seed(seed)
    shape = (q.shape[0], 1, q.shape[2], k.shape[2])
    if kind == "bool":
        return torch.rand(shape, generator=g) < 0.7
    return torch.randn(shape, generator=g, dtype=torch.float64).to(q.dtype)


@pytest.mark.parametrize("return_lse", [False, True])
@pytest.mark.parametrize("kwargs, shapes, mask_kind", [pytest.param(*c[1:], id=c[0]) for c in MODULE_CASES])
def test_module_matches_oracle(kwargs, shapes, mask_kind, return_lse):
    module = ScaledDotProductAttention(**kwargs)
    q, k, v = qkv(**shapes)
    mask = make_mask(mask_kind, q, k)
    out = module(q, k, v, mask, return_lse=return_lse)
    y, lse = out if return_lse else (out, None)
    attrs = dict(causal=int(module.mask.causal), window=module.mask.window, band=module.mask.band,
                 scale=kwargs.get("scale") or 0.0, softcap=module.softcap)
    y_ref, lse_ref = oracle(q, k, v, mask, **attrs)
    assert y.dtype == q.dtype and y.shape == y_ref.shape
    np.testing.assert_allclose(y.numpy(), y_ref, atol=ATOL, rtol=ATOL)
    if return_lse:
        assert lse.dtype == torch.float32
        np.testing.assert_allclose(lse.numpy(), lse_ref, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_functional_dtypes(dtype):
    """Y keeps the input dtype; LSE is float32 (float64 for float64 inputs, for gradcheck); 16-bit inputs
    are computed in float32, so Y is the float32 result rounded once."""
    q, k, v = qkv(dtype=dtype, sq=4, skv=6)
    y, lse = sdpa(q, k, v, causal=True, return_lse=True)
    assert y.dtype == dtype
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    y_ref, lse_ref = oracle(q, k, v, causal=1)
    ulp = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7, torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    np.testing.assert_allclose(y.double().numpy(), y_ref, atol=ulp * 2, rtol=ulp)
    np.testing.assert_allclose(lse.double().numpy(), lse_ref, atol=1e-5, rtol=1e-5)


def test_functional_scale_none_means_inverse_sqrt_d():
    q, k, v = qkv(d=16)
    np.testing.assert_array_equal(sdpa(q, k, v).numpy(), sdpa(q, k, v, scale=1 / math.sqrt(16)).numpy())
    assert not np.allclose(sdpa(q, k, v).numpy(), sdpa(q, k, v, scale=1.0).numpy(), atol=1e-3)


def test_bidirectional_constructor():
    module = ScaledDotProductAttention.bidirectional(window=0, softcap=2.0)
    assert module.mask == AttentionMask(causal=False) and module.softcap == 2.0
    assert ScaledDotProductAttention().mask.causal  # causal by default
    q, k, v = qkv(sq=6, skv=6)
    np.testing.assert_allclose(module(q, k, v).numpy(), oracle(q, k, v, softcap=2.0)[0], atol=ATOL)
    assert "causal=False" in repr(module)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_query_heads=6, num_kv_heads=4), "multiple of num_kv_heads"),
        (dict(window=-1), "window must be >= 0"),
        (dict(band=-2), "band must be >= 0"),
        (dict(softcap=-1.0), "softcap must be finite and >= 0"),
        (dict(softcap=math.inf), "softcap must be finite and >= 0"),
        (dict(scale=math.nan), "scale must be finite"),
    ],
    ids=["heads-not-divisible", "negative-window", "negative-band", "negative-softcap", "inf-softcap", "nan-scale"],
)
def test_module_rejects_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScaledDotProductAttention(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(window=-1), "window must be >= 0"),
        (dict(band=-1), "band must be >= 0"),
        (dict(softcap=-0.5), "softcap must be finite and >= 0"),
        (dict(scale=math.inf), "scale must be finite"),
    ],
    ids=["negative-window", "negative-band", "negative-softcap", "inf-scale"],
)
def test_functional_rejects_bad_attributes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sdpa(*qkv(), **kwargs)


@pytest.mark.parametrize(
    "shapes, message",
    [(dict(hq=4, hkv=2), "q has 4 heads, expected 6"), (dict(hq=6, hkv=3), "k has 3 heads, expected 2")],
    ids=["query-heads", "kv-heads"],
)
def test_module_checks_head_counts(shapes, message):
    module = ScaledDotProductAttention(num_query_heads=6, num_kv_heads=2)
    with pytest.raises(ValueError, match=message):
        module(*qkv(**shapes))


# ---------------------------------------------------------------------------------------------------------
# Gradients: float64 gradcheck through the custom op's registered autograd

# (id, functional kwargs, shapes, mask kind)
GRAD_CASES = [
    ("plain", {}, dict(sq=3, skv=4), None),
    ("causal-chunk", dict(causal=True), dict(sq=3, skv=5), None),
    ("causal-empty-rows", dict(causal=True), dict(sq=5, skv=3), None),  # rows 0, 1 see nothing: zero grads
    ("window", dict(causal=True, window=2), dict(sq=5, skv=5), None),
    ("band", dict(band=1), dict(sq=4, skv=6), None),
    ("gqa-4-over-2", dict(causal=True), dict(hq=4, hkv=2, sq=3, skv=3), None),
    ("bool-mask", {}, dict(sq=3, skv=4), "bool"),
    ("additive-mask-grad", {}, dict(sq=3, skv=4), "additive"),
    ("softcap-scale", dict(softcap=1.3, scale=0.9), dict(sq=3, skv=4), None),
    ("dv-ne-d", dict(causal=True), dict(d=4, dv=3, sq=3, skv=3), None),
]


@pytest.mark.parametrize("return_lse", [False, True])
@pytest.mark.parametrize("kwargs, shapes, mask_kind", [pytest.param(*c[1:], id=c[0]) for c in GRAD_CASES])
def test_gradcheck(kwargs, shapes, mask_kind, return_lse):
    q, k, v = qkv(dtype=torch.float64, d=shapes.pop("d", 4), requires_grad=True, **shapes)
    mask = make_mask(mask_kind, q, k)
    inputs = [q, k, v]
    if mask is not None and mask.is_floating_point():
        mask.requires_grad_(True)
        inputs.append(mask)

    def f(*args):
        m = args[3] if len(args) > 3 else mask
        out = sdpa(*args[:3], m, return_lse=return_lse, **kwargs)
        if not return_lse:
            return out
        y, lse = out
        return y, torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)  # -inf rows have no gradient

    assert torch.autograd.gradcheck(f, tuple(inputs), eps=1e-6, atol=1e-5)


def test_empty_rows_have_zero_finite_gradients():
    q, k, v = qkv(dtype=torch.float64, sq=5, skv=3, requires_grad=True)
    y, lse = sdpa(q, k, v, causal=True, return_lse=True)
    assert torch.isneginf(lse[:, :, :2]).all() and (y[:, :, :2] == 0).all()
    y.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[:, :, :2] == 0).all()


def test_module_is_trainable_through_projections():
    """A module with parameters before the attention core gets gradients through it."""
    torch.manual_seed(0)
    proj = torch.nn.Linear(8, 3 * 8)
    attn = ScaledDotProductAttention(window=2)
    x = torch.randn(2, 5, 8)
    q, k, v = proj(x).view(2, 5, 3, 1, 8).permute(2, 0, 3, 1, 4)
    attn(q, k, v).square().mean().backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("with_lse", [False, True])
def test_custom_op_registration(with_lse):
    """torch.library.opcheck: schema, fake (meta) kernel, autograd registration and export-ability."""
    op = torch.ops.onnxattn.scaled_dot_product_attention_lse if with_lse else torch.ops.onnxattn.scaled_dot_product_attention
    q, k, v = qkv(hq=4, hkv=2, sq=3, skv=5, d=4, dv=3, requires_grad=True)
    mask = torch.zeros(1, 1, 3, 5, requires_grad=True)
    torch.library.opcheck(op, (q, k, v, mask, True, 2, 0, 0.0, 0.0))
    torch.library.opcheck(op, (q, k, v, None, False, 0, 1, 0.5, 2.0))
    assert _torch_ops.scaled_dot_product_attention is not None  # the module defines the ops


# ---------------------------------------------------------------------------------------------------------
# Structural masks

MASK_GRID = [
    (sq, skv, causal, window, band)
    for sq, skv in ((1, 1), (1, 9), (4, 9), (9, 4), (7, 7))
    for causal in (False, True)
    for window in (0, 1, 3)
    for band in (0, 2)
]


@pytest.mark.parametrize("sq, skv, causal, window, band", MASK_GRID)
def test_attention_mask_materialize_and_key_range_match_oracle(sq, skv, causal, window, band):
    mask = AttentionMask(causal, window, band)
    expected = structural_visibility(sq, skv, causal=int(causal), window=window, band=band)
    np.testing.assert_array_equal(mask.materialize(sq, skv).numpy(), expected)
    for i in range(sq):
        begin, end = mask.key_range(i, sq, skv)
        assert 0 <= begin <= end <= skv
        np.testing.assert_array_equal(np.arange(skv)[expected[i]], np.arange(begin, end))


@pytest.mark.parametrize("field", ["window", "band"])
def test_attention_mask_rejects_negative(field):
    with pytest.raises(ValueError, match=f"{field} must be >= 0"):
        AttentionMask(**{field: -1})


@pytest.mark.parametrize("seq_len, window", [(1, 0), (6, 0), (6, 2), (6, 6), (6, 10), (6, -3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_build_causal_sliding_window_mask(seq_len, window, dtype):
    mask = build_causal_sliding_window_mask(seq_len, window, dtype=dtype)
    assert mask.shape == (1, 1, seq_len, seq_len) and mask.dtype == dtype
    visible = structural_visibility(seq_len, seq_len, causal=1, window=max(window, 0))
    np.testing.assert_array_equal(mask[0, 0].numpy() == 0, visible)
    assert (mask[0, 0][~torch.from_numpy(visible)] == torch.finfo(dtype).min).all()


def test_additive_sliding_window_mask_equals_structural_window():
    """The additive mask (finfo.min, not -inf) gives the same attention as causal + window attributes."""
    q, k, v = qkv(sq=8, skv=8)
    additive = build_causal_sliding_window_mask(8, 3)
    np.testing.assert_allclose(sdpa(q, k, v, additive).numpy(), sdpa(q, k, v, causal=True, window=3).numpy(),
                               atol=1e-6)
