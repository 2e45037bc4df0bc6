"""README's example runs as written, and README's two commands are the ones CI and users run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_example_runs(tmp_path, monkeypatch):
    example = re.search(r"## Example\n\n```python\n(.*?)```", README, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example, "README.md example", "exec"), namespace)
    assert namespace["report"].ok, str(namespace["report"])
    assert namespace["y"].shape == (3, 100, 64)


def test_readme_commands_match_ci():
    commands = re.findall(r"```bash\n(?:#.*\n)?(.*?)\n```", README)
    assert commands[:2] == ["./scripts/setup.sh && .venv/bin/onnxattn demo",
                            "./scripts/setup.sh && .venv/bin/python -m pytest -n 2 --dist worksteal -q"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./scripts/setup.sh" in ci and ".venv/bin/python -m pytest -n 2 --dist worksteal -q" in ci
