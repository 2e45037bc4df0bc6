"""Reference models built only from onnxattn.nn (installed as ``onnxattn.models``): each is a config
dataclass plus a builder with deterministic random weights, tiny by default and scalable by config."""

from __future__ import annotations

from collections.abc import Callable

MODELS: dict[str, Callable] = {}


def register(name: str):
    def wrap(builder):
        MODELS[name] = builder
        return builder

    return wrap


def build(name: str, **overrides):
    """Builds a registered model by name; keyword overrides go to its config."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[name](**overrides)


from onnxattn.models import tiny_decoder  # noqa: E402,F401  (registers its models)

DEFAULT_MODEL = "tiny-decoder"
