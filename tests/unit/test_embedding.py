"""Embedding model resolution and the query/document split, with the real packaged MiniLM weights."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from rag_core import embedding, embedding_onnx
from rag_core.embedding import (
    BACKEND_ONNX,
    BACKEND_ONNX_INT8,
    BACKEND_TORCH,
    BGE_QUERY_INSTRUCTION,
    BGE_SMALL,
    PACKAGED_MINILM,
    SOURCE_HUB,
    SOURCE_PACKAGE,
    SOURCE_PATH,
    EmbeddingModel,
    EmbeddingModelError,
    EmbeddingModelSpec,
    backend_for,
    load_for_spec,
    packaged_minilm_path,
    query_prefix_for,
    resolve_spec,
    same_vector_space,
)
from rag_core.embedding_onnx import FOLDER_INDEX, ensure_exported, folder_fingerprint, record_folder, weights_fingerprint
from rag_core.settings import load_settings
from tests.conftest import SHARED_DATA
from tests.fresh_python import run_python

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


def test_the_spec_is_read_from_the_model_files_as_loading_would_give_it(model: EmbeddingModel, monkeypatch) -> None:
    """The ingest driver records the spec without loading the weights (its actors load them)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_spec("auto") == model.spec == PACKAGED_SPEC
    assert resolve_spec("auto", backend=BACKEND_ONNX_INT8) == replace(PACKAGED_SPEC, backend=BACKEND_ONNX_INT8)
    folder = packaged_minilm_path()
    assert resolve_spec(folder, query_instruction="query: ") == EmbeddingModel.from_setting(folder, "cpu", query_instruction="query: ").spec
    loads = []
    monkeypatch.setattr(embedding, "_load_sentence_transformer", lambda *args, **kwargs: loads.append(args))
    resolve_spec("auto")
    resolve_spec(folder)
    assert loads == []  # no weights loaded


