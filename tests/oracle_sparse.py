"""Independent numpy oracles (float64) of onnxattn::NativeSparseAttention and onnxattn::SparseRoutedAttention.

Written from the ops' contracts (their DOC), not from the package's code: no onnxattn import, one row at a
time, selection by sorting (-score, index) pairs in plain Python (ties: lower index), attention as an
explicit softmax over the listed keys only (a key outside the list is never read, so NaN there cannot leak).
Each returns (Y, selections...) with selections as ascending lists padded with -1.

`prefer` (the selections of an implementation under test, in the outputs' layout) with `tie_tol` > 0: where
that selection is also a top-k of the float64 scores once scores within `tie_tol` (relative) of each other count
as tied, the oracle takes it instead of its own (and computes Y from it). For ties in exact arithmetic that
rounding breaks (a probability from exp, a unit-length centroid, a mean over 3 keys): float32 may break them one
way, float64 the other. An exact float64 tie between two scores that every implementation computes exactly
(dot products of grid values with a mean over a power-of-two count of keys, or none) still goes to the lower
index; one between scores that round (float64 may happen to round them equal where float32 does not) counts
as a near tie. Anything beyond `tie_tol` is the oracle's choice.
"""

from __future__ import annotations

import math

import numpy as np
from oracle_gqa import default_inv_freq, rope_oracle


def _attend(q_row: np.ndarray, keys: np.ndarray, values: np.ndarray, scale: float) -> np.ndarray:
    """softmax(scale * q.k) @ v over the given key rows; zeros when there is none."""
    if len(keys) == 0:
        return np.zeros(values.shape[-1])
    logits = scale * (keys @ q_row)
    w = np.exp(logits - logits.max())
    return (w / w.sum()) @ values


def _choose(scores: dict[int, float], candidates: list[int], forced: set[int], top: int, prefer=None,
            tie_tol: float = 0.0, rounded=frozenset()) -> list[int]:
    """Forced candidates first, then the best-scoring others (ties: lower index); at most `top` in all.
    `prefer` (a padded row of another selection) replaces that when it is a top-k up to `tie_tol`; `rounded`:
    the candidates whose scores the implementations cannot compute exactly (see the module's doc)."""
    k = min(top, len(candidates)) if top > 0 else 0
    forced = sorted(c for c in candidates if c in forced)
    # a NaN or -inf score is never chosen (a NaN or infinite key in the block): the kernels' and functions' rule
    rest = sorted((c for c in candidates if c not in forced and scores[c] > -np.inf), key=lambda c: (-scores[c], c))
    chosen = sorted(forced + rest[: max(0, k - len(forced))]) if k else []
    if prefer is not None and tie_tol > 0:
        other = [int(c) for c in prefer if c >= 0]
        if other != chosen and _top_k_up_to_ties(scores, candidates, forced, len(chosen), other, tie_tol, rounded):
            return sorted(other)
    return chosen


def _top_k_up_to_ties(scores, candidates, forced, k, other, tie_tol, rounded=frozenset()) -> bool:
    """`other` holds k distinct candidates, the forced ones among them, and no candidate it leaves out beats
    one it takes by more than tie_tol * (1 + |score|); an exact tie must still go to the lower index unless one
    of the two scores is `rounded` (and finite)."""
    if len(other) != k or len(set(other)) != k or not set(other) <= set(candidates) or not set(forced) <= set(other):
        return False
    taken = [c for c in other if c not in forced]
    left = [c for c in candidates if c not in other and c not in forced]
    for t in taken:
        for o in left:
            st, so = scores[t], scores[o]
            if st > so or (st == so and t < o):
                continue
            if not (math.isfinite(st) and math.isfinite(so)):
                return False
            if st == so and t not in rounded and o not in rounded:
                return False
            if so - st > tie_tol * (1.0 + max(abs(st), abs(so))):
                return False
    return True


def _preferred(prefer, index, shape):
    """Row `index` of the preferred selection array, or None when there is none or its shape is not `shape`."""
    if prefer is None or np.shape(prefer) != shape:
        return None
    return np.asarray(prefer)[index]


def _padded(items: list[int], width: int) -> list[int]:
    return list(items) + [-1] * (width - len(items))


