"""Run a Python snippet in a fresh interpreter from the repository root: for what a new process
imports and how long its start-up takes, which a test process that already imported it cannot show."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT


def run_python(script: str, *args: str, timeout: float = 120) -> str:
    """The snippet's stdout; fails the test with the end of its stderr when it exits non-zero."""
    process = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    assert process.returncode == 0, process.stderr[-3000:]
    return process.stdout