def test_a_dense_head_sets_the_dimension_and_a_folder_it_cannot_read_falls_back_to_loading(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer, models

    base = SentenceTransformer(packaged_minilm_path(), device="cpu")
    dense = models.Dense(384, 128, activation_function=torch.nn.Tanh())
    SentenceTransformer(modules=[base[0], base[1], dense], device="cpu").save(str(tmp_path / "dense"))
    folder = str(tmp_path / "dense")
    assert resolve_spec(folder).dimension == 128 == EmbeddingModel.from_setting(folder, "cpu").spec.dimension
    with pytest.raises(EmbeddingModelError, match="cannot load"):
        resolve_spec(str(tmp_path))  # no modules.json: the load says what is wrong
    with pytest.raises(EmbeddingModelError, match="does not exist"):
        resolve_spec("./no-such-model")


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


# -- backends: torch, ONNX Runtime fp32 and int8 -----------------------------------------------
# Real exports of the packaged weights into a fresh cache folder (once for the module: about 20 s).
AGREEMENT_TEXTS = [
    *TEXTS,
    "How many vacation days do employees get after five years at the company?",
    "Ray Serve scales the replicas of each deployment between its minimum and maximum. " * 40,  # cut at 256 tokens
]
# Measured (benchmarks/results/embedding_backends.md): fp32 onnx agrees with torch to cosine 1.00000;
# int8 to a median of 0.993, minimum 0.982 over 300 questions and 512 SciFact chunks (0.976 for "x").
ONNX_MIN_COSINE = 0.999
INT8_MIN_COSINE = 0.95


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("onnx-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAG_ONNX_CACHE_DIR", str(root))
        yield root


@pytest.fixture(scope="module")
def onnx_model(onnx_cache: Path) -> EmbeddingModel:
    return load_for_spec(replace(PACKAGED_SPEC, backend=BACKEND_ONNX), device="cpu", torch_threads=1)


@pytest.fixture(scope="module")
def int8_model(onnx_cache: Path, onnx_model: EmbeddingModel) -> EmbeddingModel:
    return load_for_spec(replace(PACKAGED_SPEC, backend=BACKEND_ONNX_INT8), device="cpu", torch_threads=1)


@pytest.fixture(scope="module")
def sentence_transformer():
    """The packaged weights as sentence-transformers loads them (what the ONNX export traces)."""
    return embedding._load_sentence_transformer(packaged_minilm_path(), "cpu", local_only=True)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_onnx_vectors_agree_with_torch(model: EmbeddingModel, onnx_model: EmbeddingModel) -> None:
    assert onnx_model.backend == BACKEND_ONNX and onnx_model.spec.backend == BACKEND_ONNX
    vectors = onnx_model.embed_documents(AGREEMENT_TEXTS, batch_size=2)
    assert vectors.shape == (len(AGREEMENT_TEXTS), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert cosines(vectors, model.embed_documents(AGREEMENT_TEXTS)).min() > ONNX_MIN_COSINE


def test_int8_vectors_agree_with_torch_within_the_measured_bound(model: EmbeddingModel, int8_model: EmbeddingModel) -> None:
    vectors = int8_model.embed_documents(AGREEMENT_TEXTS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    agreement = cosines(vectors, model.embed_documents(AGREEMENT_TEXTS))
    assert agreement.min() > INT8_MIN_COSINE
    assert agreement.max() < 0.99999  # it is quantized: not the fp32 graph by mistake


def test_onnx_batches_give_the_vectors_of_single_texts(onnx_model: EmbeddingModel) -> None:
    # Padding inside a batch and the length-sorted batching must not change any text's vector.
    batched = onnx_model.embed_documents(AGREEMENT_TEXTS, batch_size=64)
    alone = np.vstack([onnx_model.embed_documents([t]) for t in AGREEMENT_TEXTS])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_onnx_queries_get_the_spec_prefix(onnx_cache: Path, model: EmbeddingModel) -> None:
    prefixed = load_for_spec(replace(PACKAGED_SPEC, query_prefix="query: ", backend=BACKEND_ONNX), device="cpu")
    assert cosines(prefixed.embed_queries(["cats"]), model.embed_documents(["query: cats"]))[0] > ONNX_MIN_COSINE
    assert prefixed.embed_queries([]).shape == (0, 384)


def test_the_export_is_cached_and_reused(
    onnx_cache: Path, onnx_model: EmbeddingModel, int8_model: EmbeddingModel, sentence_transformer, monkeypatch
) -> None:
    (folder,) = [p for p in onnx_cache.iterdir() if p.is_dir() and p.name != FOLDER_INDEX]
    assert folder.name == weights_fingerprint(sentence_transformer)
    files = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.onnx")}
    assert set(files) == {"model.onnx", "model-int8.onnx"}
    assert not list(folder.glob("*.tmp"))  # written under temporary names, then renamed

    def no_export(*args: object) -> None:
        raise AssertionError("exported again instead of using the cache")

    monkeypatch.setattr(embedding_onnx, "_export_fp32", no_export)
    monkeypatch.setattr(embedding_onnx, "_quantize_int8", no_export)
    for backend in (BACKEND_ONNX, BACKEND_ONNX_INT8):
        again = load_for_spec(replace(PACKAGED_SPEC, backend=backend), device="cpu")
        assert again.embed_documents(["x"]).shape == (1, 384)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.onnx")} == files


def test_other_weights_or_settings_get_another_cache_folder(sentence_transformer) -> None:
    st = sentence_transformer
    original = weights_fingerprint(st)
    weight = next(iter(st.parameters()))
    with torch.no_grad():
        weight[0, 0] += 1e-3
        try:
            assert weights_fingerprint(st) != original
        finally:
            weight[0, 0] -= 1e-3
    assert weights_fingerprint(st) == original
    st.max_seq_length, length = 128, st.max_seq_length
    try:
        assert weights_fingerprint(st) != original
    finally:
        st.max_seq_length = length


def test_concurrent_loaders_export_once(tmp_path: Path, sentence_transformer, monkeypatch: pytest.MonkeyPatch) -> None:
    exports = []

    def slow_export(model: object, target: Path) -> None:
        exports.append(target)
        time.sleep(0.5)
        target.write_bytes(b"onnx")

    monkeypatch.setattr(embedding_onnx, "_export_fp32", slow_export)
    st = sentence_transformer
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: ensure_exported(st, quantized=False, root=tmp_path), range(4)))
    assert len(exports) == 1
    assert sum(exported for _, exported in results) == 1
    assert len({path for path, _ in results}) == 1 and results[0][0].read_bytes() == b"onnx"


def test_a_failed_fp32_export_runs_the_same_weights_on_torch(
    tmp_path: Path, model: EmbeddingModel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def failing_export(model: object, target: Path) -> None:
        raise RuntimeError("the exporter cannot trace this model")

    monkeypatch.setenv("RAG_ONNX_CACHE_DIR", str(tmp_path))  # empty: the export must run, and fails
    monkeypatch.setattr(embedding_onnx, "_export_fp32", failing_export)
    with caplog.at_level(logging.WARNING, logger="rag_core.embedding"):
        fallback = load_for_spec(replace(PACKAGED_SPEC, backend=BACKEND_ONNX), device="cpu")
    assert fallback.backend == BACKEND_TORCH
    assert "cannot trace this model" in caplog.text and "on torch" in caplog.text
    np.testing.assert_allclose(fallback.embed_queries(TEXTS), model.embed_queries(TEXTS), atol=1e-6)
    # int8 vectors are another space: torch cannot stand in for them, so the load fails instead.
    with pytest.raises(EmbeddingModelError, match="onnx-int8.*cannot trace this model"):
        load_for_spec(replace(PACKAGED_SPEC, backend=BACKEND_ONNX_INT8), device="cpu")
    assert not list(tmp_path.rglob("*.onnx"))


def test_unknown_backend_is_refused_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_EMBEDDING_BACKEND", "openvino")
    with pytest.raises(ValidationError) as caught:
        load_settings()
    message = str(caught.value)
    assert "embedding_backend" in message and "'torch', 'onnx' or 'onnx-int8'" in message
    monkeypatch.setenv("RAG_EMBEDDING_BACKEND", "onnx-int8")
    assert load_settings().embedding_backend == "onnx-int8"
    monkeypatch.delenv("RAG_EMBEDDING_BACKEND")
    assert load_settings().embedding_backend == "onnx"  # the default: torch's vectors, faster on CPU


def test_unknown_backend_is_refused_by_the_loader() -> None:
    with pytest.raises(EmbeddingModelError, match="unknown embedding backend 'openvino'"):
        load_for_spec(replace(PACKAGED_SPEC, backend="openvino"), device="cpu")
    with pytest.raises(EmbeddingModelError, match="unknown embedding backend"):
        EmbeddingModel.from_setting("auto", device="cpu", backend="tensorrt")


def test_the_spec_records_the_backend_and_old_specs_read_as_torch() -> None:
    int8 = replace(PACKAGED_SPEC, backend=BACKEND_ONNX_INT8)
    assert int8.to_dict()["backend"] == "onnx-int8"
    assert EmbeddingModelSpec.from_dict(int8.to_dict()) == int8
    recorded_before_backends = {k: v for k, v in PACKAGED_SPEC.to_dict().items() if k != "backend"}
    assert EmbeddingModelSpec.from_dict(recorded_before_backends).backend == BACKEND_TORCH
    assert int8.label() == "sentence-transformers/all-MiniLM-L6-v2 (onnx-int8)" and PACKAGED_SPEC.label() == PACKAGED_MINILM


def test_torch_and_onnx_share_a_vector_space_int8_does_not() -> None:
    onnx, int8 = (replace(PACKAGED_SPEC, backend=b) for b in (BACKEND_ONNX, BACKEND_ONNX_INT8))
    assert same_vector_space(PACKAGED_SPEC, onnx)
    assert not same_vector_space(PACKAGED_SPEC, int8) and not same_vector_space(onnx, int8)
    # Queries use the configured backend only where it gives the index's vectors.
    assert backend_for(PACKAGED_SPEC, BACKEND_ONNX) == BACKEND_ONNX
    assert backend_for(onnx, BACKEND_TORCH) == BACKEND_TORCH
    assert backend_for(int8, BACKEND_TORCH) == BACKEND_ONNX_INT8
    assert backend_for(PACKAGED_SPEC, BACKEND_ONNX_INT8) == BACKEND_TORCH
    assert backend_for(int8, None) == BACKEND_ONNX_INT8


def test_auto_with_the_onnx_backend_records_it(onnx_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = EmbeddingModel.from_setting("auto", device="cpu", backend=BACKEND_ONNX)
    assert loaded.spec == replace(PACKAGED_SPEC, backend=BACKEND_ONNX) and loaded.backend == BACKEND_ONNX
    assert loaded.embed_documents(["x"]).shape == (1, 384)


def test_fp32_onnx_on_a_gpu_without_the_cuda_provider_runs_as_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert embedding._runnable_on("cuda:0", BACKEND_ONNX) == BACKEND_TORCH  # same vectors, and on the GPU
    assert embedding._runnable_on("cuda", BACKEND_ONNX_INT8) == BACKEND_ONNX_INT8  # int8 is its own space
    assert embedding._runnable_on("cpu", BACKEND_ONNX) == BACKEND_ONNX
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert embedding._runnable_on("cuda", BACKEND_ONNX) == BACKEND_ONNX


# -- loading without torch ------------------------------------------------------------------------
def scifact_texts(count: int) -> list[str]:
    """Real abstracts (title and text, many longer than the 256-token limit) and real questions."""
    folder = SHARED_DATA / "beir" / "scifact"
    with (folder / "corpus.jsonl").open() as corpus:
        documents = [f"{row['title']} {row['text']}" for row in map(json.loads, (next(corpus) for _ in range(count)))]
    with (folder / "queries.jsonl").open() as queries:
        questions = [json.loads(next(queries))["text"] for _ in range(count)]
    return documents + questions + AGREEMENT_TEXTS


LOAD_IN_A_FRESH_PROCESS = """
import json, sys
import numpy as np
from rag_core.embedding import EmbeddingModelSpec, load_for_spec
spec = EmbeddingModelSpec.from_dict(json.loads(sys.argv[1]))
model = load_for_spec(spec, device="auto", torch_threads=1)
np.save(sys.argv[3], model.embed_documents(json.loads(open(sys.argv[2]).read())))
print(json.dumps({"loader": model.loader, "backend": model.backend, "device": model.device,
                  "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}))
"""


@pytest.mark.parametrize("backend", [BACKEND_ONNX, BACKEND_ONNX_INT8])
def test_a_recorded_folder_loads_in_a_fresh_process_without_torch_and_gives_the_same_vectors(
    backend: str, onnx_cache: Path, onnx_model: EmbeddingModel, int8_model: EmbeddingModel, tmp_path: Path
) -> None:
    # The fixtures loaded the packaged folder through sentence-transformers, which recorded it.
    assert onnx_model.loader == "sentence-transformers" == int8_model.loader
    texts = scifact_texts(120)
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    spec = json.dumps(replace(PACKAGED_SPEC, backend=backend).to_dict())
    stdout = run_python(LOAD_IN_A_FRESH_PROCESS, spec, str(tmp_path / "texts.json"), str(tmp_path / "vectors.npy"), timeout=300)
    loaded = json.loads(stdout.splitlines()[-1])
    assert loaded == {"loader": "onnx-without-torch", "backend": backend, "device": "cpu", "torch": False, "transformers": False}
    through_the_library = (onnx_model if backend == BACKEND_ONNX else int8_model).embed_documents(texts)
    # The same graph fed the same token ids: the same vectors, on texts cut at 256 tokens too.
    np.testing.assert_allclose(np.load(tmp_path / "vectors.npy"), through_the_library, atol=1e-6)


def test_a_changed_folder_loads_through_sentence_transformers_and_is_recorded_again(
    onnx_cache: Path, onnx_model: EmbeddingModel, tmp_path: Path
) -> None:
    folder = tmp_path / "minilm"
    shutil.copytree(packaged_minilm_path(), folder)
    spec = EmbeddingModelSpec(str(folder), SOURCE_PATH, 384, "", backend=BACKEND_ONNX)
    identical = load_for_spec(spec, device="cpu")
    assert identical.loader == "onnx-without-torch"  # the same files as the packaged folder
    config = folder / "sentence_bert_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "max_seq_length": 64}))
    changed = load_for_spec(spec, device="cpu")
    assert changed.loader == "sentence-transformers"
    again = load_for_spec(spec, device="cpu")
    assert again.loader == "onnx-without-torch"
    long_text = [AGREEMENT_TEXTS[-1]]
    np.testing.assert_allclose(again.embed_documents(long_text), changed.embed_documents(long_text), atol=1e-6)
    assert cosines(again.embed_documents(long_text), onnx_model.embed_documents(long_text))[0] < 0.999  # cut at 64, not 256


def test_a_tokenizer_file_that_tokenizes_otherwise_is_never_recorded(
    onnx_cache: Path, onnx_model: EmbeddingModel, sentence_transformer, tmp_path: Path
) -> None:
    folder = tmp_path / "minilm"
    shutil.copytree(packaged_minilm_path(), folder)
    export, _ = ensure_exported(sentence_transformer, quantized=False, root=tmp_path / "cache")
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["normalizer"]["lowercase"] = False  # the model lowercases; this file would not
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert record_folder(sentence_transformer, folder, export, root=tmp_path / "cache") is False
    assert not (tmp_path / "cache" / FOLDER_INDEX).exists()
    shutil.copy(Path(packaged_minilm_path()) / "tokenizer.json", folder / "tokenizer.json")
    assert record_folder(sentence_transformer, folder, export, root=tmp_path / "cache") is True
    assert [p.stem for p in (tmp_path / "cache" / FOLDER_INDEX).iterdir()] == [folder_fingerprint(folder)]
