"""Chunks per second of the Ray Data ingest job against a plain single-process loop.

Both index the same files with the same model, chunking and store writes into a fresh index;
runs alternate (single, ray, single, ray, ...) so machine noise hits both, and medians are
reported with their ratio. Ray is started once before timing, as a long-lived cluster would be.

    python benchmarks/ingest_throughput.py [--source DIR] [--max-pages 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from ingest_jobs.discovery import SourceScanner
from ingest_jobs.pipeline import EmbedChunks, ParseAndChunk, ParseConfig, file_row
from ingest_jobs.runner import IngestRun
from rag_core.audit import utc_now
from rag_core.embedding import EmbeddingModel
from rag_core.index_store import MANIFEST_COLUMNS, VersionedIndex, manifest_from_rows
from rag_core.settings import load_settings

SHARED_PDFS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pdfs"


def pick_corpus(source: Path | None, max_pages: int, workdir: Path) -> Path:
    """Default: the shared PDFs with text and at most `max_pages` pages (the 400-page manual alone
    would dominate), copied to a temp folder so both variants read the same bytes."""
    if source is not None:
        return source
    rows = csv.DictReader((SHARED_PDFS / "MANIFEST.tsv").open(), delimiter="\t")
    corpus = workdir / "corpus"
    corpus.mkdir()
    for row in rows:
        if row["extractable_text"] != "no" and row["pages"] and int(row["pages"]) <= max_pages:
            shutil.copy(SHARED_PDFS / row["filename"], corpus / row["filename"])
    return corpus


def single_process_loop(settings, source: Path) -> int:
    """The plain loop: scan, then per file parse + chunk, embed, write; one process, all cores."""
    scan = SourceScanner(settings.ingest.extensions, int(settings.ingest.max_file_mb * 2**20)).scan(source)
    model = EmbeddingModel.from_setting(settings.embedding_model, "cpu", settings.embedding_query_instruction)
    embed = EmbedChunks(
        model.spec.to_dict(), "cpu", settings.ingest.embed_torch_threads or len(os.sched_getaffinity(0)), settings.ingest.embed_batch_size
    )
    index = VersionedIndex.from_settings(settings)
    builder = index.begin(model.spec, settings.chunking.model_dump(), parent=None)
    parse = ParseAndChunk(
        ParseConfig(
            passwords=(),
            chunk_size=settings.chunking.chunk_size,
            chunk_overlap=settings.chunking.chunk_overlap,
            separators=tuple(settings.chunking.separators),
            ingested_at=utc_now(),
            index_version=builder.version,
        )
    )
    written = []
    for source_file in scan.files:
        rows = parse(
            pa.Table.from_pylist(
                [file_row(source_file.path, source_file.absolute.read_bytes(), source_file.sidecar_sha256, source_file.metadata)]
            )
        )
        good = rows.filter(pa.compute.equal(rows.column("error"), ""))
        for offset in range(0, good.num_rows, settings.ingest.embed_batch_size):
            batch = embed(good.slice(offset, settings.ingest.embed_batch_size)).drop_columns(["error"])
            builder.add(batch)
            written.append(batch.select(MANIFEST_COLUMNS))
    info = builder.commit(manifest_from_rows(pa.concat_tables(written)))
    index.set_current(info.version)
    return info.chunks_total


def ray_data_job(settings, source: Path) -> int:
    return IngestRun(settings, source).run().chunks_total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path)
    parser.add_argument("--max-pages", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    cores = len(os.sched_getaffinity(0))
    ray.init(address="local", num_cpus=cores, configure_logging=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        source = pick_corpus(args.source, args.max_pages, workdir)
        files = sum(1 for p in source.rglob("*") if p.is_file())
        timings: dict[str, list[float]] = {"single_process": [], "ray_data": []}
        chunks: dict[str, int] = {}
        for run in range(args.repeat):
            for name, variant in (("single_process", single_process_loop), ("ray_data", ray_data_job)):
                settings = load_settings(index_dir=workdir / f"{name}-{run}")
                started = time.perf_counter()
                chunks[name] = variant(settings, source)
                timings[name].append(time.perf_counter() - started)
                print(f"run {run} {name:<15} {chunks[name]} chunks in {timings[name][-1]:.1f} s", flush=True)
    ray.shutdown()
    assert chunks["single_process"] == chunks["ray_data"], chunks
    medians = {name: statistics.median(values) for name, values in timings.items()}
    rates = {name: chunks[name] / medians[name] for name in medians}
    result = {
        "files": files,
        "chunks": chunks["ray_data"],
        "cores": cores,
        "repeat": args.repeat,
        "median_s": {k: round(v, 2) for k, v in medians.items()},
        "chunks_per_s": {k: round(v, 1) for k, v in rates.items()},
        "ratio_ray_over_single": round(rates["ray_data"] / rates["single_process"], 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
