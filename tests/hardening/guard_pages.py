"""Out-of-bounds reads and writes caught by the MMU, in the release library and on every ISA: the worker side
of test_guard_pages.py (a child process: a fault is that job's crash).

Every input and output buffer is placed so that it ends exactly at a page boundary followed by an inaccessible
page ("end"), or starts exactly after one ("start"); onnxruntime reads and writes them in place (I/O binding
over the numpy buffers), so one element past either end is a segfault. The run must also equal a plain run bit
for bit. This complements scripts/sanitize.sh: AddressSanitizer checks every access but only in a separate,
instrumented build; these fences check the library users run, including the AVX-512 code, whose
instrumented build GCC 12 reports one-past-the-end reads in that these fences show do not happen.
"""

from __future__ import annotations

import ctypes
import mmap

import numpy as np
import onnxruntime as ort

from helpers import cpu_isa, kernel_session
from representative import call

PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_keep: list = []


def fenced(a: np.ndarray, where: str) -> np.ndarray:
    """A copy of `a` whose first byte follows (where="start") or whose last byte precedes ("end") a PROT_NONE
    page. The mapping is kept alive for the life of the process."""
    a = np.ascontiguousarray(a)
    n = max(a.nbytes, 1)
    data_pages = -(-n // PAGE)
    buf = mmap.mmap(-1, (data_pages + 1) * PAGE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    guard = base + data_pages * PAGE if where == "end" else base
    if _libc.mprotect(ctypes.c_void_p(guard), PAGE, 0) != 0:
        raise OSError(ctypes.get_errno(), "mprotect")
    offset = data_pages * PAGE - a.nbytes if where == "end" else PAGE
    out = np.frombuffer(buf, dtype=a.dtype, count=a.size, offset=offset).reshape(a.shape)
    out[...] = a
    _keep.append(buf)
    return out


def execute(job: str) -> dict:
    op, case_id, isa, where = job.split("|")
    c = call(op, case_id or None)
    with cpu_isa(isa):
        session = kernel_session(c.model)
        plain = session.run(None, c.feeds)
        binding = session.io_binding()
        for name, value in c.feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(fenced(value, where)))
        outputs = [fenced(np.zeros_like(x), where) for x in plain]
        for info, value in zip(session.get_outputs(), outputs):
            binding.bind_ortvalue_output(info.name, ort.OrtValue.ortvalue_from_numpy(value))
        session.run_with_iobinding(binding)
    same = all(np.array_equal(a, b, equal_nan=np.issubdtype(a.dtype, np.floating)) for a, b in zip(outputs, plain))
    return {"outcome": "ok" if same else "differs", "outputs": len(plain)}
