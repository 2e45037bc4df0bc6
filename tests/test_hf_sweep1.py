"""IQuest-Coder, GPT-SW3, Sarvam-MoE, Emu3's text model, Aria's text model, OpenAI GPT, CTRL and GPT-NeoX-Japanese
(models.hf.sweep1 and the existing converters) from tiny configs with random weights, exported with
onnxattn.export.from_transformers: onnxruntime's logits with our kernels match the transformers model's for a prefill
and three decode steps (fp32, <= 1e-4 relative) and greedy generation from the exported graph equals transformers'.
Each distinctive feature, switched off in our model, misses transformers' logits (torch against torch); settings the
converters do not model are named."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hf_helpers import (NO_TOKENS, SMALL, check_export_matches, check_generation_matches, eager_relative_error,
                        randomize)
from model_helpers import one_torch_thread, relative_error, run_steps, session

from onnxattn.export import from_transformers
from onnxattn.models.hf import UnsupportedModel, load_local

transformers = pytest.importorskip("transformers")
T = transformers
_AUTOUSE = (one_torch_thread,)  # imported for its autouse fixture (one torch thread while these run)
VOCAB = 256
IDS = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(1))
GPT = dict(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4, **NO_TOKENS)


def _needs(*names):
    missing = [n for n in names if not hasattr(T, n)]
    return pytest.mark.skipif(bool(missing), reason=f"this transformers has no {', '.join(missing)}")


def iquestcoder():
    # transformers runs IQuestCoderConfig as Llama (LlamaForCausalLM); GQA, head_dim 16 != 64 / 4
    return randomize(T.LlamaForCausalLM(T.IQuestCoderConfig(**SMALL, **NO_TOKENS, head_dim=16)))


def sarvam_moe():
    """Sarvam-MoE (GLM-4.5's model): layer 0 dense, layer 1 top-3 of 8 experts from 2 of 4 groups, a random choice
    bias, x 2.5, a shared expert, per-head QK-norm and RoPE over the whole head (unlike GLM-4.5's default half)."""
    hf = randomize(T.Glm4MoeForCausalLM(T.SarvamMoEConfig(
        **SMALL, **NO_TOKENS, head_dim=16, n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2,
        moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1, routed_scaling_factor=2.5)))
    bias = hf.model.layers[1].mlp.gate.e_score_correction_bias  # a buffer: randomize leaves it zero
    with torch.no_grad():
        bias.copy_(torch.randn(bias.shape, generator=torch.Generator().manual_seed(3)) * 0.1)
    return hf


def emu3():
    # Emu3TextConfig's pad and bos token ids must be ints
    return randomize(T.Emu3ForCausalLM(T.Emu3TextConfig(**SMALL, **NO_TOKENS | dict(pad_token_id=0, bos_token_id=1))))


def aria_text(**overrides):
    """Aria: top-2 of 4 experts (softmax over the chosen logits), experts stored [in, out], 2 shared experts."""
    return randomize(T.AriaTextForCausalLM(T.AriaTextConfig(**SMALL | dict(intermediate_size=32) | overrides,
                                                            **NO_TOKENS, moe_num_experts=4, moe_topk=2,
                                                            moe_num_shared_experts=2)))


def openai_gpt(**overrides):
    return randomize(T.OpenAIGPTLMHeadModel(T.OpenAIGPTConfig(**GPT | overrides)))


def ctrl(**overrides):
    hf = randomize(T.CTRLLMHeadModel(T.CTRLConfig(**GPT | dict(dff=128) | overrides)))
    # the blocks' outputs x 16: else the embeddings (x sqrt(n_embd)) dominate and the tied head repeats the last token
    with torch.no_grad():
        for layer in hf.transformer.h:
            layer.multi_head_attention.dense.weight.mul_(16.0)
            layer.ffn[2].weight.mul_(16.0)
    return hf


def gpt_neox_japanese(**overrides):
    """Partial rotary (16 of 16 * 0.5 = 8 channels), an MLP 2x wide, the last layer's dense_bias."""
    return randomize(T.GPTNeoXJapaneseForCausalLM(T.GPTNeoXJapaneseConfig(**dict(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_multiple_size=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}) | overrides,
        **NO_TOKENS)), seed=4)  # seed 4: greedy generation does not settle on one or two tokens


CASES = {"iquestcoder": (iquestcoder, dict(num_heads=[4, 4], kv_num_heads=[2, 2])),
         "sarvam_moe": (sarvam_moe, dict(num_heads=[4, 4], kv_num_heads=[2, 2], rotary_dim=[0, 0])),  # 0: whole head
         "emu3": (emu3, dict(num_heads=[4, 4], kv_num_heads=[2, 2])),
         "aria_text": (aria_text, dict(num_heads=[4, 4], kv_num_heads=[2, 2])),
         "ctrl": (ctrl, dict(num_heads=[4, 4])),
         "gpt_neox_japanese": (gpt_neox_japanese, dict(num_heads=[4, 4], rotary_dim=[8, 8]))}


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(name, tmp_path):
    make, nodes = CASES[name]
    check_export_matches(make(), tmp_path / f"{name}.onnx", vocab=VOCAB, node_attrs=nodes)


@pytest.mark.parametrize("name", list(CASES))
def test_generation_matches_transformers(name, tmp_path):
    check_generation_matches(CASES[name][0](), tmp_path, vocab=VOCAB)


def test_openai_gpt_logits_match_transformers(tmp_path):
    # transformers keeps no KV cache for OpenAI GPT: each step's logits are those of the whole sequence so far
    hf = openai_gpt()
    result = from_transformers(hf, tmp_path / "openai-gpt.onnx", progress=False)
    assert result.report.ok
    with torch.no_grad():
        want = [hf(IDS[:, :8]).logits.numpy()] + [hf(IDS[:, :t + 1]).logits[:, -1:].numpy() for t in range(8, 11)]
    got = run_steps(session(result.path), IDS.numpy(), 8)
    errors = [relative_error(g, w) for g, w in zip(got, want)]
    assert max(errors) <= 1e-4, errors


def test_openai_gpt_generation_matches_transformers(tmp_path):
    check_generation_matches(openai_gpt(), tmp_path, vocab=VOCAB)


def test_gpt_sw3_loads_as_gpt2(tmp_path):
    # GPT-SW3 checkpoints say model_type "gpt-sw3" and are GPT2Config / GPT2LMHeadModel in transformers
    hf = randomize(T.GPT2LMHeadModel(T.GPT2Config(**GPT)))
    hf.save_pretrained(tmp_path / "sw3")
    config = tmp_path / "sw3" / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"model_type": "gpt-sw3"}))
    loaded = load_local(tmp_path / "sw3")
    assert type(loaded).__name__ == "GPT2LMHeadModel"
    check_export_matches(loaded, tmp_path / "sw3.onnx", vocab=VOCAB)


