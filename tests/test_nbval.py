"""nbval with a purpose: the deterministic notebooks' tables at the tiny profile match their references."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REFERENCES = Path(__file__).parent / "nbval"
pytestmark = pytest.mark.slow


def _nbval(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "--nbval-lax", "--nbval-current-env",
                           "-p", "no:cacheprovider", "-o", "addopts=", str(folder)],
                          capture_output=True, text=True, cwd=folder, timeout=900)


def test_reference_tables_are_reproduced():
    res = _nbval(REFERENCES)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "passed" in res.stdout


def test_a_changed_number_fails_the_check(tmp_path):
    """The check can fail: alter one number of a reference table and nbval reports it."""
    shutil.copy(REFERENCES / "01_aggregate_generation.ipynb", tmp_path)
    path = tmp_path / "01_aggregate_generation.ipynb"
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if "nbval-check-output" in c.get("metadata", {}).get("tags", []))
    data = cell["outputs"][0]["data"]
    text = "".join(data["text/plain"])
    digits = next(i for i, ch in enumerate(text) if ch.isdigit() and i > text.find("\n"))
    changed = text[:digits] + str((int(text[digits]) + 1) % 10) + text[digits + 1:]
    data["text/plain"] = changed
    path.write_text(json.dumps(nb))
    res = _nbval(tmp_path)
    assert res.returncode != 0 and "failed" in res.stdout
