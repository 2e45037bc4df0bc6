"""ctypes bindings of the library's CUDA test entry points (onnxattn/cuda_ep/csrc/sdpa/cuda_capi.cc).

`plan()` reaches the pure-host launch plan (usable without a GPU); `run()` runs the CUDA kernels on torch
CUDA tensors without onnxruntime. The Structures mirror the C structs field for field.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
from dataclasses import dataclass

FLOAT32, FLOAT16, BFLOAT16 = 1, 10, 16  # ONNX element types
PATHS = {"env": -1, "auto": 0, "prefill": 1, "decode": 2}
KERNELS = {"env": -1, "auto": 0, "mma": 1, "simt": 2}
H100 = {"sm_count": 132, "max_smem_per_block": 232448, "smem_per_sm": 233472, "wgmma": 1}
A100 = {"sm_count": 108, "max_smem_per_block": 166912, "smem_per_sm": 167936, "wgmma": 0}
# 99 KiB of shared memory per block: sm_86 / sm_89 (A10, L4, RTX 30 and 40; cuda_plan.cc rule 11), an L4's SMs
SM86 = {"sm_count": 58, "max_smem_per_block": 101376, "smem_per_sm": 102400, "wgmma": 0}
KERNEL_NAMES = ("mma", "simt", "wgmma")  # PlanInfo.kernel codes


class Problem(ctypes.Structure):
    _fields_ = [
        ("batch", ctypes.c_int64),
        ("q_heads", ctypes.c_int64),
        ("kv_heads", ctypes.c_int64),
        ("q_len", ctypes.c_int64),
        ("kv_len", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("v_head_dim", ctypes.c_int64),
        ("causal", ctypes.c_int64),
        ("window", ctypes.c_int64),
        ("band", ctypes.c_int64),
        ("scale", ctypes.c_float),
        ("softcap", ctypes.c_float),
        ("dtype", ctypes.c_int32),
        ("mask_kind", ctypes.c_int32),
        ("mask_rank", ctypes.c_int32),
        ("want_lse", ctypes.c_int32),
        ("mask_shape", ctypes.c_int64 * 4),
    ]


class Device(ctypes.Structure):
    _fields_ = [("sm_count", ctypes.c_int32), ("max_smem_per_block", ctypes.c_int32), ("smem_per_sm", ctypes.c_int32),
                ("wgmma", ctypes.c_int32)]  # fmt: skip


def device_struct(device: dict) -> Device:
    """A described device (H100, A100 or a dict with their keys; "wgmma" defaults to 0)."""
    return Device(device["sm_count"], device["max_smem_per_block"], device["smem_per_sm"], int(device.get("wgmma", 0)))


class PlanInfo(ctypes.Structure):
    _fields_ = [
        ("schedule", ctypes.c_int32),
        ("kernel", ctypes.c_int32),
        ("head_dim_tile", ctypes.c_int32),
        ("rows_per_cta", ctypes.c_int32),
        ("keys_per_tile", ctypes.c_int32),
        ("stages", ctypes.c_int32),
        ("threads", ctypes.c_int32),
        ("pdl", ctypes.c_int32),
        ("rows_per_head", ctypes.c_int64),
        ("row_tiles", ctypes.c_int64),
        ("splits", ctypes.c_int64),
        ("grid", ctypes.c_int64),
        ("smem_bytes", ctypes.c_int64),
        ("combine_grid", ctypes.c_int64),
        ("scratch_bytes", ctypes.c_int64),
        ("partial_lse_offset", ctypes.c_int64),
        ("min_split_keys", ctypes.c_int64),
        ("split_counters", ctypes.c_int64),
        ("split_counters_offset", ctypes.c_int64),
        ("reason", ctypes.c_char * 512),
    ]

    def as_dict(self) -> dict:
        out = {name: getattr(self, name) for name, _ in self._fields_ if name not in ("reason", "reserved")}
        out["schedule"] = ("prefill", "decode")[self.schedule]
        out["kernel"] = KERNEL_NAMES[self.kernel]
        out["reason"] = self.reason.decode()
        return out


class Layout(ctypes.Structure):
    """Strided views (element strides batch, head, seq; all 0 = contiguous) and per-batch lengths."""

    _fields_ = [
        ("q_strides", ctypes.c_int64 * 3),
        ("k_strides", ctypes.c_int64 * 3),
        ("v_strides", ctypes.c_int64 * 3),
        ("y_strides", ctypes.c_int64 * 3),
        ("per_batch_lengths", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
    ]

    @classmethod
    def of(cls, q=None, k=None, v=None, y=None, per_batch_lengths=False) -> "Layout":
        out = cls()
        for name, strides in (("q_strides", q), ("k_strides", k), ("v_strides", v), ("y_strides", y)):
            if strides is not None:
                getattr(out, name)[:] = list(strides)
        out.per_batch_lengths = int(per_batch_lengths)
        return out


class SdpaCudaError(RuntimeError):
    pass


def library_path() -> str:
    override = os.environ.get("ONNXATTN_LIBRARY")
    if override:
        return override
    from onnxattn.cuda_ep import library_path as installed

    return installed()


@functools.lru_cache(maxsize=None)
def load(path: str | None = None) -> ctypes.CDLL:
    lib = ctypes.CDLL(path or library_path())
    lib.OnnxAttnSdpaCudaPlan.restype = ctypes.c_int
    lib.OnnxAttnSdpaCudaPlan.argtypes = [
        ctypes.POINTER(Problem), ctypes.POINTER(Layout), ctypes.POINTER(Device), ctypes.c_int32, ctypes.c_int32,
        ctypes.c_int32, ctypes.POINTER(PlanInfo), ctypes.c_char_p, ctypes.c_size_t,
    ]  # fmt: skip
    lib.OnnxAttnSdpaChooseSplits.restype = ctypes.c_int64
    lib.OnnxAttnSdpaChooseSplits.argtypes = [ctypes.c_int64] * 5
    lib.OnnxAttnSdpaTileKeys.restype = None
    lib.OnnxAttnSdpaTileKeys.argtypes = [ctypes.c_int64] * 9 + [ctypes.POINTER(ctypes.c_int64)]
    lib.OnnxAttnSdpaSplitKeys.restype = None
    lib.OnnxAttnSdpaSplitKeys.argtypes = [ctypes.c_int64] * 6 + [ctypes.POINTER(ctypes.c_int64)]
    lib.OnnxAttnSdpaWgmmaLayout.restype = ctypes.c_uint64
    lib.OnnxAttnSdpaWgmmaLayout.argtypes = [ctypes.c_int32, ctypes.c_uint32, ctypes.c_uint32]
    lib.OnnxAttnHasCuda.restype = ctypes.c_int
    lib.OnnxAttnSdpaBlockDivider.restype = None
    lib.OnnxAttnSdpaBlockDivider.argtypes = [ctypes.c_int64, ctypes.POINTER(ctypes.c_uint32)]
    lib.OnnxAttnSdpaCudaRunForTest.restype = ctypes.c_int
    lib.OnnxAttnSdpaCudaRunForTest.argtypes = [
        ctypes.POINTER(Problem), ctypes.POINTER(Layout), ctypes.c_int32, ctypes.c_int32,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.POINTER(PlanInfo), ctypes.c_char_p, ctypes.c_size_t,
    ]  # fmt: skip
    return lib


@dataclass
class Spec:
    """One attention problem, in the op's terms."""

    batch: int = 1
    q_heads: int = 1
    kv_heads: int = 1
    q_len: int = 1
    kv_len: int = 1
    head_dim: int = 64
    v_head_dim: int | None = None
    causal: bool = False
    window: int = 0
    band: int = 0
    scale: float = 0.0
    softcap: float = 0.0
    dtype: int = FLOAT16
    mask_kind: int = 0  # 0 none, 1 bool, 2 additive
    mask_shape: tuple[int, ...] = ()
    want_lse: bool = False

    def problem(self) -> Problem:
        p = Problem()
        p.batch, p.q_heads, p.kv_heads = self.batch, self.q_heads, self.kv_heads
        p.q_len, p.kv_len, p.head_dim = self.q_len, self.kv_len, self.head_dim
        p.v_head_dim = self.head_dim if self.v_head_dim is None else self.v_head_dim
        p.causal, p.window, p.band = int(self.causal), self.window, self.band
        p.scale, p.softcap, p.dtype = self.scale, self.softcap, self.dtype
        p.mask_kind, p.mask_rank, p.want_lse = self.mask_kind, len(self.mask_shape), int(self.want_lse)
        for i, d in enumerate(self.mask_shape):
            p.mask_shape[i] = d
        return p


