"""Rotary position embedding settings: base, partial rotation, layout, and frequency scaling schemes
(linear, Llama 3, YaRN, LongRoPE) expressed as inverse frequencies plus an attention factor, the form the
GroupQueryAttention op takes (rope_inv_freq input, rope_attention_scaling attribute). LongRoPE has two sets of
frequencies; `longrope_frequencies` picks one per forward with tensor ops, so an exported graph keeps the switch."""

from __future__ import annotations

import dataclasses
import math

import torch

from onnxattn.nn.reference import default_inv_freq


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Context-extension scheme. kind:
    - "linear": positions / factor;
    - "llama3": Llama 3.1 frequency bands;
    - "yarn": NTK-by-parts interpolation with an attention factor (default 0.1 ln(factor) + 1); its correction
      range is rounded outward to whole dims unless `truncate` is False (GPT-OSS);
    - "longrope": LongRoPE (Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini): inv_freq[i] = 1 / (f[i] base^(2i/d)) with
      per-frequency divisors f = `short_factor`, or `long_factor` for a whole forward once its largest position
      reaches `original_max_positions` (largest position + 1 > original_max_positions, as transformers decides;
      earlier tokens' cached keys keep the frequencies they were rotated with). cos and sin are multiplied by
      `attention_factor`, by default sqrt(1 + ln(factor) / ln(original_max_positions)) for factor > 1 (else 1),
      with factor the context extension (max positions / original_max_positions). Rope.frequencies gives the
      short set, frequencies(long=True) the long one, and `longrope_frequencies` the switch between them."""

    kind: str
    factor: float
    original_max_positions: int = 8192
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    attention_factor: float | None = None  # yarn, longrope; None: the kind's default (above)
    short_factor: tuple[float, ...] = ()  # longrope: one divisor per frequency [rotary_dim / 2]
    long_factor: tuple[float, ...] = ()  # longrope
    truncate: bool = True  # yarn: floor / ceil the correction range (transformers' truncate)

    def __post_init__(self):
        if self.kind not in ("linear", "llama3", "yarn", "longrope"):
            raise ValueError(f"RopeScaling: kind must be 'linear', 'llama3', 'yarn' or 'longrope', got {self.kind!r}")
        if not self.factor > 0:
            raise ValueError(f"RopeScaling: factor must be > 0, got {self.factor}")
        if self.kind == "longrope":
            object.__setattr__(self, "short_factor", tuple(float(f) for f in self.short_factor))  # hashable
            object.__setattr__(self, "long_factor", tuple(float(f) for f in self.long_factor))
            n = len(self.short_factor)
            if not n or len(self.long_factor) != n or not all(f > 0 for f in self.short_factor + self.long_factor):
                raise ValueError(f"RopeScaling: longrope needs short_factor and long_factor of one length >= 1, all "
                                 f"> 0, got {len(self.short_factor)} and {len(self.long_factor)} factors")
            if self.original_max_positions < 2:  # its log divides the default attention factor
                raise ValueError(f"RopeScaling: original_max_positions must be >= 2, got {self.original_max_positions}")
        elif self.short_factor or self.long_factor:
            raise ValueError(f"RopeScaling: short_factor / long_factor belong to kind 'longrope', not {self.kind!r}")


@dataclasses.dataclass(frozen=True)
class Rope:
    base: float = 10000.0
    rotary_dim: int | None = None  # None: the whole head
    interleaved: bool = False
    scaling: RopeScaling | None = None

    @property
    def switches(self) -> bool:
        """True for LongRoPE: the frequencies of a forward depend on its positions (longrope_frequencies)."""
        return self.scaling is not None and self.scaling.kind == "longrope"

    def frequencies(self, head_dim: int, long: bool = False) -> tuple[torch.Tensor, float]:
        """(inv_freq [rotary_dim / 2] float32, attention scaling). `long`: LongRoPE's long set (else the short
        one); the other kinds have one set."""
        dim = self.rotary_dim or head_dim
        if dim % 2 or dim > head_dim:
            raise ValueError(f"Rope: rotary_dim must be even and <= head_dim ({head_dim}), got {dim}")
        inv_freq = default_inv_freq(dim, self.base)
        s = self.scaling
        if s is None:
            return inv_freq, 1.0
        if s.kind == "linear":
            return inv_freq / s.factor, 1.0
        if s.kind == "llama3":
            return _llama3(inv_freq, s), 1.0
        if s.kind == "longrope":
            return _longrope(dim, self.base, s, long)
        return _yarn(dim, self.base, s)


def _llama3(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = s.original_max_positions / s.low_freq_factor
    high_freq_wavelen = s.original_max_positions / s.high_freq_factor
    smooth = (s.original_max_positions / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    out = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(medium, blended, out)


def _yarn(dim: int, base: float, s: RopeScaling) -> tuple[torch.Tensor, float]:
    def correction_dim(rotations: float) -> float:
        return dim * math.log(s.original_max_positions / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = default_inv_freq(dim, base)
    interpolation = extrapolation / s.factor
    keep = 1 - ramp  # 1 for high frequencies (kept), 0 for low ones (interpolated)
    inv_freq = interpolation * (1 - keep) + extrapolation * keep
    # the published default: 0.1 ln(s) + 1, and no scaling when the context is not extended (s <= 1)
    default = 0.1 * math.log(s.factor) + 1.0 if s.factor > 1 else 1.0
    attention = s.attention_factor if s.attention_factor is not None else default
    return inv_freq, attention


def _longrope(dim: int, base: float, s: RopeScaling, long: bool) -> tuple[torch.Tensor, float]:
    factors = s.long_factor if long else s.short_factor
    if len(factors) != dim // 2:
        raise ValueError(f"RopeScaling: longrope needs one factor per frequency (rotary_dim / 2 = {dim // 2}), got "
                         f"{len(factors)}")
    # transformers' order of operations (1 / (f * base^e)), so the float32 values are its own
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    inv_freq = 1.0 / (torch.tensor(factors, dtype=torch.float32) * base ** exponents)
    if s.attention_factor is not None:
        return inv_freq, s.attention_factor
    return inv_freq, math.sqrt(1 + math.log(s.factor) / math.log(s.original_max_positions)) if s.factor > 1 else 1.0


def longrope_frequencies(short: torch.Tensor, long: torch.Tensor, last_position: torch.Tensor,
                         original_max_positions: int) -> torch.Tensor:
    """LongRoPE's frequencies for one forward: `long` if its largest position `last_position` (a 0-d tensor,
    the largest over the whole batch, as transformers takes it) + 1 exceeds original_max_positions, else `short`.
    A torch.where, not a Python branch: exported, it stays a Greater + Where on the positions."""
    return torch.where(last_position + 1 > original_max_positions, long, short)


def positions_from_boundaries(seq_len: int, boundaries, offset: int = 0, device=None) -> torch.Tensor:
    """Positions [seq_len] of packed documents: restart at 0 at each boundary index (a document starts
    there), counted from `offset` for the first one."""
    if isinstance(boundaries, torch.Tensor) and torch.compiler.is_exporting():
        raise ValueError("document boundaries must be Python ints when exporting (they are built into the graph); "
                         "pass position_ids for boundaries known only at run time")
    positions = torch.arange(seq_len, device=device) + offset
    for start in sorted(int(b) for b in boundaries):
        if not 0 <= start < seq_len:
            raise ValueError(f"document boundary {start} is outside [0, {seq_len})")
        positions[start:] = torch.arange(seq_len - start, device=device)
    return positions


def node_positions(seq_len: int, device, position_ids: torch.Tensor | None, past, past_lengths: torch.Tensor | None,
                   *, slots: bool = False) -> torch.Tensor:
    """The positions an attention node rotates a forward's tokens by, [B or 1, S]: position_ids, or each
    sequence's cache slots (past_lengths[b], else past, + arange(S)), which `slots` asks for whatever
    position_ids say. `past` may be a traced size while exporting."""
    if position_ids is not None and not slots:
        return position_ids
    offset = past_lengths.to(torch.int64)[:, None] if past_lengths is not None else past
    return torch.arange(seq_len, device=device)[None, :] + offset


class TokenPositions:
    """For attention modules whose subclasses prepare q / k in torch (in `project`) at the node's own positions:
    forward sets a callable for its tokens' positions (node_positions' rule, or a paged step's) for its duration,
    and token_positions() returns them. One source of truth for what the node will use."""

    _positions_of = None  # set by forward: slots -> positions

    def token_positions(self, *, slots: bool = False) -> torch.Tensor:
        """The running forward's token positions ([B or 1, S], or [T] for a paged step); with `slots` their cache
        slots, whatever position_ids say. Only during forward."""
        if self._positions_of is None:
            raise RuntimeError(f"{type(self).__name__}.token_positions: only during forward")
        return self._positions_of(slots)
