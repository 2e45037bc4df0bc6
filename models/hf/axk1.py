"""A.X-K1 (SK Telecom, transformers' AXK1ForCausalLM) -> models.deepseek: DeepSeek-V3's layers (MLA with low-rank
queries, DeepSeek-V3's group-limited sigmoid routing with a choice bias, shared experts, dense layers per
mlp_layer_types) plus its one change, an RMSNorm on each MoE block's output (post_mlp_layernorm: routed plus shared
experts, before the residual add; moe_output_norm). The released checkpoints store that norm for the dense layers
too, where transformers drops it on load (unused)."""

from __future__ import annotations

import torch

from onnxattn.models.deepseek import DeepSeekMoE, DeepSeekV3Model
from onnxattn.models.hf._common import _copy
from onnxattn.models.hf.deepseek import _deepseek


def _axk1(hf) -> DeepSeekV3Model:
    ours = _deepseek(hf, moe_output_norm=True)  # _deepseek copies everything but the MoE output norms
    with torch.no_grad():
        for i, (mine, theirs) in enumerate(zip(ours.layers, hf.model.layers)):
            if isinstance(mine.mlp, DeepSeekMoE):
                # both norms take rms_norm_eps
                _copy(mine.mlp.output_norm.weight, theirs.mlp.post_mlp_layernorm.weight,
                      f"layer {i}'s post_mlp_layernorm")
    return ours
