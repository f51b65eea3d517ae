"""Chooses the semantic cache threshold by measurement: false hits on SQuAD, hits on rephrasings.

    python benchmarks/semantic_cache_threshold.py [--model auto] [--qa ../shared/data/qa/squad2_dev_cs224n]

A false hit serves another question's answer, which is worse than a miss. Two sets:
- SQuAD 2.0 dev (6,078 questions, many about one paragraph, and the unanswerable ones written to
  look like answerable ones). The questions are asked in file order against a cache holding every
  earlier question in the same scope; a hit on a question with different gold answers (an
  unanswerable question's answers differ from every other's) is a false hit.
- benchmarks/data/squad_rephrasings.jsonl: 60 rephrasings written for this benchmark of SQuAD
  questions. Each is asked against a cache holding all 6,078 questions; a hit is correct when the
  matched question has the same gold answers as the one rephrased.

Prints, per threshold, false hits and correct hits for cosine alone and for the service's rule
(cosine plus `same_content_words`), and recommends the lowest threshold with zero false hits on
both sets under the service's rule, plus a margin. Uses the service's query embedding
(embed_queries, so bge's query instruction applies), stored as float16 as the cache stores it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from rag_core.embedding import EmbeddingModel  # noqa: E402
from serve_app.cache import normalize_question, same_content_words  # noqa: E402

THRESHOLDS = [round(t, 3) for t in np.arange(0.70, 1.0001, 0.025)]


def answer_key(question: dict) -> frozenset[str]:
    if question["is_impossible"]:
        return frozenset({f"<no answer to {question['id']}>"})  # never equal to another question's
    return frozenset(re.sub(r"\W+", " ", a).strip().casefold() for a in question["answers"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qa", type=Path, default=REPO_ROOT.parent / "shared/data/qa/squad2_dev_cs224n")
    parser.add_argument("--rephrasings", type=Path, default=REPO_ROOT / "benchmarks/data/squad_rephrasings.jsonl")
    parser.add_argument("--model", default="auto", help="embedding model setting, as embedding_model")
    parser.add_argument("--margin", type=float, default=0.025, help="added to the lowest zero-false-hit threshold")
    parser.add_argument("--json", type=Path, help="write the table here too")
    args = parser.parse_args()

    questions = [json.loads(line) for line in (args.qa / "questions.jsonl").open()]
    by_id = {q["id"]: q for q in questions}
    rephrasings = [json.loads(line) for line in args.rephrasings.open()]
    model = EmbeddingModel.from_setting(args.model, device="cpu")
    started = time.perf_counter()
    vectors = model.embed_queries([q["question"] for q in questions]).astype(np.float16).astype(np.float32)
    rephrased = model.embed_queries([r["rephrasing"] for r in rephrasings]).astype(np.float16).astype(np.float32)
    print(
        f"model {model.spec.name}: embedded {len(questions) + len(rephrasings)} questions in {time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )

    answers = [answer_key(q) for q in questions]
    worst: list = [-1.0, "", ""]
    normalized = [normalize_question(q["question"]) for q in questions]

    # Replay: question i looks up questions 0..i-1 (an exact repeat is an exact hit, not semantic).
    # For each rule, the best-scoring eligible earlier question and whether its answer differs.
    similarities = vectors @ vectors.T
    best = {rule: (np.full(len(questions), -1.0), np.zeros(len(questions), dtype=bool)) for rule in ("cosine", "service")}
    for i in range(1, len(questions)):
        earlier = similarities[i, :i].copy()
        for j in np.flatnonzero(earlier > THRESHOLDS[0] - 0.05):
            if normalized[j] == normalized[i]:
                earlier[j] = -1.0
        for rule in best:
            if rule == "service":
                for j in np.flatnonzero(earlier >= THRESHOLDS[0]):
                    if not same_content_words(questions[i]["question"], questions[j]["question"]):
                        earlier[j] = -1.0
            j = int(np.argmax(earlier))
            best[rule][0][i], best[rule][1][i] = earlier[j], answers[j].isdisjoint(answers[i])
            if rule == "cosine" and earlier[j] > worst[0] and best[rule][1][i]:
                worst[:] = [float(earlier[j]), questions[i]["question"], questions[j]["question"]]

    # Rephrasings against the full cache.
    rephrase_best = {}
    for rule in best:
        scores, correct = np.full(len(rephrasings), -1.0), np.zeros(len(rephrasings), dtype=bool)
        for k, item in enumerate(rephrasings):
            row = rephrased[k] @ vectors.T
            if rule == "service":
                for j in np.flatnonzero(row >= THRESHOLDS[0]):
                    if not same_content_words(item["rephrasing"], questions[j]["question"]):
                        row[j] = -1.0
            j = int(np.argmax(row))
            scores[k], correct[k] = row[j], not answers[j].isdisjoint(answer_key(by_id[item["id"]]))
        rephrase_best[rule] = (scores, correct)

    rows = []
    for threshold in THRESHOLDS:
        row: dict = {"threshold": threshold, "squad_queries": len(questions), "rephrasings": len(rephrasings)}
        for rule in best:
            hits = best[rule][0] >= threshold
            r_hits = rephrase_best[rule][0] >= threshold
            row[f"{rule}_squad_false_hits"] = int((hits & best[rule][1]).sum())
            row[f"{rule}_rephrasing_correct_hits"] = int((r_hits & rephrase_best[rule][1]).sum())
            row[f"{rule}_rephrasing_false_hits"] = int((r_hits & ~rephrase_best[rule][1]).sum())
        rows.append(row)
    safe = [r["threshold"] for r in rows if r["service_squad_false_hits"] == 0 and r["service_rephrasing_false_hits"] == 0]
    lowest_safe = min(safe) if safe else None
    recommended = min(1.0, round(lowest_safe + args.margin, 3)) if lowest_safe is not None else None

    n, m = len(questions), len(rephrasings)
    print(
        "| threshold | cosine only: SQuAD false hits | cosine only: rephrasings hit "
        "(false) | service rule: SQuAD false hits | service rule: rephrasings hit (false) |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['threshold']:.3f} "
            f"| {r['cosine_squad_false_hits']} ({r['cosine_squad_false_hits'] / n:.2%}) "
            f"| {r['cosine_rephrasing_correct_hits']}/{m} ({r['cosine_rephrasing_false_hits']}) "
            f"| {r['service_squad_false_hits']} ({r['service_squad_false_hits'] / n:.2%}) "
            f"| {r['service_rephrasing_correct_hits']}/{m} ({r['service_rephrasing_false_hits']}) |"
        )
    print(f"\nhighest cosine of a different-answer SQuAD pair: {worst[0]:.4f} ({worst[1]!r} / {worst[2]!r})")
    print(f"service rule: lowest threshold with zero false hits {lowest_safe}; recommended (+{args.margin}): {recommended}")
    if args.json:
        args.json.write_text(
            json.dumps({"model": model.spec.name, "rows": rows, "lowest_safe": lowest_safe, "recommended": recommended}, indent=1)
        )


if __name__ == "__main__":
    main()
