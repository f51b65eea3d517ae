"""The one shape of a retrieval request, from the HTTP route through the Stages to the retriever.

Defaults (mode, MMR, reranking, candidate count) are resolved once, where the request enters the
service, so the Retriever replica, the in-process stages and the retriever component all see the
same complete request, passed by name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

RetrievalMode = Literal["dense", "lexical", "hybrid"]


@dataclass(frozen=True)
class RetrievalRequest:
    query: str
    top_k: int  # chunks returned (the reranker's candidates when reranking)
    mode: RetrievalMode
    mmr: bool
    # The query embedding and the model that made it; None for lexical retrieval.
    vector: tuple[float, ...] | None = None
    model: str | None = None
    where: dict[str, Any] | None = None  # the client's metadata filter
    access: dict[str, Any] | None = None  # the caller's read filter, ANDed with `where`

    @classmethod
    def resolve(
        cls,
        settings: Any,
        *,
        query: str,
        top_k: int,
        mode: RetrievalMode | None = None,
        mmr: bool | None = None,
        where: dict[str, Any] | None = None,
        access: dict[str, Any] | None = None,
        vector: Any = None,
        model: str | None = None,
    ) -> RetrievalRequest:
        """A request with the settings' defaults (`settings`: RetrievalSettings) for what the client left out."""
        request = cls(
            query=query,
            top_k=top_k,
            mode=mode or settings.mode,
            mmr=settings.mmr if mmr is None else mmr,
            where=where or None,
            access=access or None,
        )
        return request.embedded(vector, model) if vector is not None else request

    @property
    def needs_vector(self) -> bool:
        return self.mode != "lexical"

    def embedded(self, vector: Any, model: str | None) -> RetrievalRequest:
        """This request with its query embedding (any float sequence)."""
        return replace(self, vector=tuple(float(x) for x in vector), model=model)
