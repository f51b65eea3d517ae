"""Documents ranked by their chunks' decayed sum (serve_app.document_ranking)."""

from __future__ import annotations

import pytest

from serve_app.document_ranking import min_max_scaled, rank_documents

# (chunk, score) in retrieval order; a chunk names its document before the '#'.
FUSED = [("a#0", 0.9), ("b#0", 0.8), ("b#1", 0.7), ("c#0", 0.6), ("b#2", 0.5), ("a#1", 0.1)]


def document(chunk: str) -> str:
    return chunk.split("#")[0]


def test_decay_zero_ranks_documents_by_their_best_chunk() -> None:
    ranked = rank_documents(FUSED, key=document, decay=0.0)
    assert [(d.key, d.score) for d in ranked] == [("a", 0.9), ("b", 0.8), ("c", 0.6)]
    assert ranked[1].items == ["b#0", "b#1", "b#2"]


def test_a_document_matching_in_several_places_overtakes_a_single_better_match() -> None:
    ranked = rank_documents(FUSED, key=document, decay=0.5, top_k=2)
    assert [d.key for d in ranked] == ["b", "a"]
    assert ranked[0].score == pytest.approx(0.8 + 0.5 * 0.7 + 0.25 * 0.5)
    assert ranked[1].score == pytest.approx(0.9 + 0.5 * 0.1)


def test_chunks_arriving_out_of_order_are_summed_best_first_and_ties_keep_first_appearance() -> None:
    ranked = rank_documents([("x#1", 0.2), ("y#0", 0.5), ("x#0", 0.5)], key=document, decay=0.5)
    assert [d.key for d in ranked] == ["x", "y"]  # x: 0.5 + 0.1; y: 0.5
    assert ranked[0].items == ["x#0", "x#1"]
    tied = rank_documents([("p#0", 0.4), ("q#0", 0.4)], key=document, decay=0.3)
    assert [d.key for d in tied] == ["p", "q"]


@pytest.mark.parametrize("decay", [-0.1, 1.5])
def test_a_decay_outside_zero_to_one_is_refused(decay: float) -> None:
    with pytest.raises(ValueError, match="decay"):
        rank_documents(FUSED, key=document, decay=decay)


def test_min_max_scaling_puts_logits_on_zero_to_one() -> None:
    assert min_max_scaled([-2.0, -6.0, 2.0]) == [0.5, 0.0, 1.0]
    assert min_max_scaled([0.3, 0.3]) == [1.0, 1.0] and min_max_scaled([]) == []
