"""Hybrid retrieval: RRF and MMR math, BM25 over chunk texts, and HybridRetriever over real small
index versions (embedded ChromaDB + Parquet) embedded with the real packaged MiniLM model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from index_builder import build_version

from rag_core.embedding import EmbeddingModel
from rag_core.index_store import VersionedIndex
from rag_core.settings import RetrievalSettings
from serve_app.filters import normalize_filter
from serve_app.retrieval import (
    HybridRetriever,
    IndexUnavailable,
    LexicalIndex,
    ModelMismatch,
    convex_fusion,
    maximal_marginal_relevance,
    reciprocal_rank_fusion,
)
from serve_app.retrieval_request import RetrievalRequest

# (file, page, text, sidecar metadata); "department" is missing on the office/* chunks.
CORPUS = [
    (
        "handbook/vacation-policy.md",
        1,
        "Employees receive 25 vacation days per year. Unused vacation days can be carried over until March 31 of the following year.",
        {"department": "hr"},
    ),
    (
        "handbook/vacation-policy.md",
        2,
        "Vacation requests must be approved by your manager at least two weeks in advance.",
        {"department": "hr"},
    ),
    (
        "handbook/vacation-summary.md",
        1,
        "Every employee receives 25 vacation days per year, and unused days carry over until March 31.",
        {"department": "hr"},
    ),
    ("it/security-faq.txt", 1, "Passwords must be at least 14 characters long and are rotated every 90 days.", {"department": "it"}),
    ("it/security-faq.txt", 2, "Report phishing emails to the security team with the Report button in Outlook.", {"department": "it"}),
    (
        "finance/expenses.pdf",
        3,
        "Travel expenses are reimbursed within 30 days when receipts are submitted through the finance portal.",
        {"department": "finance"},
    ),
    ("office/kitchen.txt", 1, "The office kitchen is cleaned every Friday afternoon; please label your food in the refrigerator.", {}),
    ("office/parking.md", 1, "Bicycle parking is available in the basement garage next to the elevators.", {}),
    ("it/laptops.md", 1, "Lost or stolen laptops must be reported to the IT helpdesk within 24 hours.", {"department": "it"}),
]
# Version 2 replaces everything: none of its chunk ids exist in version 1.
CORPUS_V2 = [
    ("handbook/holidays.md", 1, "The office is closed on New Year's Day and on Christmas Day.", {"department": "hr"}),
    ("it/vpn.md", 1, "Connect to the VPN before opening the internal wiki from home.", {"department": "it"}),
    ("office/coffee.txt", 1, "The coffee machine on the second floor is descaled every Monday.", {}),
]
CLEAR_QUERIES = [
    ("How long must passwords be?", "it/security-faq.txt#0"),
    ("When is the office kitchen cleaned?", "office/kitchen.txt#0"),
    ("Where can I park my bicycle?", "office/parking.md#0"),
    ("How are travel expenses reimbursed?", "finance/expenses.pdf#0"),
]


@pytest.fixture(scope="module")
def model() -> EmbeddingModel:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        return EmbeddingModel.from_setting("auto", device="cpu")


@pytest.fixture(scope="module")
def served(model: EmbeddingModel, tmp_path_factory: pytest.TempPathFactory) -> HybridRetriever:
    """One version of CORPUS, loaded by a retriever with the default settings."""
    index = VersionedIndex(tmp_path_factory.mktemp("retrieval") / "index")
    build_version(index, model, CORPUS)
    retriever = HybridRetriever(index, RetrievalSettings())
    assert retriever.maybe_reload() is True
    return retriever


_QUERY_VECTORS: dict[str, np.ndarray] = {}


@pytest.fixture(scope="module")
def served_rrf(served: HybridRetriever) -> HybridRetriever:
    """The same version, fused by weighted reciprocal rank fusion instead of the default."""
    retriever = HybridRetriever(served.index, RetrievalSettings(fusion="rrf", dense_weight=1.0, lexical_weight=0.5, short_query_words=0))
    assert retriever.maybe_reload() is True
    return retriever


def query_vector(model: EmbeddingModel, text: str) -> np.ndarray:
    if text not in _QUERY_VECTORS:  # the same model all module long: embed each query once
        _QUERY_VECTORS[text] = model.embed_queries([text])[0]
    return _QUERY_VECTORS[text]


# -- reciprocal rank fusion ---------------------------------------------------------------------
def test_rrf_adds_weight_over_k_plus_rank() -> None:
    fused = reciprocal_rank_fusion([(["a", "b", "c"], 1.0), (["b", "d"], 0.5)], k=60)
    expected = {"a": 1 / 61, "b": 1 / 62 + 0.5 / 61, "c": 1 / 63, "d": 0.5 / 62}
    assert [cid for cid, _ in fused] == ["b", "a", "c", "d"]
    assert dict(fused) == pytest.approx(expected)


def test_rrf_k_changes_how_much_rank_matters() -> None:
    assert dict(reciprocal_rank_fusion([(["a", "b"], 1.0)], k=1)) == pytest.approx({"a": 1 / 2, "b": 1 / 3})
    # x is first in one list; y is fourth in both. A small k rewards the single first place,
    # a large k flattens ranks so that agreement wins.
    rankings = [(["x", "p", "q", "y"], 1.0), (["r", "s", "t", "y"], 1.0)]
    small, large = dict(reciprocal_rank_fusion(rankings, k=1)), dict(reciprocal_rank_fusion(rankings, k=60))
    assert small["x"] == pytest.approx(1 / 2) and small["y"] == pytest.approx(2 / 5)
    assert small["x"] > small["y"]
    assert large["y"] == pytest.approx(2 / 64) and large["y"] > large["x"] == pytest.approx(1 / 61)


def test_rrf_ties_break_by_id_and_zero_or_negative_weights_are_ignored() -> None:
    assert [cid for cid, _ in reciprocal_rank_fusion([(["y", "x"], 1.0), (["x", "y"], 1.0)])] == ["x", "y"]
    assert [cid for cid, _ in reciprocal_rank_fusion([(["x", "y"], 1.0), (["y", "x"], 1.0)])] == ["x", "y"]
    fused = reciprocal_rank_fusion([(["a", "b"], 0.0), (["c"], 1.0), (["d"], -1.0)], k=60)
    assert fused == [("c", pytest.approx(1 / 61))]
    assert reciprocal_rank_fusion([]) == []


def test_rrf_weights_decide_between_disagreeing_lists() -> None:
    dense, lexical = ["d1", "l1"], ["l1", "d1"]
    assert reciprocal_rank_fusion([(dense, 2.0), (lexical, 1.0)])[0][0] == "d1"
    assert reciprocal_rank_fusion([(dense, 1.0), (lexical, 2.0)])[0][0] == "l1"


# -- convex fusion (min-max normalised, weighted sum) ----------------------------------------------
def test_convex_fusion_normalises_each_list_and_weights_them() -> None:
    dense = [("a", 0.9), ("b", 0.5), ("c", 0.1)]
    lexical = [("b", 10.0), ("d", 2.0)]
    fused = convex_fusion([(dense, 0.6), (lexical, 0.4)])
    # dense -> a 1, b 0.5, c 0; lexical -> b 1, d 0; an id missing from a list gets 0 there.
    assert [cid for cid, _ in fused] == ["b", "a", "c", "d"]
    assert dict(fused) == pytest.approx({"b": 0.6 * 0.5 + 0.4, "a": 0.6, "c": 0.0, "d": 0.0})


def test_convex_fusion_single_scores_empty_lists_and_zero_weights() -> None:
    assert convex_fusion([([("only", 0.3)], 0.6)]) == [("only", pytest.approx(0.6))]  # no span: counts as 1
    assert convex_fusion([([], 0.6), ([("x", 2.0), ("y", 1.0)], 0.0)]) == []
    assert [cid for cid, _ in convex_fusion([([("a", 1.0), ("b", 0.0)], 1.0), ([("b", 1.0), ("a", 0.0)], 1.0)])] == ["a", "b"]


# -- maximal marginal relevance -----------------------------------------------------------------
def unit(*weights: float) -> np.ndarray:
    vector = np.zeros(4, dtype=np.float32)
    vector[: len(weights)] = weights
    return vector / np.linalg.norm(vector)


def test_mmr_takes_the_most_relevant_first_then_avoids_its_near_duplicate() -> None:
    query = unit(1, 0, 0, 0.3)
    best, near_duplicate, different = unit(1), unit(1, 0.05), unit(0, 0, 0, 1)
    candidates = np.stack([near_duplicate, different, best])  # order of input must not matter
    assert (candidates @ query)[0] > (candidates @ query)[1]  # the duplicate is more relevant than `different`

    assert maximal_marginal_relevance(query, candidates, k=2, lambda_=0.5) == [2, 1]
    # lambda 1 is pure relevance: the near-duplicate comes second.
    assert maximal_marginal_relevance(query, candidates, k=3, lambda_=1.0) == [2, 0, 1]


def test_mmr_returns_at_most_k_distinct_indices() -> None:
    rng = np.random.default_rng(0)
    candidates = rng.normal(size=(12, 4)).astype(np.float32)
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    chosen = maximal_marginal_relevance(unit(1, 1), candidates, k=5, lambda_=0.3)
    assert len(chosen) == len(set(chosen)) == 5
    assert len(maximal_marginal_relevance(unit(1), candidates[:3], k=10, lambda_=0.5)) == 3
    assert maximal_marginal_relevance(unit(1), np.zeros((0, 4), dtype=np.float32), k=3, lambda_=0.5) == []


# -- BM25 ---------------------------------------------------------------------------------------
TEXTS = [
    "Quarterly revenue grew by ten percent in the third quarter.",
    "The dog runs in the park every morning before work.",
    "Cats sleep most of the day and hunt at night.",
    "The park is closed for maintenance on Mondays.",
]


@pytest.fixture(scope="module")
def lexical() -> LexicalIndex:
    return LexicalIndex(TEXTS)


def test_bm25_ranks_the_text_with_the_query_terms_first(lexical: LexicalIndex) -> None:
    hits = lexical.top("dog park morning", k=4)
    assert hits[0][0] == 1
    assert {i for i, _ in hits} == {1, 3}  # only texts sharing a term score above zero
    assert hits[0][1] > hits[1][1] > 0
    assert lexical.top("revenue", k=4) == [(0, pytest.approx(lexical.scores("revenue")[0]))]


def test_bm25_stems_so_running_matches_runs(lexical: LexicalIndex) -> None:
    assert [i for i, _ in lexical.top("running", k=4)] == [1]
    assert [i for i, _ in lexical.top("CATS sleeping", k=4)] == [2]
    unstemmed = LexicalIndex(TEXTS, stemmer_language=None)
    assert unstemmed.top("running", k=4) == []


@pytest.mark.parametrize("query", ["", "   ", "the of and", "is it the", "zebra xylophone"])
def test_bm25_without_a_usable_term_returns_nothing(lexical: LexicalIndex, query: str) -> None:
    assert lexical.top(query, k=4) == []


def test_bm25_mask_excludes_texts_and_k_limits(lexical: LexicalIndex) -> None:
    assert [i for i, _ in lexical.top("park", k=4)] == [3, 1]  # the shorter text first
    masked = lexical.top("park", k=4, mask=np.array([True, False, True, True]))
    assert [i for i, _ in masked] == [3]
    assert lexical.top("park", k=4, mask=np.zeros(4, dtype=bool)) == []
    assert len(lexical.top("park", k=1)) == 1
    assert LexicalIndex([]).top("park", k=3) == []


# -- HybridRetriever on a real index --------------------------------------------------------------
@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
@pytest.mark.parametrize(("query", "expected"), CLEAR_QUERIES, ids=[e for _, e in CLEAR_QUERIES])
def test_each_mode_puts_the_answering_chunk_first(
    served: HybridRetriever, model: EmbeddingModel, query: str, expected: str, mode: str
) -> None:
    chunks, info = served.retrieve(
        RetrievalRequest.resolve(served.settings, query=query, vector=query_vector(model, query), top_k=3, mode=mode)
    )
    assert chunks[0].chunk_id == expected
    assert info.version == "v000001"
    scores = [c.score for c in chunks]
    assert scores == sorted(scores, reverse=True)  # best first
    file, page, text, _ = CORPUS[[f"{f}#0" for f, *_ in CORPUS].index(expected)]
    assert (chunks[0].file, chunks[0].page, chunks[0].text) == (file, page, text)


def test_dense_scores_are_cosine_similarities(served: HybridRetriever, model: EmbeddingModel) -> None:
    query = "How long must passwords be?"
    vector = query_vector(model, query)
    chunks, _ = served.retrieve(RetrievalRequest.resolve(served.settings, query=query, vector=vector, top_k=len(CORPUS), mode="dense"))
    documents = dict(zip((c.chunk_id for c in chunks), model.embed_documents([c.text for c in chunks])))
    assert len(chunks) == len(CORPUS)
    for chunk in chunks:
        assert chunk.score == pytest.approx(float(documents[chunk.chunk_id] @ vector), abs=1e-4)


@pytest.mark.parametrize(("query", "expected"), CLEAR_QUERIES, ids=[e for _, e in CLEAR_QUERIES])
def test_hybrid_with_rrf_puts_the_answering_chunk_first(
    served_rrf: HybridRetriever, model: EmbeddingModel, query: str, expected: str
) -> None:
    chunks, _ = served_rrf.retrieve(
        RetrievalRequest.resolve(served_rrf.settings, query=query, vector=query_vector(model, query), top_k=3, mode="hybrid")
    )
    assert chunks[0].chunk_id == expected
    assert [c.score for c in chunks] == sorted((c.score for c in chunks), reverse=True)


def test_hybrid_scores_follow_the_configured_fusion(served: HybridRetriever, served_rrf: HybridRetriever, model: EmbeddingModel) -> None:
    query = "How long must passwords be?"
    vector = query_vector(model, query)
    dense, _ = served.retrieve(RetrievalRequest.resolve(served.settings, query=query, vector=vector, top_k=1, mode="dense"))
    lexical, _ = served.retrieve(RetrievalRequest.resolve(served.settings, query=query, top_k=1, mode="lexical"))
    assert dense[0].chunk_id == lexical[0].chunk_id == "it/security-faq.txt#0"  # first in both lists
    settings = RetrievalSettings(fusion="convex", dense_weight=0.7, lexical_weight=0.2, short_query_dense_weight=0.45)
    for short_query_words, weights in ((0, 0.7 + 0.2), (5, 0.45 + 0.5)):  # the query has 5 words
        convex_retriever = HybridRetriever(served.index, settings.model_copy(update={"short_query_words": short_query_words}))
        convex_retriever.maybe_reload()
        convex, _ = convex_retriever.retrieve(
            RetrievalRequest.resolve(convex_retriever.settings, query=query, vector=vector, top_k=1, mode="hybrid")
        )
        assert convex[0].score == pytest.approx(weights)  # best in both lists: normalised to 1 in each
    rrf, _ = served_rrf.retrieve(RetrievalRequest.resolve(served_rrf.settings, query=query, vector=vector, top_k=1, mode="hybrid"))
    assert rrf[0].score == pytest.approx(1.0 / (60 + 1) + 0.5 / (60 + 1))


def test_lexical_mode_needs_no_vector_and_dense_does(served: HybridRetriever) -> None:
    chunks, _ = served.retrieve(RetrievalRequest.resolve(served.settings, query="Bicycle parking garage", top_k=2, mode="lexical"))
    assert chunks[0].chunk_id == "office/parking.md#0"
    with pytest.raises(ValueError, match="query vector"):
        served.retrieve(RetrievalRequest.resolve(served.settings, query="Bicycle parking garage", top_k=2, mode="dense"))


def test_default_mode_comes_from_the_settings(served: HybridRetriever, model: EmbeddingModel) -> None:
    query = "vacation days"
    vector = query_vector(model, query)
    assert served.settings.mode == "hybrid"
    default, _ = served.retrieve(RetrievalRequest.resolve(served.settings, query=query, vector=vector, top_k=4))
    hybrid, _ = served.retrieve(RetrievalRequest.resolve(served.settings, query=query, vector=vector, top_k=4, mode="hybrid"))
    assert [(c.chunk_id, c.score) for c in default] == [(c.chunk_id, c.score) for c in hybrid]


FILTERS = [
    ({"department": "it"}, {"it/security-faq.txt#0", "it/security-faq.txt#1", "it/laptops.md#0"}),
    # $ne also selects the chunks without a department (as Chroma does).
    (
        {"department": {"$ne": "hr"}},
        {
            "it/security-faq.txt#0",
            "it/security-faq.txt#1",
            "it/laptops.md#0",
            "finance/expenses.pdf#0",
            "office/kitchen.txt#0",
            "office/parking.md#0",
        },
    ),
    ({"file": {"$in": ["office/kitchen.txt", "handbook/vacation-summary.md"]}}, {"office/kitchen.txt#0", "handbook/vacation-summary.md#0"}),
    (
        {"$or": [{"department": "finance"}, {"page": 2}]},
        {"finance/expenses.pdf#0", "handbook/vacation-policy.md#1", "it/security-faq.txt#1"},
    ),
]


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
@pytest.mark.parametrize(("raw", "allowed"), FILTERS, ids=[json.dumps(f) for f, _ in FILTERS])
def test_filters_restrict_every_mode(served: HybridRetriever, model: EmbeddingModel, raw: dict, allowed: set[str], mode: str) -> None:
    where = normalize_filter(raw)
    query = "vacation days passwords kitchen expenses reported team parking"
    chunks, _ = served.retrieve(
        RetrievalRequest.resolve(served.settings, query=query, vector=query_vector(model, query), top_k=len(CORPUS), where=where, mode=mode)
    )
    assert chunks, "the query should find something under every filter"
    assert {c.chunk_id for c in chunks} <= allowed
    if mode != "lexical":  # dense ranks every allowed chunk; lexical only those sharing a term
        assert {c.chunk_id for c in chunks} == allowed
    unfiltered, _ = served.retrieve(
        RetrievalRequest.resolve(served.settings, query=query, vector=query_vector(model, query), top_k=len(CORPUS), mode=mode)
    )
    assert {c.chunk_id for c in unfiltered} - allowed, "without the filter other chunks come back"


def test_a_filter_matching_nothing_returns_nothing(served: HybridRetriever, model: EmbeddingModel) -> None:
    where = normalize_filter({"department": "legal"})
    vector = query_vector(model, "vacation days")
    for mode in ("dense", "lexical", "hybrid"):
        assert (
            served.retrieve(
                RetrievalRequest.resolve(served.settings, query="vacation days", vector=vector, top_k=5, where=where, mode=mode)
            )[0]
            == []
        )


@pytest.mark.parametrize("mode", ["dense", "hybrid", "lexical"])
@pytest.mark.parametrize("top_k", [1, 3, 5])
def test_top_k_is_respected(served: HybridRetriever, model: EmbeddingModel, top_k: int, mode: str) -> None:
    query = "vacation days are reported within hours to the team"
    chunks, _ = served.retrieve(
        RetrievalRequest.resolve(served.settings, query=query, vector=query_vector(model, query), top_k=top_k, mode=mode)
    )
    assert len(chunks) == top_k
    assert len({c.chunk_id for c in chunks}) == top_k


def test_top_k_above_the_chunk_count_returns_every_chunk_once(served: HybridRetriever, model: EmbeddingModel) -> None:
    chunks, _ = served.retrieve(
        RetrievalRequest.resolve(served.settings, query="days", vector=query_vector(model, "days"), top_k=100, mode="dense")
    )
    assert sorted(c.chunk_id for c in chunks) == sorted(served.snapshot.chunk_ids)


def test_mmr_returns_top_k_distinct_chunks_and_skips_the_near_duplicate(served: HybridRetriever, model: EmbeddingModel) -> None:
    query = "How many vacation days do employees get?"
    vector = query_vector(model, query)
    plain, _ = served.retrieve(RetrievalRequest.resolve(served.settings, query=query, vector=vector, top_k=2, mode="dense", mmr=False))
    assert [c.chunk_id for c in plain] == ["handbook/vacation-policy.md#0", "handbook/vacation-summary.md#0"]

    diverse, _ = served.retrieve(RetrievalRequest.resolve(served.settings, query=query, vector=vector, top_k=2, mode="dense", mmr=True))
    assert diverse[0].chunk_id == "handbook/vacation-policy.md#0"
    assert diverse[1].chunk_id != "handbook/vacation-summary.md#0"  # the near-duplicate is passed over

    for mode in ("dense", "hybrid"):
        chunks, _ = served.retrieve(RetrievalRequest.resolve(served.settings, query=query, vector=vector, top_k=5, mode=mode, mmr=True))
        assert len(chunks) == len({c.chunk_id for c in chunks}) == 5


def test_model_mismatch_is_refused(served: HybridRetriever, model: EmbeddingModel) -> None:
    vector = query_vector(model, "vacation")
    with pytest.raises(ModelMismatch, match="BAAI/bge-small-en-v1.5"):
        served.retrieve(RetrievalRequest.resolve(served.settings, query="vacation", vector=vector, top_k=2, model="BAAI/bge-small-en-v1.5"))
    chunks, _ = served.retrieve(RetrievalRequest.resolve(served.settings, query="vacation", vector=vector, top_k=2, model=model.spec.name))
    assert len(chunks) == 2


def test_status_of_a_loaded_version(served: HybridRetriever, model: EmbeddingModel) -> None:
    status = served.status()
    assert status["ready"] is True and status["error"] is None
    assert (status["index_version"], status["chunks_indexed"]) == ("v000001", len(CORPUS))
    assert status["embedding_model"] == model.spec.name
    assert status["last_indexed_at"] == served.snapshot.info.created_at
    assert served.maybe_reload() is False  # the pointer has not moved


def test_no_index_yet(tmp_path: Path) -> None:
    retriever = HybridRetriever(VersionedIndex(tmp_path / "index"), RetrievalSettings())
    assert retriever.maybe_reload() is False
    assert "ingest" in retriever.last_error
    with pytest.raises(IndexUnavailable, match="ingest"):
        retriever.retrieve(RetrievalRequest.resolve(retriever.settings, query="anything", top_k=3, mode="lexical"))
    status = retriever.status()
    assert status["ready"] is False and "ingest" in status["error"] and status["chunks_indexed"] == 0


def test_an_empty_version_is_not_ready(model: EmbeddingModel, tmp_path: Path) -> None:
    index = VersionedIndex(tmp_path / "index")
    build_version(index, model, [])
    retriever = HybridRetriever(index, RetrievalSettings())
    assert retriever.maybe_reload() is True
    assert retriever.status()["ready"] is False and retriever.status()["error"] == "the index is empty"
    with pytest.raises(IndexUnavailable, match="empty"):
        retriever.retrieve(RetrievalRequest.resolve(retriever.settings, query="anything", top_k=3, mode="lexical"))


def test_a_new_version_is_swapped_in_while_the_old_snapshot_keeps_answering(model: EmbeddingModel, tmp_path: Path) -> None:
    index = VersionedIndex(tmp_path / "index")
    build_version(index, model, CORPUS)
    retriever = HybridRetriever(index, RetrievalSettings())
    assert retriever.maybe_reload() is True
    in_flight = retriever.snapshot  # what a request that started before the swap holds

    # A built but not yet published version changes nothing.
    second = build_version(index, model, CORPUS_V2, make_current=False)
    assert retriever.maybe_reload() is False
    assert retriever.snapshot is in_flight

    index.set_current(second.version)
    assert retriever.maybe_reload() is True
    assert retriever.maybe_reload() is False
    query = "When is the coffee machine descaled?"
    vector = query_vector(model, query)
    for mode in ("dense", "lexical", "hybrid"):
        chunks, info = retriever.retrieve(RetrievalRequest.resolve(retriever.settings, query=query, vector=vector, top_k=5, mode=mode))
        assert info.version == second.version
        assert chunks[0].chunk_id == "office/coffee.txt#0"
        assert {c.chunk_id for c in chunks} <= {"handbook/holidays.md#0", "it/vpn.md#0", "office/coffee.txt#0"}
    assert retriever.status()["chunks_indexed"] == len(CORPUS_V2)

    # The old snapshot still answers from version 1: its Chroma client was not closed under it.
    assert in_flight.info.version == "v000001"
    old = in_flight.collection.query(query_embeddings=[query_vector(model, "password length")], n_results=1, include=["distances"])
    assert old["ids"][0] == ["it/security-faq.txt#0"]
    assert in_flight.chunk_ids[in_flight.lexical.top("kitchen cleaned", k=1)[0][0]] == "office/kitchen.txt#0"


def test_the_replaced_version_is_closed_once_its_last_retrieval_is_done(model: EmbeddingModel, tmp_path: Path) -> None:
    """Between swaps a served index holds one version's files open, not two (the soak's flat file
    descriptors): the replaced snapshot is closed as soon as no retrieval uses it."""
    import os

    index = VersionedIndex(tmp_path / "index")
    build_version(index, model, CORPUS)
    retriever = HybridRetriever(index, RetrievalSettings())
    retriever.maybe_reload()
    one_version_open = len(os.listdir("/proc/self/fd"))
    with retriever._reading() as in_flight:  # a retrieval that started before the swap
        build_version(index, model, CORPUS_V2)
        assert retriever.maybe_reload() is True
        assert retriever.release_retired() is False  # still in use: kept open
        old = in_flight.collection.query(query_embeddings=[query_vector(model, "password length")], n_results=1, include=["distances"])
        assert old["ids"][0] == ["it/security-faq.txt#0"]
    assert retriever.release_retired() is True
    assert retriever.release_retired() is False  # nothing left to close
    assert len(os.listdir("/proc/self/fd")) <= one_version_open + 2
    request = RetrievalRequest.resolve(retriever.settings, query="coffee machine descaled", top_k=1, mode="lexical")
    chunks, info = retriever.retrieve(request)
    assert info.version == "v000002" and chunks[0].chunk_id == "office/coffee.txt#0"


@pytest.mark.parametrize("contextual", [True, False])
def test_a_contextual_versions_bm25_reads_each_chunk_with_its_document_title(
    model: EmbeddingModel, tmp_path: Path, contextual: bool
) -> None:
    """The version's chunking record says what its chunks were indexed by; the returned text is
    always the stored chunk, never the title in front of it."""
    corpus = [
        ("travel.pdf", 2, "The allowance is 40 euros per day, paid with the next salary.", {"doc_title": "Field staff travel rules"}),
        ("canteen.txt", 1, "Lunch is served from noon; the allowance for guests is one meal.", {}),
    ]
    index = VersionedIndex(tmp_path / "index")
    build_version(index, model, corpus, contextual=contextual)
    retriever = HybridRetriever(index, RetrievalSettings())
    assert retriever.maybe_reload() is True
    chunks, _ = retriever.retrieve(RetrievalRequest.resolve(retriever.settings, query="field staff", top_k=2, mode="lexical"))
    if contextual:
        assert [c.chunk_id for c in chunks] == ["travel.pdf#0"]
        assert chunks[0].text == corpus[0][2] and chunks[0].metadata["doc_title"] == "Field staff travel rules"
    else:
        assert chunks == []


def test_closing_a_replaced_version_returns_its_memory_to_the_os(model: EmbeddingModel, tmp_path: Path) -> None:
    """A replica loads every new version beside the old one. Unless the replaced version's freed
    memory goes back to the OS, RSS keeps each swap's high-water mark: the 20-minute soak's
    Retriever grew 19% before this, and here no close returned a single MB without the trim."""
    rng = np.random.default_rng(7)
    words = "cell protein gene mouse tumour dose trial cohort risk signal receptor pathway".split()
    corpus = [(f"paper-{i // 4}.pdf", 1, " ".join(rng.choice(words, 60)) + f" marker{i}", {}) for i in range(2500)]
    vectors = rng.standard_normal((len(corpus), model.spec.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VersionedIndex(tmp_path / "index", pointer_cache_s=0)
    versions = [build_version(index, model, corpus, vectors=vectors).version for _ in range(2)]
    retriever = HybridRetriever(index, RetrievalSettings())

    def rss_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    returned_mb = []
    for swap in range(16):
        index.set_current(versions[swap % 2])
        assert retriever.maybe_reload() is True
        request = RetrievalRequest.resolve(retriever.settings, query="tumour dose", vector=vectors[swap], top_k=10)
        chunks, info = retriever.retrieve(request)
        assert info.version == versions[swap % 2] and len(chunks) == 10
        before = rss_mb()
        assert retriever.release_retired() is (swap > 0)  # the first load replaces nothing
        returned_mb.append(before - rss_mb())
    # Measured: 3-11 MB back at each close of this 2,500-chunk version with the trim, 0 without.
    assert sorted(returned_mb[1:])[len(returned_mb) // 2] >= 2, [round(mb, 1) for mb in returned_mb]


def test_filter_masks_of_an_old_snapshot_never_apply_to_the_new_one(model: EmbeddingModel, tmp_path: Path) -> None:
    index = VersionedIndex(tmp_path / "index")
    build_version(index, model, CORPUS)
    retriever = HybridRetriever(index, RetrievalSettings())
    retriever.maybe_reload()
    in_flight = retriever.snapshot
    # Version 2: the same texts with the it/hr departments swapped, so the row positions line up.
    swapped = {"hr": "it", "it": "hr"}
    build_version(index, model, [(f, p, t, {k: swapped.get(v, v) for k, v in m.items()}) for f, p, t, m in CORPUS])
    assert retriever.maybe_reload() is True
    where = normalize_filter({"department": "it"})

    # The request that started before the swap reaches its lexical step now (retrieve() calls
    # self._mask(snapshot, where) with the snapshot it read at its start).
    retriever._mask(in_flight, where)

    chunks, info = retriever.retrieve(
        RetrievalRequest.resolve(retriever.settings, query="vacation days passwords laptops", top_k=10, where=where, mode="lexical")
    )
    assert info.version == "v000002"
    assert chunks and all(c.metadata["department"] == "it" for c in chunks)


def test_mmr_still_returns_top_k_when_top_k_exceeds_mmr_fetch_k(served: HybridRetriever, model: EmbeddingModel) -> None:
    retriever = HybridRetriever(served.index, RetrievalSettings(mmr_fetch_k=3))
    retriever.maybe_reload()
    query = "days"
    chunks, _ = retriever.retrieve(
        RetrievalRequest.resolve(retriever.settings, query=query, vector=query_vector(model, query), top_k=6, mode="dense", mmr=True)
    )
    assert len(chunks) == 6
