"""The stage contract both implementations share (serve_app.stages), exercised through the
in-process LocalStages over a real index: one retrieval request shape, the retry when the index
switched embedding models, error mapping, and which filters reach the vector store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rag_core.access import TENANT_FIELD, Access
from rag_core.embedding import EmbeddingModel
from rag_core.index_store import VersionedIndex
from rag_core.settings import RetrievalSettings, load_settings
from serve_app.local import LocalStages
from serve_app.retrieval import HybridRetriever
from serve_app.retrieval_request import RetrievalRequest
from serve_app.stages import ServiceUnavailable
from tests.unit.index_builder import build_version

CORPUS = [
    ("handbook/vacation.md", 1, "Employees receive 27 vacation days per calendar year.", {}),
    ("it/vpn.md", 1, "Connect to the VPN before opening the intranet.", {"tenant": "it"}),
    ("office/coffee.txt", 1, "The coffee machine is descaled every Monday.", {}),
]


def settings_for(index_dir: Path):
    return load_settings(
        index_dir=index_dir,
        embedding_device="cpu",
        rerank={"model": "no-such-org/no-such-cross-encoder-xyz"},
        retrieval={"reload_check_interval_s": 3600},
    )


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory, model: EmbeddingModel) -> LocalStages:
    index_dir = tmp_path_factory.mktemp("stages") / "index"
    build_version(VersionedIndex(index_dir), model, CORPUS)
    return LocalStages(settings_for(index_dir), torch_threads=1)


def test_a_query_embedded_with_another_model_is_embedded_again_once(stages: LocalStages, model: EmbeddingModel) -> None:
    access = Access.of("default").read_filter()
    request = RetrievalRequest.resolve(
        stages.retriever.settings, query="how many vacation days", top_k=2, access=access, vector=[0.0] * 384, model="other/model"
    )
    chunks, version = asyncio.run(stages.retrieve(request))
    assert chunks[0].file == "handbook/vacation.md"
    assert version == stages.retriever.snapshot.info.version


def test_an_index_that_does_not_exist_is_a_service_unavailable(tmp_path: Path) -> None:
    stages = LocalStages(settings_for(tmp_path / "no-index"), torch_threads=1)
    request = RetrievalRequest.resolve(RetrievalSettings(), query="vacation", top_k=2, mode="lexical")
    with pytest.raises(ServiceUnavailable, match="index not available"):
        asyncio.run(stages.retrieve(request))
    status = asyncio.run(stages.status())
    assert status["retriever"]["ready"] is False and status["generator"]["name"] == "extractive"


def test_defaults_are_resolved_once_into_the_request() -> None:
    settings = RetrievalSettings(mode="dense", mmr=True)
    request = RetrievalRequest.resolve(settings, query="q", top_k=3)
    assert (request.mode, request.mmr, request.needs_vector) == ("dense", True, True)
    explicit = RetrievalRequest.resolve(settings, query="q", top_k=3, mode="lexical", mmr=False)
    assert (explicit.mode, explicit.mmr, explicit.needs_vector) == ("lexical", False, False)
    with pytest.raises(AttributeError):
        request.top_k = 5  # frozen: every stage sees the request it was given


def test_a_read_filter_that_admits_every_chunk_is_not_sent_to_the_vector_store(stages: LocalStages, model: EmbeddingModel) -> None:
    retriever: HybridRetriever = stages.retriever
    snapshot = retriever.snapshot
    everyone = {TENANT_FIELD: {"$in": ["default", "it"]}}
    assert retriever._mask(snapshot, everyone) is None
    tenant_default = Access.of("default").read_filter()
    partial = retriever._mask(snapshot, tenant_default)
    assert partial is not None and partial.sum() == 2  # the IT tenant's chunk is outside
    vector = model.embed_queries(["VPN intranet"])[0]
    for mode in ("dense", "lexical", "hybrid"):
        request = RetrievalRequest.resolve(
            retriever.settings, query="VPN intranet", top_k=3, mode=mode, access=tenant_default, vector=vector
        )
        chunks, _ = retriever.retrieve(request)
        assert "it/vpn.md" not in {c.file for c in chunks}
        unfiltered, _ = retriever.retrieve(
            RetrievalRequest.resolve(retriever.settings, query="VPN intranet", top_k=3, mode=mode, vector=vector)
        )
        assert unfiltered[0].file == "it/vpn.md"


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_the_configured_embedding_backend_embeds_the_queries(tmp_path: Path, stages: LocalStages, monkeypatch, backend: str) -> None:
    # The index is torch-built; either fp32 backend (one vector space) embeds its queries and finds the right chunk.
    monkeypatch.setenv("RAG_ONNX_CACHE_DIR", str(tmp_path / "onnx"))
    settings = settings_for(stages.retriever.index.index_dir).model_copy(update={"embedding_backend": backend})
    configured = LocalStages(settings, torch_threads=1)
    assert configured.embedder.ensure_model().backend == backend
    vector, _ = configured.embedder.embed(["how many vacation days"])
    request = RetrievalRequest.resolve(settings.retrieval, query="how many vacation days", top_k=1, vector=vector[0].tolist())
    chunks, _ = asyncio.run(configured.retrieve(request))
    assert chunks[0].file == "handbook/vacation.md"
