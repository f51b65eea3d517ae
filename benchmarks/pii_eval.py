"""Precision and recall of the ingest PII redaction on a labelled set built for this project.

    python benchmarks/pii_eval.py [--data benchmarks/data/pii_labelled.jsonl]

`benchmarks/data/pii_labelled.jsonl`: 50 short texts, with 35 labelled values (e-mails, phone
numbers, Luhn-valid test card numbers, US SSNs, valid IBANs, IPv4/IPv6). There are 20 texts with
decoys that are not PII: a Luhn-invalid card-like number, an IBAN with a wrong check digit, dates,
versions, prices, an ISBN, ports and coordinates. All values are fictitious or documentation
values.

A labelled value counts as found when a redacted span overlaps it. "Typed" also requires the right
entity type. Every redacted span that overlaps no label is a false positive. Printed per entity type
and overall, for several Presidio score thresholds; the default is the one configured.
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


def evaluate(redactor: PIIRedactor, items: list[dict]) -> dict:
    found, typed, labelled, false_positive = Counter(), Counter(), Counter(), Counter()
    for item in items:
        text = item["text"]
        findings = redactor.analyzer.analyze(text=text, language="en", entities=redactor.entities, score_threshold=redactor.score_threshold)
        spans = [(f.start, f.end, f.entity_type) for f in findings]
        gold = []
        for label in item["pii"]:
            start = text.index(label["value"])
            gold.append((start, start + len(label["value"]), label["type"]))
            labelled[label["type"]] += 1
        for start, end, kind in gold:
            hits = [s for s in spans if s[0] < end and start < s[1]]
            found[kind] += bool(hits)
            typed[kind] += any(s[2] == kind for s in hits)
        for start, end, kind in spans:
            if not any(start < g_end and g_start < end for g_start, g_end, _ in gold):
                false_positive[kind] += 1
    kinds = sorted(set(labelled) | set(false_positive))
    table = {}
    for kind in kinds + ["ALL"]:
        n = sum(labelled.values()) if kind == "ALL" else labelled[kind]
        tp = sum(found.values()) if kind == "ALL" else found[kind]
        tp_typed = sum(typed.values()) if kind == "ALL" else typed[kind]
        fp = sum(false_positive.values()) if kind == "ALL" else false_positive[kind]
        predicted_kind = tp_typed + fp
        table[kind] = {
            "labelled": n, "found": tp, "found_typed": tp_typed, "false_positives": fp,
            "recall": round(tp / n, 3) if n else None,
            "precision": round(tp_typed / predicted_kind, 3) if kind != "ALL" and predicted_kind else (round(tp / (tp + fp), 3) if tp + fp else None),
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "benchmarks/data/pii_labelled.jsonl")
    parser.add_argument("--thresholds", default="0.3,0.4,0.5,0.6")
    args = parser.parse_args()
    items = [json.loads(line) for line in args.data.open()]
    defaults = PIISettings()
    for threshold in [float(t) for t in args.thresholds.split(",")]:
        redactor = PIIRedactor("redact", defaults.entities, threshold)
        table = evaluate(redactor, items)
        marker = " (default)" if threshold == defaults.score_threshold else ""
        print(f"\nscore_threshold {threshold}{marker}; not detectable here: {redactor.unsupported}")
        print("| type | labelled | found (any type) | found (right type) | false positives | recall | precision |")
        print("|---|---|---|---|---|---|---|")
        for kind, row in table.items():
            print(f"| {kind} | {row['labelled']} | {row['found']} | {row['found_typed']} | {row['false_positives']} | {row['recall']} | {row['precision']} |")


if __name__ == "__main__":
    main()
