"""docs/reliability.md is what scripts/reliability_report.py makes of the case tables and the recorded runs:
a table edited without regenerating the document (or the reverse) fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_reliability_doc_is_current():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "reliability_report.py"), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:] + "\n(run: python scripts/reliability_report.py)"


def test_readme_points_to_it():
    assert "docs/reliability.md" in (ROOT / "README.md").read_text()
