"""The torch side of PagedAttention: GroupedQueryAttention with a PagedKVCache in eager generation equals the
same module with a contiguous KVCache (ragged steps mixing prefill chunks and decodes, windows, RoPE
variants, QK-norm, prefix sharing with copy-on-write); the custom op's backward; export to one
PagedAttention node per use (explicit attributes, unused cache outputs dropped) and the exported module on
every path; the end-to-end serving example (models/paged_serving.py).

Tolerance: float32 end to end on unit-scale inputs, 2e-5 absolute (as test_gqa_modules.py): the paged and
contiguous runs differ only in float32 summation order.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from model_helpers import one_torch_thread  # noqa: F401  (autouse fixture)

from helpers import kernel_ops_run, run_onnx_reference, session_options
from onnxattn import ops
from onnxattn.cuda_ep import make_session
from onnxattn.nn import GroupedQueryAttention, KVCache, LocalAttention, Rope, RopeScaling
from onnxattn.nn.functional import paged_attention
from onnxattn.nn.paged_cache import PagedKVCache, PagedStep
from onnxattn.ops import paged

ATOL = 2e-5
DIM = 32


MODULES = {
    "rope": lambda: GroupedQueryAttention(DIM, 4, 2),
    "window": lambda: GroupedQueryAttention(DIM, 4, 2, window=3),
    "qk-norm-partial-rope": lambda: GroupedQueryAttention(DIM, 4, 2, qk_norm=True, rope=Rope(rotary_dim=4)),
    "scaled-rope-mqa": lambda: GroupedQueryAttention(DIM, 4, 1, rope=Rope(scaling=RopeScaling("linear", factor=4.0))),
    "no-rope-bias-softcap": lambda: GroupedQueryAttention(DIM, 4, 4, rope=None, bias=True, softcap=2.0),
    "sliding-local": lambda: LocalAttention(DIM, 4, 2, window=4),
}


def _module(name: str, layer_idx: int = 0):
    torch.manual_seed(len(name))
    m = MODULES[name]()
    m.layer_idx = layer_idx
    with torch.no_grad():
        if m.q_norm is not None:
            m.q_norm.uniform_(0.5, 1.5)
            m.k_norm.uniform_(0.5, 1.5)
    return m.eval()


# Steps of a run over 3 sequences: {sequence: new tokens}. Prefill chunks and decodes mix; a sequence joins
# late; one feeds nothing for a step.
SCHEDULE = [{0: 5, 1: 2}, {0: 1, 1: 4, 2: 3}, {0: 1, 1: 1, 2: 0}, {0: 3, 1: 1, 2: 1}, {2: 7, 0: 1}]


def _contiguous_outputs(module, tokens: dict[int, torch.Tensor]) -> dict[int, list[torch.Tensor]]:
    """Each sequence alone, step by step, with a contiguous KVCache: its outputs per step."""
    out = {}
    for seq, x in tokens.items():
        cache, start, rows = KVCache(), 0, []
        for step in SCHEDULE:
            n = step.get(seq, 0)
            if n:
                rows.append(module(x[None, start: start + n], cache=cache)[0])
                start += n
            else:
                rows.append(x.new_zeros(0, DIM))
        out[seq] = rows
    return out


@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_module_paged_equals_contiguous(name: str, block_size: int):
    module = _module(name)
    g = torch.Generator().manual_seed(block_size)
    tokens = {s: torch.randn(sum(step.get(s, 0) for step in SCHEDULE), DIM, generator=g) for s in range(3)}
    with torch.no_grad():
        expected = _contiguous_outputs(module, tokens)
        cache = PagedKVCache([(module.num_kv_heads, module.head_dim, module.head_dim)], 40, block_size, fill=float("nan"))
        fed = {s: 0 for s in range(3)}
        for i, step_counts in enumerate(SCHEDULE):
            for s in step_counts:
                if s not in cache:
                    cache.add(s)
            seqs = list(step_counts)
            step = cache.step(seqs, [step_counts[s] for s in seqs])
            x = torch.cat([tokens[s][fed[s]: fed[s] + step_counts[s]] for s in seqs])
            y = module(x, paged=step)
            rows = torch.split(y, [step_counts[s] for s in seqs])
            for s, got in zip(seqs, rows):
                torch.testing.assert_close(got, expected[s][i], atol=ATOL, rtol=0)
                fed[s] += step_counts[s]
        assert cache.key_caches[0] is step.key_caches[0]  # the step updated the cache's pool list


def test_prefix_sharing_and_copy_on_write_with_the_module():
    """b shares a's first 6 tokens (a partly filled block); both go on with different tokens. Each equals its
    own contiguous run, and b's writes never change a's blocks."""
    module = _module("rope")
    g = torch.Generator().manual_seed(0)
    prompt, a_more, b_more = (torch.randn(n, DIM, generator=g) for n in (9, 3, 4))
    with torch.no_grad():
        cache_a, cache_b = KVCache(), KVCache()
        module(prompt[None], cache=cache_a)
        module(prompt[None, :6], cache=cache_b)
        want_a, want_b = module(a_more[None], cache=cache_a)[0], module(b_more[None], cache=cache_b)[0]

        cache = PagedKVCache([(2, 8, 8)], 16, 4, fill=float("nan"))
        cache.add("a")
        module(prompt, paged=cache.step(["a"], [9]))
        cache.fork("a", "b", 6)
        a_blocks = cache.blocks("a")
        snapshot = [p[a_blocks].clone() for p in cache.key_caches + cache.value_caches]
        y = module(b_more, paged=cache.step(["b"], [4]))  # copy-on-write of block 1
        torch.testing.assert_close(y, want_b, atol=ATOL, rtol=0)
        for pool, old in zip(cache.key_caches + cache.value_caches, snapshot):
            assert torch.equal(pool[a_blocks].nan_to_num(7.0), old.nan_to_num(7.0)), "b's write changed a's blocks"
        y = module(a_more, paged=cache.step(["a"], [3]))
        torch.testing.assert_close(y, want_a, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(x=torch.zeros(1, 3, DIM)), r"with paged, x must be the packed tokens \[T, model_dim\], got shape \[1, 3, 32\]"),
    (dict(cache=KVCache()), r"paged takes the cache from the PagedStep; cache cannot be combined with it"),
    (dict(attention_mask=torch.ones(1, 3, dtype=torch.bool)), r"attention_mask cannot be combined"),
], ids=["batched-x", "with-kvcache", "with-mask"])
def test_module_paged_misuse(kwargs, message):
    module = _module("rope")
    cache = PagedKVCache([(2, 8, 8)], 4, 4)
    cache.add(0)
    step = cache.step([0], [3])
    x = kwargs.pop("x", torch.zeros(3, DIM))
    with pytest.raises(ValueError, match=message):
        module(x, paged=step, **kwargs)


def test_module_layer_without_pools():
    cache = PagedKVCache([(2, 8, 8)], 4, 4)
    cache.add(0)
    with pytest.raises(IndexError, match=r"no pools for layer 1 \(the step carries 1 layers\)"):
        _module("rope", layer_idx=1)(torch.zeros(2, DIM), paged=cache.step([0], [2]))


def test_band_local_attention_rejects_paged():
    cache = PagedKVCache([(2, 8, 8)], 4, 4)
    cache.add(0)
    with pytest.raises(ValueError, match=r"has no KV cache support"):
        LocalAttention(DIM, 4, 2, window=2, kind="band")(torch.zeros(1, 2, DIM), paged=cache.step([0], [2]))


def test_backward_matches_finite_differences():
    """The custom op's backward (recomputed through the torch reference, as the other ops) in float64."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    q, k, v, kc, vc = r(4, 16), r(4, 8), r(4, 8), r(5, 2, 2, 4), r(5, 2, 2, 4)
    index = dict(block_table=torch.tensor([[3, 1], [0, 4]], dtype=torch.int32),
                 cu_seqlens_q=torch.tensor([0, 1, 4], dtype=torch.int32), seq_lens=torch.tensor([4, 3], dtype=torch.int32))

    def f(q, k, v, kc, vc):
        return paged_attention(q, k, v, kc, vc, **index, num_heads=4, kv_num_heads=2, rope=True)

    assert torch.autograd.gradcheck(f, (q, k, v, kc, vc))


