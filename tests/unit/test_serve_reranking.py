"""Reranking: the documented fallback scorer, and the real CrossEncoder path (the packaged MiniLM
weights with a seeded, randomly initialised one-label head: real model code, reproducible scores)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rag_core.embedding import packaged_minilm_path
from rag_core.index_reader import RetrievedChunk
from serve_app.reranking import FALLBACK_SCORER, Reranker
from tests.fresh_python import run_python

QUERY = "How many vacation days do employees get?"
TEXTS = [
    "Employees receive 25 vacation days per year.",
    "Passwords must be at least 14 characters long.",
    "The office kitchen is cleaned every Friday afternoon.",
    "Vacation requests must be approved by your manager.",
    "Bicycle parking is available in the basement garage.",
    "Travel expenses are reimbursed within 30 days.",
]


def chunks_for(texts: list[str], prefix: str = "doc") -> list[RetrievedChunk]:
    """Retrieval order = list order, with decreasing retrieval scores."""
    return [
        RetrievedChunk(f"{prefix}.md#{i}", f"{prefix}.md", i + 1, text, round(1.0 - i / 10, 2), {"department": f"d{i}"})
        for i, text in enumerate(texts)
    ]


def seeded_cross_encoder(seed: int):
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(seed)  # the classification head is newly initialised from the RNG
    return CrossEncoder(packaged_minilm_path(), num_labels=1, device="cpu")


@pytest.fixture(scope="module")
def cross_encoder():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        return seeded_cross_encoder(0)


@pytest.fixture(scope="module")
def reranker(cross_encoder) -> Reranker:
    return Reranker("packaged-minilm-seeded-head", cross_encoder=cross_encoder)


def predict(cross_encoder, pairs: list[tuple[str, str]]) -> np.ndarray:
    return np.asarray(cross_encoder.predict(pairs, show_progress_bar=False), dtype=np.float64)


# -- fallback -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fallback() -> Reranker:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        return Reranker("no-such-org/no-such-cross-encoder-xyz")


def test_an_unavailable_model_falls_back_to_retrieval_order(fallback: Reranker) -> None:
    assert fallback.is_fallback is True
    assert fallback.name == f"fallback:{FALLBACK_SCORER}" == "fallback:retrieval-order"
    assert "no-such-org/no-such-cross-encoder-xyz" in fallback.fallback_reason
    assert fallback.model_name == "no-such-org/no-such-cross-encoder-xyz"

    chunks = chunks_for(TEXTS)
    shuffled = [chunks[i] for i in (3, 0, 5, 1, 4, 2)]
    assert fallback.rerank(QUERY, shuffled, top_k=4) == shuffled[:4]  # order and scores untouched
    assert fallback.rerank(QUERY, shuffled, top_k=10) == shuffled
    assert fallback.rerank(QUERY, [], top_k=3) == []


def test_a_model_not_on_the_machine_falls_back_without_importing_torch() -> None:
    # A replica that cannot load its cross-encoder starts in a second, not after a 4-12 s torch import.
    script = (
        "import json, sys\n"
        "from serve_app.reranking import Reranker\n"
        "reranker = Reranker('cross-encoder/ms-marco-MiniLM-L-6-v2', threads=2)\n"
        "print(json.dumps({**reranker.status(), 'torch': 'torch' in sys.modules}))\n"
    )
    assert json.loads(run_python(script).splitlines()[-1]) == {
        "name": "fallback:retrieval-order",
        "fallback": True,
        "reason": "cannot load 'cross-encoder/ms-marco-MiniLM-L-6-v2': NotFound",
        "torch": False,
    }


def test_a_cross_encoder_folder_is_loaded_by_name(cross_encoder, tmp_path: Path) -> None:
    cross_encoder.save(str(tmp_path / "seeded"))
    loaded = Reranker(str(tmp_path / "seeded"), threads=1)
    assert loaded.is_fallback is False and loaded.fallback_reason is None
    ranked = loaded.rerank(QUERY, chunks_for(TEXTS), top_k=6)
    expected = Reranker("in memory", cross_encoder=cross_encoder).rerank(QUERY, chunks_for(TEXTS), top_k=6)
    assert [c.chunk_id for c in ranked] == [c.chunk_id for c in expected]
    assert [c.score for c in ranked] == pytest.approx([c.score for c in expected], abs=1e-5)


def test_fallback_rerank_many_keeps_each_request_apart(fallback: Reranker) -> None:
    first, second = chunks_for(TEXTS[:3], "a"), chunks_for(TEXTS[3:], "b")
    assert fallback.rerank_many([("q1", first, 2), ("q2", second, 1), ("q3", [], 5)]) == [first[:2], second[:1], []]


# -- the CrossEncoder path --------------------------------------------------------------------------
def test_a_loaded_model_is_not_a_fallback(reranker: Reranker) -> None:
    assert reranker.is_fallback is False
    assert reranker.name == "packaged-minilm-seeded-head"
    assert reranker.fallback_reason is None


def test_rerank_orders_by_the_cross_encoder_scores(reranker: Reranker, cross_encoder) -> None:
    scores = predict(cross_encoder, [(QUERY, text) for text in TEXTS])
    assert len(set(scores.round(7))) == len(TEXTS)  # distinct, so the order is well defined
    # Hand the reranker the candidates in the order it must reverse (worst first).
    worst_first = chunks_for([TEXTS[i] for i in np.argsort(scores)])
    expected = sorted(zip(scores, TEXTS), reverse=True)

    reranked = reranker.rerank(QUERY, worst_first, top_k=4)

    assert [c.text for c in reranked] == [text for _, text in expected[:4]]
    assert [c.score for c in reranked] == pytest.approx([score for score, _ in expected[:4]], abs=1e-6)
    by_text = {c.text: c for c in worst_first}
    for chunk in reranked:  # only the score changes
        original = by_text[chunk.text]
        assert (chunk.chunk_id, chunk.file, chunk.page, chunk.metadata) == (
            original.chunk_id,
            original.file,
            original.page,
            original.metadata,
        )
    assert len(reranker.rerank(QUERY, worst_first, top_k=100)) == len(TEXTS)


def test_rerank_many_splits_the_scores_back_per_request(reranker: Reranker, cross_encoder) -> None:
    requests = [
        ("How many vacation days do employees get?", chunks_for(TEXTS[:4], "a"), 2),
        ("", [], 3),
        ("Where can I park my bicycle?", chunks_for(TEXTS[2:], "b"), 3),
        ("password rules", chunks_for(TEXTS[1:2], "c"), 5),
    ]
    flat = [(query, chunk.text) for query, chunks, _ in requests for chunk in chunks]
    scores = predict(cross_encoder, flat)

    results = reranker.rerank_many(requests)

    assert len(results) == len(requests)
    offset = 0
    for (query, chunks, top_k), result in zip(requests, results):
        own = scores[offset : offset + len(chunks)]
        offset += len(chunks)
        expected = sorted(zip(own, (c.chunk_id for c in chunks)), reverse=True)[:top_k]
        assert [c.chunk_id for c in result] == [cid for _, cid in expected]
        assert [c.score for c in result] == pytest.approx([s for s, _ in expected], abs=1e-6)
        assert {c.chunk_id for c in result} <= {c.chunk_id for c in chunks}  # nothing leaks across requests
        # Scored in a batch or alone, a request gets the same scores.
        alone = reranker.rerank(query, chunks, top_k) if chunks else []
        assert [c.chunk_id for c in alone] == [c.chunk_id for c in result]
        assert [c.score for c in alone] == pytest.approx([c.score for c in result], abs=1e-5)
    assert results[1] == []


def test_the_same_seed_gives_the_same_scores_and_another_seed_does_not(cross_encoder) -> None:
    pairs = [(QUERY, text) for text in TEXTS]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        again, other = seeded_cross_encoder(0), seeded_cross_encoder(1)
    reference = predict(cross_encoder, pairs)
    assert np.array_equal(predict(again, pairs), reference)
    assert not np.allclose(predict(other, pairs), reference)
    ranked_again = Reranker("again", cross_encoder=again).rerank(QUERY, chunks_for(TEXTS), top_k=6)
    ranked = Reranker("first", cross_encoder=cross_encoder).rerank(QUERY, chunks_for(TEXTS), top_k=6)
    assert [(c.chunk_id, c.score) for c in ranked_again] == [(c.chunk_id, c.score) for c in ranked]
