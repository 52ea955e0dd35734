"""mypy over the package reports no errors (settings in the repository's mypy.ini).

The seams are typed (backends' outputs, ``refine_many`` jobs, results); this keeps them so. mypy runs in a
subprocess from the repository root, so its incremental cache (``.mypy_cache``) makes reruns take seconds.
"""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed (requirements.txt)")
def test_mypy_reports_no_errors():
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "mypy.ini"), "ar_ros"],
                          cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, f"mypy ar_ros (rc {proc.returncode}):\n{proc.stdout}{proc.stderr}"