def plan(spec: Spec, device: dict = H100, *, path: str = "auto", kernel: str = "auto", aligned: bool = True,
         layout: Layout | None = None) -> dict:  # fmt: skip
    """The launch plan make_plan() computes; raises SdpaCudaError with the library's message."""
    lib = load()
    info, err = PlanInfo(), ctypes.create_string_buffer(1024)
    dev = device_struct(device)
    rc = lib.OnnxAttnSdpaCudaPlan(
        ctypes.byref(spec.problem()), ctypes.byref(layout) if layout is not None else None, ctypes.byref(dev),
        PATHS[path], KERNELS[kernel], int(aligned), ctypes.byref(info), err, len(err),
    )  # fmt: skip
    if rc != 0:
        raise SdpaCudaError(err.value.decode())
    return info.as_dict()


def choose_splits(ctas: int, key_tiles: int, slots: int, min_tiles_per_split: int, max_splits: int) -> int:
    return load().OnnxAttnSdpaChooseSplits(ctas, key_tiles, slots, min_tiles_per_split, max_splits)


def tile_keys(causal, window, band, q_len, kv_len, row_begin, row_end, group,
              chunk=0) -> tuple[tuple[int, int], tuple[int, int]]:
    out = (ctypes.c_int64 * 4)()
    load().OnnxAttnSdpaTileKeys(int(causal), window, band, chunk, q_len, kv_len, row_begin, row_end, group, out)
    return (out[0], out[1]), (out[2], out[3])


