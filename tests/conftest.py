"""Shared test setup: environment for local Ray, and where the shared evaluation data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
PDF_DIR = SHARED_DATA / "pdfs"
SAMPLES_DIR = REPO_ROOT / "samples"

# Local clusters without auth (else the CLI gets 401s) and without usage reporting.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def pdf_dir() -> Path:
    if not (PDF_DIR / "MANIFEST.tsv").is_file():
        pytest.fail(f"shared test data missing: {PDF_DIR} (CI checks out ../shared beside the repo)")
    return PDF_DIR
