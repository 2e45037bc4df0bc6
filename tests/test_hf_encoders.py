"""Hugging Face encoders exported with onnxattn.export.from_transformers: BERT, RoBERTa / XLM-RoBERTa (positions
from the pad token) and ModernBERT (its local layers' band on ScaledDotProductAttention nodes) match transformers'
hidden states on real tokens under a key-padding mask (fp32, <= 1e-4 relative, as tests/test_hf_interop.py);
unsupported settings are named."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from model_helpers import one_torch_thread, relative_error, session  # noqa: F401  (autouse fixture)

transformers = pytest.importorskip("transformers")

from hf_helpers import randomize  # noqa: E402

from onnxattn.export import from_transformers  # noqa: E402
from onnxattn.models.hf import UnsupportedModel  # noqa: E402

T = transformers


def test_bert_matches_transformers(tmp_path):
    hf = randomize(T.BertModel(T.BertConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=128, max_position_embeddings=64)))
    result = from_transformers(hf, tmp_path / "bert.onnx", progress=False)
    g = torch.Generator().manual_seed(2)
    ids, types_ = torch.randint(0, 256, (2, 9), generator=g), torch.randint(0, 2, (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.int64)
    mask[1, 6:] = 0  # right padding
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types_)
    got = session(result.path).run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                          "token_type_ids": types_.numpy()})
    # padded positions' outputs are unspecified (HF and we both compute something for them): compare real tokens
    real = mask.numpy().astype(bool)
    assert relative_error(got[0][real], want.last_hidden_state.numpy()[real]) <= 1e-4
    assert relative_error(got[1], want.pooler_output.numpy()) <= 1e-4


ENCODER = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
               max_position_embeddings=20)
# as the released checkpoints: one token type, pad id 1 (positions 2 .. 19: at most 18 tokens)
ROBERTA = {"roberta": lambda: T.RobertaModel(T.RobertaConfig(**ENCODER, type_vocab_size=1)),
           "xlm-roberta": lambda: T.XLMRobertaModel(T.XLMRobertaConfig(**ENCODER, type_vocab_size=1))}


@pytest.mark.parametrize("name", list(ROBERTA))
def test_roberta_matches_transformers(name, tmp_path):
    """Positions count the non-pad tokens from pad_token_id + 1: a left-padded row puts its first real token
    where an unpadded one does (arange positions would miss by far; randomize gives the pad row a value too)."""
    hf = randomize(ROBERTA[name]())
    result = from_transformers(hf, tmp_path / f"{name}.onnx", progress=False)
    assert sum(n.op_type == "GroupQueryAttention" for n in onnx.load(result.path).graph.node) == 2
    pad = hf.config.pad_token_id
    ids = torch.randint(pad + 1, 256, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 9, dtype=torch.int64)
    ids[0, 6:], mask[0, 6:] = pad, 0  # right padding
    ids[1, :3], mask[1, :3] = pad, 0  # left padding
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask)  # token types default to zeros
    got = session(result.path).run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                          "token_type_ids": np.zeros_like(ids.numpy())})
    real = mask.numpy().astype(bool)
    assert relative_error(got[0][real], want.last_hidden_state.numpy()[real]) <= 1e-4
    assert relative_error(got[1], want.pooler_output.numpy()) <= 1e-4


MODERNBERT = dict(vocab_size=256, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
                  local_attention=6, pad_token_id=0, bos_token_id=None, eos_token_id=None, cls_token_id=None,
                  sep_token_id=None)


def test_modernbert_matches_transformers(tmp_path):
    """Layers global, local, local (global_attn_every_n_layers 3; RoPE bases 160k / 10k); local_attention 6 is the
    band |i - j| <= 3, over 14 tokens. transformers' sdpa and eager paths both match on real tokens; the band is
    on the local layers' nodes and matters (turned off in the graph, the outputs miss by far)."""
    hf = randomize(T.ModernBertModel(T.ModernBertConfig(**MODERNBERT)))
    result = from_transformers(hf, tmp_path / "modernbert.onnx", progress=False)
    assert result.report.ok and result.input_names == ["input_ids", "attention_mask"]
    proto = onnx.load(result.path)
    nodes = [n for n in proto.graph.node if n.domain == "onnxattn"]
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
    sdpa = "ScaledDotProductAttention"
    assert [n.op_type for n in nodes] == ["GroupQueryAttention", sdpa, sdpa]
    assert (attrs[0]["causal"], attrs[0]["window"], attrs[0]["rope_base"]) == (0, 0, 160_000.0)
    assert [(a["causal"], a["band"]) for a in attrs[1:]] == [(0, 3), (0, 3)]
    ids = torch.randint(0, 256, (2, 14), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 14, dtype=torch.int64)
    mask[1, 10:] = 0
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    got = session(result.path).run(None, feeds)[0]
    real = mask.numpy().astype(bool)
    for implementation in ("sdpa", "eager"):
        hf.set_attn_implementation(implementation)
        with torch.no_grad():
            want = hf(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
        assert relative_error(got[real], want[real]) <= 1e-4, implementation
    for node in nodes[1:]:
        next(a for a in node.attribute if a.name == "band").i = 0
    onnx.save(proto, tmp_path / "no_band.onnx")
    unbanded = session(tmp_path / "no_band.onnx").run(None, feeds)[0]
    assert relative_error(unbanded[real], want[real]) > 1e-2


ONE_ENCODER = ENCODER | dict(num_hidden_layers=1)
ONE_MODERNBERT = MODERNBERT | dict(num_hidden_layers=2)


_ENCODER_REFUSALS = ([
    (lambda: T.RobertaModel(T.RobertaConfig(**ONE_ENCODER, is_decoder=True)),
     "RoBERTa with relative position embeddings or as a decoder is not supported"),
    (lambda: T.RobertaModel(T.RobertaConfig(**ONE_ENCODER, pad_token_id=None)),
     "RoBERTa without pad_token_id is not supported"),
    (lambda: T.XLMRobertaModel(T.XLMRobertaConfig(**ONE_ENCODER | dict(max_position_embeddings=2))),
     r"XLMRobertaConfig does not map onto ours: BertConfig: position_padding_idx must be in \[0, max_positions - 1"),
    (lambda: T.ModernBertModel(T.ModernBertConfig(**ONE_MODERNBERT, rope_parameters={
        "full_attention": {"rope_type": "linear", "rope_theta": 160000.0, "factor": 2.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
     r"ModernBERT with scaled RoPE \(linear\) on its full_attention layers is not supported"),
    (lambda: T.ModernBertModel(T.ModernBertConfig(**ONE_MODERNBERT | dict(local_attention=1))),
     "ModernBertConfig does not map onto ours: ModernBertConfig: local_attention must be >= 2, got 1"),
    (lambda: T.ModernBertModel(T.ModernBertConfig(**ONE_MODERNBERT, hidden_activation="quick_gelu")),
     "activation 'quick_gelu' has no equivalent here"),
    (lambda: T.ModernBertForMaskedLM(T.ModernBertConfig(**ONE_MODERNBERT)),
     "pass a ModernBertModel for modernbert, got ModernBertForMaskedLM"),
], ["roberta-decoder", "roberta-no-pad-token", "xlm-roberta-pad-beyond-table", "modernbert-scaled-rope",
        "modernbert-band-0", "modernbert-activation", "modernbert-masked-lm"])


@pytest.mark.parametrize("make, match", [pytest.param(*case, id=name) for case, name in zip(*_ENCODER_REFUSALS)])
def test_unsupported_settings_are_named(make, match, tmp_path):
    """Settings the encoder converters do not model: (transformers model factory, the UnsupportedModel message)."""
    with pytest.raises(UnsupportedModel, match=match):
        from_transformers(make(), tmp_path / "x.onnx")
