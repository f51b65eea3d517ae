"""A cheap faithfulness estimate for generated answers: the share of answer sentences whose
embedding is close to at least one retrieved passage (cosine at or above a threshold), computed
with the service's own embedding model. It flags answers drifting away from their sources; it is
not a judgement of correctness (an NLI or LLM judge would be, at far greater cost)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_CITATION = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
MIN_SENTENCE_CHARS = 12  # fragments such as "Yes." carry no claim to check


def answer_sentences(answer: str) -> list[str]:
    """The answer's sentences, citation markers removed, fragments dropped."""
    text = _CITATION.sub("", answer).strip()
    return [s.strip() for s in _SENTENCE_END.split(text) if len(s.strip()) >= MIN_SENTENCE_CHARS]


def supported_share(
    sentence_vectors: Sequence[Sequence[float]], passage_vectors: Sequence[Sequence[float]], threshold: float
) -> float | None:
    """Share of sentences with a passage at cosine >= threshold; None when there is nothing to judge."""
    if len(sentence_vectors) == 0 or len(passage_vectors) == 0:
        return None
    sentences = _unit_rows(np.asarray(sentence_vectors, dtype=np.float32))
    passages = _unit_rows(np.asarray(passage_vectors, dtype=np.float32))
    best = (sentences @ passages.T).max(axis=1)
    return float((best >= threshold).mean())


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)
