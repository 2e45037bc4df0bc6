"""Reference models built only from onnxattn.nn (installed as ``onnxattn.models``): each is a config
dataclass plus a builder with deterministic random weights, tiny by default and scalable by config.

``build("llama", hidden=512, num_layers=4)`` or ``build(LlamaConfig(...))``. Decoders (``kind ==
"decoder"``) share one forward for eager generation and export (see models._base.CausalLM); encoders
(``kind == "encoder"``) take ids, a padding mask and (BERT) token types.

A new family is one module here: a config dataclass, a CausalLM subclass whose blocks call the new
attention module (its layers must expose the cache layout through ``kv_shapes``), and
``@register(name, ConfigClass)`` on its builder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

MODELS: dict[str, tuple[type, Callable]] = {}  # name -> (config class, builder(config) -> model)

# Families whose ops do not exist yet: named in error messages so users know they are planned.
PLANNED: dict[str, str] = {}


def register(name: str, config_class: type):
    def wrap(builder):
        MODELS[name] = (config_class, builder)
        return builder

    return wrap


def _unknown(name: str) -> KeyError:
    planned = ("; not available yet: " + ", ".join(f"{k} ({v})" for k, v in PLANNED.items())) if PLANNED else ""
    return KeyError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}{planned}")


def config_for(name: str, **overrides):
    """The config of a registered model with keyword overrides (e.g. hidden=512)."""
    if name not in MODELS:
        raise _unknown(name)
    config_class = MODELS[name][0]
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"{config_class.__name__}: unknown option(s) {', '.join(unknown)}; "
                         f"options: {', '.join(sorted(fields))}")
    return config_class(**overrides)


def build(name_or_config, **overrides):
    """Builds a model from a registered name (keyword overrides go to its config) or from a config."""
    if isinstance(name_or_config, str):
        cfg = config_for(name_or_config, **overrides)
    else:
        cfg = dataclasses.replace(name_or_config, **overrides) if overrides else name_or_config
    for config_class, builder in MODELS.values():
        if type(cfg) is config_class:
            return builder(cfg)
    raise TypeError(f"no registered model takes a {type(cfg).__name__}; pass a model name "
                    f"({', '.join(sorted(MODELS))}) or one of their configs")


from onnxattn.models import (  # noqa: E402,F401  (register)
    bert, deepseek, gemma3, gemma4, gpt2, llama, modernbert, sparse, tiny_decoder)

DEFAULT_MODEL = "llama"
