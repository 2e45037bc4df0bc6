"""Gradients of GroupQueryAttention and its modules: torch.autograd.gradcheck in float64 on small shapes
(the custom op's backward recomputes the eager reference under autograd), including GQA with
1 < Hkv < Hq, QK-norm, partial RoPE, windows, a past cache in both modes, padded rows and attention sinks; and
torch.library.opcheck of the custom op's registration (schema, fake kernel, autograd)."""

from __future__ import annotations

import pytest
import torch

from onnxattn.nn import AttentionHead, GroupedQueryAttention, LocalAttention, Rope
from onnxattn.nn.functional import group_query_attention

F64 = torch.float64
B, S, HQ, HKV, D, DV = 2, 3, 4, 2, 4, 3


def rand(*shape, seed, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64).requires_grad_(requires_grad)


# (id, functional kwargs, past mode, extras): every case has 1 < Hkv < Hq
GRAD_CASES = [
    ("plain-causal", dict(), None, ()),
    ("rope-partial-window", dict(rope=True, rotary_dim=2, window=2), None, ()),
    ("qk-norm-rope-interleaved", dict(rope=True, rope_interleaved=True, qk_norm_epsilon=1e-3), None, ("norm",)),
    ("concat-past-rope-window", dict(rope=True, rotary_dim=2, window=3), "concat", ("norm",)),
    ("shared-buffer", dict(rope=True), "shared", ("norm",)),
    ("bidirectional-mask-empty-rows", dict(causal=False), "concat", ("mask",)),
    ("softcap-scale-positions", dict(rope=True, softcap=1.5, scale=0.7), "concat", ("positions",)),
    ("sinks-window-past", dict(rope=True, window=2), "concat", ("sinks",)),
    ("sinks-empty-rows", dict(causal=False), "concat", ("sinks", "mask")),
]


def functional_inputs(past: str | None, extras):
    """(differentiable tensors by name, fixed tensors by name) for one case."""
    grads = {"query": rand(B, S, HQ * D, seed=0), "key": rand(B, S, HKV * D, seed=1),
             "value": rand(B, S, HKV * DV, seed=2)}
    fixed: dict[str, torch.Tensor] = {}
    if past == "concat":
        grads.update(past_key=rand(B, HKV, 2, D, seed=3), past_value=rand(B, HKV, 2, DV, seed=4))
    elif past == "shared":
        grads.update(past_key=rand(B, HKV, 6, D, seed=3), past_value=rand(B, HKV, 6, DV, seed=4))
        fixed["past_lengths"] = torch.tensor([1, 3])
    if "norm" in extras:
        grads.update(q_norm_weight=rand(D, seed=5), k_norm_weight=rand(D, seed=6))
    if "mask" in extras:
        total = S + 2
        mask = torch.ones(B, total, dtype=torch.bool)
        mask[1] = False  # sequence 1 sees nothing: zero output, zero (finite) gradients
        mask[0, 1] = False
        fixed["attention_mask"] = mask
    if "positions" in extras:
        fixed["position_ids"] = torch.tensor([[5, 0, 1], [2, 3, 9]])
    if "sinks" in extras:
        grads["sinks"] = rand(HQ, seed=7)
    return grads, fixed


@pytest.mark.parametrize("kwargs, past, extras", [pytest.param(*c[1:], id=c[0]) for c in GRAD_CASES])
def test_functional_gradcheck(kwargs, past, extras):
    """Gradients w.r.t. query, key, value, the past cache and the norm weights, through all three outputs
    (the present caches are differentiable too)."""
    grads, fixed = functional_inputs(past, extras)
    names = list(grads)

    def f(*tensors):
        inputs = dict(zip(names, tensors), **fixed)
        return group_query_attention(**inputs, num_heads=HQ, kv_num_heads=HKV, **kwargs)

    assert torch.autograd.gradcheck(f, tuple(grads.values()), eps=1e-6, atol=1e-5)


def test_empty_rows_get_zero_finite_gradients():
    grads, fixed = functional_inputs("concat", ("mask",))
    out, _, _ = group_query_attention(**grads, **fixed, num_heads=HQ, kv_num_heads=HKV, causal=False)
    assert (out[1] == 0).all()
    out.sum().backward()
    for name, t in grads.items():
        assert torch.isfinite(t.grad).all(), name
    assert (grads["query"].grad[1] == 0).all()


def test_gqa_key_gradient_sums_over_the_query_group():
    """Repeat-each: the gradient of KV head g collects the query heads g*G .. g*G+G-1 only. Zeroing the
    upstream gradient of query heads 0 and 1 (the group of KV head 0) leaves KV head 0 without gradient."""
    grads, _ = functional_inputs(None, ())
    out, _, _ = group_query_attention(**grads, num_heads=HQ, kv_num_heads=HKV)
    upstream = torch.ones_like(out).unflatten(-1, (HQ, DV))
    upstream[:, :, :2] = 0
    out.backward(upstream.flatten(-2))
    key_grad = grads["key"].grad.unflatten(-1, (HKV, D))
    assert (key_grad[:, :, 0] == 0).all() and (key_grad[:, :, 1] != 0).any()


