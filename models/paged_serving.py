"""Paged serving end to end: a reference decoder generating for several requests at once with continuous
batching over a block-paged KV cache, in onnxruntime with one PagedAttention node per layer, token for token
equal to eager torch generation with a contiguous KVCache.

    python -m onnxattn.models.paged_serving [--model llama] [--block-size 4] [--no-library]

- ``PagedCausalLM`` runs a reference decoder of GroupedQueryAttention layers (onnxattn.models: llama, llama4,
  gemma3, gpt2, gpt-oss; it refuses the others) over the packed
  new tokens of a step: ids [T] plus the step's block_table / cu_seqlens_q / seq_lens and every layer's pools
  in, the last token's logits per sequence [B, vocab] and the updated pools out. Its export has one
  PagedAttention node per layer whose cache outputs are the graph outputs.
- ``serve`` is the scheduler: at most `max_batch` sequences run at once; prompts are prefilled in chunks of
  `chunk` tokens while other sequences decode, in the same step; a finished sequence frees its blocks and a
  waiting request joins. A request whose prompt starts with tokens another running sequence already holds
  shares those blocks (PagedKVCache.fork; the shared block it writes into is copied first).
- Engines run a step: ``TorchEngine`` (eager, the custom ops' torch reference) and ``OrtEngine``
  (onnxruntime; the pools are OrtValues over the cache's tensors, and each layer's cache outputs are bound to
  its inputs, so the kernel writes the new tokens in place; without the library the reference function
  computes the same pools, and onnxruntime writes them into the bound buffers).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from onnxattn.models._base import CausalLM
from onnxattn.nn import KVCache
from onnxattn.nn.paged_cache import PagedKVCache, PagedStep

INDEX_INPUTS = ("input_ids", "block_table", "cu_seqlens_q", "seq_lens")


_ATTENTION_MODULES = ("GroupedQueryAttention", "MultiHeadLatentAttention", "NativeSparseAttention",
                      "SparseRoutedAttention")


def check_servable(lm: nn.Module) -> None:
    """ValueError unless PagedCausalLM can serve `lm`: a reference decoder (models._base.CausalLM's forward) of
    GroupedQueryAttention layers."""
    if getattr(lm, "kind", None) != "decoder":
        raise ValueError(f"PagedCausalLM: {type(lm).__name__} is not a reference decoder")
    # PagedAttention serves GroupedQueryAttention's layers; not DeepSeek's latent attention or the sparse ops
    attention = {type(m).__name__ for m in lm.layers.modules() if type(m).__name__ in _ATTENTION_MODULES}
    if attention - {"GroupedQueryAttention"}:
        raise ValueError(f"PagedCausalLM: {type(lm).__name__} attends with {', '.join(sorted(attention))}; paged "
                         "serving takes GroupedQueryAttention layers")
    # run() replays CausalLM.forward's embed -> layers -> head; a model with its own forward (Gemma 4's per-layer
    # inputs and K/V shared across layers) would be served wrong
    if type(lm).forward is not CausalLM.forward:
        raise ValueError(f"PagedCausalLM: {type(lm).__name__} has a forward of its own (per-layer inputs, shared "
                         "K/V, ...) that paged serving does not replay")


class PagedCausalLM(nn.Module):
    """A reference decoder (models._base.CausalLM: embed, layers with GroupedQueryAttention, head) over a
    step's packed tokens. forward(input_ids [T], block_table, cu_seqlens_q, seq_lens, key_caches,
    value_caches) -> (logits [B, vocab] at each sequence's last new token, key caches, value caches)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        check_servable(lm)
        self.lm = lm
        self.train(lm.training)

    def forward(self, input_ids, block_table, cu_seqlens_q, seq_lens, key_caches, value_caches):
        step = PagedStep(block_table, cu_seqlens_q, seq_lens, list(key_caches), list(value_caches))
        return self.run(input_ids, step)

    def run(self, input_ids: torch.Tensor, step: PagedStep):
        """One step; the step's pool lists end up holding the updated pools."""
        if not torch.compiler.is_exporting():
            self.lm.check_length(max(step.seq_lens.tolist(), default=0))
        x = self.lm.embed(input_ids, step.token_positions(input_ids.shape[0]))
        for layer in self.lm.layers:
            x, _ = layer(x, paged=step)
        # a sequence with no new tokens gets some other row's logits, which the caller ignores
        logits = self.lm.head(x[step.last_rows()])
        return logits, tuple(step.key_caches), tuple(step.value_caches)

    def example_inputs(self, cache: PagedKVCache):
        """Inputs to trace with: 3 sequences, sizes > 1 and distinct (torch.export specializes 0 and 1)."""
        g = torch.Generator().manual_seed(0)
        cache = _scratch_copy(cache)
        for i, n in enumerate((5, 2, 9)):
            cache.add(i)
            cache.reserve(i, n)
        step = cache.step(range(3), [3, 1, 2])
        ids = torch.randint(0, self.lm.config.vocab_size, (6,), generator=g)
        return (ids, step.block_table, step.cu_seqlens_q, step.seq_lens, tuple(step.key_caches),
                tuple(step.value_caches))

    def export(self, cache: PagedKVCache, path=None):
        """The ONNX model: one PagedAttention node per layer, dynamic tokens, batch, table width and pool
        size. Inputs input_ids, block_table, cu_seqlens_q, seq_lens, key_cache.{i}, value_cache.{i}; outputs
        logits, key_cache_out.{i}, value_cache_out.{i}."""
        import onnxattn.export

        layers = len(cache.key_caches)
        tokens, batch, width, blocks = (torch.export.Dim(n) for n in ("tokens", "batch", "max_blocks", "num_blocks"))
        pool = tuple({0: blocks} for _ in range(layers))
        dynamic = ({0: tokens}, {0: batch, 1: width}, {0: batch + 1}, {0: batch}, pool, pool)
        names = [*INDEX_INPUTS, *(f"key_cache.{i}" for i in range(layers)),
                 *(f"value_cache.{i}" for i in range(layers))]
        outputs = ["logits", *(f"key_cache_out.{i}" for i in range(layers)),
                   *(f"value_cache_out.{i}" for i in range(layers))]
        return onnxattn.export(self, self.example_inputs(cache), path, dynamic_shapes=dynamic, input_names=names,
                               output_names=outputs)


def _scratch_copy(cache: PagedKVCache) -> PagedKVCache:
    """An empty cache of the same layout (for tracing), sharing nothing with `cache`."""
    return PagedKVCache(cache.kv_shapes, cache.num_blocks, cache.block_size, dtype=cache.key_caches[0].dtype)


# ---------------------------------------------------------------------------------------------------------
# Engines: run one step, return the logits [B, vocab] as numpy


class TorchEngine:
    name = "eager torch (PagedKVCache)"

    def __init__(self, lm: nn.Module):
        self.model = PagedCausalLM(lm)

    def __call__(self, cache: PagedKVCache, input_ids: np.ndarray, step: PagedStep) -> np.ndarray:
        with torch.no_grad():
            logits, _, _ = self.model.run(torch.from_numpy(input_ids), step)  # the step updates cache's pools
        return logits.float().numpy()


class OrtEngine:
    """onnxruntime on the exported PagedCausalLM, the pools bound in place. The pools must be CPU float
    tensors that onnxruntime can share (float32/float16)."""

    def __init__(self, lm: nn.Module, cache: PagedKVCache, *, use_library: bool = True, session_options=None):
        import onnxruntime as ort

        from onnxattn.cuda_ep import make_session

        self.model = PagedCausalLM(lm).export(cache)
        options = session_options if session_options is not None else ort.SessionOptions()
        self.session = make_session(self.model, providers=["CPUExecutionProvider"], use_library=use_library,
                                    session_options=options)
        self.name = "onnxruntime, " + ("PagedAttention kernel" if use_library else "reference function (no library)")
        self.bound_cache: PagedKVCache | None = None

    def bind_pools(self, cache: PagedKVCache) -> None:
        """OrtValues over the cache's pools, each bound as a layer's cache input and as its cache output."""
        import onnxruntime as ort

        self.binding = self.session.io_binding()
        self.binding.bind_output("logits")  # first: get_outputs() lists outputs in binding order
        self.pools = []
        for kind, pools in (("key", cache.key_caches), ("value", cache.value_caches)):
            for i, pool in enumerate(pools):
                value = ort.OrtValue.ortvalue_from_numpy(pool.numpy())  # shares the tensor's memory
                self.binding.bind_ortvalue_input(f"{kind}_cache.{i}", value)
                self.binding.bind_ortvalue_output(f"{kind}_cache_out.{i}", value)
                self.pools.append(value)
        self.bound_cache = cache

    def __call__(self, cache: PagedKVCache, input_ids: np.ndarray, step: PagedStep) -> np.ndarray:
        if self.bound_cache is not cache:
            self.bind_pools(cache)
        feeds = dict(zip(INDEX_INPUTS, (input_ids, step.block_table, step.cu_seqlens_q, step.seq_lens)))
        for name, value in feeds.items():
            self.binding.bind_cpu_input(name, np.ascontiguousarray(np.asarray(value)))
        self.binding.bind_output("logits")  # again: its shape changes with the batch
        self.session.run_with_iobinding(self.binding)
        return self.binding.get_outputs()[0].numpy()


# ---------------------------------------------------------------------------------------------------------
# The scheduler


@dataclasses.dataclass
class Request:
    id: str
    prompt: list[int]
    max_new_tokens: int


@dataclasses.dataclass
class _Running:
    request: Request
    fed: int = 0  # tokens of prompt + generated already in the cache
    generated: list[int] = dataclasses.field(default_factory=list)

    @property
    def tokens(self) -> list[int]:
        return self.request.prompt + self.generated


@dataclasses.dataclass
class ServeResult:
    tokens: dict[str, list[int]]  # generated tokens per request
    steps: list[dict]  # per step: the sequences and their new-token counts (the schedule)
    shared_blocks: dict[str, int]  # blocks a request took from another sequence's prompt
    seconds: float


def serve(engine, cache: PagedKVCache, requests: Sequence[Request], *, max_batch: int = 3, chunk: int = 8,
          share_prefixes: bool = True) -> ServeResult:
    """Greedy generation for every request with continuous batching (see the module doc)."""
    waiting, running, done = list(requests), [], {}
    steps, shared = [], {}
    start = time.perf_counter()
    while waiting or running:
        while waiting and len(running) < max_batch:  # admit
            seq = _Running(waiting.pop(0))
            _admit(cache, seq, running, shared, share_prefixes)
            running.append(seq)
        feed = []  # per running sequence: the tokens it feeds this step
        for seq in running:
            prompt_left = len(seq.request.prompt) - seq.fed
            feed.append(seq.tokens[seq.fed: seq.fed + min(chunk, prompt_left)] if prompt_left > 0 else
                        [seq.generated[-1]])
        step = cache.step([s.request.id for s in running], [len(f) for f in feed])
        steps.append({s.request.id: len(f) for s, f in zip(running, feed)})
        logits = engine(cache, np.array([t for f in feed for t in f], dtype=np.int64), step)
        for row, (seq, f) in enumerate(zip(running, feed)):
            seq.fed += len(f)
            if seq.fed >= len(seq.request.prompt):  # the prompt is in: this row predicts the next token
                seq.generated.append(int(np.argmax(logits[row])))
        for seq in [s for s in running if len(s.generated) >= s.request.max_new_tokens]:
            done[seq.request.id] = seq.generated
            cache.free(seq.request.id)
            running.remove(seq)
    return ServeResult({r.id: done[r.id] for r in requests}, steps, shared, time.perf_counter() - start)


def _admit(cache: PagedKVCache, seq: _Running, running: list[_Running], shared: dict, share_prefixes: bool) -> None:
    """Adds the sequence to the cache, sharing the longest prefix a running sequence holds (whole blocks and
    the partly filled one; at least one prompt token is left to feed, for its logits)."""
    best, best_len = None, 0
    if share_prefixes:
        for other in running:
            held = other.tokens[: cache.length(other.request.id)]
            n = 0
            while n < min(len(held), len(seq.request.prompt) - 1) and held[n] == seq.request.prompt[n]:
                n += 1
            if n > best_len:
                best, best_len = other, n
    if best is None or best_len < cache.block_size:
        cache.add(seq.request.id)
        return
    cache.fork(best.request.id, seq.request.id, best_len)
    seq.fed = best_len
    shared[seq.request.id] = len(cache.blocks(seq.request.id))


def generate_contiguous(lm: nn.Module, requests: Sequence[Request]) -> dict[str, list[int]]:
    """The baseline: each request alone, eagerly, greedy, with a contiguous KVCache."""
    out = {}
    with torch.no_grad():
        for r in requests:
            cache, ids, tokens = KVCache(), torch.tensor([r.prompt]), []
            for _ in range(r.max_new_tokens):
                logits = lm(ids, cache=cache, logits_to_keep=1)
                tokens.append(int(logits[0, -1].argmax()))
                ids = torch.tensor([[tokens[-1]]])
            out[r.id] = tokens
    return out


def demo_requests(vocab_size: int, seed: int = 0) -> list[Request]:
    """4 requests of different prompt lengths; "d" extends "a"'s prompt (it shares a's blocks) and joins
    when the first request finishes."""
    rng = np.random.default_rng(seed)
    prompt = lambda n: rng.integers(0, vocab_size, n).tolist()  # noqa: E731
    a = prompt(13)
    return [Request("a", a, 12), Request("b", prompt(5), 4), Request("c", prompt(22), 9),
            Request("d", a + prompt(6), 7)]


def build_demo(model: str = "llama", block_size: int = 4, num_blocks: int = 64, seed: int = 0):
    """(decoder, fresh-cache factory, requests) of the demo: a tiny decoder from onnxattn.models (Llama-style
    by default, with a sliding-window layer and QK-norm so windows and QK-norm run paged too)."""
    from onnxattn import models

    overrides = dict(sliding_window=6, layer_types=("sliding_attention", "full_attention"), qk_norm=True) \
        if model == "llama" else {}
    lm = models.build(model, seed=seed, **overrides)
    return lm, (lambda: PagedKVCache.for_model(lm, num_blocks, block_size)), demo_requests(lm.config.vocab_size, seed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m onnxattn.models.paged_serving", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="llama", help="a registered decoder (llama, llama4, gemma3, gpt2, gpt-oss)")
    parser.add_argument("--block-size", type=int, default=4)
    parser.add_argument("--num-blocks", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=8, help="prefill chunk (tokens per sequence per step)")
    parser.add_argument("--no-library", action="store_true", help="only onnxruntime without our library")
    args = parser.parse_args(argv)
    for name in ("block_size", "num_blocks", "chunk"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        lm, new_cache, requests = build_demo(args.model, args.block_size, args.num_blocks)
        check_servable(lm)  # before any work
    except (KeyError, ValueError) as e:
        parser.error(str(e.args[0] if e.args else e))
    expected = generate_contiguous(lm, requests)
    engines = [lambda cache: TorchEngine(lm)]
    if not args.no_library:
        engines.append(lambda cache: OrtEngine(lm, cache))
    engines.append(lambda cache: OrtEngine(lm, cache, use_library=False))
    ok = True
    for make in engines:
        cache = new_cache()
        engine = make(cache)
        result = serve(engine, cache, requests, chunk=args.chunk)
        same = result.tokens == expected
        ok &= same
        print(f"{engine.name}: {len(result.steps)} steps in {result.seconds:.2f}s, "
              f"{'token-for-token equal to' if same else 'DIFFERENT from'} contiguous eager torch")
    print("schedule (tokens fed per sequence per step):")
    for i, s in enumerate(result.steps):
        print(f"  {i:2d}  " + "  ".join(f"{k}:{n}" for k, n in s.items()))
    print(f"shared prompt blocks: {result.shared_blocks}")
    for r in requests:
        print(f"  {r.id}: prompt {len(r.prompt):2d} tokens -> {expected[r.id]}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
