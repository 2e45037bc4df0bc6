"""Token generation with a KV cache: in onnxruntime from an exported decoder (``generate``) and eagerly in
torch from a reference model (``generate_torch``), sharing one sampler, so greedy decoding is comparable
token for token and sampling is reproducible from a seed.

The onnxruntime loop runs with I/O binding: present caches stay OrtValues (on the GPU with the CUDA
execution provider) and are fed back as the next step's pasts, never copied through numpy. With a
shared-buffer model (input ``past_lengths``) and our library, presents are bound to the past buffers, so
the kernel appends in place.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Sequence

import numpy as np

from onnxattn._progress import Progress

METADATA_PREFIX = "onnxattn."  # exported models carry e.g. onnxattn.max_positions in metadata_props


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Greedy when temperature == 0 (ties: lowest token id), else softmax sampling at `temperature` over the
    `top_k` most likely tokens (0: all) within the smallest set of cumulative probability >= `top_p`, with
    numpy's PCG64 seeded by `seed` (one draw per row per step, so results depend only on seed and logits)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"Sampler: need temperature >= 0, top_k >= 0 and 0 < top_p <= 1, got {self}")

    def start(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def __call__(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """logits [B, V] -> token ids [B] (int64)."""
        if self.temperature == 0:
            return np.argmax(logits, axis=-1).astype(np.int64)
        out = np.empty(logits.shape[0], dtype=np.int64)
        for b, row in enumerate(logits.astype(np.float64) / self.temperature):
            order = np.argsort(-row, kind="stable")  # most likely first, ties by id
            if self.top_k:
                order = order[: self.top_k]
            probs = np.exp(row[order] - row[order[0]])
            probs /= probs.sum()
            if self.top_p < 1:
                keep = int(np.searchsorted(np.cumsum(probs), self.top_p) + 1)  # the token crossing top_p stays
                order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
            pick = min(int(np.searchsorted(np.cumsum(probs), rng.random(), side="right")), len(order) - 1)
            out[b] = order[pick]
        return out


@dataclasses.dataclass
class GenerationResult:
    tokens: np.ndarray  # [B, prompt + new] int64
    prompt_length: int
    time_to_first_token: float  # seconds: prefill + first sample
    decode_seconds: float  # the steps after the first token
    backend: str = ""

    @property
    def new_tokens(self) -> np.ndarray:
        return self.tokens[:, self.prompt_length:]

    @property
    def tokens_per_second(self) -> float:
        """Decode throughput: tokens generated after the first one (all rows), per second."""
        steps = self.new_tokens.shape[1] - 1
        return self.tokens.shape[0] * steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else 0.0

    def summary(self) -> str:
        b, n = self.new_tokens.shape
        decode = f"decode {self.tokens_per_second:.1f} tokens/s" if n > 1 else "no decode step (one new token)"
        return (f"{self.backend}: prompt {b} x {self.prompt_length}, {n} new tokens per row; time to first token "
                f"{self.time_to_first_token * 1e3:.1f} ms, {decode}")


def _check_request(input_ids: np.ndarray, max_new_tokens: int, max_positions: int | None) -> np.ndarray:
    ids = np.asarray(input_ids, dtype=np.int64)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
        raise ValueError(f"generate: input_ids must be [batch >= 1, prompt length >= 1], got shape {list(ids.shape)}")
    if ids.min() < 0:  # the embedding's Gather would read them from the end of the table
        raise ValueError(f"generate: input_ids must be token ids >= 0, got {int(ids.min())}")
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    fed = ids.shape[1] + max_new_tokens - 1  # the last new token is sampled, never fed back
    if max_positions is not None and fed > max_positions:
        raise ValueError(f"generate: prompt ({ids.shape[1]}) + max_new_tokens ({max_new_tokens}) feed {fed} positions "
                         f"(the last new token is not fed back), past the model's position table ({max_positions} "
                         "positions)")
    return ids


def _finished(next_ids: np.ndarray, done: np.ndarray, eos: int | None) -> np.ndarray:
    return done | (next_ids == eos) if eos is not None else done


_ORT_TYPES = {"tensor(float)": (np.float32, 1), "tensor(float16)": (np.float16, 10), "tensor(bfloat16)": (np.uint16, 16)}


def _session(model, use_library: bool, providers, session_options=None):
    import onnxruntime as ort

    from onnxattn.cuda_ep import make_session

    if isinstance(model, ort.InferenceSession):
        return model
    if isinstance(model, (str, os.PathLike)) and not os.path.isfile(model):
        raise FileNotFoundError(f"generate: no model file {os.fspath(model)!r}")
    return make_session(model, use_library=use_library, providers=providers, session_options=session_options)


def _cuda_device_id(session) -> int:
    options = session.get_provider_options().get("CUDAExecutionProvider", {})
    return int(options.get("device_id", 0))


def generate(
    model,
    input_ids,
    max_new_tokens: int = 16,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_token_id: int | None = None,
    use_library: bool = True,
    providers: Sequence[str] | None = None,
    session_options=None,
    progress: bool = True,
) -> GenerationResult:
    """Generates from `model` (an exported decoder: path, ModelProto or InferenceSession) in onnxruntime.
    `input_ids` [B, S] (or [S]); greedy unless temperature > 0. With `use_library` our kernels run the
    attention, otherwise the models' reference functions (plain onnxruntime). `session_options` (e.g. thread
    counts) apply when a session is made here."""
    import onnxruntime as ort

    session = _session(model, use_library, providers, session_options)
    meta = session.get_modelmeta().custom_metadata_map
    max_positions = int(meta[METADATA_PREFIX + "max_positions"]) if METADATA_PREFIX + "max_positions" in meta else None
    ids = _check_request(input_ids, max_new_tokens, max_positions)
    inputs = {i.name: i for i in session.get_inputs()}
    pasts = sorted((n for n in inputs if n.startswith("past_key_values.")),
                   key=lambda n: (int(re.findall(r"\d+", n)[0]), n.endswith("value")))
    if "input_ids" not in inputs or not pasts:
        raise ValueError("generate: the model is not an exported decoder (inputs input_ids and "
                         f"past_key_values.<layer>.key/value expected; it has {', '.join(inputs)})")
    presents = [n.replace("past_key_values.", "present.") for n in pasts]
    shared = "past_lengths" in inputs
    device = "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
    batch, prompt = ids.shape
    length = prompt + max_new_tokens if shared else 0
    # Presents bound to the past buffers: our kernel then appends in place (only the new tokens are written).
    # Only where this function made the session, so the library is known to be registered.
    in_place = shared and use_library and not isinstance(model, ort.InferenceSession)
    cache = {}
    for name in pasts:
        info = inputs[name]
        np_type, onnx_type = _ORT_TYPES[info.type]
        shape = [batch, info.shape[1], length, info.shape[3]]
        zeros = np.zeros(shape, np_type)
        if in_place and device == "cuda":  # the buffer on the device for the whole generation
            cache[name] = ort.OrtValue.ortvalue_from_shape_and_type(shape, onnx_type, "cuda", _cuda_device_id(session))
            cache[name].update_inplace(zeros)
        else:  # first pasts on the host (onnxruntime copies them over); later ones stay where the presents are
            cache[name] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(zeros, onnx_type)
    sampler, done = Sampler(temperature, top_k, top_p, seed), np.zeros(batch, dtype=bool)
    rng = sampler.start()
    tokens, step_ids, past_length = [ids], ids, 0
    backend = f"onnxruntime {device.upper()}, {'onnxattn kernels' if use_library else 'reference functions'}"

    def step(step_ids: np.ndarray) -> np.ndarray:
        binding = session.io_binding()
        binding.bind_cpu_input("input_ids", step_ids)
        if shared:
            binding.bind_cpu_input("past_lengths", np.full(batch, past_length, dtype=np.int64))
        binding.bind_output("logits", "cpu")
        for past_name, present_name in zip(pasts, presents):
            binding.bind_ortvalue_input(past_name, cache[past_name])
            if in_place:
                binding.bind_ortvalue_output(present_name, cache[past_name])
            else:
                binding.bind_output(present_name, device)
        session.run_with_iobinding(binding)
        values = dict(zip(["logits", *presents], binding.get_outputs()))  # in binding order
        if not in_place:  # in place, the buffers (and the numpy arrays backing them) stay as they are
            for past_name, present_name in zip(pasts, presents):
                cache[past_name] = values[present_name]
        return values["logits"].numpy()[:, -1]

    with Progress(max_new_tokens, "generate", enabled=progress, unit="tok") as bar:
        start = time.perf_counter()
        for i in range(max_new_tokens):
            next_ids = sampler(step(step_ids), rng)
            next_ids = np.where(done, eos_token_id if eos_token_id is not None else 0, next_ids)
            past_length += step_ids.shape[1]
            tokens.append(next_ids[:, None])
            step_ids = next_ids[:, None]
            bar.step()
            if i == 0:
                first = time.perf_counter()
            done = _finished(next_ids, done, eos_token_id)
            if done.all():
                break
        end = time.perf_counter()
    return GenerationResult(np.concatenate(tokens, axis=1), prompt, first - start, end - first, backend)


def generate_torch(
    model,
    input_ids,
    max_new_tokens: int = 16,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_token_id: int | None = None,
    progress: bool = False,
) -> GenerationResult:
    """The same generation eagerly in torch with a reference decoder (onnxattn.models) and a KVCache."""
    import torch

    from onnxattn.nn import KVCache

    if getattr(model, "kind", None) != "decoder":
        raise ValueError(f"generate_torch: {type(model).__name__} is not a decoder")
    ids = _check_request(input_ids, max_new_tokens, getattr(model, "max_positions", None))
    sampler, done = Sampler(temperature, top_k, top_p, seed), np.zeros(ids.shape[0], dtype=bool)
    rng, cache, tokens, step_ids = sampler.start(), KVCache(), [ids], ids
    with torch.no_grad(), Progress(max_new_tokens, "generate (torch)", enabled=progress, unit="tok") as bar:
        start = time.perf_counter()
        for i in range(max_new_tokens):
            logits = model(torch.from_numpy(step_ids), cache=cache, logits_to_keep=1)
            next_ids = sampler(logits[:, -1].float().numpy(), rng)
            next_ids = np.where(done, eos_token_id if eos_token_id is not None else 0, next_ids)
            tokens.append(next_ids[:, None])
            step_ids = next_ids[:, None]
            bar.step()
            if i == 0:
                first = time.perf_counter()
            done = _finished(next_ids, done, eos_token_id)
            if done.all():
                break
        end = time.perf_counter()
    return GenerationResult(np.concatenate(tokens, axis=1), ids.shape[1], first - start, end - first, "eager torch")
