"""Shared by the converters: the supported model types, refusals, activation and RoPE mapping, weight copies."""

from __future__ import annotations

import math

import torch
from torch import nn

from onnxattn.nn import MultiHeadLatentAttention, RopeScaling

# model_type -> the HF class to pass
SUPPORTED = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "smollm3": "SmolLM3ForCausalLM",
    "granite": "GraniteForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
    "starcoder2": "Starcoder2ForCausalLM",
    "gpt_oss": "GptOssForCausalLM",
    "olmo": "OlmoForCausalLM",
    "olmoe": "OlmoeForCausalLM",
    "ernie4_5": "Ernie4_5ForCausalLM",
    "helium": "HeliumForCausalLM",
    "seed_oss": "SeedOssForCausalLM",
    "exaone4": "Exaone4ForCausalLM",
    "glm4": "Glm4ForCausalLM",
    "glm": "GlmForCausalLM",
    "arcee": "ArceeForCausalLM",
    "stablelm": "StableLmForCausalLM",
    "nemotron": "NemotronForCausalLM",
    "ministral": "MinistralForCausalLM",
    "ministral3": "Ministral3ForCausalLM",
    "olmo3": "Olmo3ForCausalLM",
    "exaone": "LlamaForCausalLM",  # transformers runs EXAONE 3 / 3.5 checkpoints as Llama
    "internlm3": "LlamaForCausalLM",  # as Llama too
    "glm4_moe": "Glm4MoeForCausalLM",
    "minimax_m2": "MiniMaxM2ForCausalLM",
    "dots1": "Dots1ForCausalLM",
    "solar_open": "SolarOpenForCausalLM",
    "exaone_moe": "ExaoneMoeForCausalLM",
    "flex_olmo": "FlexOlmoForCausalLM",
    "apertus": "ApertusForCausalLM",
    "vaultgemma": "VaultGemmaForCausalLM",
    "llama4_text": "Llama4ForCausalLM",
    "granitemoe": "GraniteMoeForCausalLM",
    "granitemoeshared": "GraniteMoeSharedForCausalLM",
    "ernie4_5_moe": "Ernie4_5_MoeForCausalLM",
    "falcon": "FalconForCausalLM",
    "gpt_bigcode": "GPTBigCodeForCausalLM",
    "opt": "OPTForCausalLM",
    "phimoe": "PhimoeForCausalLM",
    "gpt_neox": "GPTNeoXForCausalLM",
    "gptj": "GPTJForCausalLM",
    "phi": "PhiForCausalLM",
    "cohere": "CohereForCausalLM",
    "cohere2": "Cohere2ForCausalLM",
    "cohere2_moe": "Cohere2MoeForCausalLM",
    "dbrx": "DbrxForCausalLM",
    "hunyuan_v1_dense": "HunYuanDenseV1ForCausalLM",
    "hunyuan_v1_moe": "HunYuanMoEV1ForCausalLM",
    "afmoe": "AfmoeForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "gemma4_text": "Gemma4ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "bert": "BertModel",
    "roberta": "RobertaModel",
    "xlm-roberta": "XLMRobertaModel",
    "modernbert": "ModernBertModel",
    # GPT family and more decoders (models.hf.gpt_family); kept before the MLA entries, which the list ends with
    "gpt_neo": "GPTNeoForCausalLM",
    "biogpt": "BioGptForCausalLM",
    "xglm": "XGLMForCausalLM",
    "codegen": "CodeGenForCausalLM",
    "persimmon": "PersimmonForCausalLM",
    "flint": "FlintForCausalLM",
    "hy_v3": "HYV3ForCausalLM",
    "kolibri1": "Kolibri1ForCausalLM",
    # newer Llama-likes (models.hf.newer) and MLA decoders (models.hf.deepseek); before the entries the list ends with
    "cwm": "CwmForCausalLM",
    "jais2": "Jais2ForCausalLM",
    "hyperclovax": "HyperCLOVAXForCausalLM",
    "granite_swa": "GraniteSWAForCausalLM",
    "granitemoe_swa": "GraniteMoeSWAForCausalLM",
    "mellum": "MellumForCausalLM",
    "apertus1p5_text": "Apertus1p5TextForCausalLM",
    "nanochat": "NanoChatForCausalLM",
    "youtu": "YoutuForCausalLM",
    "glm4_moe_lite": "Glm4MoeLiteForCausalLM",
    "mistral4": "Mistral4ForCausalLM",
    "mimo_v2_flash": "MiMoV2FlashForCausalLM",
    "axk1": "AXK1ForCausalLM",
    "laguna": "LagunaForCausalLM",
    "dory": "DoryForCausalLM",
    "bitnet": "BitNetForCausalLM",
    "diffllama": "DiffLlamaForCausalLM",
    "gemma4_unified_text": "Gemma4UnifiedForCausalLM",
    "iquestcoder": "LlamaForCausalLM",  # transformers runs IQuest-Coder (IQuestCoderConfig) as Llama
    "gpt-sw3": "GPT2LMHeadModel",  # GPT-SW3 checkpoints are GPT-2 (GPT2Config; load_local reads "gpt-sw3")
    "sarvam_moe": "Glm4MoeForCausalLM",  # transformers runs Sarvam-MoE (SarvamMoEConfig) as GLM-4.5
    "emu3_text_model": "Emu3ForCausalLM",
    "aria_text": "AriaTextForCausalLM",
    "openai-gpt": "OpenAIGPTLMHeadModel",
    "ctrl": "CTRLLMHeadModel",
    "gpt_neox_japanese": "GPTNeoXJapaneseForCausalLM",
    "moshi": "MoshiForCausalLM",  # the text decoder only (not MoshiForConditionalGeneration)
    "cohere_compass_text": "CohereCompassForCausalLM",
    "jetmoe": "JetMoeForCausalLM",
    "hrm_text": "HrmTextForCausalLM",
    "deepseek_v32": "DeepseekV32ForCausalLM",
    "glm_moe_dsa": "GlmMoeDsaForCausalLM",
    "sarvam_mla": "DeepseekV3ForCausalLM",  # transformers runs Sarvam-MLA (SarvamMLAConfig) as DeepSeek-V3
    "minicpm3": "MiniCPM3ForCausalLM",
    "longcat_flash": "LongcatFlashForCausalLM",
    "deepseek_v2": "DeepseekV2ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
}
# model_type -> why it is not converted yet (listed in every refusal): representable exactly, but each needs new
# modules
NOT_YET: dict[str, str] = {}
# model_type -> why it is refused for good (named in its own refusal only, as Falcon's alibi=True)
_INKLING_REFUSAL = (
    "Inkling is not supported: each layer runs causal short convolutions over the previous tokens' key and value "
    "projections (k_sconv, v_sconv) and block outputs (attn_sconv, mlp_sconv), so a decode step needs their conv "
    "states beside the KV cache, and our exported graphs carry past keys and values only")
