"""One representative call of every op, taken from its numerics suite (model and inputs), for the load,
concurrency and determinism tests. Each exercises the op's richest CPU path: GQA groups, masks or windows,
caches, RoPE, per-sequence lengths."""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import onnx


@dataclasses.dataclass(frozen=True)
class Call:
    op: str
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]

    def perturbed(self, k: int) -> dict[str, np.ndarray]:
        """The feeds with every float input scaled by 1 + k/16 (index inputs kept): k distinct problems."""
        return {n: (v * np.asarray(1 + k / 16, v.dtype) if np.issubdtype(v.dtype, np.floating) else v)
                for n, v in self.feeds.items()}


# op -> (numerics module, case id, how the module gives that case's feeds)
SOURCES = {
    "ScaledDotProductAttention": ("test_sdpa_numerics", "mask-bool-band-gqa", lambda m, c: m.problem_of(c.id).feeds),
    "GroupQueryAttention": ("test_gqa_numerics", "everything-shared", lambda m, c: m.feeds_of(c.id)),
    "PagedAttention": ("test_paged_numerics", "everything", lambda m, c: m.feeds_of(c.id)),
    "MultiHeadLatentAttention": ("test_mla_numerics", "decode-wide-h16-b2", lambda m, c: m.feeds_of(c.id)),
    "NativeSparseAttention": ("test_sparse_numerics", "nsa-paper-chunk-b2",
                              lambda m, c: m.feeds_in(c.dtype, **m.arrays_of(c.id))),
    "SparseRoutedAttention": ("test_sparse_numerics", "routed-moba-decode-b2",
                              lambda m, c: m.feeds_in(c.dtype, **m.arrays_of(c.id))),
    "LightningIndexer": ("test_indexer_numerics", "shared-chunk-b2", lambda m, c: m.feeds_of(c.id)),
}


def call(op: str, case_id: str | None = None) -> Call:
    """The op's representative call, or case `case_id` of its numerics suite."""
    name, default, feeds_of = SOURCES[op]
    module = importlib.import_module(name)
    case = module.CASES_BY_ID[case_id or default]
    return Call(op, module.model_of(case), dict(feeds_of(module, case)))


def case_ids(op: str) -> list[str]:
    """Every case id of the op's numerics suite (the sparse suite holds both sparse ops)."""
    name = SOURCES[op][0]
    module = importlib.import_module(name)
    prefix = {"NativeSparseAttention": "nsa-", "SparseRoutedAttention": "routed-"}.get(op, "")
    return [i for i in module.CASES_BY_ID if i.startswith(prefix) and not i.startswith("fuzz-")]
