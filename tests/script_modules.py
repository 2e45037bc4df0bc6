"""The repo's scripts and benchmarks (not a package) imported as modules by the tests that check their host logic."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str, name: str) -> ModuleType:
    """The file ROOT/relative as module `name`, registered in sys.modules (worker processes it starts and
    dataclasses it defines look it up by that name)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
