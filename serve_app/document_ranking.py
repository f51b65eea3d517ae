"""Documents ranked by more than their best chunk.

A document's score is its chunks' scores, best first, summed with geometrically decaying weights:
s1 + decay * s2 + decay**2 * s3 + ... With decay 0 that is its best chunk (what a harness that
ranks documents by first appearance reads); a larger decay lets a document that matches in
several places rise above one that matches once. The scores are the fused retrieval scores
(or the reranker's), so a chunk that barely made the candidates adds little.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Item = TypeVar("Item")


@dataclass
class RankedDocument(Generic[Key, Item]):
    key: Key
    score: float
    items: list[Item] = field(default_factory=list)  # its chunks, best first


def rank_documents(
    scored: Iterable[tuple[Item, float]],
    *,
    key: Callable[[Item], Key],
    decay: float,
    top_k: int | None = None,
) -> list[RankedDocument[Key, Item]]:
    """Group scored chunks by `key(chunk)` and rank the groups by their decayed sum; ties keep the
    order in which documents first appeared."""
    if not 0 <= decay <= 1:
        raise ValueError(f"decay must be between 0 and 1, not {decay}")
    groups: dict[Key, list[tuple[Item, float]]] = {}
    for item, score in scored:
        groups.setdefault(key(item), []).append((item, score))
    documents = []
    for document_key, members in groups.items():
        members.sort(key=lambda pair: -pair[1])
        documents.append(RankedDocument(document_key, _decayed_sum([s for _, s in members], decay), [i for i, _ in members]))
    documents.sort(key=lambda document: -document.score)  # stable: first appearance breaks ties
    return documents if top_k is None else documents[:top_k]


def _decayed_sum(scores: Sequence[float], decay: float) -> float:
    total, weight = 0.0, 1.0
    for score in scores:
        total += weight * score
        weight *= decay
        if weight == 0:
            break
    return total


def min_max_scaled(scores: Sequence[float]) -> list[float]:
    """Scores mapped onto 0-1, best 1; all 1 when they are equal."""
    if not scores:
        return []
    low, high = min(scores), max(scores)
    if high == low:
        return [1.0] * len(scores)
    return [(score - low) / (high - low) for score in scores]
