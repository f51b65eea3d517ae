"""The embedding model on ONNX Runtime: exported locally from the loaded weights, cached on disk.

sentence-transformers' own `backend="onnx"` needs optimum-onnx, whose releases pin
transformers < 4.58 while sentence-transformers 6 needs transformers >= 5: the two cannot be
installed together. So the model is exported here with `torch.onnx.export` (the dynamo exporter)
from the weights already loaded by sentence-transformers, never downloaded, and int8 is ONNX
Runtime's dynamic quantization of that export, what `export_dynamic_quantized_onnx_model` does
through optimum. The graph is the whole SentenceTransformer forward (transformer, pooling,
normalize); tokenization stays the model's own (`SentenceTransformer.preprocess`).

Exports are cached under `$RAG_ONNX_CACHE_DIR`, else `$XDG_CACHE_HOME/rag-service/onnx`, else
`~/.cache/rag-service/onnx`, in a folder named by a hash of the weights, the module stack and this
exporter's revision: another model, other weights or another export recipe never reuse a file.
A file lock makes concurrent loaders (embedding actors on one node) export once; files are written
under a temporary name and renamed, so a reader never sees half a model.

Loading without torch: importing sentence-transformers (torch and transformers) takes 4-12 s in a
fresh process, on the critical path of every ingest's embedding actors and every Embedder replica,
while ONNX Runtime and `tokenizers` import in 0.3 s. After a load through sentence-transformers, the
model folder's `tokenizer.json` is checked to give exactly the model's own features (ids, masks,
truncation, padding) on probe texts; if it does, an entry keyed by a hash of the folder's files is
written under `by-folder/`. The next load of an unchanged folder (`load_recorded`) runs the cached
export with that tokenizer and never imports torch. Any change to the folder's files changes the key,
so it goes through sentence-transformers again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Bump when the export or quantization recipe changes: old cache entries are then left unused.
EXPORT_REVISION = "rag-onnx/1"
FP32_FILE = "model.onnx"
INT8_FILE = "model-int8.onnx"
# Dynamic int8 quantization, as sentence-transformers' export_dynamic_quantized_onnx_model does it
# through optimum: int8 weights per output channel for the MatMuls and the embedding tables (Gather),
# activations quantized per batch at run time. Measured against torch on SciFact: cosine median 0.994,
# minimum 0.987. Per-tensor weights dropped the minimum to 0.90; uint8 weights or a reduced range
# changed it by < 0.002; leaving Gather in fp32 changed nothing but the file size (59 MB, not 24).
INT8_OP_TYPES = ["MatMul", "Gather"]
INT8_RECIPE = f"dynamic qint8 per-channel {'+'.join(INT8_OP_TYPES)}"
FOLDER_INDEX = "by-folder"
TOKENIZER_FILE = "tokenizer.json"
# What a recorded tokenizer must reproduce before it replaces the model's own: empty and blank
# input, accents, other scripts, symbols, and a text longer than any model's maximum length.
PROBE_TEXTS = [
    "",
    "   ",
    "What is the maximum dosage of ibuprofen for adults?",
    "  Leading and trailing blanks\tand a tab\n",
    "Ünïcödé façade — “quoted” naïve café, 10⁻³ µm at 37 °C, α-synuclein & β2-adrenergic",
    "東京都の人口は約1400万人です。 서울은 한국의 수도입니다. Москва — столица России.",
    "IL-6/STAT3 signalling (p < 0.05; n = 1,204) in CD4+ T-cells [ref. 12] — see Fig. 3b.",
    " ".join(f"token{i} with-hyphen, and punctuation;" for i in range(700)),
]

Features = dict[str, np.ndarray]


def cache_root() -> Path:
    explicit = os.environ.get("RAG_ONNX_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rag-service" / "onnx"


def weights_fingerprint(model: Any) -> str:
    """What the export depends on: the weights, the module stack (pooling, normalize), the maximum
    sequence length and the export recipe. Hashing the loaded tensors rather than files makes it
    the same for a Hub cache, a folder or the packaged copy of identical weights."""
    digest = hashlib.sha256()
    digest.update(EXPORT_REVISION.encode())
    digest.update(INT8_RECIPE.encode())
    digest.update(repr(model).encode())
    digest.update(str(model.max_seq_length).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def _input_names(model: Any) -> list[str]:
    features = model.preprocess(["an example sentence"])
    return [name for name, value in features.items() if hasattr(value, "shape")]


def model_tokenizer(model: Any) -> Callable[[list[str]], Features]:
    """The loaded sentence-transformers model's own tokenization, as numpy arrays."""

    def tokenize(texts: list[str]) -> Features:
        return {name: value.numpy() for name, value in model.preprocess(texts).items() if hasattr(value, "numpy")}

    return tokenize