def _gates(gates, shape) -> np.ndarray:
    if gates is None:
        return np.ones(shape)
    return np.broadcast_to(np.asarray(gates, dtype=np.float64), shape)


def nsa_oracle(q, k, v, gates=None, compressed_key=None, compressed_value=None, *, block_size: int, top_blocks: int,
               top_tokens: int = 0, window: int = 0, causal: int = 0, shared_selection: int = 0,
               sink_blocks: int = 0, local_blocks: int = 0, scale: float = 0.0, prefer=None, tie_tol: float = 0.0):
    """NativeSparseAttention: returns (Y [B,Hq,Sq,Dv], selected_blocks [B,Hs,Sq,top_blocks],
    selected_tokens [B,Hq,Sq,top_tokens]). `prefer`: (selected_blocks, selected_tokens) of another
    implementation (see the module's doc)."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    batch, hq, sq, d = q.shape
    hkv, skv, dv = k.shape[1], k.shape[2], v.shape[3]
    group, bs = hq // hkv, block_size
    scale = scale or 1.0 / math.sqrt(d)
    full = skv // bs
    num_blocks = full + (1 if causal and skv % bs else 0)
    g = _gates(gates, (batch, hq, sq, 3))
    has_cmp = compressed_key is not None
    if has_cmp:
        ck, cv = np.asarray(compressed_key, np.float64), np.asarray(compressed_value, np.float64)
    hs = hkv if shared_selection else hq
    y = np.zeros((batch, hq, sq, dv))
    sel_blocks = np.full((batch, hs, sq, top_blocks), -1, dtype=np.int64)
    sel_tokens = np.full((batch, hq, sq, top_tokens), -1, dtype=np.int64)
    prefer_blocks, prefer_tokens = (list(prefer or ()) + [None, None])[:2]
    # block scores that round in every implementation: means over a count of keys that is not a power of two
    rounded = frozenset(range(full)) if not has_cmp and bs & (bs - 1) else frozenset()
    for b in range(batch):
        means = np.stack([k[b, :, c * bs:(c + 1) * bs].mean(axis=1) for c in range(full)], 1) if full else None
        for i in range(sq):
            p = i + skv - sq
            own = p // bs
            past = [j for j in range(skv) if not causal or j <= p]
            # per head: block scores (and the compression branch's output)
            scores, second = {}, {}
            for h in range(hq):
                kh = h // group
                if has_cmp:
                    visible = [t for t in range(ck.shape[2]) if not causal or (t + 1) * bs - 1 <= p]
                    probs = {}
                    if visible:
                        # scale * (k . q), not (scale * k) . q: grid dots are exact, so exact ties stay ties
                        logits = np.array([scale * (ck[b, kh, t] @ q[b, h, i]) for t in visible])
                        w = np.exp(logits - logits.max())
                        probs = dict(zip(visible, w / w.sum()))
                        second[h] = (w / w.sum()) @ cv[b, kh, visible]
                    else:
                        second[h] = np.zeros(dv)
                    scores[h] = {c: probs.get(c, 0.0) for c in range(full)}
                else:
                    scores[h] = {c: float(means[kh, c] @ q[b, h, i]) for c in range(full)}
                scores[h].update({c: -math.inf for c in range(full, num_blocks)})
            candidates = [c for c in range(num_blocks) if not causal or c <= own]
            forced = {c for c in candidates if (causal and c == own) or c < sink_blocks or own - local_blocks <= c < own}
            chosen = {}
            for s in range(hs):
                heads = range(s * group, (s + 1) * group) if shared_selection else [s]
                summed = {c: sum(scores[h][c] for h in heads) for c in range(num_blocks)}
                chosen[s] = _choose(summed, candidates, forced, top_blocks,
                                    _preferred(prefer_blocks, (b, s, i), sel_blocks.shape), tie_tol, rounded)
                sel_blocks[b, s, i] = _padded(chosen[s], top_blocks)
            for h in range(hq):
                kh = h // group
                blocks = chosen[h // group if shared_selection else h]
                keys = [j for c in blocks for j in range(c * bs, min((c + 1) * bs, skv)) if not causal or j <= p]
                out = g[b, h, i, 0] * _attend(q[b, h, i], k[b, kh, keys], v[b, kh, keys], scale)
                if top_tokens > 0:
                    dots = {j: float(k[b, kh, j] @ q[b, h, i]) for j in past}
                    tokens = _choose(dots, past, set(), top_tokens,
                                     _preferred(prefer_tokens, (b, h, i), sel_tokens.shape), tie_tol)
                    sel_tokens[b, h, i] = _padded(tokens, top_tokens)
                    out += g[b, h, i, 1] * _attend(q[b, h, i], k[b, kh, tokens], v[b, kh, tokens], scale)
                elif has_cmp:
                    out += g[b, h, i, 1] * second[h]
                if window > 0:
                    keys = [j for j in range(max(0, p - window + 1), p + 1) if j < skv]
                    out += g[b, h, i, 2] * _attend(q[b, h, i], k[b, kh, keys], v[b, kh, keys], scale)
                y[b, h, i] = out
    return y, sel_blocks, sel_tokens


def routed_oracle(q, k, v, position_ids=None, *, segment_size: int, top_k: int, causal: int = 0, cosine: int = 1,
                  rope: int = 0, rope_before_routing: int = 0, rope_base: float = 10000.0, rotary_dim: int = 0,
                  rope_interleaved: int = 0, rope_attention_scaling: float = 1.0, scale: float = 0.0,
                  compute=np.float64, prefer=None, tie_tol: float = 0.0):
    """SparseRoutedAttention: returns (Y [B,Hq,Sq,Dv], selected_segments [B,Hq,Sq,top_k]). `compute`
    is the RoPE arithmetic (float32 reproduces the kernels' rounded angles). `prefer`: (selected_segments,) of
    another implementation (see the module's doc)."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    batch, hq, sq, d = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    group, seg = hq // hkv, segment_size
    scale = scale or 1.0 / math.sqrt(d)
    positions = np.broadcast_to(np.arange(skv) if position_ids is None else np.asarray(position_ids), (batch, skv))
    q_rot, k_rot = q, k
    if rope:
        inv_freq = default_inv_freq(rotary_dim or d, rope_base)
        kw = dict(interleaved=bool(rope_interleaved), scaling=rope_attention_scaling, compute=compute)
        q_rot = np.asarray(rope_oracle(q, positions[:, skv - sq:], inv_freq, **kw), np.float64)
        k_rot = np.asarray(rope_oracle(k, positions, inv_freq, **kw), np.float64)
    q_route, k_route = (q_rot, k_rot) if rope_before_routing else (q, k)
    num_segments = -(-skv // seg)
    # segment scores that round in every implementation: unit-length or rotated centroids, and means over a
    # count of keys that is not a power of two (a partial last segment has its own count)
    lengths = [min(seg, skv - c * seg) for c in range(num_segments)]
    rounded = frozenset(c for c, n in enumerate(lengths) if cosine or (rope and rope_before_routing) or n & (n - 1))
    y = np.zeros((batch, hq, sq, v.shape[3]))
    selected = np.full((batch, hq, sq, top_k), -1, dtype=np.int64)
    for b in range(batch):
        for h in range(hq):
            kh = h // group
            centroids = [k_route[b, kh, c * seg:(c + 1) * seg].mean(axis=0) for c in range(num_segments)]
            if cosine:
                centroids = [c / max(np.linalg.norm(c), 1e-12) for c in centroids]
            for i in range(sq):
                p = i + skv - sq
                own = p // seg
                scores = {c: float(centroids[c] @ q_route[b, h, i]) for c in range(num_segments)}
                candidates = [c for c in range(num_segments) if not causal or c <= own]
                chosen = _choose(scores, candidates, {own} if causal else set(), top_k,
                                 _preferred(prefer[0] if prefer else None, (b, h, i), selected.shape), tie_tol,
                                 rounded)
                selected[b, h, i] = _padded(chosen, top_k)
                keys = [j for c in chosen for j in range(c * seg, min((c + 1) * seg, skv)) if not causal or j <= p]
                y[b, h, i] = _attend(q_rot[b, h, i], k_rot[b, kh, keys], v[b, kh, keys], scale)
    return y, selected
