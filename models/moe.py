"""Mixture of experts (MoE) shared by the reference decoders: a router picks `experts_per_token` of
`num_experts` SwiGLU experts per token and their outputs are mixed by the router's weights.

Every expert runs on every token and the weights (zero for the experts not chosen) mix them: exact,
exportable with standard ONNX ops, and E / k times the compute of a sparse dispatch (a reference model).

Router scoring: "softmax" (Mixtral, Qwen-MoE: softmax over all experts, then top-k) or "sigmoid"
(DeepSeek-V3: sigmoid scores, a per-expert bias that steers the choice only, optionally group-limited).
Top-k ties: torch.topk decides in eager torch (as in transformers); the exported ONNX TopK prefers the lower
index, so an exact tie between two scores could pick a different expert there."""

from __future__ import annotations

import torch
from torch import nn

from onnxattn.models._base import ACTIVATIONS

SCORINGS = ("softmax", "sigmoid")


def check_moe(owner: str, *, num_experts: int, experts_per_token: int, intermediate: int, scoring: str = "softmax",
              num_groups: int = 1, groups_per_token: int = 1) -> None:
    """Validates MoE settings (num_experts >= 1), naming `owner` and the offending field."""
    e, g = num_experts, num_groups
    if scoring not in SCORINGS:
        raise ValueError(f"{owner}: router scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    if intermediate < 1:
        raise ValueError(f"{owner}: moe_intermediate must be >= 1, got {intermediate}")
    if g < 1 or e % g:
        raise ValueError(f"{owner}: num_groups ({g}) must be >= 1 and divide num_experts ({e})")
    if g > 1 and scoring != "sigmoid":  # the group score (sum of the two best) is DeepSeek-V3's
        raise ValueError(f"{owner}: expert groups need sigmoid scoring (DeepSeek-V3's group limit), got {scoring!r}")
    if g > 1 and e // g < 2:
        raise ValueError(f"{owner}: with num_groups > 1 each group needs >= 2 experts (a group scores by its "
                         f"two best), got {e // g}")
    if not 1 <= groups_per_token <= g:
        raise ValueError(f"{owner}: groups_per_token must be in [1, num_groups = {g}], got {groups_per_token}")
    if not 1 <= experts_per_token <= groups_per_token * (e // g):
        raise ValueError(f"{owner}: experts_per_token must be in [1, {groups_per_token * (e // g)}] "
                         f"(the experts of groups_per_token groups), got {experts_per_token}")


class MixtureOfExperts(nn.Module):
    """x [..., hidden] -> sum over the chosen experts of weight * SwiGLU_e(x). Parameters as transformers
    stores them: `router` [E, hidden] (gate.weight), `gate_up_proj` [E, 2 * I, hidden] (gate rows first),
    `down_proj` [E, hidden, I]; with sigmoid scoring also `e_score_correction_bias` [E] (a buffer)."""

    def __init__(self, hidden: int, num_experts: int, experts_per_token: int, intermediate: int,
                 activation: str = "silu", *, scoring: str = "softmax", norm_topk: bool = True,
                 routed_scaling: float = 1.0, num_groups: int = 1, groups_per_token: int = 1):
        super().__init__()
        check_moe(type(self).__name__, num_experts=num_experts, experts_per_token=experts_per_token,
                  intermediate=intermediate, scoring=scoring, num_groups=num_groups, groups_per_token=groups_per_token)
        e, i, h = num_experts, intermediate, hidden
        self.num_experts, self.top_k, self.scoring = e, experts_per_token, scoring
        self.num_groups, self.topk_groups = num_groups, groups_per_token
        self.routed_scaling, self.norm_topk = routed_scaling, norm_topk
        self.router = nn.Parameter(torch.zeros(e, h))
        self.register_buffer("e_score_correction_bias", torch.zeros(e) if scoring == "sigmoid" else None)
        self.gate_up_proj = nn.Parameter(torch.zeros(e, 2 * i, h))
        self.down_proj = nn.Parameter(torch.zeros(e, h, i))
        self.act = ACTIVATIONS[activation]

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """Routing weights [..., E] in float32: zero but for each token's top_k experts."""
        logits = nn.functional.linear(x.float(), self.router.float())
        if self.scoring == "softmax":
            scores = choice = torch.softmax(logits, dim=-1)
        else:
            scores = torch.sigmoid(logits)
            choice = scores + self.e_score_correction_bias.float()  # the bias steers the choice, not the weights
        if self.num_groups > 1:
            grouped = choice.unflatten(-1, (self.num_groups, self.num_experts // self.num_groups))
            group_scores = grouped.topk(2, dim=-1).values.sum(-1)  # [..., G]
            best = group_scores.topk(self.topk_groups, dim=-1).indices
            keep = torch.zeros_like(group_scores).scatter(-1, best, 1.0)
            choice = grouped.masked_fill(keep.unsqueeze(-1) == 0, float("-inf")).flatten(-2)
        chosen = choice.topk(self.top_k, dim=-1).indices  # ties: see the module docstring
        weights = scores.gather(-1, chosen)
        if self.norm_topk:  # the epsilon (DeepSeek-V3's) cannot change a softmax sum, which is >= k / E
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return torch.zeros_like(scores).scatter(-1, chosen, weights * self.routed_scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.route(x)  # [B, S, E]
        gate, up = torch.matmul(x.unsqueeze(-3), self.gate_up_proj.transpose(1, 2)).chunk(2, dim=-1)  # [B, E, S, I]
        y = torch.matmul(self.act(gate) * up, self.down_proj.transpose(1, 2))  # [B, E, S, hidden]
        return (y.float() * weights.transpose(-1, -2).unsqueeze(-1)).sum(-3).to(x.dtype)

    def extra_repr(self) -> str:
        groups = f", groups={self.num_groups}, topk_groups={self.topk_groups}" if self.num_groups > 1 else ""
        return (f"experts={self.num_experts}, top_k={self.top_k}, scoring={self.scoring}{groups}, "
                f"intermediate={self.down_proj.shape[-1]}")
