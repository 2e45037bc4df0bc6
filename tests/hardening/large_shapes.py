"""KV caches past 2^31 (and 2^32) elements, cheaply: the worker side of test_large_shapes.py (run in a child
process by isolate.py, so that running out of memory or a wild read kills the child, not pytest).

A cache of 2^32 float16 elements takes 8 GiB of *address space* but almost no memory: np.zeros gets it from
mmap, pages are only backed once touched, onnxruntime takes it without a copy (OrtValue over the numpy buffer,
outputs bound to the inputs in place), and a sliding window makes the kernel read only the last few keys.
So the element offsets the kernel computes for its reads and writes lie beyond 2^32, while the process
touches a few MiB. Each job checks the output against the oracle on those few keys, the new token's K/V at
its slot far in the buffer, and that resident memory grew by less than LIMIT_MIB (the kernel did not walk
the whole cache).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from helpers import GQA_INPUTS, gqa_model, kernel_session, sdpa_model
from mla_helpers import MLA_INPUTS, mla_model
from paged_helpers import INPUTS as PAGED_INPUTS
from paged_helpers import paged_model
from soak import rss_kib

LIMIT_MIB = 256
WINDOW = 5


def execute(job: str) -> dict:
    before = rss_kib()
    try:
        checks = {"sdpa": _sdpa, "gqa": _gqa, "paged": _paged, "mla": _mla}[job]()
    except MemoryError as e:
        return {"outcome": "no-memory", "message": f"the machine cannot map the cache: {e}"}
    grown = (rss_kib() - before) / 1024
    checks["rss_growth_mib"] = round(grown, 1)
    checks["outcome"] = "ok" if grown < LIMIT_MIB else "touched"
    return checks


def _bind_and_run(session, feeds, in_place=None):
    """Runs with every input bound (big ones as OrtValues over their numpy buffers) and the outputs named in
    `in_place` bound to those inputs' buffers; returns the first output."""
    binding = session.io_binding()
    values = {}
    for name, value in feeds.items():
        values[name] = ort.OrtValue.ortvalue_from_numpy(value)
        binding.bind_ortvalue_input(name, values[name])
    for out, source in (in_place or {}).items():
        binding.bind_ortvalue_output(out, values[source])
    binding.bind_output(session.get_outputs()[0].name)  # bound last
    session.run_with_iobinding(binding)
    return binding.get_outputs()[-1].numpy()  # only this one: copying the caches would touch all of them


def _attend(q, k, v, scale):
    """softmax(q k^T * scale) v in float64 for one query row over the given keys."""
    s = (np.asarray(k, np.float64) @ np.asarray(q, np.float64)) * scale
    w = np.exp(s - s.max())
    return (w / w.sum()) @ np.asarray(v, np.float64)