# ---------------------------------------------------------------------------------------------------------
# Export


class _Layer(torch.nn.Module):
    """One attention layer over a step given as tensors (what a serving graph takes)."""

    def __init__(self, module, return_pools: bool = True):
        super().__init__()
        self.attn, self.return_pools = module, return_pools
        self.train(module.training)

    def forward(self, x, block_table, cu_seqlens_q, seq_lens, key_cache, value_cache):
        step = PagedStep(block_table, cu_seqlens_q, seq_lens, [key_cache], [value_cache])
        y = self.attn(x, paged=step)
        return (y, step.key_caches[0], step.value_caches[0]) if self.return_pools else y


def _step_inputs(module, num_blocks: int = 12, block_size: int = 4):
    g = torch.Generator().manual_seed(1)
    cache = PagedKVCache([(module.num_kv_heads, module.head_dim, module.head_dim)], num_blocks, block_size)
    for s, past in enumerate((5, 0, 9)):
        cache.add(s)
        cache.reserve(s, past)
    with torch.no_grad():
        for pool in cache.key_caches + cache.value_caches:
            pool.normal_(generator=g)
    step = cache.step([0, 1, 2], [1, 4, 2])
    return (torch.randn(7, DIM, generator=g), step.block_table, step.cu_seqlens_q, step.seq_lens,
            cache.key_caches[0], cache.value_caches[0])


