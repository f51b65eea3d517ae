"""HTTP latency of /v1/retrieve and /v1/query (extractive), the Serve graph against the same stages
in one process, measured alternately in one run over the same index, with a per-hop profile.

    python benchmarks/serve_latency.py --index-dir /tmp/pdf-index --questions benchmarks/data/pdf_questions.jsonl
    python benchmarks/serve_latency.py --index-dir /tmp/squad-index \
        --questions ../shared/data/qa/squad2_dev_cs224n/questions.jsonl --variants default,throughput

Questions: any JSONL with a "question" or "text" field; only those of 10-25 words are asked.
Graph variants (each a fresh `serve run configs/serve.yaml` on its own local Ray):
- default: Ray's defaults (worker processes, so every replica, at nice 15);
- nice0: RAY_worker_niceness=0, replicas at the same priority as other processes;
- throughput: nice0 plus RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (Ray >= 2.56: gRPC between replicas,
  direct ingress into the Ingress replica on port 30000 without the HTTP proxy, buffered logs).

The profile comes from each response's Server-Timing header (the Ingress's own clock per stage):
client time minus the Ingress total is the HTTP path (Serve's proxy, or uvicorn in one process);
a stage's time in the graph minus the same stage in one process is that hop's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
GRAPH_URL = "http://127.0.0.1:8000"
BASELINE_PORT = 8100
VARIANTS = {
    "default": {},
    "nice0": {"RAY_worker_niceness": "0"},
    "throughput": {"RAY_worker_niceness": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
}
DIRECT_INGRESS_URL = "http://127.0.0.1:30000"  # the Ingress replica's own port with direct ingress


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def load_questions(path: Path, limit: int = 500) -> list[str]:
    texts = []
    for line in path.open():
        record = json.loads(line)
        text = record.get("question") or record.get("text") or ""
        if 10 <= len(text.split()) <= 25:
            texts.append(text)
    if not texts:
        raise SystemExit(f"{path}: no questions of 10-25 words")
    return texts[:limit]


def server_timing(header: str | None) -> dict[str, float]:
    stages = {}
    for part in (header or "").split(","):
        name, _, duration = part.strip().partition(";dur=")
        if name and duration:
            stages[name] = float(duration)
    return stages


def wait_healthy(url: str, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/health", timeout=5)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise SystemExit(f"service at {url} not healthy after {timeout_s} s")


async def drive(url: str, path: str, payloads: list[dict], concurrency: int, requests: int) -> dict:
    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    source = itertools.cycle(payloads)
    remaining = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            for _ in remaining:
                payload = next(source)
                started = time.perf_counter()
                try:
                    response = await client.post(path, json=payload)
                    status = str(response.status_code)
                except httpx.HTTPError as exc:
                    status, response = type(exc).__name__, None
                elapsed = (time.perf_counter() - started) * 1000
                latencies.append(elapsed)
                if status != "200":
                    errors[status] = errors.get(status, 0) + 1
                    continue
                timing = server_timing(response.headers.get("server-timing"))
                timing["client"] = elapsed
                if "total" in timing:
                    timing["http"] = elapsed - timing["total"]
                for name, ms in timing.items():
                    stages.setdefault(name, []).append(ms)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {
        "p50_ms": round(percentile(latencies, 50), 1),
        "p95_ms": round(percentile(latencies, 95), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "rps": round(len(latencies) / wall, 1),
        "requests": len(latencies),
        "errors": errors,
        "stage_p50_ms": {name: round(statistics.median(values), 2) for name, values in stages.items()},
    }


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop(process: subprocess.Popen, url: str | None = None) -> None:
    """Stops the process group; with `url`, waits until nothing answers there any more, so the
    next variant's health check cannot be answered by this one's proxy."""
    try:
        os.killpg(process.pid, signal.SIGTERM)  # a background `serve run` ignores SIGINT
        process.wait(timeout=120)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while url and time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/health", timeout=2)
        except httpx.HTTPError:
            return
        time.sleep(1)


def profile_rows(rows: list[dict]) -> None:
    """Median per stage at concurrency 1: graph, single process, and the difference (the hop)."""
    print("\n| variant | endpoint | where | client | HTTP path | ingress total | cache | embed | retrieve | generate |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["concurrency"] != 1:
            continue
        g, b = r["serve_graph"]["stage_p50_ms"], r["single_process"]["stage_p50_ms"]
        for label, s in (("graph", g), ("one process", b)):
            cells = [s.get(k, "") for k in ("client", "http", "total", "cache", "embed", "retrieve", "generate")]
            print(f"| {r['variant']} | {r['endpoint']} | {label} | " + " | ".join(str(c) for c in cells) + " |")
        diff = [
            round(g[k] - b[k], 2) if k in g and k in b else ""
            for k in ("client", "http", "total", "cache", "embed", "retrieve", "generate")
        ]
        print(f"| {r['variant']} | {r['endpoint']} | graph − one process | " + " | ".join(str(c) for c in diff) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index-dir", type=Path, required=True)
    parser.add_argument("--questions", type=Path, required=True, help="JSONL with a 'question' or 'text' field")
    parser.add_argument("--variants", default="default", help=f"comma-separated graph variants: {', '.join(VARIANTS)}")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--requests-per-worker", type=int, default=25)
    parser.add_argument("--min-requests", type=int, default=120)
    parser.add_argument(
        "--cache-hits",
        action="store_true",
        help="also measure exact answer-cache hits (/v1/query asked again) at concurrency 1; needs RAG_REDIS_URL or uses each "
        "process's in-memory cache",
    )
    args = parser.parse_args()

    texts = load_questions(args.questions)
    payloads = {
        "/v1/retrieve": [{"query": t, "top_k": 10} for t in texts],
        "/v1/query": [{"question": t, "top_k": 5, "use_cache": False} for t in texts],
    }
    if args.cache_hits:  # misses stay misses (use_cache false); hits are questions asked before, as users repeat them
        payloads["/v1/query (cache hit)"] = [{"question": t, "top_k": 5} for t in texts[:100]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_") or k == "RAG_REDIS_URL"}
    env.update(
        RAG_INDEX_DIR=str(args.index_dir.resolve()),
        RAG_CACHE__ENABLED="true" if args.cache_hits else "false",
        RAG_AUTH__RATE_LIMIT_ENABLED="false",
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
    )
    baseline = start([sys.executable, "-m", "serve_app.local"], {**env, "RAG_API__PORT": str(BASELINE_PORT)})
    baseline_url = f"http://127.0.0.1:{BASELINE_PORT}"
    rows = []
    try:
        wait_healthy(baseline_url)
        print(f"{len(texts)} questions of 10-25 words (median {statistics.median(len(t.split()) for t in texts)} words)", flush=True)
        for variant in args.variants.split(","):
            graph = start(["serve", "run", "-a", "local", "configs/serve.yaml"], {**env, **VARIANTS[variant]})
            try:
                health = wait_healthy(GRAPH_URL)
                graph_url = GRAPH_URL
                if "RAY_SERVE_THROUGHPUT_OPTIMIZED" in VARIANTS[variant]:
                    wait_healthy(DIRECT_INGRESS_URL)
                    graph_url = DIRECT_INGRESS_URL
                print(f"[{variant}] index {health['index_version']}: {health['chunks_indexed']} chunks, at {graph_url}", flush=True)
                for url in (graph_url, baseline_url):  # warm both before measuring
                    asyncio.run(drive(url, "/v1/retrieve", payloads["/v1/retrieve"], 4, 40))
                    asyncio.run(drive(url, "/v1/query", payloads["/v1/query"], 4, 40))
                if args.cache_hits:  # fill the cache through both (the in-memory caches are per process)
                    for url in (graph_url, baseline_url):
                        asyncio.run(drive(url, "/v1/query", payloads["/v1/query (cache hit)"], 4, 100))
                for endpoint in payloads:
                    path = endpoint.split(" ")[0]
                    levels = [1] if "hit" in endpoint else [int(c) for c in args.concurrency.split(",")]
                    for concurrency in levels:
                        requests = max(args.min_requests, concurrency * args.requests_per_worker)
                        graph_result = asyncio.run(drive(graph_url, path, payloads[endpoint], concurrency, requests))
                        base_result = asyncio.run(drive(baseline_url, path, payloads[endpoint], concurrency, requests))
                        row = {
                            "variant": variant,
                            "endpoint": endpoint,
                            "concurrency": concurrency,
                            "serve_graph": graph_result,
                            "single_process": base_result,
                            "p50_ratio_graph_over_single": round(graph_result["p50_ms"] / base_result["p50_ms"], 2),
                            "throughput_ratio_graph_over_single": round(graph_result["rps"] / base_result["rps"], 2),
                        }
                        rows.append(row)
                        print(json.dumps(row), flush=True)
            finally:
                stop(graph, GRAPH_URL)
        print(
            "\n| variant | endpoint | concurrency | Serve p50 / p95 / p99 ms | Serve req/s | errors | "
            "single-process p50 / p95 / p99 ms | single req/s | p50 ratio | throughput ratio |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            g, b = r["serve_graph"], r["single_process"]
            print(
                f"| {r['variant']} | {r['endpoint']} | {r['concurrency']} | {g['p50_ms']} / {g['p95_ms']} / {g['p99_ms']} | {g['rps']} | "
                f"{sum(g['errors'].values())} | {b['p50_ms']} / {b['p95_ms']} / {b['p99_ms']} | {b['rps']} | "
                f"{r['p50_ratio_graph_over_single']} | {r['throughput_ratio_graph_over_single']} |"
            )
        profile_rows(rows)
    finally:
        stop(baseline)


if __name__ == "__main__":
    main()