REFUSED = {
    # transformers 5.24 causal LMs outside our attention ops, or needing machinery not built (models.hf.sweep2's survey)
    "doge": ("Doge is not supported: its dynamic mask attention adds a per-key bias computed from the values "
             "(exp(A * softplus(dt_proj(v)))) to every score and keeps only the keep_window_size best keys, and our "
             "attention ops take no additive score bias or per-query key selection"),
    "qwen3_5_text": ("Qwen3.5 is not supported: its linear_attention layers are Gated DeltaNet (a causal depthwise "
                     "convolution and a gated delta-rule recurrence), which none of our attention ops computes, and a "
                     "decode step needs their conv and recurrent states beside the KV cache"),
    "qwen3_5_moe_text": ("Qwen3.5-MoE is not supported: its linear_attention layers are Gated DeltaNet (a causal "
                         "depthwise convolution and a gated delta-rule recurrence), which none of our attention ops "
                         "computes, and a decode step needs their conv and recurrent states beside the KV cache"),
    "minimax_m3_vl_text": ("MiniMax-M3 is not supported: its minimax_m3_sparse layers attend only to the key blocks "
                           "a lightning indexer picks for each query (index_topk_blocks, its index keys cached beside "
                           "the KV cache), and our attention ops take no per-query key selection"),
    "blt": ("BLT (Byte Latent Transformer) is not supported: it groups bytes into patches whose boundaries an "
            "entropy model picks at run time and joins its byte-level and patch-level transformers by cross-attention "
            "over those patches, which our causal-LM graphs with one KV cache per layer do not model"),
    "gemma3n_text": ("Gemma 3n is not supported: its layers carry AltUp's several predicted hidden-state streams "
                     "(predict / correct per layer), a LAuReL low-rank residual branch and Gaussian top-k activation "
                     "sparsity, which our Gemma models do not have"),
    "mpt": "MPT is not supported: its attention adds ALiBi position biases and our attention op has no ALiBi bias",
    "bloom": "BLOOM is not supported: its attention adds ALiBi position biases and our attention op has no ALiBi bias",
    # DeepSeek-V3.2's sparse attention (DSA) with more: deepseek_v32 / glm_moe_dsa convert, these add what we lack
    "axk2": ("A.X-K2 is not supported: its MLA is DeepSeek-V3.2's sparse attention (DSA, which we convert for "
             "deepseek_v32), but its layers' norms are gated RMSNorms (RMSNorm times a low-rank, input-dependent "
             "sigmoid gate), which models.deepseek does not have"),
    "hy_v4": ("Hy4 (HY-V4) is not supported: its MLA layers are DeepSeek-V3.2's sparse attention (DSA, which we "
              "convert for deepseek_v32 / glm_moe_dsa), but its residual stream is hc_mult hyper-connection streams "
              "(HYV4HyperConnection, HYV4HyperHead), which models.deepseek does not have"),
    "lara_mini": ("Lara-4-Mini is not supported: its linear_attention layers are Gated DeltaNet (a causal depthwise "
                  "convolution and a gated delta-rule recurrence), which none of our attention ops computes, and a "
                  "decode step needs their conv and recurrent states beside the KV cache, which our exported graphs "
                  "do not carry"),
    # decoding state beyond the KV cache
    "inkling_text": _INKLING_REFUSAL,
    "inkling_mm_model": _INKLING_REFUSAL,
    "zaya": ("ZAYA is not supported: its compressed convolutional attention (CCA) mixes q and k over the previous "
             "tokens with causal convolutions and takes half of each value head from the previous token's "
             "projection, so a decode step needs those tokens' projections (conv and recurrent states) beside the "
             "KV cache, and our exported graphs carry past keys and values only"),
    # models.hf.sweep1's survey: multimodal wrappers, recurrent / indexer layers, heads our models do not have
    "emu3": ("Emu3ForConditionalGeneration is multimodal (a VQ-VAE image tokenizer beside the text model); pass its "
             "text model as Emu3ForCausalLM(config.text_config) with the text model's weights"),
    "qwen4_exp_text": ("Qwen4-Exp is not supported: its linear_attention layers are Gated DeltaNet (a causal "
                       "convolution and a gated delta-rule recurrence whose states a decode step needs beside the KV "
                       "cache), its indexed_attention layers keep only the keys a learned QSA indexer picks, and its "
                       "residual stream is hc_count hyper-connection streams, none of which our models have"),
    "dots3_note_text": ("dots3-note is not supported: its indexed_attention layers are DeepSeek-V3.2's sparse "
                        "attention (DSA), attending only to the index_topk keys a learned indexer picks for each "
                        "query (converted for deepseek_v32), but its MLA differs from ours "
                        "(head shapes per layer type, a norm on the shared rope key, a sigmoid gate per head)"),
    "modernbert-decoder": ("ModernBERT-decoder is not supported: its head runs ModernBERT's prediction head (a dense "
                           "layer, its activation and a LayerNorm) between the final norm and the biased vocabulary "
                           "projection, which none of our causal-LM heads has"),
    "beam": ("Beam is not supported: each block adds its post-normed output to a rescaled residual stream "
             "(depth_scaled_residual_add: output / sqrt(i) + residual * sqrt((i - 1) / i) for the i-th add) and its "
             "layers without RoPE scale queries by (1 + (position + 1) / 2048) ** 0.1, neither of which our Llama "
             "computes (its residual_multiplier scales the output only, its query scale is logarithmic)"),
}
# The refusal table below (tests/test_hf_refusal_table.py): per family, one sentence naming what our ops or exported
# graphs cannot express. State-space, recurrent and linear-attention layers: their decoding state is not a KV cache
_STATE_TAIL = ("which none of our attention ops computes, and a decode step needs their conv and recurrent states "
               "beside the KV cache, which our exported graphs (past keys and values only) do not carry")
