"""ctypes bindings of PagedAttention's CUDA test entry points (onnxattn/cuda_ep/csrc/paged/cuda_capi.cc).

`plan()` reaches the pure-host plan (usable without a GPU); `run()` runs the whole op (pool copy when the
outputs are other buffers, layout and new-token kernels, the attention core's ragged launches) on torch
CUDA tensors without onnxruntime. The Structures mirror the C structs field for field.
"""

from __future__ import annotations

import ctypes
import functools
import math
from dataclasses import dataclass

import sdpa_cuda_lib as sdpa
from sdpa_cuda_lib import BFLOAT16, FLOAT16, FLOAT32, H100, KERNELS, PATHS, Device, PlanInfo, device_struct  # noqa: F401


class Problem(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in (
        "tokens", "batch", "q_heads", "kv_heads", "head_dim", "v_head_dim", "num_blocks", "block_size", "max_blocks",
        "window", "rotary_dim")] + [(n, ctypes.c_int32) for n in (
        "dtype", "causal", "rope", "rope_interleaved", "has_position_ids", "q_norm", "k_norm", "has_inv_freq")] + [
        (n, ctypes.c_float) for n in (
        "softcap", "scale", "rope_base", "rope_attention_scaling", "qk_norm_epsilon")] + [
        ("has_sinks", ctypes.c_int32), ("attention_chunk", ctypes.c_int64)]  # fmt: skip


class PagedPlanInfo(ctypes.Structure):
    _fields_ = [("decode", PlanInfo), ("prefill", PlanInfo)] + [(n, ctypes.c_int64) for n in (
        "decode_work_tiles", "prefill_work_tiles", "decode_max_queries", "schedule_grid", "q_len", "kv_len",
        "block_table_stride", "num_blocks")] + [(n, ctypes.c_int64 * 3) for n in (
        "q_strides", "k_strides", "v_strides", "y_strides")] + [(n, ctypes.c_int64) for n in (
        "layout_blocks", "append_rows", "append_blocks", "totals_offset", "decode_items_offset",
        "prefill_items_offset", "decode_offset", "prefill_offset", "core_scratch_bytes", "layout_offset",
        "core_offset", "key_pool_offset", "value_pool_offset", "scratch_bytes")] + [
        ("pools_in_scratch", ctypes.c_int32), ("sinks", ctypes.c_int32), ("lse_offset", ctypes.c_int64),
        ("reason", ctypes.c_char * 1024)]  # fmt: skip

    def as_dict(self) -> dict:
        out = {}
        for name, _ in self._fields_:
            value = getattr(self, name)
            if name in ("decode", "prefill"):
                value = value.as_dict() if value.grid > 0 else None
            elif isinstance(value, ctypes.Array) and name != "reason":
                value = tuple(value)
            elif name == "reason":
                value = value.decode()
            elif name in ("pools_in_scratch", "sinks"):
                value = bool(value)
            out[name] = value
        return out


TENSORS = ("query", "key", "value", "key_cache", "value_cache", "block_table", "cu_seqlens_q", "seq_lens",
           "position_ids", "q_norm_weight", "k_norm_weight", "inv_freq", "output", "key_cache_out",
           "value_cache_out", "sinks")  # fmt: skip


class Tensors(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in TENSORS]


PagedCudaError = sdpa.SdpaCudaError


@functools.lru_cache(maxsize=None)
def load() -> ctypes.CDLL:
    lib = sdpa.load()
    lib.OnnxAttnPagedCudaPlan.restype = ctypes.c_int
    lib.OnnxAttnPagedCudaPlan.argtypes = [
        ctypes.POINTER(Problem), ctypes.POINTER(Device), ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,
        ctypes.c_int32, ctypes.POINTER(PagedPlanInfo), ctypes.c_char_p, ctypes.c_size_t,
    ]  # fmt: skip
    lib.OnnxAttnPagedCudaRunForTest.restype = ctypes.c_int
    lib.OnnxAttnPagedCudaRunForTest.argtypes = [
        ctypes.POINTER(Problem), ctypes.POINTER(Tensors), ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p,
        ctypes.c_size_t, ctypes.c_void_p, ctypes.POINTER(PagedPlanInfo), ctypes.c_char_p, ctypes.c_size_t,
    ]  # fmt: skip
    return lib