def file_tokenizer(path: Path, config: dict[str, Any]) -> Callable[[list[str]], Features]:
    """A `tokenizers` tokenizer from `tokenizer.json`, truncating and padding as `config` (recorded from
    the model) says: the file's own truncation and padding are the exporter's, not the model's."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.enable_truncation(max_length=int(config["max_length"]))
    tokenizer.enable_padding(
        direction=config["padding_side"],
        pad_id=int(config["pad_id"]),
        pad_type_id=int(config["pad_type_id"]),
        pad_token=config["pad_token"],
    )
    fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
    names = list(config["inputs"])

    def tokenize(texts: list[str]) -> Features:
        encodings = tokenizer.encode_batch(texts)
        return {name: np.array([getattr(e, fields[name]) for e in encodings], dtype=np.int64) for name in names}

    return tokenize


def folder_fingerprint(folder: Path) -> str:
    """A hash of every file a load could read from the model folder (hidden ones aside: download
    metadata, .gitattributes). About 0.2 s for MiniLM's 91 MB."""
    digest = hashlib.sha256(EXPORT_REVISION.encode())
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        digest.update(relative.as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:32]


def record_folder(model: Any, folder: Path, export_path: Path, root: Path | None = None) -> bool:
    """After `model` was loaded from `folder` and exported to `export_path`: record them for
    `load_recorded` when the folder's tokenizer.json reproduces the model's features on
    PROBE_TEXTS. Returns whether an entry was written."""
    tokenizer_file = folder / TOKENIZER_FILE
    tokenizer = getattr(model, "tokenizer", None)
    if not tokenizer_file.is_file() or tokenizer is None or getattr(tokenizer, "pad_token_id", None) is None:
        return False
    config = {
        "max_length": int(model.max_seq_length),
        "padding_side": str(getattr(tokenizer, "padding_side", "right")),
        "pad_id": int(tokenizer.pad_token_id),
        "pad_type_id": int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
        "pad_token": str(tokenizer.pad_token),
        "inputs": _input_names(model),
    }
    try:
        expected, got = model_tokenizer(model)(PROBE_TEXTS), file_tokenizer(tokenizer_file, config)(PROBE_TEXTS)
        same = all(np.array_equal(expected[name], got[name]) for name in config["inputs"])
    except Exception as exc:  # a tokenizer.json the tokenizers library cannot read, an unknown input
        log.info("embedding model folder not recorded for loading without torch: %s", exc)
        return False
    if not same:
        log.info("embedding model folder not recorded for loading without torch: its tokenizer.json tokenizes differently")
        return False
    entry = {"export": export_path.parent.name, "tokenizer": config, "folder": str(folder)}
    index = (root or cache_root()) / FOLDER_INDEX
    try:
        index.mkdir(parents=True, exist_ok=True)
        _write_atomically(index, f"{folder_fingerprint(folder)}.json", lambda path: path.write_text(json.dumps(entry, indent=1)))
    except OSError as exc:  # a read-only or full cache: loads keep going through sentence-transformers
        log.info("embedding model folder not recorded for loading without torch: %s", exc)
        return False
    return True


def load_recorded(folder: Path, quantized: bool, threads: int | None = None, root: Path | None = None) -> OnnxSentenceEncoder | None:
    """The recorded export of this exact folder on ONNX Runtime with its file tokenizer, without
    importing torch; None when the folder (as it is now) or its export was never recorded."""
    root = root or cache_root()
    try:
        entry = json.loads((root / FOLDER_INDEX / f"{folder_fingerprint(folder)}.json").read_text())
    except (OSError, ValueError):
        return None
    onnx_path = root / entry["export"] / (INT8_FILE if quantized else FP32_FILE)
    if not onnx_path.is_file():
        return None
    return OnnxSentenceEncoder(file_tokenizer(folder / TOKENIZER_FILE, entry["tokenizer"]), onnx_path, threads)


