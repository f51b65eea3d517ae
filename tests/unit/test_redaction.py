"""PII redaction at ingest (Presidio, offline): each type, the modes, decoys, real table lines from
../shared/data/pdfs that Presidio's stock recognizers corrupted, context, the parse stage, the
redactor's signature, and the labelled set's precision and recall per type."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import pyarrow as pa
import pytest

from ingest_jobs.pipeline import ParseAndChunk, file_row
from ingest_jobs.redaction import (
    RECOGNIZERS_REVISION,
    PIIRedactor,
    in_number_run,
    redactor_signature,
    shared_redactor,
)
from rag_core.settings import PIISettings
from tests.conftest import REPO_ROOT
from tests.fresh_python import run_python
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

# Lines of ../shared/data/pdfs as the parser returns them, which Presidio's stock recognizers
# altered (issue: 650 phone numbers, 45 IP addresses and a card number in tables and section numbers).
REAL_LINES = {
    "crime table (camelot__12s0324.pdf)": "Vagrancy . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . .  26,347  14,581  11,031  543  192 ",
    "budget table (camelot__budget.pdf)": "MINISTRY OF AGRICULTURE 28130.48 67.52 28198.00 2863.09 1.85 2864.94 31062.94  ",
    "population table (camelot__population_growth.pdf)": "States/Union Territories 1951-1961 1961-1971 1971-1981 1981-1991 1991-2001 2001-2011",
    "IRS contents (unstructured__pdf2image-memory-error-test-400p.pdf)": "2.3.59.1 Program Scope and Objectives\n2.3.59.1.1 Background\n2.3.59.1.2 Authority\n2.3.59.2 Command Code BMFOL Overview",
    "IRS footer": "Cat. No. 28171E (12-12-2022) Internal Revenue Manual 2.3.59",
    "IRS cross-reference": "16 61-80 CDDB Trace ID (For explanation of this ﬁeld refer to IRM\n3.17.5.5.3",
    "IRS record layout": "16 44-60 Transaction DLN\n16 41 Form 944 EFTPS Indicator\n20 20-40 1231 Net Gains Adj",
    "report section (camelot__us-040.pdf)": "2.  This Report used a UF  of 1 and a UF  of 3 (see Section 5.4.11.2 for a discussion of UF ).AL L",
    "NICS table (pdfplumber__nics-background-checks-2015-11.pdf)": "Arizona 2,303 12,382 9,041 707 618 0 5 3 0 1,273 648 4 76 8 1 9 6 1 1 1 0 27,087",
    "airline table (pdfplumber__issue-53-example.pdf)": "FY2013 7,723,293 102.6 35,390,384 104.0 46,235,058 103.3 76.5",
    "Census table (camelot__us-001.pdf)": "Male .................. 17.9 0.4 17.6 0.4 –0.3 17.3 0.4 17.4 0.4 0.2",
    "police case number (pdfplumber__san-jose-pd-firearm-sample.pdf)": "1721                    Tag#:SJ3095-1         GO SJ 2012-122590518  WA-GR/GUN DESTRUCTION  ",
}


@pytest.fixture(scope="module")
def redactor() -> PIIRedactor:
    return shared_redactor("redact", ENTITIES, PIISettings().score_threshold, None)


@pytest.fixture(scope="module")
def labelled() -> list[dict]:
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from pii_eval import load

    return load()


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


@pytest.mark.parametrize(
    "decoy",
    [
        "Order 4111 1111 1111 1112 failed validation.",  # fails the Luhn check
        "Invalid IBAN DE89 3704 0044 0532 0130 01 was rejected.",  # wrong check digits (and no card inside it)
        "Employees receive 27 days of paid vacation per year.",
        "Upgrade to version 2.14.1 before the 2024-03-15 deadline.",
        "See section 4.10.12.3 of the manual for the appeal rules.",
        "Call for papers closes 12-12-2022.",  # a date, even after 'call'
    ],
)
def test_numbers_that_are_not_pii_are_kept(redactor: PIIRedactor, decoy: str) -> None:
    assert redactor.redact(decoy) == (decoy, {})


@pytest.mark.parametrize("line", REAL_LINES.values(), ids=REAL_LINES.keys())
def test_real_table_lines_and_section_numbers_are_kept(redactor: PIIRedactor, line: str) -> None:
    assert redactor.redact(line) == (line, {})


@pytest.mark.parametrize("context", ["Phone", "Fax:", "call", "Card", "SSN", "IP"])
def test_a_context_word_never_makes_a_table_row_pii(redactor: PIIRedactor, context: str) -> None:
    for line in (
        "26,347  14,581  11,031  543  192",
        "28130.48 67.52 28198.00 2863.09 1.85 2864.94 31062.94",
        "2.3.59.1.5 Program Controls",
        "4,532  1,239  4,567  8,901",
    ):
        text = f"{context} {line}"
        assert redactor.redact(text) == (text, {})


def test_every_hard_negative_copied_from_the_real_pdfs_is_kept(redactor: PIIRedactor, labelled: list[dict]) -> None:
    negatives = [item for item in labelled if item.get("source") and not item["pii"]]
    assert len(negatives) >= 50
    altered = [(item["source"], redactor.redact(item["text"])[0]) for item in negatives if redactor.redact(item["text"])[1]]
    assert altered == []


@pytest.mark.parametrize(
    "with_context, without_context, kind",
    [
        ("Text the duty manager: 415-555-0199.", "Batch 415-555-0199 shipped on time.", "PHONE_NUMBER"),
        ("Login from 10.20.30.40 after three failures.", "Chapter 10.20.30.40 covers appeals.", "IP_ADDRESS"),
        ("Amex on file: 378282246310005.", "Order 378282246310005 shipped.", "CREDIT_CARD"),
        ("SSN: 536 22 8171 is on the W-4.", "Lot 536 22 8171 is on the list.", "US_SSN"),
    ],
)
def test_ambiguous_formats_need_a_context_word(redactor: PIIRedactor, with_context: str, without_context: str, kind: str) -> None:
    assert redactor.redact(with_context)[1] == {kind: 1}
    assert redactor.redact(without_context) == (without_context, {})


@pytest.mark.parametrize(
    "text, kind",
    [
        ("Our London office: +44 20 7946 0958.", "PHONE_NUMBER"),
        ("A. Nicole Clowers, Managing Director, Congressional Relations, (202) 512-4400 ", "PHONE_NUMBER"),  # real (GAO)
        ("Refund issued to 5500-0000-0000-0004 on March 3.", "CREDIT_CARD"),
        ("Payroll lists 287-65-4321 as the contractor's social security number.", "US_SSN"),
        ("The database primary listens on 192.168.10.24.", "IP_ADDRESS"),
        ("Dutch subsidiary IBAN NL91ABNA0417164300 for invoices.", "IBAN_CODE"),
        ("Suite 400 (212) 555-0187 is the front desk.", "PHONE_NUMBER"),  # a number before it, but in prose
        ("Login from 203.0.113.77 3 times.", "IP_ADDRESS"),  # a number after it, but in prose
    ],
)
def test_unambiguous_formats_need_no_context(redactor: PIIRedactor, text: str, kind: str) -> None:
    assert redactor.redact(text)[1] == {kind: 1}


def test_the_number_run_guard() -> None:
    line = "Vagrancy . . .  26,347  14,581  11,031  543  192 "
    start = line.index("031  543")
    assert in_number_run(line, start, start + len("031  543  192"))  # glued to "11,"
    text = "Call the front desk at (212) 555-0187 before 6 pm."
    start = text.index("(212)")
    assert not in_number_run(text, start, start + len("(212) 555-0187"))


def test_person_names_are_reported_as_not_detectable_without_a_ner_model(redactor: PIIRedactor) -> None:
    assert redactor.unsupported == ["PERSON"]
    assert "PERSON" not in redactor.entities


def test_the_parse_stage_stores_no_original_value_and_counts_per_file() -> None:
    body = "Contact: maria.lopez@example.com, card 4111 1111 1111 1111, SSN 536-22-8171.\n\nVacation policy: 27 days."
    config = replace(CONFIG, pii_mode="redact", pii_entities=ENTITIES, pii_score_threshold=PIISettings().score_threshold)
    # Headings and titles travel with every chunk (stored, and indexed in front of its text).
    escalation = "# Escalations to jan.devries@example.org\n\nComplaints are answered within 5 days.\n"
    files = pa.Table.from_pylist(
        [file_row("hr/contact.txt", body.encode(), "", {}), file_row("hr/escalation.md", escalation.encode(), "", {})]
    )
    rows = ParseAndChunk(config)(files).to_pylist()
    assert rows and all(not r["error"] for r in rows)
    stored = json.dumps(rows)
    for value in ("maria.lopez@example.com", "4111 1111 1111 1111", "536-22-8171", "jan.devries@example.org"):
        assert value not in stored
    assert "27 days" in stored and "answered within 5 days" in stored
    per_file = {r["file"]: r["pii"] for r in rows}
    assert per_file["hr/contact.txt"] == json.dumps({"CREDIT_CARD": 1, "EMAIL_ADDRESS": 1, "US_SSN": 1})
    assert json.loads(per_file["hr/escalation.md"])["EMAIL_ADDRESS"] >= 1
    assert any("Escalations to <EMAIL_ADDRESS>" in (r["location"] or "") for r in rows if r["file"] == "hr/escalation.md")


def test_the_signature_names_the_configuration(redactor: PIIRedactor) -> None:
    threshold = PIISettings().score_threshold
    signature = redactor_signature("redact", ENTITIES, threshold, None)
    assert redactor.signature == signature == PIIRedactor("redact", ENTITIES, threshold).signature
    assert signature.startswith(f"pii/{RECOGNIZERS_REVISION} redact ")
    assert redactor_signature("redact", tuple(reversed(ENTITIES)), threshold, None) == signature  # order is irrelevant
    others = {
        redactor_signature("mask", ENTITIES, threshold, None),
        redactor_signature("redact", ENTITIES[:-1], threshold, None),
        redactor_signature("redact", ENTITIES, 0.5, None),
        redactor_signature("redact", ENTITIES, threshold, "en_core_web_lg"),
    }
    assert len(others) == 4 and signature not in others
    assert PIIRedactor("off", ENTITIES).signature == redactor_signature("off", (), 0.0, None) == "pii off"


# Floors measured on benchmarks/data/pii_labelled.jsonl at the default threshold (README: Security).
RECALL_FLOORS = {"CREDIT_CARD": 1.0, "IBAN_CODE": 1.0, "IP_ADDRESS": 1.0, "US_SSN": 1.0, "EMAIL_ADDRESS": 0.9, "PHONE_NUMBER": 0.85}


def test_precision_and_recall_per_type_on_the_labelled_set(redactor: PIIRedactor, labelled: list[dict]) -> None:
    from pii_eval import evaluate

    table = evaluate(redactor, labelled)
    assert table["ALL"]["labelled"] == 72
    for kind, floor in RECALL_FLOORS.items():
        assert table[kind]["recall"] >= floor, (kind, table[kind])
        assert table[kind]["precision"] == 1.0, (kind, table[kind])
    assert table["ALL"]["false_positives"] == 0
    real = evaluate(redactor, [item for item in labelled if item.get("source")])
    assert real["ALL"]["false_positives"] == 0 and real["ALL"]["recall"] >= 0.85, real["ALL"]


def test_a_fresh_worker_builds_the_default_redactor_without_torch_or_transformers() -> None:
    """A parse worker pays presidio's import once per process: without a spaCy model it must not
    drag in torch and transformers (7-11 s), and both still import afterwards in that process."""
    script = (
        "import sys\n"
        "from ingest_jobs.redaction import shared_redactor\n"
        "redactor = shared_redactor('redact', ('EMAIL_ADDRESS', 'CREDIT_CARD'), 0.4, None)\n"
        "text, counts = redactor.redact('Write to jane.doe@example.com, card 4111 1111 1111 1111.')\n"
        "loaded = sorted(name for name in ('torch', 'transformers') if name in sys.modules)\n"
        "import torch, transformers\n"
        "print(text, sorted(counts.items()), loaded, torch.tensor([1.0]).item())\n"
    )
    stdout = run_python(script)
    assert stdout.split("\n")[0] == ("Write to <EMAIL_ADDRESS>, card <CREDIT_CARD>. [('CREDIT_CARD', 1), ('EMAIL_ADDRESS', 1)] [] 1.0"), (
        stdout
    )
