"""Chunks per second of the ingest job: against a plain single-process loop, beside a serving
graph, on many small files, and over parse concurrency and torch threads.

    python benchmarks/ingest_throughput.py [--source DIR] [--max-pages 20] [--repeat 3]
    python benchmarks/ingest_throughput.py --mode beside-serving [--repeat 3] [--query-seconds 30]
    python benchmarks/ingest_throughput.py --mode small-files [--repeat 2] [--abstracts 5183]
    python benchmarks/ingest_throughput.py --mode tune [--repeat 2] [--max-pages 20]

- loop (default): the Ray Data job (`IngestRun`) against a single-process loop over the same
  files with the same model, chunking and store writes into a fresh index; runs alternate
  (single, ray, ...) so machine noise hits both; medians and their ratio. Ray is started once
  before timing, as a long-lived cluster would be.
- beside-serving: the real job (`ray job submit`) over the 118 shared PDFs on a cluster of
  exactly the machine's cores (`ray start --head --num-cpus <cores>`), alone and beside an idle
  Serve graph (the real graph over a small index, deployed before each "beside" run and shut
  down before each "alone" run), alternating alone, beside, alone, beside...; medians of
  chunks/s from the job's own summary (chunks_added / duration_s: the whole job). Then the p50
  and p95 of /v1/retrieve at concurrency 1 on the idle graph, and while one more ingest runs.
- small-files: the same job over SciFact abstracts written one .txt per abstract (under /tmp,
  never the repo) against the 118 PDFs, alternating, alone on the cluster; medians and ratio.
- tune: parse concurrency x embedding torch threads (1 and 2 each by default), alone, over the
  shared PDFs of at most --max-pages pages, alternating; medians.

OCR is turned off in the job modes (RAG_INGEST__OCR__ENABLED=false), so the OCR of the scans
(and whether Tesseract is installed) does not dominate; PII redaction and PDF tables stay on.
Run heavy modes under `flock /tmp/cpu.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ingest_jobs.discovery import SourceScanner  # noqa: E402
from ingest_jobs.pipeline import EmbedChunks, ParseAndChunk, ParseConfig, file_row, node_cores  # noqa: E402
from ingest_jobs.runner import IngestRun  # noqa: E402
from rag_core.audit import utc_now  # noqa: E402
from rag_core.embedding import EmbeddingModel  # noqa: E402
from rag_core.index_store import MANIFEST_COLUMNS, VersionedIndex, manifest_from_rows  # noqa: E402
from rag_core.settings import load_settings  # noqa: E402

SHARED = REPO_ROOT.parent / "shared" / "data"
SHARED_PDFS = SHARED / "pdfs"
SCIFACT = SHARED / "beir" / "scifact" / "corpus.jsonl"
QUESTIONS = SHARED / "qa" / "squad2_dev_cs224n" / "questions.jsonl"


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


# -- loop: Ray Data job against a single-process loop ---------------------------------------------
def single_process_loop(settings, source: Path) -> int:
    """The plain loop: scan, then per file parse + chunk, embed, write; one process, all cores."""
    scan = SourceScanner(settings.ingest.extensions, int(settings.ingest.max_file_mb * 2**20)).scan(source)
    model = EmbeddingModel.from_setting(settings.embedding_model, "cpu", settings.embedding_query_instruction)
    threads = settings.ingest.embed_torch_threads or node_cores()
    # The same text the job embeds (contextual text when the settings turn it on).
    embed = EmbedChunks(model.spec.to_dict(), "cpu", threads, settings.ingest.embed_batch_size, contextual=settings.chunking.contextual)
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


def loop_mode(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    cores = node_cores()
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
    return {
        "files": files,
        "chunks": chunks["ray_data"],
        "cores": cores,
        "repeat": args.repeat,
        "median_s": {k: round(v, 2) for k, v in medians.items()},
        "chunks_per_s": {k: round(v, 1) for k, v in rates.items()},
        "ratio_ray_over_single": round(rates["ray_data"] / rates["single_process"], 3),
    }


# -- the job on a cluster of the machine's cores -----------------------------------------------------
class Cluster:
    """`ray start --head --block --num-cpus N` on free ports (own temp dir), and a driver
    connection from this process for Serve."""

    def __init__(self, cpus: int):
        from tests.local_cluster import LocalRayCluster, free_port

        self.cpus = cpus
        self.node = LocalRayCluster(workers=0, head_cpus=cpus)
        self.tmp = Path(tempfile.mkdtemp(prefix="rib", dir="/tmp"))  # short: Ray's socket paths
        self.node.start(self.tmp, timeout_s=180)
        self.http_port = free_port()
        self.serving = False

    def submit(self, source: Path, index_dir: Path, **settings: str) -> dict[str, Any]:
        """`ray job submit ... -- python -m ingest_jobs.index --source DIR`; the job's summary."""
        env_vars = {
            "RAG_CONFIG": str(REPO_ROOT / "configs" / "rag.yaml"),
            "RAG_INDEX_DIR": str(index_dir),
            "RAG_INGEST__OCR__ENABLED": "false",
            "RAG_INGEST__PASSWORDS": json.dumps(manifest_passwords()),
            **settings,
        }
        from tests.local_cluster import ingest_summary

        done = self.node.submit_ingest(source, env_vars, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(done.stdout[-3000:] + done.stderr[-3000:])
        return ingest_summary(done)

    def deploy(self, index_dir: Path) -> str:
        """The real graph (configs/rag.yaml, minimum replicas: 1.5 CPUs) over `index_dir`."""
        import ray
        from ray import serve

        from serve_app.app import build_graph

        if not ray.is_initialized():
            ray.init(address=self.node.gcs_address, configure_logging=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": self.http_port})
        settings = load_settings(REPO_ROOT / "configs" / "rag.yaml", index_dir=index_dir, auth={"rate_limit_enabled": False})
        serve.run(build_graph(settings), name="rag", route_prefix="/")
        self.serving = True
        url = f"http://127.0.0.1:{self.http_port}"
        wait_healthy(url)
        return url

    def undeploy(self) -> None:
        import ray
        from ray import serve

        if self.serving:
            serve.shutdown()
            self.serving = False
            deadline = time.monotonic() + 60  # until the replicas' CPUs are back
            while ray.available_resources().get("CPU", 0) < self.cpus - 1e-6 and time.monotonic() < deadline:
                time.sleep(1)

    def stop(self) -> None:
        import ray

        ray.shutdown()
        self.node.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def manifest_passwords() -> list[str]:
    rows = csv.DictReader((SHARED_PDFS / "MANIFEST.tsv").open(), delimiter="\t")
    return sorted({row["password"] for row in rows if row["password"]})


def wait_healthy(url: str, timeout_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url}/health not healthy after {timeout_s} s")


def pdf_corpus(workdir: Path, max_pages: int | None = None) -> Path:
    """The shared PDFs (all 118, or those of at most `max_pages` pages with text) in a temp folder."""
    corpus = workdir / ("pdfs" if max_pages is None else f"pdfs-{max_pages}p")
    if corpus.exists():
        return corpus
    corpus.mkdir()
    for row in csv.DictReader((SHARED_PDFS / "MANIFEST.tsv").open(), delimiter="\t"):
        if max_pages is None or (row["extractable_text"] != "no" and row["pages"] and int(row["pages"]) <= max_pages):
            shutil.copy(SHARED_PDFS / row["filename"], corpus / row["filename"])
    return corpus


def scifact_corpus(workdir: Path, count: int) -> Path:
    """SciFact abstracts, one .txt file each (title, blank line, abstract)."""
    corpus = workdir / f"scifact-{count}"
    corpus.mkdir(exist_ok=True)
    with SCIFACT.open() as lines:
        for number, line in enumerate(lines):
            if number >= count:
                break
            doc = json.loads(line)
            (corpus / f"{doc['_id']}.txt").write_text(f"{doc['title']}\n\n{doc['text']}\n")
    return corpus


def rate(summary: dict[str, Any]) -> float:
    return summary["chunks_added"] / summary["duration_s"]


def describe(label: str, summary: dict[str, Any]) -> str:
    r = summary.get("resources", {})
    return (
        f"{label:<28} {summary['chunks_added']:>6} chunks in {summary['duration_s']:7.1f} s = {rate(summary):5.1f} chunks/s "
        f"(free {r.get('cpus_free')} CPU; parse {r.get('parse_num_cpus')} x {r.get('parse_concurrency')}, "
        f"embed {r.get('embed_num_cpus')}, blocks {r.get('blocks')}, failed {len(summary['files_failed'])})"
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class QueryLoop:
    """/v1/retrieve at concurrency 1 (one client, back to back) with SQuAD questions."""

    def __init__(self, url: str):
        self.url = url
        self.questions = [json.loads(line)["question"] for line in QUESTIONS.read_text().splitlines()]
        self.next = 0
        self.latencies_ms: list[float] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                question = self.questions[self.next % len(self.questions)]
                self.next += 1
                began = time.perf_counter()
                try:
                    response = client.post(f"{self.url}/v1/retrieve", json={"query": question, "top_k": 5})
                    if response.status_code != 200:
                        self.errors.append(str(response.status_code))
                        continue
                except httpx.HTTPError as exc:
                    self.errors.append(type(exc).__name__)
                    continue
                self.latencies_ms.append((time.perf_counter() - began) * 1000)

    def start(self) -> QueryLoop:
        self.latencies_ms, self.errors = [], []
        self.stop.clear()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def finish(self) -> dict[str, Any]:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout=120)
        values = self.latencies_ms
        return {
            "queries": len(values),
            "errors": len(self.errors),
            "p50_ms": round(percentile(values, 50), 1) if values else None,
            "p95_ms": round(percentile(values, 95), 1) if values else None,
        }


def beside_serving_mode(args: argparse.Namespace, cluster: Cluster, workdir: Path) -> dict[str, Any]:
    corpus = args.source or pdf_corpus(workdir)
    served = workdir / "served-index"
    print(describe("served index (samples)", cluster.submit(REPO_ROOT / "samples", served)), flush=True)
    runs: dict[str, list[float]] = {"alone": [], "beside": []}
    summaries: dict[str, list[dict[str, Any]]] = {"alone": [], "beside": []}
    url = ""
    for round_ in range(args.repeat):
        for variant in ("alone", "beside"):
            if variant == "beside":
                url = cluster.deploy(served)
                time.sleep(args.settle_s)  # replicas idle, as between queries
            else:
                cluster.undeploy()
            summary = cluster.submit(corpus, workdir / f"{variant}-{round_}")
            runs[variant].append(rate(summary))
            summaries[variant].append(summary.get("resources", {}))
            print(describe(f"round {round_} {variant}", summary), flush=True)
    # Latency of the graph at concurrency 1: idle, then during one more ingest.
    if not cluster.serving:
        url = cluster.deploy(served)
    time.sleep(args.settle_s)
    queries = QueryLoop(url).start()
    time.sleep(args.query_seconds)
    idle = queries.finish()
    queries.start()
    during_summary = cluster.submit(corpus, workdir / "beside-queried")
    during = queries.finish()
    print(describe("beside, queried at c=1", during_summary), flush=True)
    cluster.undeploy()
    medians = {variant: statistics.median(values) for variant, values in runs.items()}
    return {
        "files": sum(1 for _ in corpus.iterdir()),
        "chunks": during_summary["chunks_added"],
        "repeat": args.repeat,
        "chunks_per_s": {k: [round(v, 1) for v in values] for k, values in runs.items()},
        "median_chunks_per_s": {k: round(v, 1) for k, v in medians.items()},
        "ratio_beside_over_alone": round(medians["beside"] / medians["alone"], 3),
        "resources": summaries,
        "retrieve_idle": idle,
        "retrieve_during_ingest": during,
        "ingest_while_queried_chunks_per_s": round(rate(during_summary), 1),
    }


def small_files_mode(args: argparse.Namespace, cluster: Cluster, workdir: Path) -> dict[str, Any]:
    variants: dict[str, tuple[Path, dict[str, str]]] = {
        "pdfs": (args.source or pdf_corpus(workdir), {}),
        "small_files": (scifact_corpus(workdir, args.abstracts), {}),
    }
    if args.one_file_per_block:
        variants["small_files_one_per_block"] = (variants["small_files"][0], {"RAG_INGEST__BLOCK_MAX_FILES": "1"})
    runs: dict[str, list[float]] = {name: [] for name in variants}
    chunks: dict[str, int] = {}
    blocks: dict[str, Any] = {}
    for round_ in range(args.repeat):
        for name, (corpus, settings) in variants.items():
            summary = cluster.submit(corpus, workdir / f"{name}-{round_}", **settings)
            runs[name].append(rate(summary))
            chunks[name] = summary["chunks_added"]
            blocks[name] = summary.get("resources", {}).get("blocks")
            print(describe(f"round {round_} {name}", summary), flush=True)
    medians = {name: statistics.median(values) for name, values in runs.items()}
    return {
        "files": {name: sum(1 for _ in corpus.iterdir()) for name, (corpus, _) in variants.items()},
        "chunks": chunks,
        "blocks": blocks,
        "repeat": args.repeat,
        "chunks_per_s": {k: [round(v, 1) for v in values] for k, values in runs.items()},
        "median_chunks_per_s": {k: round(v, 1) for k, v in medians.items()},
        "ratio_small_over_pdfs": round(medians["small_files"] / medians["pdfs"], 3),
    }


def tune_mode(args: argparse.Namespace, cluster: Cluster, workdir: Path) -> dict[str, Any]:
    corpus = args.source or pdf_corpus(workdir, args.max_pages)
    grid = [(p, t) for p in args.parse_concurrency for t in args.torch_threads]
    runs: dict[str, list[float]] = {f"parse {p} x torch {t}": [] for p, t in grid}
    for round_ in range(args.repeat):
        for p, t in grid if round_ % 2 == 0 else list(reversed(grid)):
            name = f"parse {p} x torch {t}"
            settings = {"RAG_INGEST__PARSE_CONCURRENCY": str(p), "RAG_INGEST__EMBED_TORCH_THREADS": str(t)}
            summary = cluster.submit(corpus, workdir / f"tune-{p}-{t}-{round_}", **settings)
            runs[name].append(rate(summary))
            print(describe(f"round {round_} {name}", summary), flush=True)
    medians = {name: statistics.median(values) for name, values in runs.items()}
    return {
        "files": sum(1 for _ in corpus.iterdir()),
        "repeat": args.repeat,
        "chunks_per_s": {k: [round(v, 1) for v in values] for k, values in runs.items()},
        "median_chunks_per_s": {k: round(v, 1) for k, v in medians.items()},
        "best": max(medians, key=medians.get),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["loop", "beside-serving", "small-files", "tune"], default="loop")
    parser.add_argument("--source", type=Path, help="documents to ingest instead of the shared PDFs")
    parser.add_argument("--max-pages", type=int, default=20, help="loop and tune: PDFs of at most this many pages")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=None, help="logical CPUs of the cluster (default: this machine's cores)")
    parser.add_argument("--settle-s", type=float, default=10.0, help="beside-serving: idle time after a deploy")
    parser.add_argument("--query-seconds", type=float, default=30.0, help="beside-serving: idle query window")
    parser.add_argument("--abstracts", type=int, default=5183, help="small-files: SciFact abstracts to write")
    parser.add_argument("--one-file-per-block", action="store_true", help="small-files: also with block_max_files=1 (as before)")
    parser.add_argument("--parse-concurrency", type=int, nargs="+", default=[1, 2], help="tune: values to try")
    parser.add_argument("--torch-threads", type=int, nargs="+", default=[1, 2], help="tune: values to try")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.mode == "loop":
        result = loop_mode(args)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="ingest-bench-", dir="/tmp"))
        cluster = Cluster(args.cpus or node_cores())
        try:
            mode = {"beside-serving": beside_serving_mode, "small-files": small_files_mode, "tune": tune_mode}[args.mode]
            result = {"mode": args.mode, "cluster_cpus": cluster.cpus, "cores": node_cores(), **mode(args, cluster, workdir)}
        finally:
            cluster.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
