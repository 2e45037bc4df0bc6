"""Rotary position embedding settings: base, partial rotation, layout, and frequency scaling schemes
(linear, Llama 3, YaRN) expressed as inverse frequencies plus an attention factor, the form the
GroupQueryAttention op takes (rope_inv_freq input, rope_attention_scaling attribute)."""

from __future__ import annotations

import dataclasses
import math

import torch

from onnxattn.nn.reference import default_inv_freq


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Context-extension scheme. kind: "linear" (positions / factor), "llama3" (Llama 3.1 frequency bands)
    or "yarn" (NTK-by-parts interpolation with an attention factor)."""

    kind: str
    factor: float
    original_max_positions: int = 8192
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    attention_factor: float | None = None  # yarn; default 0.1 * ln(factor) + 1

    def __post_init__(self):
        if self.kind not in ("linear", "llama3", "yarn"):
            raise ValueError(f"RopeScaling: kind must be 'linear', 'llama3' or 'yarn', got {self.kind!r}")
        if not self.factor > 0:
            raise ValueError(f"RopeScaling: factor must be > 0, got {self.factor}")


@dataclasses.dataclass(frozen=True)
class Rope:
    base: float = 10000.0
    rotary_dim: int | None = None  # None: the whole head
    interleaved: bool = False
    scaling: RopeScaling | None = None

    def frequencies(self, head_dim: int) -> tuple[torch.Tensor, float]:
        """(inv_freq [rotary_dim / 2] float32, attention scaling)."""
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

    low = max(math.floor(correction_dim(s.beta_fast)), 0)
    high = min(math.ceil(correction_dim(s.beta_slow)), dim - 1)
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


def positions_from_boundaries(seq_len: int, boundaries, offset: int = 0, device=None) -> torch.Tensor:
    """Positions [seq_len] of packed documents: restart at 0 at each boundary index (a document starts
    there), counted from `offset` for the first one."""
    positions = torch.arange(seq_len, device=device) + offset
    for start in sorted(int(b) for b in boundaries):
        if not 0 <= start < seq_len:
            raise ValueError(f"document boundary {start} is outside [0, {seq_len})")
        positions[start:] = torch.arange(seq_len - start, device=device)
    return positions