@dataclass
class Spec:
    """One PagedAttention problem: shapes, which optional inputs exist, attributes."""

    tokens: int = 1
    batch: int = 1
    q_heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    v_head_dim: int | None = None
    num_blocks: int = 8
    block_size: int = 16
    max_blocks: int = 4
    position_ids: bool = False
    q_norm: bool = False
    k_norm: bool = False
    inv_freq: bool = False
    sinks: bool = False
    causal: int = 1
    window: int = 0
    attention_chunk: int = 0
    softcap: float = 0.0
    scale: float = 0.0
    rope: int = 0
    rope_base: float = 10000.0
    rotary_dim: int = 0
    rope_interleaved: int = 0
    rope_attention_scaling: float = 1.0
    qk_norm_epsilon: float = 1e-6
    dtype: int = FLOAT16

    def problem(self) -> Problem:
        p = Problem()
        skip = ("has_position_ids", "has_inv_freq", "has_sinks", "v_head_dim")
        for name, _ in Problem._fields_:
            if name not in skip:
                value = getattr(self, name)
                setattr(p, name, int(value) if isinstance(value, bool) else value)
        p.v_head_dim = self.head_dim if self.v_head_dim is None else self.v_head_dim
        p.has_position_ids, p.has_inv_freq, p.has_sinks = int(self.position_ids), int(self.inv_freq), int(self.sinks)
        return p


def plan(spec: Spec, device: dict = H100, *, path: str = "auto", kernel: str = "auto", aligned: bool = True,
         pool_outputs: bool = True) -> dict:  # fmt: skip
    info, err = PagedPlanInfo(), ctypes.create_string_buffer(1024)
    dev = device_struct(device)
    rc = load().OnnxAttnPagedCudaPlan(ctypes.byref(spec.problem()), ctypes.byref(dev), PATHS[path], KERNELS[kernel],
                                      int(aligned), int(pool_outputs), ctypes.byref(info), err, len(err))  # fmt: skip
    if rc != 0:
        raise PagedCudaError(err.value.decode())
    return info.as_dict()


def run(spec: Spec, tensors: dict, *, path: str = "auto", kernel: str = "auto") -> dict:
    """Runs the op on torch CUDA tensors named like TENSORS (`output` preallocated; `key_cache_out`/
    `value_cache_out` preallocated, the input pools themselves for the in-place update, or absent to keep
    the pools in scratch) on torch's current stream. Returns the plan dict."""
    import torch

    unknown = set(tensors) - set(TENSORS)
    assert not unknown, f"unknown tensors {unknown}"
    t = Tensors()
    device = tensors["query"].device
    for name, value in tensors.items():
        if value is None:
            continue
        assert value.is_cuda and value.is_contiguous(), name
        setattr(t, name, value.data_ptr())
    lib, info, err = load(), PagedPlanInfo(), ctypes.create_string_buffer(2048)
    problem = spec.problem()
    stream = torch.cuda.current_stream(device).cuda_stream

    def call(scratch):
        return lib.OnnxAttnPagedCudaRunForTest(
            ctypes.byref(problem), ctypes.byref(t), PATHS[path], KERNELS[kernel],
            scratch.data_ptr() if scratch is not None else None, scratch.numel() if scratch is not None else 0,
            stream, ctypes.byref(info), err, len(err),
        )  # fmt: skip

    with torch.cuda.device(device):
        rc = call(None)
        if rc == 2:  # torch's caching allocator: 512-byte aligned, reused only by work ordered after ours
            scratch = torch.empty(int(math.ceil(info.scratch_bytes / 256) * 256), dtype=torch.uint8, device=device)
            rc = call(scratch)
        if rc != 0:
            raise PagedCudaError(err.value.decode())
    return info.as_dict()
