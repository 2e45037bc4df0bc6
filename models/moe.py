"""Mixture of experts (MoE) shared by the reference decoders: a router picks `experts_per_token` of
`num_experts` SwiGLU experts per token and their outputs are mixed by the router's weights.

Two exact ways to run the experts, both in standard ONNX ops, picked per forward by the token count T:
- gathered (T * k < E: decode steps and short chunks): each token's k chosen experts' weights are gathered and run
  on that token alone, so a step reads k of E experts per token instead of all E (decode is weight-bound);
- dense (otherwise: prompts): every expert runs on every token and the weights (zero for the experts not chosen)
  mix them, E / k times the compute of a sparse dispatch but a few large MatMuls.
Exported, the choice is an If node on T (torch.cond), so one graph serves prefill and decode. `dispatch` ("auto",
"gathered" or "all", an attribute to set before export) forces one way, e.g. to compare them.

Router scoring: "softmax" (Mixtral, Qwen-MoE, DeepSeek-V2: softmax over all experts, then top-k) or "sigmoid"
(DeepSeek-V3: sigmoid scores plus a per-expert bias that steers the choice only). Either may be group-limited:
the experts come from the `groups_per_token` best of `num_groups` groups, a group scored by its best expert
(group_score "max": DeepSeek-V2's group_limited_greedy) or by the sum of its two best ("top2_sum": DeepSeek-V3).
An optional shared expert (Qwen2-MoE: shared_intermediate > 0) runs on every token, its output scaled by
sigmoid(shared_expert_gate(x)) and added to the routed experts' (GLM-4.5 with shared_gated=False: added as it is).
GPT-OSS's experts (all off by default): a router bias, expert biases, and ClampedSwiGLU in place of act(gate) * up.
Its routing (softmax over the top-k logits only) is "softmax" with norm_topk: exp(l_i) / sum over the chosen of
exp(l_j) either way.
ERNIE 4.5 MoE (all off by default): a choice bias on the softmax scores too (choice_bias), the chosen weights' sum
clamped to >= norm_min instead of an epsilon added, a biased shared expert (shared_bias).
PhiMoE's SparseMixer at inference ("sparsemixer", always 2 experts): the best expert, weighted by its softmax over
the logits within 2 * jitter_eps (relative) of the best, then the second best, weighted by its softmax over the others
within 2 * jitter_eps of it.
Llama 4 (scale_inputs): each expert runs on the token times its weight, and the outputs are summed unweighted
(its router: sigmoid scoring, top-k of the raw logits (rank_by_logits), no renormalisation; an ungated shared
expert). Kolibri-1's router ranks the logits plus the choice bias (rank_by_logits with a non-zero bias).
LongCat-Flash's zero-computation experts (identity_experts, off by default): the router scores num_experts +
identity_experts choices; a chosen identity expert adds the token itself times its weight (no MLP runs for it).
DBRX (norm_p, 1 by default): the chosen weights renormalised by their p-norm instead of their sum
(moe_normalize_expert_weights). Cohere 2 MoE (shared_average): the shared expert's output averaged with the routed
experts' instead of added. Laguna (logit_softcap, 0 by default): the router logits soft-capped, cap * tanh(logits /
cap), before scoring.
Top-k ties: torch.topk decides in eager torch (as in transformers); the exported ONNX TopK prefers the lower
index, so an exact tie between two scores could pick a different expert there."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from onnxattn.models._base import ACTIVATIONS, SwiGLU

SCORINGS = ("softmax", "sigmoid", "sparsemixer")
GROUP_SCORES = ("top2_sum", "max")
DISPATCHES = ("auto", "gathered", "all")


@dataclasses.dataclass(frozen=True)
class ClampedSwiGLU:
    """GPT-OSS's expert activation of (gate, up): gate clamped to <= limit, up to [-limit, limit], then
    (up + 1) * gate * sigmoid(alpha * gate)."""

    alpha: float = 1.702
    limit: float = 7.0

    def __post_init__(self):
        if not math.isfinite(self.alpha):
            raise ValueError(f"ClampedSwiGLU: alpha must be finite, got {self.alpha}")
        if not self.limit >= 0:  # NaN too; inf clamps nothing
            raise ValueError(f"ClampedSwiGLU: limit must be >= 0, got {self.limit}")

    def __call__(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        gate = gate.clamp(max=self.limit)
        up = up.clamp(-self.limit, self.limit)
        return (up + 1) * (gate * torch.sigmoid(gate * self.alpha))  # transformers' order of operations


def check_moe(owner: str, *, num_experts: int, experts_per_token: int, intermediate: int, scoring: str = "softmax",
              num_groups: int = 1, groups_per_token: int = 1, group_score: str = "top2_sum",
              jitter_eps: float = 0.0) -> None:
    """Validates MoE settings (num_experts >= 1), naming `owner` and the offending field."""
    e, g = num_experts, num_groups
    if scoring not in SCORINGS:
        raise ValueError(f"{owner}: router scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    if intermediate < 1:
        raise ValueError(f"{owner}: moe_intermediate must be >= 1, got {intermediate}")
    if g < 1 or e % g:
        raise ValueError(f"{owner}: num_groups ({g}) must be >= 1 and divide num_experts ({e})")
    if group_score not in GROUP_SCORES:
        raise ValueError(f"{owner}: group_score must be one of {', '.join(GROUP_SCORES)}, got {group_score!r}")
    if g > 1 and group_score == "top2_sum" and e // g < 2:
        raise ValueError(f"{owner}: with num_groups > 1 each group needs >= 2 experts (group_score "
                         f"top2_sum: a group scores by its two best), got {e // g}")
    if not 1 <= groups_per_token <= g:
        raise ValueError(f"{owner}: groups_per_token must be in [1, num_groups = {g}], got {groups_per_token}")
    if scoring == "sparsemixer" and (experts_per_token != 2 or g != 1 or not 0 <= jitter_eps < math.inf):
        raise ValueError(f"{owner}: sparsemixer routing picks 2 experts without groups, with a finite jitter_eps >= 0; "
                         f"got experts_per_token {experts_per_token}, num_groups {g}, jitter_eps {jitter_eps}")
    if not 1 <= experts_per_token <= groups_per_token * (e // g):
        raise ValueError(f"{owner}: experts_per_token must be in [1, {groups_per_token * (e // g)}] "
                         f"(the experts of groups_per_token groups), got {experts_per_token}")


def _export_cond(pred, true_fn, false_fn, operands: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """torch.cond(pred, true_fn, false_fn, operands) for torch.export, through the cond operator itself: torch.cond
    outside torch.compile first compiles the branches with dynamo to lift the tensors they close over: ~1.5 s per
    MoE layer on 2 cores (a 2-layer Mixtral's export: 8.2 s, 5.6 s without; medians of 3). Our branches close over no
    tensor (the experts' weights are operands), so the operator can trace them directly; it takes and returns
    tuples."""
    return torch.ops.higher_order.cond(pred, lambda *a: (true_fn(*a),), lambda *a: (false_fn(*a),), operands)[0]


class MixtureOfExperts(nn.Module):
    """x [..., hidden] -> sum over the chosen experts of weight * SwiGLU_e(x). Parameters as transformers
    stores them: `router` [E, hidden] (gate.weight), `gate_up_proj` [E, 2 * I, hidden] (gate rows first),
    `down_proj` [E, hidden, I]; with sigmoid scoring also `e_score_correction_bias` [E] (a buffer); with
    shared_intermediate > 0 also `shared_expert` (a SwiGLU) and, with shared_gated, `shared_expert_gate`
    [1, hidden]; with router_bias `router_bias` [E] (added to the router logits); with expert_bias
    `gate_up_proj_bias` [E, 2 * I] and `down_proj_bias` [E, hidden]. `glu` (a ClampedSwiGLU) replaces act(gate) * up.
    With scale_inputs (Llama 4) the sum is over all experts of SwiGLU_e(weight * x): an expert not chosen gets a
    zero input and gives zero, which needs experts without biases."""

    def __init__(self, hidden: int, num_experts: int, experts_per_token: int, intermediate: int,
                 activation: str = "silu", *, scoring: str = "softmax", norm_topk: bool = True,
                 routed_scaling: float = 1.0, num_groups: int = 1, groups_per_token: int = 1,
                 group_score: str = "top2_sum", shared_intermediate: int = 0, router_bias: bool = False,
                 expert_bias: bool = False, glu: ClampedSwiGLU | None = None, shared_gated: bool = True,
                 choice_bias: bool = False, norm_min: float = 0.0, shared_bias: bool = False, jitter_eps: float = 0.0,
                 scale_inputs: bool = False, identity_experts: int = 0, norm_p: float = 1.0,
                 shared_average: bool = False, rank_by_logits: bool = False, logit_softcap: float = 0.0):
        super().__init__()
        if rank_by_logits and (scoring != "sigmoid" or choice_bias or num_groups > 1):
            raise ValueError(f"{type(self).__name__}: rank_by_logits is for sigmoid scoring without a choice bias or "
                             f"groups (Llama 4)")
        if not 0 < norm_p < math.inf:  # NaN too
            raise ValueError(f"{type(self).__name__}: norm_p must be > 0 and finite, got {norm_p}")
        if shared_average and not shared_intermediate:
            raise ValueError(f"{type(self).__name__}: shared_average needs a shared expert (shared_intermediate > 0)")
        if scale_inputs and expert_bias:  # a biased expert would give non-zero for the zero input of one not chosen
            raise ValueError(f"{type(self).__name__}: scale_inputs cannot be combined with expert_bias")
        if identity_experts < 0 or (identity_experts and (scale_inputs or num_groups != 1 or scoring == "sparsemixer")):
            raise ValueError(f"{type(self).__name__}: identity_experts must be >= 0, and cannot be combined with "
                             f"scale_inputs, groups or sparsemixer routing; got {identity_experts}")
        # the router chooses among the MLP experts and the identity ones alike (both checked as experts)
        check_moe(type(self).__name__, num_experts=num_experts + identity_experts, experts_per_token=experts_per_token,
                  intermediate=intermediate, scoring=scoring, num_groups=num_groups, groups_per_token=groups_per_token,
                  group_score=group_score, jitter_eps=jitter_eps)
        e, i, h = num_experts, intermediate, hidden
        self.num_experts, self.top_k, self.scoring = e, experts_per_token, scoring
        self.identity_experts = identity_experts
        choices = e + identity_experts  # the router's outputs
        self.num_groups, self.topk_groups, self.group_score = num_groups, groups_per_token, group_score
        self.routed_scaling, self.norm_topk, self.scale_inputs = routed_scaling, norm_topk, scale_inputs
        # Llama 4 ranks the raw logits: the same order as their sigmoids, except where two sigmoids round to 1.0
        self.rank_by_logits = rank_by_logits
        self.norm_min, self.jitter_eps = norm_min, jitter_eps
        self.norm_p, self.shared_average = norm_p, shared_average
        if not 0 <= logit_softcap < math.inf:
            raise ValueError(f"{type(self).__name__}: logit_softcap must be >= 0 and finite (0: off), "
                             f"got {logit_softcap}")
        self.logit_softcap = logit_softcap  # Laguna: cap * tanh(logits / cap) before scoring
        # experts with a non-zero weight per token (SparseMixer always routes to 2)
        self.routed_per_token = 2 if scoring == "sparsemixer" else experts_per_token
        self.dispatch = "auto"  # see the module docstring
        self.router = nn.Parameter(torch.zeros(choices, h))
        biased = scoring == "sigmoid" or choice_bias
        self.register_buffer("e_score_correction_bias", torch.zeros(choices) if biased else None)
        self.gate_up_proj = nn.Parameter(torch.zeros(e, 2 * i, h))
        self.down_proj = nn.Parameter(torch.zeros(e, h, i))
        self.act, self.glu = ACTIVATIONS[activation], glu
        # created only when asked for (as the shared expert below): the seeded init of the others stays as it was
        self.router_bias = nn.Parameter(torch.zeros(choices)) if router_bias else None
        self.gate_up_proj_bias = nn.Parameter(torch.zeros(e, 2 * i)) if expert_bias else None
        self.down_proj_bias = nn.Parameter(torch.zeros(e, h)) if expert_bias else None
        if shared_intermediate < 0:
            raise ValueError(f"{type(self).__name__}: shared_intermediate must be >= 0 (0 = none), "
                             f"got {shared_intermediate}")
        if shared_intermediate:  # created only when asked for: the seeded init of the others stays as it was
            self.shared_expert = SwiGLU(h, shared_intermediate, shared_bias, activation)
            self.shared_expert_gate = nn.Linear(h, 1, bias=False) if shared_gated else None
        else:
            self.shared_expert = self.shared_expert_gate = None

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """Routing weights [..., E (+ identity_experts)] in float32: zero but for each token's top_k experts."""
        bias = None if self.router_bias is None else self.router_bias.float()
        logits = nn.functional.linear(x.float(), self.router.float(), bias)
        if self.logit_softcap:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        if self.scoring == "sparsemixer":
            return self.sparsemixer(logits)
        if self.scoring == "softmax":
            scores = choice = torch.softmax(logits, dim=-1)
            if self.e_score_correction_bias is not None:  # ERNIE 4.5: steers the choice, not the weights
                choice = scores + self.e_score_correction_bias.float()
        else:
            scores = torch.sigmoid(logits)
            # the bias steers the choice, not the weights; Kolibri-1 ranks logits + bias (Llama 4's bias stays zero)
            choice = (logits if self.rank_by_logits else scores) + self.e_score_correction_bias.float()
        if self.num_groups > 1:
            grouped = choice.unflatten(-1, (self.num_groups, self.num_experts // self.num_groups))
            if self.group_score == "max":
                group_scores = grouped.amax(-1)  # [..., G]
            else:
                group_scores = grouped.topk(2, dim=-1).values.sum(-1)
            best = group_scores.topk(self.topk_groups, dim=-1).indices
            keep = torch.zeros_like(group_scores).scatter(-1, best, 1.0)
            choice = grouped.masked_fill(keep.unsqueeze(-1) == 0, float("-inf")).flatten(-2)
        chosen = choice.topk(self.top_k, dim=-1).indices  # ties: see the module docstring
        weights = scores.gather(-1, chosen)
        if self.norm_topk and self.norm_min:  # ERNIE 4.5's clamp of the sum
            weights = weights / weights.sum(-1, keepdim=True).clamp(min=self.norm_min)
        elif self.norm_topk and self.norm_p != 1.0:  # DBRX: by the p-norm, no epsilon (as transformers)
            weights = weights / weights.abs().pow(self.norm_p).sum(-1, keepdim=True).pow(1 / self.norm_p)
        elif self.norm_topk:  # the epsilon (DeepSeek-V3's) cannot change a softmax sum, which is >= k / E
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return torch.zeros_like(scores).scatter(-1, chosen, weights * self.routed_scaling)

    def sparsemixer(self, logits: torch.Tensor) -> torch.Tensor:
        """PhiMoE's routing at inference (transformers' sparsemixer, not training): weights [..., E] for 2 experts."""
        weights = torch.zeros_like(logits)
        masked = logits
        for _ in range(2):  # the best expert, then the best of the others
            best, index = masked.max(dim=-1, keepdim=True)
            # logits further than 2 * jitter_eps (relative) below the best drop out of its softmax
            far = (best - logits) / torch.maximum(logits.abs(), best) > 2 * self.jitter_eps
            gates = torch.softmax(masked.masked_fill(far, float("-inf")), dim=-1)
            weights = weights.scatter(-1, index, gates.gather(-1, index))
            masked = masked.scatter(-1, index, float("-inf"))
        return weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])  # [T, hidden]
        out = self.mix(tokens, self.route(tokens)).reshape(x.shape)
        if self.shared_expert is None:
            return out
        if self.shared_average:  # Cohere 2 MoE's "average" combination
            return (out + self.shared_expert(x)) / 2
        if self.shared_expert_gate is None:
            return out + self.shared_expert(x)
        return out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)

    def mix(self, tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The routed experts' output [T, hidden] for tokens [T, hidden] and routing weights [T, E] (zero but for
        at most routed_per_token experts per token), gathered or all experts by `dispatch` (module docstring)."""
        if self.dispatch not in DISPATCHES:
            raise ValueError(f"{type(self).__name__}: dispatch must be one of {', '.join(DISPATCHES)}, "
                             f"got {self.dispatch!r}")
        if self.dispatch != "auto":
            gathered = self.dispatch == "gathered"
        else:
            gathered = tokens.shape[0] * self.routed_per_token < self.num_experts
        routed = weights[:, :self.num_experts] if self.identity_experts else weights  # the MLP experts' weights
        operands = (tokens, routed, *self._expert_tensors())
        if torch.compiler.is_exporting() and self.dispatch == "auto":  # an If node on the traced token count
            out = _export_cond(gathered, self._gathered_experts, self._all_experts, operands)
        else:
            out = (self._gathered_experts if gathered else self._all_experts)(*operands)
        if not self.identity_experts:
            return out
        # LongCat-Flash's identity experts: each token times their summed weight
        share = weights[:, self.num_experts:].sum(-1, keepdim=True) * tokens.float()
        return (out.float() + share).to(out.dtype)

    def _expert_tensors(self) -> tuple[torch.Tensor, ...]:
        """The experts' weights, then their biases if they have any: the branches' operands (see _export_cond)."""
        biases = () if self.gate_up_proj_bias is None else (self.gate_up_proj_bias, self.down_proj_bias)
        return (self.gate_up_proj, self.down_proj, *biases)

    def _glu(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return self.act(gate) * up if self.glu is None else self.glu(gate, up)

    def _mix(self, y: torch.Tensor, weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Sum over the experts axis (-2) of y [T, n, hidden], weighted by weights [T, n] unless the inputs were
        (Llama 4), in float32."""
        return (y.float() if self.scale_inputs else y.float() * weights.unsqueeze(-1)).sum(-2).to(dtype)

    def _scaled_inputs(self, tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """[T, n, hidden]: each token for each of n experts, times its weight with scale_inputs (Llama 4 weighs the
        expert's input, in x's dtype as transformers)."""
        inputs = tokens.unsqueeze(-2)
        return inputs * weights.to(tokens.dtype).unsqueeze(-1) if self.scale_inputs else inputs

    def _gathered_experts(self, tokens: torch.Tensor, weights: torch.Tensor, gate_up_proj: torch.Tensor,
                          down_proj: torch.Tensor, gate_up_bias: torch.Tensor | None = None,
                          down_bias: torch.Tensor | None = None) -> torch.Tensor:
        """Each token through its routed MLP experts only (weights [T, E]; the experts' tensors as
        _expert_tensors), their weights gathered per token (matrix-vector products): [T, hidden]."""
        # by magnitude: a chosen expert's weight may be negative (a learned per-expert scale); the others weigh 0.
        # With identity experts fewer than k MLP experts may be chosen: the extra picks weigh 0
        chosen = weights.abs().topk(min(self.routed_per_token, self.num_experts), dim=-1).indices  # [T, k]
        chosen_weights = weights.gather(-1, chosen)
        inputs = self._scaled_inputs(tokens, chosen_weights)  # [T, k or 1, hidden]
        gate_up = torch.matmul(gate_up_proj[chosen], inputs.unsqueeze(-1)).squeeze(-1)  # [T, k, 2I]
        if gate_up_bias is not None:
            gate_up = gate_up + gate_up_bias[chosen]
        y = torch.matmul(down_proj[chosen], self._glu(gate_up).unsqueeze(-1)).squeeze(-1)  # [T, k, hidden]
        if down_bias is not None:
            y = y + down_bias[chosen]
        return self._mix(y, chosen_weights, tokens.dtype)

    def _all_experts(self, tokens: torch.Tensor, weights: torch.Tensor, gate_up_proj: torch.Tensor,
                     down_proj: torch.Tensor, gate_up_bias: torch.Tensor | None = None,
                     down_bias: torch.Tensor | None = None) -> torch.Tensor:
        """Every MLP expert on every token (one matrix product per expert), mixed by the weights [T, E], zero for the
        experts not chosen (the experts' tensors as _expert_tensors): [T, hidden]."""
        inputs = self._scaled_inputs(tokens, weights).transpose(0, 1)  # [E or 1, T, hidden]
        gate_up = torch.matmul(inputs, gate_up_proj.transpose(1, 2))  # [E, T, 2I]
        if gate_up_bias is not None:
            gate_up = gate_up + gate_up_bias.unsqueeze(-2)
        y = torch.matmul(self._glu(gate_up), down_proj.transpose(1, 2))  # [E, T, hidden]
        if down_bias is not None:
            y = y + down_bias.unsqueeze(-2)
        return self._mix(y.transpose(0, 1), weights, tokens.dtype)

    def extra_repr(self) -> str:
        groups = (f", groups={self.num_groups}, topk_groups={self.topk_groups}, group_score={self.group_score}"
                  if self.num_groups > 1 else "")
        shared = "" if self.shared_expert is None else \
            f", {'gated ' if self.shared_expert_gate is not None else ''}shared expert=" \
            f"{self.shared_expert.down_proj.in_features}"
        gpt_oss = (", router_bias" if self.router_bias is not None else "") + \
            (", expert_bias" if self.gate_up_proj_bias is not None else "") + \
            ("" if self.glu is None else f", {self.glu}")
        return (f"experts={self.num_experts}, top_k={self.top_k}, scoring={self.scoring}{groups}, "
                f"intermediate={self.down_proj.shape[-1]}{shared}{gpt_oss}"
                f"{', scale_inputs' if self.scale_inputs else ''}"
                f"{f', norm_p={self.norm_p}' if self.norm_p != 1.0 else ''}"
                f"{', shared_average' if self.shared_average else ''}"
                f"{f', identity_experts={self.identity_experts}' if self.identity_experts else ''}")
