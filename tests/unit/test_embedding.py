"""Embedding model resolution and the query/document split, with the real packaged MiniLM weights."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from rag_core.embedding import (
    BGE_QUERY_INSTRUCTION,
    BGE_SMALL,
    PACKAGED_MINILM,
    SOURCE_HUB,
    SOURCE_PACKAGE,
    SOURCE_PATH,
    EmbeddingModel,
    EmbeddingModelError,
    EmbeddingModelSpec,
    load_for_spec,
    packaged_minilm_path,
    query_prefix_for,
    same_vector_space,
)

PACKAGED_SPEC = EmbeddingModelSpec(PACKAGED_MINILM, SOURCE_PACKAGE, 384, "")
TEXTS = ["The cat sat on the mat.", "Ray Data runs the ingest pipeline.", "x"]


@pytest.fixture(scope="module")
def model() -> EmbeddingModel:
    """`auto` resolved offline, loaded once for the module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")  # never wait on the network, even where there is one
        return EmbeddingModel.from_setting("auto", device="cpu")


@pytest.fixture(scope="module")
def prefixed_model() -> EmbeddingModel:
    """The same packaged weights, with a query prefix recorded in the spec."""
    spec = EmbeddingModelSpec(PACKAGED_MINILM, SOURCE_PACKAGE, 384, BGE_QUERY_INSTRUCTION)
    return load_for_spec(spec, device="cpu")


# -- resolution -------------------------------------------------------------------------------
def test_auto_resolves_offline_to_the_packaged_minilm(model: EmbeddingModel) -> None:
    assert model.spec == PACKAGED_SPEC
    assert model.spec.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert model.spec.source == "package"
    assert model.spec.dimension == 384
    assert model.spec.query_prefix == ""
    assert model.spec.normalize is True


def test_auto_fallback_logs_a_warning_naming_the_model(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.WARNING, logger="rag_core.embedding"):
        spec = EmbeddingModel.from_setting("auto", device="cpu").spec
    assert spec == PACKAGED_SPEC
    warning = next(r for r in caplog.records if r.name == "rag_core.embedding" and r.levelno == logging.WARNING)
    assert "all-MiniLM-L6-v2" in warning.getMessage()
    assert "bge-small-en-v1.5" in warning.getMessage()


def closed_local_endpoint() -> str:
    with socket.socket() as sock:  # a port nobody listens on once this socket is closed
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_unavailable_named_model_fails_fast_pointing_to_a_local_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real Hub probe runs, against an endpoint that refuses connections.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", closed_local_endpoint())
    started = time.monotonic()
    with pytest.raises(EmbeddingModelError) as caught:
        EmbeddingModel.from_setting("BAAI/bge-base-en-v1.5", device="cpu", hub_probe_timeout_s=1.0)
    assert time.monotonic() - started < 15
    message = str(caught.value)
    assert "BAAI/bge-base-en-v1.5" in message
    assert "--local-dir" in message and "RAG_EMBEDDING_MODEL=DIR" in message


@pytest.mark.parametrize("setting", ["/nonexistent/model-folder", "./no-such-model", "~/no/such/model/here"])
def test_nonexistent_model_path_raises(setting: str) -> None:
    with pytest.raises(EmbeddingModelError, match="does not exist"):
        EmbeddingModel.from_setting(setting, device="cpu")


