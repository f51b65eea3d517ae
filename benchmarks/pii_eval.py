"""Precision and recall of the ingest PII redaction on a labelled set.

    python benchmarks/pii_eval.py [--data benchmarks/data/pii_labelled.jsonl] [--thresholds 0.1,0.3,0.4,0.5,0.6] [--misses]

`benchmarks/data/pii_labelled.jsonl`, one JSON object a line: `text`, `pii` (a list of
`{"type", "value"}`, each value a substring of the text) and, for lines copied from real documents,
`source` (`<file in ../shared/data/pdfs> p<page>`) and `note`.

- Written for this project (no `source`): 50 short texts with 35 labelled values (e-mails,
  phone numbers, Luhn-valid test card numbers, US SSNs, valid IBANs, IPv4/IPv6) and 20 decoys
  (a Luhn-invalid card number, an IBAN with wrong check digits, dates, versions, prices, an ISBN,
  ports, coordinates), plus further sentences for context-dependent formats and their decoys.
- Copied from the parsed PDFs (`source` set): table rows, dates and section numbers that Presidio's
  stock recognizers replaced (hard negatives), and real phone numbers and e-mail addresses printed
  in those documents (positives, including ones the redactor misses).

A labelled value counts as found when a redacted span overlaps it. "Typed" also requires the right
entity type. Every redacted span that overlaps no label is a false positive. The spans are the
redactor's `findings`, i.e. exactly what `redact` replaces. Printed per entity type and overall,
for several Presidio score thresholds, for the whole set and for the real-document lines alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ingest_jobs.redaction import PIIRedactor  # noqa: E402
from rag_core.settings import PIISettings  # noqa: E402

DEFAULT_DATA = REPO_ROOT / "benchmarks/data/pii_labelled.jsonl"


def load(path: Path = DEFAULT_DATA) -> list[dict]:
    return [json.loads(line) for line in path.open() if line.strip()]


def evaluate(redactor: PIIRedactor, items: list[dict], misses: list | None = None) -> dict:
    """Per entity type and "ALL": labelled, found, found_typed, false_positives, recall, precision.
    `misses`, when given, collects (kind, text, span) for every missed label and false positive."""
    found, typed, labelled, false_positive = Counter(), Counter(), Counter(), Counter()
    for item in items:
        text = item["text"]
        spans = [(f.start, f.end, f.entity_type) for f in redactor.findings(text)]
        gold = []
        for label in item["pii"]:
            start = text.index(label["value"])
            gold.append((start, start + len(label["value"]), label["type"]))
            labelled[label["type"]] += 1
        for start, end, kind in gold:
            hits = [s for s in spans if s[0] < end and start < s[1]]
            found[kind] += bool(hits)
            typed[kind] += any(s[2] == kind for s in hits)
            if misses is not None and not any(s[2] == kind for s in hits):
                misses.append(("missed " + kind, text, text[start:end]))
        for start, end, kind in spans:
            if not any(start < g_end and g_start < end for g_start, g_end, _ in gold):
                false_positive[kind] += 1
                if misses is not None:
                    misses.append(("false positive " + kind, text, text[start:end]))
    kinds = sorted(set(labelled) | set(false_positive))
    table = {}
    for kind in kinds + ["ALL"]:
        n = sum(labelled.values()) if kind == "ALL" else labelled[kind]
        tp = sum(found.values()) if kind == "ALL" else found[kind]
        tp_typed = sum(typed.values()) if kind == "ALL" else typed[kind]
        fp = sum(false_positive.values()) if kind == "ALL" else false_positive[kind]
        predicted_kind = tp_typed + fp
        table[kind] = {
            "labelled": n,
            "found": tp,
            "found_typed": tp_typed,
            "false_positives": fp,
            "recall": round(tp / n, 3) if n else None,
            "precision": round(tp_typed / predicted_kind, 3)
            if kind != "ALL" and predicted_kind
            else (round(tp / (tp + fp), 3) if tp + fp else None),
        }
    return table


def print_table(table: dict) -> None:
    print("| type | labelled | found (any type) | found (right type) | false positives | recall | precision |")
    print("|---|---|---|---|---|---|---|")
    for kind, row in table.items():
        print(
            f"| {kind} | {row['labelled']} | {row['found']} | {row['found_typed']} "
            f"| {row['false_positives']} | {row['recall']} | {row['precision']} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--thresholds", default="0.1,0.3,0.4,0.5,0.6")
    parser.add_argument("--misses", action="store_true", help="list missed labels and false positives at the default threshold")
    args = parser.parse_args()
    items = load(args.data)
    real = [item for item in items if item.get("source")]
    defaults = PIISettings()
    print(
        f"{len(items)} texts ({len(real)} copied from real PDFs), {sum(len(i['pii']) for i in items)} labelled values, "
        f"{sum(not i['pii'] for i in items)} texts without PII"
    )
    for threshold in [float(t) for t in args.thresholds.split(",")]:
        redactor = PIIRedactor("redact", defaults.entities, threshold, defaults.spacy_model)
        default = threshold == defaults.score_threshold
        marker = " (default)" if default else ""
        misses: list = []
        print(f"\nscore_threshold {threshold}{marker}; redactor {redactor.signature}; not detectable here: {redactor.unsupported}")
        print_table(evaluate(redactor, items, misses))
        print(f"\nreal-document lines only ({len(real)}):")
        print_table(evaluate(redactor, real))
        if args.misses and default:
            for what, text, value in misses:
                print(f"  {what}: {value!r} in {text[:120]!r}")


if __name__ == "__main__":
    main()