def module_gradcheck(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], call) -> None:
    """gradcheck w.r.t. the inputs and every parameter of `module` (through torch.func.functional_call)."""
    params = {n: p.detach().clone().requires_grad_(True) for n, p in module.named_parameters()}
    names = list(params)

    def f(*tensors):
        state = dict(zip(names, tensors[len(inputs):]))
        return call(lambda *a, **k: torch.func.functional_call(module, state, a, k), *tensors[: len(inputs)])

    assert torch.autograd.gradcheck(f, (*inputs, *params.values()), eps=1e-6, atol=1e-5)


def test_grouped_query_attention_module_gradcheck():
    """GQA 4 over 2 heads, QK-norm, partial RoPE, a window, attention sinks and a past cache: gradients w.r.t.
    the input, the past cache and every parameter (projections with biases, norm weights, sinks)."""
    torch.manual_seed(0)
    attn = GroupedQueryAttention(6, 4, 2, head_dim=4, bias=True, qk_norm=True, window=3, sinks=True,
                                 rope=Rope(rotary_dim=2)).to(F64)
    with torch.no_grad():
        attn.sinks.copy_(torch.tensor([0.3, -1.0, 1.5, 0.0]))
    x, pk, pv = rand(2, 3, 6, seed=1), rand(2, 2, 2, 4, seed=2), rand(2, 2, 2, 4, seed=3)

    def call(module, x, pk, pv):
        y, (k, v) = module(x, past_key=pk, past_value=pv, return_present=True)
        return y, k, v

    module_gradcheck(attn, (x, pk, pv), call)


def test_grouped_query_attention_module_with_kv_cache_is_trainable():
    """Two steps through a KVCache: the loss on the second step reaches the first step's input through
    the cached keys and values."""
    torch.manual_seed(0)
    attn = GroupedQueryAttention(8, 4, 2, qk_norm=True).to(F64)
    from onnxattn.nn import KVCache

    x = rand(1, 4, 8, seed=1)
    cache = KVCache()
    attn(x[:, :3], cache=cache)
    attn(x[:, 3:], cache=cache).square().sum().backward()
    assert x.grad is not None and x.grad[:, :3].abs().sum() > 0
    assert attn.k_norm.grad is not None and attn.k_norm.grad.abs().sum() > 0


@pytest.mark.parametrize("causal", [False, True])
def test_local_band_module_gradcheck(causal):
    torch.manual_seed(0)
    band = LocalAttention(6, 4, 2, head_dim=2, window=1, kind="band", causal=causal, qk_norm=True).to(F64)
    module_gradcheck(band, (rand(2, 4, 6, seed=1),), lambda module, x: module(x))


@pytest.mark.parametrize("causal", [False, True])
def test_attention_head_gradcheck(causal):
    torch.manual_seed(0)
    head = AttentionHead(5, 3, causal=causal, bias=True).to(F64)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    module_gradcheck(head, (rand(2, 4, 5, seed=1),), lambda module, x: module(x, mask))


FAST_OPCHECKS = ("test_schema", "test_autograd_registration", "test_faketensor")
OPCHECK_ARGS = [  # the slow AOT-dispatch check (~3 s) on one set of arguments
    pytest.param(dict(), FAST_OPCHECKS, id="plain"),
    pytest.param(dict(past=True, rope=True, norm=True), FAST_OPCHECKS, id="concat-rope-norm"),
    pytest.param(dict(past=True, shared=True, mask=True, rope=True), (*FAST_OPCHECKS, "test_aot_dispatch_dynamic"),
                 id="shared-mask"),
    pytest.param(dict(past=True, sinks=True), FAST_OPCHECKS, id="concat-sinks"),
]


@pytest.mark.parametrize("setup, checks", OPCHECK_ARGS)
def test_custom_op_registration(setup, checks):
    """torch.library.opcheck: schema, fake (meta) kernel, autograd registration, export-ability."""
    op = torch.ops.onnxattn.group_query_attention
    q, k, v = rand(B, S, HQ * D, seed=0), rand(B, S, HKV * D, seed=1), rand(B, S, HKV * DV, seed=2)
    pk = pv = lengths = qn = kn = mask = sinks = None
    if setup.get("past"):
        length = 7 if setup.get("shared") else 2
        pk, pv = rand(B, HKV, length, D, seed=3), rand(B, HKV, length, DV, seed=4)
    if setup.get("shared"):
        lengths = torch.tensor([0, 4])
    if setup.get("norm"):
        qn, kn = rand(D, seed=5), rand(D, seed=6)
    if setup.get("mask"):
        mask = torch.rand(B, pk.shape[2], generator=torch.Generator().manual_seed(0)) < 0.8
    if setup.get("sinks"):
        sinks = rand(HQ, seed=7)
    rope = bool(setup.get("rope"))
    args = (q, k, v, pk, pv, lengths, None, qn, kn, None, mask, sinks, HQ, HKV, True, 2, 0, 0.0, 0.0, rope, 10000.0, 0,
            False, 1.0, 1e-6)
    torch.library.opcheck(op, args, test_utils=checks)