@pytest.fixture(scope="module")
def exported():
    import onnxattn.export

    module = _Layer(_module("qk-norm-partial-rope"))
    dims = {name: torch.export.Dim(name) for name in ("tokens", "batch", "max_blocks", "num_blocks")}
    dynamic = ({0: dims["tokens"]}, {0: dims["batch"], 1: dims["max_blocks"]}, {0: dims["batch"] + 1},
               {0: dims["batch"]}, {0: dims["num_blocks"]}, {0: dims["num_blocks"]})
    names = ["x", "block_table", "cu_seqlens_q", "seq_lens", "key_cache", "value_cache"]
    proto = onnxattn.export(module, _step_inputs(module.attn), dynamic_shapes=dynamic, input_names=names,
                            output_names=["y", "key_cache_out", "value_cache_out"])
    return module, proto


def test_export_emits_one_paged_attention_node_with_explicit_attributes(exported):
    module, proto = exported
    (node,) = ops.onnxattn_nodes(proto)
    assert node.op_type == paged.NAME and node.overload == "qnorm+knorm+present"
    assert sorted(a.name for a in node.attribute) == sorted(a.name for a in paged.SPEC.attrs)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["num_heads"] == 4 and attrs["kv_num_heads"] == 2 and attrs["rope"] == 1 and attrs["rotary_dim"] == 4
    assert [(f.name, f.overload) for f in proto.functions] == [(paged.NAME, "qnorm+knorm+present")]
    # the cache outputs are the node's own outputs (no copy between the kernel and the bound buffers)
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    assert producers["key_cache_out"] == producers["value_cache_out"] == paged.NAME
    assert list(node.input[3:5]) == ["key_cache", "value_cache"]
    onnx.checker.check_model(proto, full_check=True)


def test_export_drops_unused_cache_outputs():
    import onnxattn.export

    module = _Layer(_module("rope"), return_pools=False)
    proto = onnxattn.export(module, _step_inputs(module.attn))
    (node,) = ops.onnxattn_nodes(proto)
    assert len(node.output) == 1 and node.overload == ""


@pytest.mark.parametrize("path", ["kernel", "function-ort", "function-onnx-reference"])
@pytest.mark.parametrize("shape", ["traced", "other-sizes"])
def test_exported_layer_matches_eager(exported, path: str, shape: str):
    module, proto = exported
    inputs = _step_inputs(module.attn) if shape == "traced" else _step_inputs(module.attn, num_blocks=20, block_size=4)
    if shape == "other-sizes":  # another batch, token count and table width than traced
        cache = PagedKVCache([(2, 8, 8)], 20, 4)
        for s, past in enumerate((13, 2)):
            cache.add(s)
            cache.reserve(s, past)
        step = cache.step([0, 1], [2, 3])
        inputs = (torch.randn(5, DIM), step.block_table, step.cu_seqlens_q, step.seq_lens, inputs[4], inputs[5])
    with torch.no_grad():
        want = [t.numpy() for t in module(*(t.clone() for t in inputs))]
    feeds = dict(zip(["x", "block_table", "cu_seqlens_q", "seq_lens", "key_cache", "value_cache"],
                     (t.numpy() for t in inputs)))
    if path == "function-onnx-reference":
        got = run_onnx_reference(proto, feeds)
    else:
        options = session_options()
        options.enable_profiling = path == "kernel"
        session = make_session(proto, providers=["CPUExecutionProvider"], use_library=path == "kernel",
                               session_options=options)
        got = session.run(None, feeds)
        if path == "kernel":
            assert paged.NAME in kernel_ops_run(session), "the kernel did not run"
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=ATOL, rtol=0)