def _export_fp32(model: Any, target: Path) -> None:
    import torch

    names = _input_names(model)

    class SentenceGraph(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *tensors: Any) -> Any:
            return self.inner(dict(zip(names, tensors)))["sentence_embedding"]

    features = model.preprocess(["a first example sentence", "and a second, somewhat longer example sentence to pad"])
    example = tuple(features[name] for name in names)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    graph = SentenceGraph(model).eval()
    # The exporter prints its progress on stdout, where the ingest job's last line is its summary,
    # and it and its optimizer log and warn about things that do not concern this model.
    quiet = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph,
                example,
                input_names=names,
                output_names=["sentence_embedding"],
                dynamic_shapes=(tuple({0: batch, 1: seq} for _ in names),),  # forward(*tensors): one varargs parameter
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    program.save(str(target), external_data=False)


def _quantize_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer logs a line per tensor on the root logger: silenced for the few seconds it runs.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(source, target, op_types_to_quantize=INT8_OP_TYPES, per_channel=True, weight_type=QuantType.QInt8)
    finally:
        logging.disable(previous)


def _write_atomically(folder: Path, name: str, writer: Any) -> None:
    fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        writer(Path(temporary))
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(temporary, folder / name)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def ensure_exported(model: Any, quantized: bool, root: Path | None = None) -> tuple[Path, bool]:
    """The cached ONNX file for this model (int8 when `quantized`), exported first if missing.
    Returns the path and whether this call exported anything."""
    from filelock import FileLock

    folder = (root or cache_root()) / weights_fingerprint(model)
    wanted = folder / (INT8_FILE if quantized else FP32_FILE)
    if wanted.is_file():
        return wanted, False
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".export.lock")):
        if wanted.is_file():  # another process exported it while this one waited
            return wanted, False
        started = time.monotonic()
        fp32 = folder / FP32_FILE
        if not fp32.is_file():
            log.info("exporting the embedding model to ONNX", extra={"fields": {"target": str(fp32)}})
            _write_atomically(folder, FP32_FILE, lambda path: _export_fp32(model, path))
        if quantized:
            log.info("quantizing the ONNX embedding model to int8", extra={"fields": {"target": str(wanted)}})
            _write_atomically(folder, INT8_FILE, lambda path: _quantize_int8(fp32, path))
        _write_atomically(
            folder,
            "export.json",
            lambda path: path.write_text(json.dumps(_export_record(model, folder), indent=1, sort_keys=True)),
        )
        log.info("ONNX export done in %.1f s: %s", time.monotonic() - started, wanted)
    return wanted, True


def _export_record(model: Any, folder: Path) -> dict[str, Any]:
    """For people looking at the cache: what each file was made from and with what."""
    import onnxruntime
    import torch

    return {
        "revision": EXPORT_REVISION,
        "model": repr(model),
        "max_seq_length": model.max_seq_length,
        "files": sorted(p.name for p in folder.glob("*.onnx")),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "int8_recipe": INT8_RECIPE,
    }


class OnnxSentenceEncoder:
    """Encodes like `SentenceTransformer.encode` (length-sorted batches, the model's tokenization and
    maximum length), with the forward pass on an ONNX Runtime session. `tokenize` is the loaded
    model's own (`model_tokenizer`) or its recorded file tokenizer (`file_tokenizer`)."""

    def __init__(self, tokenize: Callable[[list[str]], Features], onnx_path: Path, threads: int | None = None, device: str = "cpu"):
        import onnxruntime as ort

        self._tokenize = tokenize
        self.onnx_path = onnx_path
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default, the physical cores
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                log.warning("embedding device %s: this onnxruntime has no CUDA provider, the ONNX model runs on CPU", device)
        self._session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._dimension = int(self._session.get_outputs()[0].shape[-1])

    def get_embedding_dimension(self) -> int:
        return self._dimension

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        normalize_embeddings: bool = False,
        convert_to_numpy: bool = True,
        show_progress_bar: bool = False,
    ) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # as sentence-transformers batches
        out = np.empty((len(texts), self._dimension), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            picked = order[start : start + batch_size]
            features = self._tokenize([texts[i] for i in picked])
            feed = {name: features[name] for name in self._inputs}
            out[picked] = self._session.run(None, feed)[0]
        if normalize_embeddings:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.maximum(norms, 1e-12)
        return out