_SSM_TAIL = ("which none of our ops computes, and a decode step needs their conv and SSM states, which our exported "
             "graphs (past keys and values only) do not carry")
_CONV_TAIL = ("so a decode step needs their conv states (the previous tokens' inputs) beside the KV cache, which our "
              "exported graphs (past keys and values only) do not carry")
_GDN = "Gated DeltaNet (a causal depthwise convolution and a gated delta-rule recurrence)"
_KDA = "Kimi Delta Attention (KDA: causal short convolutions and a gated delta-rule recurrence)"
_INKLING2_REFUSAL = (
    "Inkling 2 is not supported: its layers run causal short convolutions over the previous tokens' key and value "
    "projections (dynamic ones on the full-attention layers) and over the attention and MLP outputs "
    "(post_attention_convolution, post_mlp_convolution), " + _CONV_TAIL)
# encoder-decoder models: the decoder cross-attends to the encoder's states
_CROSS_TAIL = ("cross-attend to the encoder's hidden states, and we export decoder-only graphs, which take no encoder "
               "states")
# BERT-likes: from_transformers converts the BERT family as encoders only (models.hf.encoders)
_BERT_TAIL = ("; from_transformers converts the BERT family only as encoders (bert, roberta and xlm-roberta with "
              "absolute positions and is_decoder=False; modernbert) into bidirectional models without a KV cache, "
              "so neither this encoder nor its causal-LM form (is_decoder=True) is converted")