def test_model_path_that_is_a_file_raises(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "weights.bin"
    not_a_folder.write_bytes(b"\0")
    with pytest.raises(EmbeddingModelError, match="not a folder"):
        EmbeddingModel.from_setting(str(not_a_folder), device="cpu")


def test_folder_without_a_model_raises(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingModelError, match="cannot load"):
        EmbeddingModel.from_setting(str(tmp_path), device="cpu")


def test_local_model_folder_is_recorded_as_a_path_spec(model: EmbeddingModel) -> None:
    folder = packaged_minilm_path()
    by_path = EmbeddingModel.from_setting(folder, device="cpu")
    assert by_path.spec.source == SOURCE_PATH
    assert by_path.spec.name == str(Path(folder).resolve())
    assert by_path.spec.dimension == 384
    np.testing.assert_allclose(by_path.embed_documents(TEXTS), model.embed_documents(TEXTS), atol=1e-5)


def test_load_for_spec_with_a_wrong_dimension_raises() -> None:
    with pytest.raises(EmbeddingModelError, match="384-dimensional"):
        load_for_spec(EmbeddingModelSpec(PACKAGED_MINILM, SOURCE_PACKAGE, 768, ""), device="cpu")


def test_load_for_spec_of_a_missing_folder_raises() -> None:
    with pytest.raises(EmbeddingModelError, match="cannot be loaded here"):
        load_for_spec(EmbeddingModelSpec("/nonexistent/model", SOURCE_PATH, 384, ""), device="cpu")


# -- query prefix policy ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "model_name, setting, expected",
    [
        ("BAAI/bge-small-en-v1.5", "auto", BGE_QUERY_INSTRUCTION),
        ("BAAI/bge-base-en-v1.5", "auto", BGE_QUERY_INSTRUCTION),
        ("BAAI/bge-small-zh-v1.5", "auto", ""),
        (PACKAGED_MINILM, "auto", ""),
        ("BAAI/bge-small-en-v1.5", "none", ""),
        (PACKAGED_MINILM, "query: ", "query: "),
    ],
)
def test_query_prefix_for(model_name: str, setting: str, expected: str) -> None:
    assert query_prefix_for(model_name, setting) == expected


def test_bge_instruction_is_the_documented_one() -> None:
    assert BGE_QUERY_INSTRUCTION == "Represent this sentence for searching relevant passages: "


def test_documents_are_never_prefixed(model: EmbeddingModel, prefixed_model: EmbeddingModel) -> None:
    raw = model._model.encode(["x"], normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(prefixed_model.embed_documents(["x"]), raw, atol=1e-6)
    np.testing.assert_allclose(model.embed_documents(["x"]), raw, atol=1e-6)


def test_queries_get_the_spec_prefix(model: EmbeddingModel, prefixed_model: EmbeddingModel) -> None:
    query = "where did the cat sit?"
    prefixed = prefixed_model.embed_queries([query])
    assert not np.allclose(prefixed, prefixed_model.embed_documents([query]), atol=1e-4)
    np.testing.assert_allclose(prefixed, model.embed_documents([BGE_QUERY_INSTRUCTION + query]), atol=1e-5)
    # Without a prefix, a query is embedded exactly like a document.
    np.testing.assert_allclose(model.embed_queries([query]), model.embed_documents([query]), atol=1e-6)


# -- vectors ----------------------------------------------------------------------------------
def test_vectors_are_l2_normalised_float32(model: EmbeddingModel) -> None:
    vectors = model.embed_documents(TEXTS, batch_size=2)
    assert vectors.shape == (len(TEXTS), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_empty_input_gives_an_empty_matrix(model: EmbeddingModel) -> None:
    assert model.embed_documents([]).shape == (0, 384)
    assert model.embed_queries([]).shape == (0, 384)


def test_similar_texts_are_closer_than_unrelated_ones(model: EmbeddingModel) -> None:
    cat, kitten, ray = model.embed_documents(["a cat on a mat", "a kitten sitting on a rug", "distributed dataset ingestion"])
    assert float(cat @ kitten) > float(cat @ ray)


# -- specs ------------------------------------------------------------------------------------
def test_spec_dict_round_trip() -> None:
    spec = EmbeddingModelSpec("some/model", SOURCE_HUB, 12, "q: ", normalize=False)
    assert EmbeddingModelSpec.from_dict(spec.to_dict()) == spec
    assert EmbeddingModelSpec.from_dict({**spec.to_dict(), "unrelated": 1}) == spec


def test_same_vector_space_ignores_where_weights_come_from() -> None:
    assert same_vector_space(PACKAGED_SPEC, EmbeddingModelSpec(PACKAGED_MINILM, SOURCE_HUB, 384, ""))
    assert not same_vector_space(PACKAGED_SPEC, EmbeddingModelSpec(PACKAGED_MINILM, SOURCE_PACKAGE, 384, "query: "))
    assert not same_vector_space(PACKAGED_SPEC, EmbeddingModelSpec(BGE_SMALL, SOURCE_HUB, 384, ""))
    assert not same_vector_space(PACKAGED_SPEC, EmbeddingModelSpec(PACKAGED_MINILM, SOURCE_PACKAGE, 768, ""))
    assert not same_vector_space(PACKAGED_SPEC, EmbeddingModelSpec(PACKAGED_MINILM, SOURCE_PACKAGE, 384, "", normalize=False))