def split_keys(begin: int, end: int, split: int, splits: int, granule: int, min_chunk: int = 0) -> tuple[int, int]:
    out = (ctypes.c_int64 * 2)()
    load().OnnxAttnSdpaSplitKeys(begin, end, split, splits, granule, min_chunk, out)
    return out[0], out[1]


def block_divider(block_size: int) -> tuple[int, int]:
    """(mul, shift) of the paged kernels' division by the block size (sdpa/cuda_tiles.h)."""
    out = (ctypes.c_uint32 * 2)()
    load().OnnxAttnSdpaBlockDivider(block_size, out)
    return out[0], out[1]


def wgmma_layout(operand: str, tile: int, index: int) -> int:
    """The wgmma prefill kernel's descriptors (operand q: index = group * 8 + k-step; k: k-step; v: k-step of 16
    keys) for a tile at byte address `tile`, or ("offset") the byte offset of chunk index % 16 of row index // 16."""
    return load().OnnxAttnSdpaWgmmaLayout({"q": 0, "k": 1, "v": 2, "offset": 3}[operand], tile, index)


def has_cuda() -> bool:
    return bool(load().OnnxAttnHasCuda())


def torch_dtype_code(dtype) -> int:
    import torch

    return {torch.float32: FLOAT32, torch.float16: FLOAT16, torch.bfloat16: BFLOAT16}[dtype]


def _strides(t) -> tuple[int, int, int] | None:
    """Element strides (batch, head, seq) of a [B, H, S, D] view with a contiguous last dim; None when it is
    contiguous."""
    assert t.stride(3) == 1, "the last dim must be contiguous"
    return None if t.is_contiguous() else tuple(t.stride()[:3])


def run(q, k, v, attn_mask=None, *, causal=False, window=0, band=0, scale=0.0, softcap=0.0, want_lse=False,
        path="auto", kernel="auto", out=None, query_offsets=None, kv_lengths=None, scratch_fill=None):  # fmt: skip
    """Runs the CUDA kernels on torch CUDA tensors ([B,H,S,D] views with a contiguous last dim: strided
    views are passed as such) on torch's current stream. query_offsets / kv_lengths: optional int64 CUDA
    tensors [B] (the per-batch layout of fused ops). `out` may be a strided view too. scratch_fill: a byte
    value the scratch is filled with first (the kernels must not rely on its contents).
    Returns (Y, LSE or None, plan dict)."""
    import torch

    assert q.is_cuda and k.is_cuda and v.is_cuda
    spec = Spec(
        batch=q.shape[0], q_heads=q.shape[1], kv_heads=k.shape[1], q_len=q.shape[2], kv_len=k.shape[2],
        head_dim=q.shape[3], v_head_dim=v.shape[3], causal=bool(causal), window=window, band=band,
        scale=scale, softcap=softcap, dtype=torch_dtype_code(q.dtype), want_lse=want_lse,
    )  # fmt: skip
    if attn_mask is not None:
        spec.mask_kind = 1 if attn_mask.dtype == torch.bool else 2
        spec.mask_shape = tuple(attn_mask.shape)
        attn_mask = attn_mask.contiguous()
    y = out if out is not None else torch.empty(q.shape[:3] + (v.shape[3],), dtype=q.dtype, device=q.device)
    per_batch = query_offsets is not None or kv_lengths is not None
    layout = Layout.of(_strides(q), _strides(k), _strides(v), _strides(y), per_batch_lengths=per_batch)
    for t in (query_offsets, kv_lengths):
        assert t is None or (t.is_cuda and t.dtype == torch.int64 and t.is_contiguous())
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device) if want_lse else None
    stream = torch.cuda.current_stream(q.device).cuda_stream
    lib, info, err = load(), PlanInfo(), ctypes.create_string_buffer(2048)
    problem = spec.problem()

    def call(scratch):
        return lib.OnnxAttnSdpaCudaRunForTest(
            ctypes.byref(problem), ctypes.byref(layout), PATHS[path], KERNELS[kernel],
            q.data_ptr(), k.data_ptr(), v.data_ptr(), attn_mask.data_ptr() if attn_mask is not None else None,
            y.data_ptr(), lse.data_ptr() if lse is not None else None,
            query_offsets.data_ptr() if query_offsets is not None else None,
            kv_lengths.data_ptr() if kv_lengths is not None else None,
            scratch.data_ptr() if scratch is not None else None, scratch.numel() if scratch is not None else 0,
            stream, ctypes.byref(info), err, len(err),
        )  # fmt: skip

    with torch.cuda.device(q.device):
        rc = call(None)
        scratch = None
        if rc == 2:
            # torch's caching allocator hands out 512-byte aligned blocks on this stream; freeing the block
            # when this returns is safe: the allocator reuses it only for work ordered after ours here.
            scratch = torch.empty(int(math.ceil(info.scratch_bytes / 256) * 256), dtype=torch.uint8, device=q.device)
            if scratch_fill is not None:
                scratch.fill_(scratch_fill)
            rc = call(scratch)
        if rc != 0:
            raise SdpaCudaError(err.value.decode())
    return y, lse, info.as_dict()
