"""The CPU kernels' conversion of 16-bit K/V/query rows to float32 (sdpa::widen: F16C / AVX-512 vectors, the scalar
conversion in the portable build), checked on every fp16 and bfloat16 bit pattern against numpy's exact conversion,
for each ISA this CPU has, over lengths and offsets that leave every vector tail (masked on AVX-512, scalar on AVX2);
and the rounding back (sdpa::narrow), each ISA against the scalar routine and that against round to nearest even.
"""

from __future__ import annotations

import ctypes

import ml_dtypes
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


# The reverse conversion, float32 to 16 bits (sdpa::narrow: the kernels' fp16 / bfloat16 outputs and rotated keys):
# each ISA's vectors must give the scalar routine's bits (common/half.h from_float) on every float whose rounding
# could differ: all sign / exponent / kept-mantissa combinations, each with the dropped bits just below, at and just
# above the halfway point and at their ends; the scalar routine must be numpy's / ml_dtypes' round to nearest even.


def narrow(isa: str, bfloat16: bool, values: np.ndarray) -> np.ndarray:
    fn = ctypes.CDLL(library_path()).OnnxAttnCpuNarrowForTest
    fn.restype = ctypes.c_int32
    fn.argtypes = [ctypes.c_char_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    values = np.ascontiguousarray(values, np.float32)
    out = np.full(values.size + 1, 0xABCD, np.uint16)  # one value past the end, to see that nothing is written there
    if fn(isa.encode(), int(bfloat16), values.ctypes.data, values.size, out.ctypes.data) != 0:
        pytest.skip(f"this CPU has no {isa}")
    assert out[-1] == 0xABCD, "wrote past the end"
    return out[:-1]


def rounding_cases(bfloat16: bool) -> np.ndarray:
    kept = 16 if bfloat16 else 13  # float32 mantissa bits the 16-bit type drops
    high = np.arange(1 << (32 - kept), dtype=np.uint32) << kept
    low = np.array([0, 1, (1 << (kept - 1)) - 1, 1 << (kept - 1), (1 << (kept - 1)) + 1, (1 << kept) - 1], np.uint32)
    return (high[:, None] | low[None, :]).ravel().view(np.float32)


@pytest.mark.parametrize("bfloat16", [False, True], ids=["float16", "bfloat16"])
def test_scalar_rounding_is_round_to_nearest_even(bfloat16):
    values = rounding_cases(bfloat16)
    got = narrow("generic", bfloat16, values)
    finite = ~np.isnan(values)
    with np.errstate(over="ignore"):  # finite floats past the 16-bit range round to Inf
        want = values[finite].astype(ml_dtypes.bfloat16 if bfloat16 else np.float16).view(np.uint16)
    assert np.array_equal(got[finite], want)
    nan = got[~finite]  # a quiet NaN with the input's sign
    assert np.all(np.isnan(exact(bfloat16, nan))) and np.array_equal(nan >> 15, values[~finite].view(np.uint32) >> 31)


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
@pytest.mark.parametrize("bfloat16", [False, True], ids=["float16", "bfloat16"])
def test_vectors_round_as_the_scalar_routine(isa, bfloat16):
    values = rounding_cases(bfloat16)
    assert np.array_equal(narrow(isa, bfloat16, values), narrow("generic", bfloat16, values))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bfloat16", [False, True], ids=["float16", "bfloat16"])
def test_narrow_tails_and_unaligned_rows(isa, bfloat16):
    values = np.random.default_rng(8).standard_normal(200).astype(np.float32) * 1e3
    values[::17] = np.nan
    for offset in (0, 1, 3):
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 40, 64, 72, 127]:
            row = values[offset:offset + n]
            assert np.array_equal(narrow(isa, bfloat16, row), narrow("generic", bfloat16, row))
