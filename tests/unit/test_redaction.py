"""PII redaction at ingest (Presidio, offline): each type, the modes, decoys, the parse stage, and
the labelled set's precision and recall."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest

from ingest_jobs.pipeline import ParseAndChunk, file_row
from ingest_jobs.redaction import PIIRedactor, shared_redactor
from rag_core.settings import PIISettings
from tests.conftest import REPO_ROOT
from tests.unit.test_pipeline_stages import CONFIG

ENTITIES = tuple(PIISettings().entities)
SAMPLES = {
    "EMAIL_ADDRESS": "maria.lopez@example.com",
    "PHONE_NUMBER": "(212) 555-0187",
    "CREDIT_CARD": "4111 1111 1111 1111",
    "US_SSN": "536-22-8171",
    "IBAN_CODE": "DE89 3704 0044 0532 0130 00",
    "IP_ADDRESS": "203.0.113.77",
}


@pytest.fixture(scope="module")
def redactor() -> PIIRedactor:
    return shared_redactor("redact", ENTITIES, PIISettings().score_threshold, None)


@pytest.mark.parametrize("kind, value", SAMPLES.items())
def test_each_type_is_replaced_by_its_name(redactor: PIIRedactor, kind: str, value: str) -> None:
    text, counts = redactor.redact(f"Record for the audit: {value} (confidential).")
    assert value not in text and f"<{kind}>" in text
    assert counts == {kind: 1}


def test_mask_keeps_the_last_four_characters() -> None:
    masker = PIIRedactor("mask", ENTITIES, PIISettings().score_threshold)
    text, counts = masker.redact("Card 4111 1111 1111 1111 and SSN 536-22-8171.")
    assert text == "Card ***************1111 and SSN *******8171."
    assert counts == {"CREDIT_CARD": 1, "US_SSN": 1}


def test_off_keeps_the_text() -> None:
    text = "Card 4111 1111 1111 1111."
    assert PIIRedactor("off", ENTITIES).redact(text) == (text, {})


@pytest.mark.parametrize("decoy", [
    "Order 4111 1111 1111 1112 failed validation.",            # fails the Luhn check
    "Invalid IBAN DE89 3704 0044 0532 0130 01 was rejected.",  # wrong check digits
    "Employees receive 27 days of paid vacation per year.",
    "Upgrade to version 2.14.1 before the 2024-03-15 deadline.",
])
def test_numbers_that_are_not_pii_are_kept(redactor: PIIRedactor, decoy: str) -> None:
    assert redactor.redact(decoy) == (decoy, {})


def test_person_names_are_reported_as_not_detectable_without_a_ner_model(redactor: PIIRedactor) -> None:
    assert redactor.unsupported == ["PERSON"]
    assert "PERSON" not in redactor.entities


def test_the_parse_stage_stores_no_original_value_and_counts_per_file() -> None:
    body = "Contact: maria.lopez@example.com, card 4111 1111 1111 1111, SSN 536-22-8171.\n\nVacation policy: 27 days."
    config = replace(CONFIG, pii_mode="redact", pii_entities=ENTITIES, pii_score_threshold=PIISettings().score_threshold)
    files = pa.Table.from_pylist([file_row("hr/contact.txt", body.encode(), "", {})])
    rows = ParseAndChunk(config)(files).to_pylist()
    assert rows and all(not r["error"] for r in rows)
    stored = json.dumps(rows)
    for value in ("maria.lopez@example.com", "4111 1111 1111 1111", "536-22-8171"):
        assert value not in stored
    assert "27 days" in stored
    assert {r["pii"] for r in rows} == {json.dumps({"CREDIT_CARD": 1, "EMAIL_ADDRESS": 1, "US_SSN": 1})}


def test_precision_and_recall_on_the_labelled_set_stay_above_90_percent(redactor: PIIRedactor) -> None:
    import sys

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from pii_eval import evaluate

    items = [json.loads(line) for line in Path(REPO_ROOT / "benchmarks/data/pii_labelled.jsonl").open()]
    overall = evaluate(redactor, items)["ALL"]
    assert overall["labelled"] == 35
    assert overall["recall"] >= 0.9 and overall["precision"] >= 0.9, overall