REFUSED.update({
    # state-space models
    "mamba": ("Mamba is not supported: its layers are Mamba selective state-space mixers (a causal depthwise "
              "convolution and a selective scan) with no attention, " + _SSM_TAIL),
    "mamba2": ("Mamba-2 is not supported: its layers are Mamba-2 (SSD) state-space mixers (a causal depthwise "
               "convolution and a chunked selective scan) with no attention, " + _SSM_TAIL),
    "falcon_mamba": ("Falcon Mamba is not supported: its layers are Mamba selective state-space mixers (RMS-normed "
                     "B, C and dt) with no attention, " + _SSM_TAIL),
    "falcon_h1": ("Falcon-H1 is not supported: every layer runs a Mamba-2 state-space mixer in parallel with its "
                  "attention and adds the two, " + _SSM_TAIL),
    "jamba": ("Jamba is not supported: between its attention layers (one every attn_layer_period) it runs Mamba "
              "selective state-space layers, " + _SSM_TAIL),
    "zamba": ("Zamba is not supported: its layers are Mamba selective state-space layers, some preceded by a shared "
              "attention block (hybrid layers), " + _SSM_TAIL),
    "zamba2": ("Zamba2 is not supported: its layers are Mamba-2 state-space layers, some preceded by shared "
               "attention blocks (hybrid layers), " + _SSM_TAIL),
    "bamba": ("Bamba is not supported: it interleaves attention layers with Mamba-2 state-space layers, "
              + _SSM_TAIL),
    "granitemoehybrid": ("Granite MoE Hybrid (Granite 4.0) is not supported: its linear_attention layers (every "
                         "layer by default) are Mamba-2 state-space mixers, " + _SSM_TAIL),
    "nemotron_h": ("Nemotron-H is not supported: its layers_block_type pattern puts Mamba-2 state-space layers "
                   "among its attention and MLP / MoE layers, " + _SSM_TAIL),
    # recurrent and linear-attention layers
    "olmo_hybrid": f"OLMo Hybrid is not supported: its linear_attention layers are {_GDN}, {_STATE_TAIL}",
    "qwen3_next": f"Qwen3-Next is not supported: its linear_attention layers are {_GDN}, {_STATE_TAIL}",
    "kimi_linear": f"Kimi Linear is not supported: its linear_attention layers are {_KDA}, {_STATE_TAIL}",
    "bailing_hybrid": (f"Bailing hybrid (Ling) is not supported: beside its MLA full-attention layers, its "
                       f"linear_attention layers are {_KDA}, {_STATE_TAIL}"),
    "minimax": ("MiniMax-Text-01 is not supported: its linear_attention layers are lightning attention (linear "
                "attention with a per-head exponential decay, slope_rate), whose running key-value state a decode "
                "step needs beside the KV cache, which our exported graphs (past keys and values only) do not carry"),
    "recurrent_gemma": ("RecurrentGemma (Griffin) is not supported: beside its local-attention blocks, its recurrent "
                        "blocks are a causal temporal convolution and an RG-LRU recurrence, " + _STATE_TAIL),
    "rwkv": ("RWKV is not supported: it has no softmax attention; its time mixing is RWKV's WKV linear attention "
             "over a token shift, " + _STATE_TAIL),
    "xlstm": ("xLSTM is not supported: its blocks are mLSTM cells (matrix memory, exponential gating) with no "
              "attention, " + _STATE_TAIL),
    "lfm2": ("LFM2 is not supported: its conv layers are gated causal short convolutions (Lfm2ShortConv), "
             + _CONV_TAIL),
    "lfm2_moe": ("LFM2-MoE is not supported: its conv layers are gated causal short convolutions "
                 "(Lfm2MoeShortConv), " + _CONV_TAIL),
    "lfm3": ("LFM3 is not supported: its conv layers are gated causal short convolutions (Lfm3ShortConv), "
             + _CONV_TAIL),
    "inkling2_text": _INKLING2_REFUSAL,
    "inkling2_loop_text": _INKLING2_REFUSAL.replace("Inkling 2 is", "Inkling 2 Loop is"),
    "inkling2": "Inkling2ForConditionalGeneration is multimodal, and its text model: " + _INKLING2_REFUSAL,
    "qwen3_5": (f"Qwen3.5 (Qwen3_5ForConditionalGeneration) is multimodal, and its text model, Qwen3_5ForCausalLM "
                f"(qwen3_5_text), is a hybrid whose linear_attention layers are {_GDN}, {_STATE_TAIL}"),
    "qwen3_5_moe": (f"Qwen3.5-MoE (Qwen3_5MoeForConditionalGeneration) is multimodal, and its text model, "
                    f"Qwen3_5MoeForCausalLM (qwen3_5_moe_text), is a hybrid whose linear_attention layers are "
                    f"{_GDN}, {_STATE_TAIL}"),
    "qwen4_exp": ("Qwen4-Exp (Qwen4ExpForConditionalGeneration) is multimodal, and its text model, "
                  "Qwen4ExpForCausalLM (qwen4_exp_text), is a hybrid: its linear_attention layers are " + _GDN
                  + ", whose conv and recurrent states a decode step needs beside the KV cache, and its "
                  "indexed_attention layers attend only to the keys a learned QSA indexer picks for each query; our "
                  "exported graphs carry past keys and values only, and of our attention ops only MLA takes per-query "
                  "key indices"),
    "deepseek_v4": ("DeepSeek-V4 is not supported: beside a sliding window, its compressed layers attend to keys "
                    "and values a learned compressor pools from every compress_rate tokens (a decode step needs the "
                    "tokens not yet pooled beside the KV cache), its compressed_sparse_attention layers only to the "
                    "index_topk compressed entries a learned indexer picks for each query; our exported graphs carry "
                    "past keys and values only, and our MLA's key indices pick cache positions, not compressed "
                    "entries"),
    # encoder-decoder models
    "bart": "BART is an encoder-decoder model: its decoder layers " + _CROSS_TAIL,
    "bigbird_pegasus": "BigBird-Pegasus is an encoder-decoder model: its decoder layers " + _CROSS_TAIL,
    "blenderbot": "Blenderbot is an encoder-decoder model: its decoder layers " + _CROSS_TAIL,
    "blenderbot-small": "Blenderbot Small is an encoder-decoder model: its decoder layers " + _CROSS_TAIL,
    "marian": "Marian is an encoder-decoder model: its decoder layers " + _CROSS_TAIL,
    "mbart": "mBART is an encoder-decoder model: its decoder layers " + _CROSS_TAIL,
    "mvp": "MVP is an encoder-decoder model: its decoder layers " + _CROSS_TAIL,
    "pegasus": "Pegasus is an encoder-decoder model: its decoder layers " + _CROSS_TAIL,
    "plbart": "PLBart is an encoder-decoder model: its decoder layers " + _CROSS_TAIL,
    "prophetnet": ("ProphetNet is an encoder-decoder model: its decoder layers predict n-gram streams with n-gram "
                   "self-attention and " + _CROSS_TAIL),
    "whisper": "Whisper is an encoder-decoder (speech) model: its decoder layers " + _CROSS_TAIL,
    "trocr": ("TrOCR is the text decoder of an image-to-text encoder-decoder model: its decoder layers "
              + _CROSS_TAIL),
    "musicgen": ("MusicGen is an encoder-decoder (text-to-audio) model: its decoder layers " + _CROSS_TAIL
                 + ", and each step embeds and predicts num_codebooks audio codebooks"),
    "musicgen_decoder": ("MusicGen's decoder (MusicgenForCausalLM) is the decoder of an encoder-decoder model: its "
                         "layers " + _CROSS_TAIL + ", and each step embeds and predicts num_codebooks audio "
                         "codebooks"),
    # MusicGen Melody has no cross-attention: it prepends the conditioning states to the decoder's input
    "musicgen_melody": ("MusicGen Melody is not supported: its decoder prepends the text / chroma encoders' hidden "
                        "states to its input embeddings, and each step sums num_codebooks audio codebook embeddings "
                        "and predicts one token per codebook (one LM head each), while our exported graphs take "
                        "one token stream and no encoder states"),
    "musicgen_melody_decoder": ("MusicGen Melody's decoder (MusicgenMelodyForCausalLM) is not supported: each step "
                                "sums num_codebooks audio codebook embeddings and predicts one token per codebook "
                                "(one LM head each), and it takes the conditioning encoders' hidden states "
                                "prepended to its input, while our exported graphs take one token stream and no "
                                "encoder states"),
    # BERT-likes (encoders; their causal-LM forms are decoders with optional cross-attention)
    "bert-generation": ("BertGeneration is not supported: it is BERT's blocks without token type embeddings, and "
                        "its BertGenerationDecoder a causal decoder with optional cross-attention" + _BERT_TAIL),
    "big_bird": ("BigBird is not supported: its attention is block-sparse by default (global, sliding and random "
                 "key blocks; attention_type 'block_sparse'), which none of our attention ops computes" + _BERT_TAIL),
    "camembert": "CamemBERT is not supported: its blocks are RoBERTa's, under a model_type of its own" + _BERT_TAIL,
    "data2vec-text": ("Data2Vec-Text is not supported: its blocks are RoBERTa's, under a model_type of its own"
                      + _BERT_TAIL),
    "electra": ("ELECTRA is not supported: its blocks are BERT's, with embeddings of embedding_size projected to "
                "the hidden size (embeddings_project)" + _BERT_TAIL),
    "ernie": ("ERNIE is not supported: its blocks are BERT's, with optional task type embeddings (use_task_id)"
              + _BERT_TAIL),
    "megatron-bert": ("Megatron-BERT is not supported: its blocks are pre-LayerNorm (BERT's are post-LayerNorm)"
                      + _BERT_TAIL),
    "rembert": ("RemBERT is not supported: its input embeddings (input_embedding_size) are projected to the hidden "
                "size and decoupled from its output embeddings" + _BERT_TAIL),
    "roberta-prelayernorm": ("RoBERTa-PreLayerNorm is not supported: its blocks are pre-LayerNorm (RoBERTa's are "
                             "post-LayerNorm)" + _BERT_TAIL),
    "roc_bert": ("RoCBert is not supported: its embeddings add pronunciation and glyph-shape embeddings "
                 "(input_pronunciation_ids, input_shape_ids) to BERT's" + _BERT_TAIL),
    "roformer": ("RoFormer is not supported: its BERT-style blocks rotate q and k with rotary position embeddings "
                 "(and v with rotary_value)" + _BERT_TAIL),
    "xlm-roberta-xl": ("XLM-RoBERTa-XL is not supported: its blocks are pre-LayerNorm (XLM-RoBERTa's are "
                       "post-LayerNorm)" + _BERT_TAIL),
    "xmod": ("X-MOD is not supported: its blocks add language-specific adapters chosen by lang_ids to RoBERTa's"
             + _BERT_TAIL),
    "xlm": ("XLM is not supported: its embeddings add per-language embeddings (use_lang_emb, a langs input), and "
            "it is a masked-LM encoder unless causal=True" + _BERT_TAIL),
    # other non-decoders and attention variants
    "xlnet": ("XLNet is not supported: its two-stream attention adds relative-position and segment terms to the "
              "scores (r_w_bias, r_r_bias, seg_embed) and attends over a memory of previous segments (mems), "
              "which none of our attention ops computes"),
    "reformer": ("Reformer is not supported: its attn_layers alternate LSH attention (each query attends only "
                 "within its hash bucket) and chunked local attention in reversible blocks, which none of our "
                 "attention ops computes"),
    "cpmant": ("CPM-Ant is not supported: its attention adds a learned relative-position bias bucketed by query and "
               "key segment (CpmAntSegmentPositionEmbedding), and our decoder attention op takes no position bias"),
    # multimodal and other
    "fuyu": ("FuyuForCausalLM is multimodal (image patches projected into the token embeddings); pass its text "
             "model as PersimmonForCausalLM(config.text_config) with the language model's weights"),
    "got_ocr2": ("GotOcr2ForConditionalGeneration is multimodal; pass its text model as "
                 "Qwen2ForCausalLM(config.text_config) with the language model's weights"),
    "moss_transcribe_diarize": ("MossTranscribeDiarizeForConditionalGeneration is multimodal (audio); pass its text "
                                "model as Qwen3ForCausalLM(config.text_config) with the language model's weights"),
    "phi4_multimodal": ("Phi4MultimodalForCausalLM is multimodal (image and audio embeddings spliced into the token "
                        "embeddings); its decoder layers are Phi-3's, so pass its text model as a Phi3ForCausalLM "
                        "with the same text settings and the language model's weights"),
    "gemma4_unified": ("Gemma4UnifiedForConditionalGeneration is multimodal; pass its text model as "
                       "Gemma4UnifiedForCausalLM(config.text_config) with the language model's weights"),
    "gemma3n": ("Gemma3nForConditionalGeneration is multimodal (vision and audio towers), and its text model, "
                "Gemma3nForCausalLM (gemma3n_text), is not supported either: AltUp's hidden-state streams, LAuReL and "
                "Gaussian top-k activation sparsity"),
    "dots3_note": ("Dots3NoteForConditionalGeneration is multimodal (vision and audio towers), and its text model, "
                   "Dots3NoteForCausalLM (dots3_note_text), is not supported either: DeepSeek-V3.2-style indexer "
                   "sparse attention"),
    "mllama": ("Llama 3.2 Vision (mllama) is not supported: its text model's cross_attention_layers attend to the "
               "vision encoder's states instead of self-attending, and we export decoder-only graphs, which take "
               "no encoder states"),
    "mllama_text_model": ("Llama 3.2 Vision's text model (MllamaForCausalLM) is not supported: its "
                          "cross_attention_layers attend to the vision encoder's states instead of self-attending, "
                          "and we export decoder-only graphs, which take no encoder states"),
    "git": ("GIT is not supported: its BERT-style decoder runs over the image encoder's projected patch tokens "
            "prepended to the text, the image tokens attending each other bidirectionally and the text causally, "
            "and we export text-only causal decoders"),
    "gemma4_assistant": ("Gemma 4's assistant (a multi-token-prediction drafter) is not supported: it takes no "
                         "token ids but the target model's embeddings and hidden states (pre_projection), and its "
                         "layers attend to the target model's shared KV states instead of a cache of their own, "
                         "which our exported graphs do not take"),
    "gemma4_unified_assistant": ("Gemma 4 unified's assistant (a multi-token-prediction drafter) is not supported: "
                                 "it takes no token ids but the target model's embeddings and hidden states "
                                 "(pre_projection), and its layers attend to the target model's shared KV states "
                                 "instead of a cache of their own, which our exported graphs do not take"),
})
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu", "relu2": "relu2",
                "xielu": "xielu"}  # xielu: Llama's ungated MLP only (models.llama.XIELU)


