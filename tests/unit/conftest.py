"""Unit-test helpers: where the shared real PDFs live, and their MANIFEST.tsv.

Tests pick MANIFEST rows with a marker and receive each one as the `pdf_row` argument:

    @pytest.mark.pdf_rows(where=lambda row: row["encrypted"] == "no")
    def test_something(pdf_row, shared_pdf_dir): ...
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import PDF_DIR as SHARED_PDF_DIR  # read in place beside the checkout, never copied

MANIFEST_TSV = SHARED_PDF_DIR / "MANIFEST.tsv"


def read_pdf_manifest() -> list[dict[str, str]]:
    with MANIFEST_TSV.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pdf_rows(where): run the test once per shared MANIFEST.tsv row for which where(row) is true")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("pdf_rows")
    if marker is None or "pdf_row" not in metafunc.fixturenames:
        return
    # A keyword argument: a mark given one positional callable would decorate it instead.
    where: Callable[[dict[str, str]], bool] = marker.kwargs["where"]
    rows = [row for row in read_pdf_manifest() if where(row)] if MANIFEST_TSV.is_file() else []
    if not rows:
        # An empty selection would silently test nothing.
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: no MANIFEST rows selected from {MANIFEST_TSV}")
    metafunc.parametrize("pdf_row", rows, ids=[row["filename"] for row in rows])


@pytest.fixture(scope="session")
def shared_pdf_dir() -> Path:
    if not MANIFEST_TSV.is_file():
        pytest.fail(f"shared test data missing: {SHARED_PDF_DIR} (checked out beside the repo as ../shared)")
    return SHARED_PDF_DIR


@pytest.fixture(scope="session")
def pdf_manifest(shared_pdf_dir: Path) -> dict[str, dict[str, str]]:
    """MANIFEST.tsv rows by filename."""
    return {row["filename"]: row for row in read_pdf_manifest()}


@pytest.fixture
def clean_rag_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No RAG_* variables from the caller's shell, and a working directory without configs/rag.yaml."""
    for name in list(os.environ):
        if name.startswith("RAG_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def model():
    """The embedding model `auto` resolves to here (the packaged MiniLM offline), loaded once."""
    from rag_core.embedding import EmbeddingModel

    return EmbeddingModel.from_setting("auto", device="cpu")
