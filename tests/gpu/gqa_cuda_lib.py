"""ctypes bindings of GroupQueryAttention's CUDA test entry points (onnxattn/cuda_ep/csrc/gqa/cuda_capi.cc).

`plan()` reaches the pure-host plan (usable without a GPU); `run()` runs the whole op (past copy, new-token
kernel, attention with the fused Q preparation) on torch CUDA tensors without onnxruntime. The
Structures mirror the C structs field for field.
"""

from __future__ import annotations

import ctypes
import functools
import math
from dataclasses import dataclass

import sdpa_cuda_lib as sdpa
from sdpa_cuda_lib import BFLOAT16, FLOAT16, FLOAT32, H100, KERNELS, PATHS, Device, PlanInfo, device_struct  # noqa: F401

MODES = {"none": 0, "concat": 1, "shared": 2}


class Problem(ctypes.Structure):
    _fields_ = [
        ("batch", ctypes.c_int64),
        ("seq", ctypes.c_int64),
        ("q_heads", ctypes.c_int64),
        ("kv_heads", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("v_head_dim", ctypes.c_int64),
        ("past", ctypes.c_int64),
        ("window", ctypes.c_int64),
        ("rotary_dim", ctypes.c_int64),
        ("mode", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
        ("causal", ctypes.c_int32),
        ("rope", ctypes.c_int32),
        ("rope_interleaved", ctypes.c_int32),
        ("has_position_ids", ctypes.c_int32),
        ("q_norm", ctypes.c_int32),
        ("k_norm", ctypes.c_int32),
        ("has_inv_freq", ctypes.c_int32),
        ("has_mask", ctypes.c_int32),
        ("softcap", ctypes.c_float),
        ("scale", ctypes.c_float),
        ("rope_base", ctypes.c_float),
        ("rope_attention_scaling", ctypes.c_float),
        ("qk_norm_epsilon", ctypes.c_float),
        ("has_sinks", ctypes.c_int32),
        ("attention_chunk", ctypes.c_int64),
    ]


class GqaPlanInfo(ctypes.Structure):
    _fields_ = [
        ("attention", PlanInfo),
        ("q_strides", ctypes.c_int64 * 3),
        ("k_strides", ctypes.c_int64 * 3),
        ("v_strides", ctypes.c_int64 * 3),
        ("y_strides", ctypes.c_int64 * 3),
        ("kv_len", ctypes.c_int64),
        ("query_offset", ctypes.c_int64),
        ("mask_strides", ctypes.c_int64 * 4),
        ("per_batch", ctypes.c_int32),
        ("present_in_scratch", ctypes.c_int32),
        ("append_rows", ctypes.c_int64),
        ("append_blocks", ctypes.c_int64),
        ("lengths_offset", ctypes.c_int64),
        ("attention_offset", ctypes.c_int64),
        ("present_key_offset", ctypes.c_int64),
        ("present_value_offset", ctypes.c_int64),
        ("scratch_bytes", ctypes.c_int64),
        ("rotated_q_offset", ctypes.c_int64),
        ("rotate_queries", ctypes.c_int32),
        ("sinks", ctypes.c_int32),
        ("lse_offset", ctypes.c_int64),
        ("rotate_chunks", ctypes.c_int32),
        ("rotary_chunks", ctypes.c_int32),
        ("rotate_blocks", ctypes.c_int64),
        ("append_key_chunks", ctypes.c_int32),
        ("append_rotary_chunks", ctypes.c_int32),
        ("append_value_chunks", ctypes.c_int32),
        ("joint_new_tokens", ctypes.c_int32),
        ("append_chunk_blocks", ctypes.c_int64),
        ("split_counters_zeroed_ahead", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
    ]

    def as_dict(self) -> dict:
        out = {}
        for name, _ in self._fields_:
            value = getattr(self, name)
            if name == "attention":
                value = value.as_dict()
            elif isinstance(value, ctypes.Array):
                value = tuple(value)
            elif name in ("per_batch", "present_in_scratch", "rotate_queries", "sinks", "joint_new_tokens",
                          "split_counters_zeroed_ahead"):
                value = bool(value)
            out[name] = value
        return out


class Tensors(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in (
        "query", "key", "value", "past_key", "past_value", "past_lengths", "position_ids", "q_norm_weight",
        "k_norm_weight", "inv_freq", "attention_mask", "output", "present_key", "present_value", "sinks")]  # fmt: skip


GqaCudaError = sdpa.SdpaCudaError


@functools.lru_cache(maxsize=None)
def load() -> ctypes.CDLL:
    lib = sdpa.load()
    lib.OnnxAttnGqaCudaPlan.restype = ctypes.c_int
    lib.OnnxAttnGqaCudaPlan.argtypes = [
        ctypes.POINTER(Problem), ctypes.POINTER(Device), ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,
        ctypes.c_int32, ctypes.POINTER(GqaPlanInfo), ctypes.c_char_p, ctypes.c_size_t,
    ]  # fmt: skip
    lib.OnnxAttnGqaCudaRunForTest.restype = ctypes.c_int
    lib.OnnxAttnGqaCudaRunForTest.argtypes = [
        ctypes.POINTER(Problem), ctypes.POINTER(Tensors), ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p,
        ctypes.c_size_t, ctypes.c_void_p, ctypes.POINTER(GqaPlanInfo), ctypes.c_char_p, ctypes.c_size_t,
    ]  # fmt: skip
    return lib


@dataclass
class Spec:
    """One GroupQueryAttention problem: shapes, cache mode, which optional inputs exist, attributes."""

    batch: int = 1
    seq: int = 1
    q_heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    v_head_dim: int | None = None
    mode: str = "none"  # none | concat | shared
    past: int = 0  # concat: P; shared: the buffer length M
    position_ids: bool = False
    q_norm: bool = False
    k_norm: bool = False
    inv_freq: bool = False
    mask: bool = False
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
        for name, _ in Problem._fields_:
            if name in ("mode", "has_position_ids", "has_inv_freq", "has_mask", "has_sinks", "v_head_dim"):
                continue
            setattr(p, name, int(getattr(self, name)) if isinstance(getattr(self, name), bool) else getattr(self, name))
        p.v_head_dim = self.head_dim if self.v_head_dim is None else self.v_head_dim
        p.mode = MODES[self.mode]
        p.has_position_ids, p.has_inv_freq, p.has_mask = int(self.position_ids), int(self.inv_freq), int(self.mask)
        p.has_sinks = int(self.sinks)
        return p


def plan(spec: Spec, device: dict = H100, *, path: str = "auto", kernel: str = "auto", aligned: bool = True,
         present_outputs: bool = True) -> dict:  # fmt: skip
    info, err = GqaPlanInfo(), ctypes.create_string_buffer(1024)
    dev = device_struct(device)
    rc = load().OnnxAttnGqaCudaPlan(ctypes.byref(spec.problem()), ctypes.byref(dev), PATHS[path], KERNELS[kernel],
                                    int(aligned), int(present_outputs), ctypes.byref(info), err, len(err))  # fmt: skip
    if rc != 0:
        raise GqaCudaError(err.value.decode())
    return info.as_dict()


def run(spec: Spec, tensors: dict, *, path: str = "auto", kernel: str = "auto", poison: bool = False) -> dict:
    """Runs the op on torch CUDA tensors named like the op's inputs and outputs (`output` preallocated;
    `present_key`/`present_value` preallocated, the past tensors themselves for the in-place update, or
    absent to keep the caches in scratch) on torch's current stream. Returns the plan dict. poison: the scratch
    filled with 0xFF bytes (NaN in 16 bits) first, so that a region read before it is written shows, where a reused
    block could hold an earlier run's results."""
    import torch

    names = [n for n, _ in Tensors._fields_]
    unknown = set(tensors) - set(names)
    assert not unknown, f"unknown tensors {unknown}"
    t = Tensors()
    device = tensors["query"].device
    for name, value in tensors.items():
        if value is None:
            continue
        assert value.is_cuda and value.is_contiguous(), name
        setattr(t, name, value.data_ptr())
    lib, info, err = load(), GqaPlanInfo(), ctypes.create_string_buffer(2048)
    problem = spec.problem()
    stream = torch.cuda.current_stream(device).cuda_stream

    def call(scratch):
        return lib.OnnxAttnGqaCudaRunForTest(
            ctypes.byref(problem), ctypes.byref(t), PATHS[path], KERNELS[kernel],
            scratch.data_ptr() if scratch is not None else None, scratch.numel() if scratch is not None else 0,
            stream, ctypes.byref(info), err, len(err),
        )  # fmt: skip

    with torch.cuda.device(device):
        rc = call(None)
        if rc == 2:  # torch's caching allocator: 512-byte aligned, reused only by work ordered after ours
            scratch = torch.empty(int(math.ceil(info.scratch_bytes / 256) * 256), dtype=torch.uint8, device=device)
            if poison:
                scratch.fill_(255)
            rc = call(scratch)
        if rc != 0:
            raise GqaCudaError(err.value.decode())
    return info.as_dict()
