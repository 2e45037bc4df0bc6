"""An independent numpy oracle of onnxattn::LightningIndexer (float64).

Written from the op's contract (onnxattn/ops/indexer.py's DOC), not from the package's code: numpy only, one
query row at a time, hidden keys left out of the candidates (never scored, so NaN in hidden buffer slots cannot
reach a visible score).

Contract:
1. q = query [B, S, H*D] -> [B, S, H, D]; key [B, T, D] or [B, 1, T, D] -> [B, T, D]; D from key, H = (H*D) / D.
2. score[b, i, t] = sum_h weights[b, i, h] * relu(scale * q[b, i, h] . key[b, t]); scale 0 means 1/sqrt(D).
3. query i sits at p = T - S + i, or p = past_lengths[b] + i (shared buffer); it sees keys t <= p.
4. the top_k visible keys by score, ties toward the lower position, listed in ascending position order, then -1;
   a key whose score is NaN or -inf is never picked (a NaN in a visible key makes its score NaN).

Inputs of any float dtype are upcast to float64 exactly (fp16 / bf16 values are float64 values), so the oracle
sees what every implementation sees; only the arithmetic differs (implementations score in float32).

Two ways to compare an implementation's picks:
- `indexer_oracle` (exact): equal arrays. Sound when every implementation computes the scores exactly, e.g. grid
  inputs (multiples of 1/4 within +-2, scale a power of two: every product and partial sum is a float32 number),
  and then exact ties are real ties, so it also tests the lower-position rule.
- `assert_topk_within` (tolerance): the picks must be *a* top-k of the float64 scores up to `score_tolerance`,
  in the output's format. Use it for unrounded (unit-normal) inputs, where a float32 implementation and the
  float64 oracle may order two keys whose scores differ by less than the float32 rounding error differently.
"""

from __future__ import annotations

import numpy as np

U32 = 2.0**-24  # unit roundoff of float32, the type every implementation scores in


def _rows(query, key, weights, past_lengths, num_heads, scale):
    q = np.asarray(query, np.float64)
    batch, seq, width = q.shape
    k = np.asarray(key, np.float64).reshape(batch, *np.shape(key)[-2:])  # [B, 1, T, D] -> [B, T, D]
    total, dim = k.shape[1:]
    assert width == num_heads * dim, (width, num_heads, dim)
    q = q.reshape(batch, seq, num_heads, dim)
    w = np.asarray(weights, np.float64)
    scale = float(scale) if scale else dim**-0.5
    for b in range(batch):
        for i in range(seq):
            p = (total - seq + i) if past_lengths is None else int(past_lengths[b]) + i
            yield b, i, p, q[b, i], k[b, : max(p + 1, 0)], w[b, i], scale, total


def indexer_scores(query, key, weights, past_lengths=None, *, num_heads, scale=0.0, **_):
    """score [B, S, T] in float64, -inf where hidden (the keys after the query's position)."""
    q = np.asarray(query)
    batch, seq = q.shape[:2]
    total = np.shape(key)[-2]
    out = np.full((batch, seq, total), -np.inf)
    for b, i, _p, qi, ki, wi, s, _t in _rows(query, key, weights, past_lengths, num_heads, scale):
        per_head = np.maximum(s * (qi @ ki.T), 0.0)  # [H, visible]
        out[b, i, : ki.shape[0]] = wi @ per_head
    return out


def score_bound(query, key, weights, past_lengths=None, *, num_heads, scale=0.0, **_):
    """M [B, S]: per query row, max over its visible keys of sum_h |w_h| * |scale| * sum_d |q_hd k_td| — the sum of
    magnitudes that float32 rounding errors of the score are relative to."""
    q = np.asarray(query)
    out = np.zeros(q.shape[:2])
    for b, i, _p, qi, ki, wi, s, _t in _rows(query, key, weights, past_lengths, num_heads, scale):
        if ki.shape[0]:
            out[b, i] = (np.abs(wi) @ (abs(s) * (np.abs(qi) @ np.abs(ki).T))).max()
    return out