def supported_message() -> str:
    listed = ", ".join(f"{t} ({c})" for t, c in SUPPORTED.items())
    later = "; ".join(f"{t}: {why}" for t, why in NOT_YET.items())
    return f"supported: {listed}" + (f". Not yet: {later}" if later else "")


class UnsupportedModel(ValueError):
    pass


def _unsupported(why: str) -> UnsupportedModel:
    return UnsupportedModel(f"from_transformers: {why}. {supported_message()}")


def _activation(name: str) -> str:
    if name not in _ACTIVATIONS:
        raise _unsupported(f"activation {name!r} has no equivalent here (known: {', '.join(_ACTIVATIONS)})")
    return _ACTIVATIONS[name]


def _rope_scaling(params: dict, max_positions: int | None = None) -> RopeScaling | None:
    """Our RopeScaling for transformers' rope_parameters. LongRoPE needs `max_positions` (the config's
    max_position_embeddings, for its default factor); converters that do not pass it refuse LongRoPE."""
    kind = params.get("rope_type", "default")
    if kind == "default":
        return None
    if kind == "linear":
        return RopeScaling("linear", params["factor"])
    if kind == "llama3":
        return RopeScaling("llama3", params["factor"], params["original_max_position_embeddings"],
                           low_freq_factor=params["low_freq_factor"], high_freq_factor=params["high_freq_factor"])
    if kind == "yarn":
        factor, attention = params["factor"], params.get("attention_factor")
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        if attention is None and mscale and mscale_all_dim and factor > 1:  # DeepSeek's ratio, as transformers
            attention = (0.1 * mscale * math.log(factor) + 1.0) / (0.1 * mscale_all_dim * math.log(factor) + 1.0)
        return RopeScaling("yarn", factor, params.get("original_max_position_embeddings") or 4096,
                           beta_fast=params.get("beta_fast") or 32.0, beta_slow=params.get("beta_slow") or 1.0,
                           attention_factor=attention, truncate=params.get("truncate") is not False)
    if kind == "longrope":
        if max_positions is None:
            raise _unsupported("LongRoPE (rope_type 'longrope') is supported for the Llama-like architectures "
                               "(Phi-3, Phi-3.5, Phi-4-mini, ...), not for this one")
        original = params["original_max_position_embeddings"]
        # transformers: factor, else max_position_embeddings / original_max_position_embeddings (attention factor)
        factor = params.get("factor")
        try:
            return RopeScaling("longrope", factor if factor is not None else max_positions / original, original,
                               attention_factor=params.get("attention_factor"), short_factor=params["short_factor"],
                               long_factor=params["long_factor"])
        except ValueError as e:  # e.g. factor lists of different lengths
            raise _unsupported(f"these LongRoPE parameters do not map onto ours: {e}") from e
    raise _unsupported(f"RoPE type {kind!r} is not supported (default, linear, llama3, yarn, longrope are)")


