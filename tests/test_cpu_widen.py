"""The CPU kernels' conversion of 16-bit K/V/query rows to float32 (sdpa::widen: F16C / AVX-512 vectors, the scalar
conversion in the portable build), checked on every fp16 and bfloat16 bit pattern against numpy's exact conversion,
for each ISA this CPU has, over lengths and offsets that leave every vector tail (masked on AVX-512, scalar on AVX2).
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from helpers import ISAS
from onnxattn.cuda_ep import library_path

EVERY_PATTERN = np.arange(1 << 16, dtype=np.uint16)


def widen(isa: str, bfloat16: bool, bits: np.ndarray) -> np.ndarray:
    fn = ctypes.CDLL(library_path()).OnnxAttnCpuWidenForTest
    fn.restype = ctypes.c_int32
    fn.argtypes = [ctypes.c_char_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    bits = np.ascontiguousarray(bits, np.uint16)
    # one float past the end, to see that nothing is written there
    out = np.full(bits.size + 1, 12345.0, np.float32)
    if fn(isa.encode(), int(bfloat16), bits.ctypes.data, bits.size, out.ctypes.data) != 0:
        pytest.skip(f"this CPU has no {isa}")
    assert out[-1] == 12345.0, "wrote past the end"
    return out[:-1]


def exact(bfloat16: bool, bits: np.ndarray) -> np.ndarray:
    if bfloat16:
        return (bits.astype(np.uint32) << 16).view(np.float32)
    return bits.view(np.float16).astype(np.float32)  # every fp16 value (subnormals too) is a float32


def assert_same_values(got: np.ndarray, want: np.ndarray) -> None:
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    # the vectors quiet a signalling NaN where the scalar conversion keeps it: a NaN either way, with its sign
    assert np.array_equal(np.signbit(got[nan]), np.signbit(want[nan]))
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))  # bits: -0.0 stays -0.0


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bfloat16", [False, True], ids=["float16", "bfloat16"])
def test_every_bit_pattern(isa, bfloat16):
    assert_same_values(widen(isa, bfloat16, EVERY_PATTERN), exact(bfloat16, EVERY_PATTERN))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bfloat16", [False, True], ids=["float16", "bfloat16"])
def test_tails_and_unaligned_rows(isa, bfloat16):
    rng = np.random.default_rng(7)
    patterns = rng.integers(0, 1 << 16, 200, dtype=np.uint16)
    for offset in (0, 1, 3):  # rows of a strided tensor start anywhere
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 40, 64, 72, 127]:
            bits = patterns[offset:offset + n]
            assert_same_values(widen(isa, bfloat16, bits), exact(bfloat16, bits))