def indexer_oracle(query, key, weights, past_lengths=None, *, num_heads, top_k, scale=0.0, **_):
    """key_indices [B, S, top_k] int64 by the contract (ties toward the lower position)."""
    q = np.asarray(query)
    batch, seq = q.shape[:2]
    out = np.full((batch, seq, top_k), -1, np.int64)
    scores = indexer_scores(query, key, weights, past_lengths, num_heads=num_heads, scale=scale)
    total = np.shape(key)[-2]
    for b in range(batch):
        for i in range(seq):
            p = (total - seq + i) if past_lengths is None else int(past_lengths[b]) + i
            visible = min(max(p + 1, 0), total)
            row = scores[b, i, :visible]
            pickable = np.flatnonzero(row > -np.inf)  # NaN compares False
            order = pickable[np.lexsort((pickable, -row[pickable]))][:top_k]  # score descending, then position
            picks = np.sort(order)
            out[b, i, : picks.size] = picks
    return out


def score_tolerance(query, key, weights, past_lengths=None, *, num_heads, scale=0.0, **_):
    """tol [B, S]: how far apart a float32 implementation may order two visible keys' scores from the float64 ones.

    A float32 dot product of D terms errs by at most gamma_D ~ D * u relative to sum |q k|, in any summation order
    (sequential, blocked, pairwise or tensor-core partial sums: the bound holds for every order); products of
    fp16 / bf16 values are exact in float32, of float32 values they round once (one more u). Scale, relu, the
    weight product and the sum over H heads add H + 3 roundings, all relative to M = sum_h |w_h| |scale| sum |q k|
    (score_bound). So each score is within (D + H + 4) u M of the float64 one and a difference of two scores
    within twice that. Worst case, so loose (the typical error is ~sqrt(D + H) u M), but far below the error of
    scores kept in a 16-bit type (2^-9 to 2^-12 of the score itself), which should then fail on the long rows."""
    dim = np.shape(key)[-1]
    return 2.0 * (dim + num_heads + 4) * U32 * score_bound(query, key, weights, past_lengths, num_heads=num_heads,
                                                            scale=scale)


def assert_topk_within(picks, query, key, weights, past_lengths=None, *, num_heads, top_k, scale=0.0,
                       tolerance=None, **_):
    """Asserts `picks` [B, S, top_k] is a top-k of the float64 scores up to `tolerance` ([B, S]; default
    score_tolerance): per row, ascending distinct visible positions, then -1, as many as min(top_k, visible),
    and no key left out scores more than `tolerance` above the lowest picked one. Where the oracle's k-th and
    (k+1)-th scores differ by more than the tolerance this is equality with indexer_oracle."""
    picks = np.asarray(picks)
    q = np.asarray(query)
    batch, seq = q.shape[:2]
    total = np.shape(key)[-2]
    assert picks.shape == (batch, seq, top_k), f"key_indices shape {picks.shape}, expected {(batch, seq, top_k)}"
    assert picks.dtype == np.int64, picks.dtype
    scores = indexer_scores(query, key, weights, past_lengths, num_heads=num_heads, scale=scale)
    if tolerance is None:
        tolerance = score_tolerance(query, key, weights, past_lengths, num_heads=num_heads, scale=scale)
    for b in range(batch):
        for i in range(seq):
            p = (total - seq + i) if past_lengths is None else int(past_lengths[b]) + i
            visible = min(max(p + 1, 0), total)
            row = picks[b, i]
            s = scores[b, i, :visible]
            pickable = np.flatnonzero(s > -np.inf)  # NaN and -inf scores are never picked
            count = min(top_k, pickable.size)
            where = f"row [{b}, {i}] (position {p}): {row.tolist()}"
            assert (row[count:] == -1).all(), f"{where}: expected {count} picks, then -1"
            chosen = row[:count]
            assert ((chosen >= 0) & (chosen < visible)).all(), f"{where}: a pick outside the visible 0..{p}"
            assert (np.diff(chosen) > 0).all(), f"{where}: picks not ascending and distinct"
            assert np.isin(chosen, pickable).all(), f"{where}: a key scoring NaN or -inf picked"
            if count == pickable.size:
                continue
            rest = np.setdiff1d(pickable, chosen)
            low, high = s[chosen].min(), s[rest].max()
            assert high <= low + tolerance[b, i], (
                f"{where}: key {rest[s[rest].argmax()]} (score {high:.9g}) left out for a pick scoring {low:.9g} "
                f"(tolerance {tolerance[b, i]:.3g})")