def _check_rope(ours: nn.Module, hf_inv_freq: torch.Tensor, hf_scaling: float, what: str,
                hf_long_inv_freq: torch.Tensor | None = None) -> None:
    """Our frequencies must be HF's (catches RoPE variants whose parameters map imperfectly); with LongRoPE
    both sets, short (`hf_inv_freq`) and long."""
    def same(inv_freq, theirs):
        return theirs is not None and inv_freq.shape == theirs.shape and \
            torch.allclose(inv_freq, theirs.float().cpu(), rtol=1e-5)

    for attn in ours.attention_layers():
        # Hunyuan's layers rotate in torch (rope_then_norm), the node not at all
        rope = attn.rope if attn.rope is not None else getattr(attn, "rope_then_norm", None)
        if rope is None:  # NoPE layers (SmolLM3)
            continue
        # MLA rotates only the rope part of each head
        dim = attn.rope_head_dim if isinstance(attn, MultiHeadLatentAttention) else attn.head_dim
        inv_freq, scaling = rope.frequencies(dim)
        long_ok = same(rope.frequencies(dim, long=True)[0], hf_long_inv_freq) if rope.switches else \
            hf_long_inv_freq is None
        if not same(inv_freq, hf_inv_freq) or not long_ok or abs(scaling - hf_scaling) > 1e-6:
            raise _unsupported(f"the RoPE frequencies of {what} differ from the transformers model's")


