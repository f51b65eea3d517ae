"""Browser-test support: the Chromium executable (Debian's, installed by scripts/ensure_chromium.sh;
Playwright's own downloads do not work offline) and the folder screenshots are kept in."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


def chromium_executable() -> str:
    found = os.environ.get("RAG_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("no Chromium: scripts/test.sh installs Debian's (scripts/ensure_chromium.sh)")
    return found


def artifacts_dir() -> Path:
    """$RAG_TEST_ARTIFACTS/web, default test-artifacts/web in the repo (ignored by git)."""
    folder = Path(os.environ.get("RAG_TEST_ARTIFACTS") or REPO_ROOT / "test-artifacts") / "web"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
