"""ctypes bindings of MultiHeadLatentAttention's CUDA test entry points (onnxattn/cuda_ep/csrc/mla/cuda_capi.cc).

`plan()` reaches the pure-host plan (usable without a GPU); `run()` runs the whole op (past copy, new
tokens, query absorption, split-KV attention, merge and W_UV projection) on torch CUDA tensors without
onnxruntime. The integer / float parameter arrays and the pointer order mirror the C entry points.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os

MODES = {"none": 0, "concat": 1, "shared": 2}
ONNX_DTYPES = {"float32": 1, "float16": 10, "bfloat16": 16}
INPUTS = ("query", "latent", "k_rope", "w_uk", "w_uv", "past_latent", "past_k_rope", "past_lengths", "position_ids",
          "rope_inv_freq")


def library_path() -> str:
    override = os.environ.get("ONNXATTN_LIBRARY")
    if override:
        return override
    from onnxattn.cuda_ep import library_path as installed

    return installed()


@functools.lru_cache(maxsize=None)
def load(path: str | None = None) -> ctypes.CDLL:
    lib = ctypes.CDLL(path or library_path())
    lib.OnnxAttnMlaCudaPlan.restype = ctypes.c_char_p
    lib.OnnxAttnMlaCudaPlan.argtypes = [ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_float), ctypes.c_int32,
                                        ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(ctypes.c_int64)]
    if hasattr(lib, "OnnxAttnMlaCudaRunForTest"):
        lib.OnnxAttnMlaCudaRunForTest.restype = ctypes.c_char_p
        lib.OnnxAttnMlaCudaRunForTest.argtypes = [ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_float),
                                                  ctypes.POINTER(ctypes.c_void_p), ctypes.c_int32, ctypes.c_void_p,
                                                  ctypes.c_void_p, ctypes.c_int64]
        lib.OnnxAttnMlaCudaScratchBytes.restype = ctypes.c_char_p
        lib.OnnxAttnMlaCudaScratchBytes.argtypes = [ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_float),
                                                    ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(ctypes.c_int64)]
    return lib


@dataclasses.dataclass(frozen=True)
class Problem:
    batch: int = 1
    seq: int = 1
    heads: int = 16
    rank: int = 512
    nope: int = 128
    rope: int = 64
    v_dim: int = 128
    past: int = 0  # P (concat) or the buffer length M (shared)
    mode: str = "concat"
    causal: int = 1
    window: int = 0
    interleaved: int = 1
    cache_rank: int = 3
    position_ids: bool = False
    inv_freq: bool = False
    softcap: float = 0.0
    scale: float = 0.0
    rope_base: float = 10000.0
    rope_attention_scaling: float = 1.0
    index_count: int = -1  # K of key_indices [B, S, K]; -1: no key_indices

    def arrays(self):
        ints = (ctypes.c_int64 * 16)(self.batch, self.seq, self.heads, self.rank, self.nope, self.rope, self.v_dim,
                                     self.past, MODES[self.mode], self.causal, self.window, self.interleaved,
                                     self.cache_rank, int(self.position_ids), int(self.inv_freq), self.index_count)
        floats = (ctypes.c_float * 4)(self.softcap, self.scale, self.rope_base, self.rope_attention_scaling)
        return ints, floats


@dataclasses.dataclass(frozen=True)
class Plan:
    splits: int
    chunk_tokens: int
    attention_smem: int
    present_in_scratch: bool
    scratch_bytes: int
    kernel: str  # of the attention step: "simt" or "mma" (ONNXATTN_MLA_CUDA_KERNEL)
    head_blocks: int
    list_padded: int  # key_indices: K padded to a power of two (each token's list is sorted in shared memory)


def plan(problem: Problem, *, sm_count: int = 132, element_bytes: int = 2, present_outputs: bool = True) -> Plan:
    ints, floats = problem.arrays()
    out = (ctypes.c_int64 * 8)()
    error = load().OnnxAttnMlaCudaPlan(ints, floats, sm_count, element_bytes, int(present_outputs), out)
    if error:
        raise ValueError(error.decode())
    return Plan(out[0], out[1], out[2], bool(out[3]), out[4], "mma" if out[5] else "simt", out[6], out[7])


def scratch_bytes(problem: Problem, dtype: str, present_outputs: bool = True) -> int:
    """The scratch the current device's plan needs (CUDA builds)."""
    ints, floats = problem.arrays()
    out = ctypes.c_int64()
    error = load().OnnxAttnMlaCudaScratchBytes(ints, floats, 4 if dtype == "float32" else 2, int(present_outputs),
                                              ctypes.byref(out))
    if error:
        raise ValueError(error.decode())
    return out.value


def run(problem: Problem, tensors: dict, dtype: str, *, output, present_latent=None, present_k_rope=None,
        stream=None, scratch=None) -> None:
    """Runs the op on CUDA tensors (named like the op's inputs; absent ones omitted) into `output` (and the
    present caches, which may be the past tensors themselves: in place). Without `scratch` (a CUDA uint8
    tensor of scratch_bytes()) it takes its own and synchronises; with it, it only enqueues on `stream` (a
    torch.cuda.Stream; default: the current one)."""
    import torch

    lib = load()
    if not hasattr(lib, "OnnxAttnMlaCudaRunForTest"):
        raise RuntimeError("the library was built without CUDA")
    ptrs = [tensors[name].data_ptr() if name in tensors else None for name in INPUTS]
    ptrs += [output.data_ptr(), present_latent.data_ptr() if present_latent is not None else None,
             present_k_rope.data_ptr() if present_k_rope is not None else None]
    ptrs.append(tensors["key_indices"].data_ptr() if "key_indices" in tensors else None)
    ints, floats = problem.arrays()
    cuda_stream = (stream or torch.cuda.current_stream()).cuda_stream
    error = lib.OnnxAttnMlaCudaRunForTest(ints, floats, (ctypes.c_void_p * len(ptrs))(*ptrs), ONNX_DTYPES[dtype],
                                          cuda_stream, scratch.data_ptr() if scratch is not None else None,
                                          scratch.numel() if scratch is not None else 0)
    if error:
        raise RuntimeError(error.decode())