def _hf_frequencies(rotary) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(short or only inv_freq, LongRoPE's long inv_freq or None) of a transformers rotary embedding. Its
    inv_freq buffer holds whichever set the last forward used; original_inv_freq keeps the initial (short) one, and
    the long set is computed as its longrope update does (modeling_rope_utils.dynamic_rope_update)."""
    short = getattr(rotary, "original_inv_freq", rotary.inv_freq)
    if getattr(rotary, "rope_type", None) != "longrope":
        return short, None
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    original = rotary.config.rope_parameters["original_max_position_embeddings"]
    return short, ROPE_INIT_FUNCTIONS["longrope"](rotary.config, None, seq_len=original + 1)[0]


def _window(hf_cfg) -> int:
    return int(getattr(hf_cfg, "sliding_window", None) or 0)


def _copy(param: torch.Tensor, value: torch.Tensor, what: str) -> None:
    if param.shape != value.shape:  # copy_ would broadcast
        raise ValueError(f"{what} of shape {list(value.shape)} does not fit ours ({list(param.shape)})")
    param.copy_(value)


def _rotary_dim(c, head_dim: int) -> int | None:
    """Partial rotary (Phi-3 / Phi-4-mini): the channels transformers rotates, None for the whole head."""
    factor = c.rope_parameters.get("partial_rotary_factor", 1.0)
    dim = int(head_dim * factor)  # as transformers truncates
    if dim == head_dim:
        return None
    if dim < 2 or dim % 2:  # transformers would rotate dim + 1 channels with frequencies for dim
        raise _unsupported(f"{c.model_type} with partial_rotary_factor {factor} rotates {dim} of {head_dim} channels; "
                           f"only an even count >= 2 is supported")
    return dim