def _sdpa() -> dict:
    """K, V [1, 2, 2^24 + 5, 128] float16 (2^32 + 1280 elements each): the last query row (causal, window)."""
    hkv, skv, d = 2, 2**24 + 5, 128
    rng = np.random.default_rng(0)
    k = np.zeros((1, hkv, skv, d), np.float16)
    v = np.zeros((1, hkv, skv, d), np.float16)
    k[:, :, -WINDOW - 3:] = rng.standard_normal((1, hkv, WINDOW + 3, d))
    v[:, :, -WINDOW - 3:] = rng.standard_normal((1, hkv, WINDOW + 3, d))
    # the keys just before the window hold NaN: a read outside the window would show in the output
    k[:, :, -WINDOW - 3:-WINDOW] = np.nan
    v[:, :, -WINDOW - 3:-WINDOW] = np.nan
    q = rng.standard_normal((1, 4, 1, d)).astype(np.float16)
    model = sdpa_model(dtype="float16", attrs=dict(causal=1, window=WINDOW))
    y = _bind_and_run(kernel_session(model), dict(Q=q, K=k, V=v))
    want = np.stack([_attend(q[0, h, 0], k[0, h // 2, -WINDOW:], v[0, h // 2, -WINDOW:], d**-0.5) for h in range(4)])
    err = float(np.abs(y[0, :, 0] - want).max())
    return {"elements": int(k.size), "max_offset": int(k.size - 1), "max_error": err, "error_ok": err < 4e-3}


def _gqa() -> dict:
    """Shared-buffer cache [1, 2, 2^24 + 8, 128] float16 bound in place: the new token goes to slot 2^24
    of KV head 1 (element offset ~2^32 + 2^31); attention over the window's last keys."""
    hkv, m, d, hq = 2, 2**24 + 8, 128, 4
    rng = np.random.default_rng(1)
    past_k = np.zeros((1, hkv, m, d), np.float16)
    past_v = np.zeros((1, hkv, m, d), np.float16)
    length = m - 8
    past_k[:, :, length - WINDOW:length] = rng.standard_normal((1, hkv, WINDOW, d))
    past_v[:, :, length - WINDOW:length] = rng.standard_normal((1, hkv, WINDOW, d))
    feeds = dict(query=rng.standard_normal((1, 1, hq * d)).astype(np.float16),
                 key=rng.standard_normal((1, 1, hkv * d)).astype(np.float16),
                 value=rng.standard_normal((1, 1, hkv * d)).astype(np.float16),
                 past_key=past_k, past_value=past_v, past_lengths=np.array([length], np.int64))
    model = gqa_model(["past_key", "past_value", "past_lengths"], dtype="float16", with_present=True,
                      attrs=dict(num_heads=hq, kv_num_heads=hkv, window=WINDOW),
                      shapes={n: None for n in GQA_INPUTS})
    y = _bind_and_run(kernel_session(model), feeds, {"present_key": "past_key", "present_value": "past_value"})
    new_k = feeds["key"].reshape(hkv, d)
    written = bool(np.array_equal(past_k[0, :, length], new_k) and
                   np.array_equal(past_v[0, :, length], feeds["value"].reshape(hkv, d)))
    q = feeds["query"].reshape(hq, d)
    want = np.concatenate([_attend(q[h], past_k[0, h // 2, length - WINDOW + 1:length + 1],
                                   past_v[0, h // 2, length - WINDOW + 1:length + 1], d**-0.5) for h in range(hq)])
    err = float(np.abs(y.reshape(-1) - want).max())
    return {"elements": int(past_k.size), "max_offset": int((hkv - 1) * m * d + length * d + d - 1),
            "max_error": err, "error_ok": err < 4e-3, "written_in_place": written}


def _paged() -> dict:
    """Pools [2^20 + 2, 16, 2, 128] float16 (2^32 + 8192 elements) bound in place; one sequence of 20 keys in
    the last two blocks: reads and the new token's write at element offsets past 2^32."""
    blocks, bs, hkv, d, hq = 2**20 + 2, 16, 2, 128, 4
    rng = np.random.default_rng(2)
    key_cache = np.zeros((blocks, bs, hkv, d), np.float16)
    value_cache = np.zeros((blocks, bs, hkv, d), np.float16)
    table = np.array([[blocks - 2, blocks - 1]], np.int32)
    length = 20
    slots = [int(table[0, j // bs]) * bs + j % bs for j in range(length)]  # Python ints: no int32 wrap here
    flat_k, flat_v = key_cache.reshape(-1, hkv, d), value_cache.reshape(-1, hkv, d)
    for j in slots[:-1]:
        flat_k[j] = rng.standard_normal((hkv, d))
        flat_v[j] = rng.standard_normal((hkv, d))
    feeds = dict(query=rng.standard_normal((1, hq * d)).astype(np.float16),
                 key=rng.standard_normal((1, hkv * d)).astype(np.float16),
                 value=rng.standard_normal((1, hkv * d)).astype(np.float16),
                 key_cache=key_cache, value_cache=value_cache, block_table=table,
                 cu_seqlens_q=np.array([0, 1], np.int32), seq_lens=np.array([length], np.int32))
    model = paged_model(dtype="float16", with_present=True, shapes={n: None for n in PAGED_INPUTS},
                        attrs=dict(num_heads=hq, kv_num_heads=hkv, window=WINDOW, rope=0))
    y = _bind_and_run(kernel_session(model), feeds, {"key_cache_out": "key_cache", "value_cache_out": "value_cache"})
    last = slots[-1]
    written = bool(np.array_equal(flat_k[last], feeds["key"].reshape(hkv, d)) and
                   np.array_equal(flat_v[last], feeds["value"].reshape(hkv, d)))
    q = feeds["query"].reshape(hq, d)
    seen = slots[-WINDOW:]
    want = np.concatenate([_attend(q[h], flat_k[seen, h // 2], flat_v[seen, h // 2], d**-0.5) for h in range(hq)])
    err = float(np.abs(y.reshape(-1) - want).max())
    return {"elements": int(key_cache.size), "max_offset": int(last * hkv * d + hkv * d - 1), "max_error": err,
            "error_ok": err < 4e-3, "written_in_place": written}


def _mla() -> dict:
    """Shared latent cache [1, 2^23 + 8, 512] float16 (2^32 + 4096 elements) and rope keys [1, 2^23 + 8, 64],
    bound in place: the new token's latent goes to slot 2^23 (element offset ~2^32), attention over the
    window's last keys; checked against the oracle on a small cache holding the same keys at the same
    positions."""
    from oracle_mla import mla_oracle

    m, r, dr, heads, dn, dv = 2**23 + 8, 512, 64, 4, 32, 32
    rng = np.random.default_rng(3)
    latent = np.zeros((1, m, r), np.float16)
    rope = np.zeros((1, m, dr), np.float16)
    length = m - 8
    latent[:, length - WINDOW:length] = rng.standard_normal((1, WINDOW, r))
    rope[:, length - WINDOW:length] = rng.standard_normal((1, WINDOW, dr))
    small = dict(query=rng.standard_normal((1, 1, heads * (dn + dr))).astype(np.float16),
                 latent=rng.standard_normal((1, 1, r)).astype(np.float16),
                 k_rope=rng.standard_normal((1, 1, dr)).astype(np.float16),
                 w_uk=(rng.standard_normal((heads, r, dn)) * r**-0.5).astype(np.float16),
                 w_uv=(rng.standard_normal((heads, r, dv)) * r**-0.5).astype(np.float16))
    positions = np.array([[100]], np.int64)  # RoPE at 2^23 in float32 is ~1 rad off the float64 oracle
    attrs = dict(num_heads=heads, window=WINDOW)
    # the oracle first, on a copy of the window's keys (the big run updates the cache in place)
    want = mla_oracle(**small, past_latent=latent[:, length - WINDOW + 1:length].copy(),
                      past_k_rope=rope[:, length - WINDOW + 1:length].copy(), position_ids=positions, **attrs)[0]
    feeds = dict(small, past_latent=latent, past_k_rope=rope, past_lengths=np.array([length], np.int64),
                 position_ids=positions)
    model = mla_model(["past_latent", "past_k_rope", "past_lengths", "position_ids"], dtype="float16",
                      with_present=True, attrs=attrs, shapes={n: None for n in MLA_INPUTS})
    y = _bind_and_run(kernel_session(model), feeds, {"present_latent": "past_latent", "present_k_rope": "past_k_rope"})
    written = bool(np.array_equal(latent[0, length], small["latent"][0, 0]))
    err = float(np.abs(y.astype(np.float64) - want).max() / max(1.0, np.abs(want).max()))
    return {"elements": int(latent.size), "max_offset": int(length * r + r - 1), "max_error": err,
            "error_ok": err < 4e-3, "written_in_place": written}
