"""The reranker's training data (benchmarks/train_reranker.py) and the ablation's third corpus
(benchmarks/retrieval_ablation.py reading SQuAD), on real SciFact and SQuAD files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from benchmarks import retrieval_ablation
from benchmarks.beir_eval import load_qrels
from benchmarks.train_reranker import ShippedRetrieval, training_groups
from tests.conftest import SHARED_DATA

SCIFACT = SHARED_DATA / "beir" / "scifact"
SQUAD = SHARED_DATA / "qa" / "squad2_dev_cs224n"


@pytest.fixture(scope="module")
def small_scifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SciFact's first 12 training queries, their judged abstracts and the corpus's first 150."""
    qrels = load_qrels(SCIFACT / "qrels" / "train.tsv")
    queries = dict(list(qrels.items())[:12])
    judged = {doc for docs in queries.values() for doc in docs}
    folder = tmp_path_factory.mktemp("scifact-small")
    (folder / "qrels").mkdir()
    with (folder / "qrels" / "train.tsv").open("w") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        for qid, docs in queries.items():
            handle.writelines(f"{qid}\t{doc}\t1\n" for doc in docs)
    kept = []
    with (SCIFACT / "corpus.jsonl").open() as handle:
        for line in handle:
            doc = json.loads(line)
            if doc["_id"] in judged or len(kept) < 150:
                kept.append(line)
    (folder / "corpus.jsonl").write_text("".join(kept))
    with (SCIFACT / "queries.jsonl").open() as source, (folder / "queries.jsonl").open("w") as target:
        target.writelines(line for line in source if json.loads(line)["_id"] in queries)
    return folder


def test_groups_pair_a_judged_chunk_with_retrieved_chunks_of_unjudged_documents(
    small_scifact: Path, model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retrieval_ablation, "CACHE", tmp_path)
    retrieval = ShippedRetrieval.build(small_scifact, model)
    qrels, queries = retrieval_ablation.load_judged_queries(small_scifact, "train")
    vectors = dict(zip(queries, model.embed_queries(list(queries.values()))))

    groups = training_groups(retrieval, queries, qrels, vectors, negatives=5, positives_per_query=2, rng=random.Random(0))

    by_text = {text: qid for qid, text in queries.items()}
    assert len(groups) >= len(queries)  # every query has a judged abstract in this corpus
    doc_of = retrieval.corpus.chunk_doc
    for query, positive, negatives in groups:
        judged = qrels[by_text[query]]
        assert doc_of[positive] in judged
        assert len(negatives) == 5
        assert all(doc_of[n] not in judged for n in negatives)
        top = retrieval.top_chunks(query, vectors[by_text[query]])
        assert set(negatives) <= set(top)  # hard negatives: what retrieval itself returned
    per_query = [sum(1 for query, _, _ in groups if query == text) for text in queries.values()]
    assert max(per_query) <= 2


def test_squad_is_read_as_one_judged_paragraph_per_answerable_question() -> None:
    qrels, queries = retrieval_ablation.load_judged_queries(SQUAD, "test")
    lines = [json.loads(line) for line in (SQUAD / "questions.jsonl").read_text().splitlines()]
    answerable = [q for q in lines if not q["is_impossible"]]
    assert len(queries) == len(answerable) < len(lines)
    first = answerable[0]
    assert queries[first["id"]] == first["question"]
    assert qrels[first["id"]] == {first["context_id"]: 1}