# each feature switched off in ours: transformers' logits are missed
def _ours(hf):
    from onnxattn.models.hf import from_transformers as convert
    return convert(hf)


def test_features_matter():
    hf = ctrl()
    ours = _ours(hf)
    assert eager_relative_error(hf, ours, IDS) < 1e-5
    with torch.no_grad():
        ours.lm_head_bias.zero_()  # CTRL's head bias
    assert eager_relative_error(hf, ours, IDS) > 1e-2
    ours = _ours(hf)
    ours.config = type(ours.config)(**{**ours.config.__dict__, "embedding_multiplier": 1.0})  # sqrt(n_embd) off
    assert eager_relative_error(hf, ours, IDS) > 1e-2

    hf = openai_gpt()
    ours = _ours(hf)
    for layer in ours.layers:  # pre-norm blocks in place of GPT-1's post-norm ones
        layer.post_norm = False
    with torch.no_grad():
        want = hf(IDS).logits
        got, _ = ours(IDS, ours.empty_past(2))
    assert relative_error(got.numpy(), want.numpy()) > 1e-2

    hf = gpt_neox_japanese()
    ours = _ours(hf)
    with torch.no_grad():
        ours.layers[-1].attn.o_proj.bias.zero_()  # the last layer's dense_bias
    assert eager_relative_error(hf, ours, IDS) > 1e-3

    hf = aria_text()
    ours = _ours(hf)
    with torch.no_grad():
        for layer in ours.layers:
            for p in layer.mlp.shared_expert.parameters():
                p.zero_()  # Aria's shared experts
    assert eager_relative_error(hf, ours, IDS) > 1e-2

    hf = sarvam_moe()
    ours = _ours(hf)
    with torch.no_grad():
        ours.layers[1].mlp.e_score_correction_bias.zero_()  # the choice bias steers the picks
    assert eager_relative_error(hf, ours, IDS) > 1e-3


def test_settings_not_modelled_are_named(tmp_path):
    with pytest.raises(UnsupportedModel, match="Aria with hidden_act 'gelu' is not supported: its routed experts are "
                                               "SiLU-gated"):
        from_transformers(aria_text(hidden_act="gelu"), tmp_path / "x.onnx")
    with pytest.raises(UnsupportedModel, match=r"CTRL with layer_norm_epsilon 1e-05 is not supported"):
        from_transformers(ctrl(layer_norm_epsilon=1e-5), tmp_path / "x.onnx")
    with pytest.raises(UnsupportedModel, match=r"OpenAI GPT with an output embedding other than the input one"):
        from_transformers(openai_gpt(tie_word_embeddings=False), tmp_path / "x.onnx")
    with pytest.raises(UnsupportedModel, match=r"CTRL with an output embedding other than the input one"):
        from_transformers(ctrl(tie_word_embeddings=False), tmp_path / "x.onnx")


def test_ctrl_positions_are_sinusoidal():
    # CTRL's table: sin of the even angles then cos of the odd ones (not interleaved), copied row for row
    hf = ctrl()
    ours = _ours(hf)
    d = 64
    angle = torch.arange(64.0)[:, None] / torch.pow(10000, (2 * (torch.arange(d) // 2)) / d)[None]
    want = torch.cat([torch.sin(angle[:, 0::2]), torch.cos(angle[:, 1::2])], -1)
    np.testing.assert_allclose(ours.wpe.weight.detach().numpy(), want.numpy(), atol=1e-5)
    assert math.isclose(ours.config.embedding_multiplier, 8.0)
