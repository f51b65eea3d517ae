"""HTTP latency of /v1/retrieve and /v1/query (extractive) at concurrency 1, 8 and 32: the Serve
graph (`serve run configs/serve.yaml`) against a single-process FastAPI app running the same
stages (`python -m serve_app.local`), measured alternately in one run over the same index.

    python benchmarks/serve_latency.py --index-dir ~/.cache/rag-eval/nfcorpus/index \
        --queries ../shared/data/beir/nfcorpus/queries.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from beir_eval import wait_healthy  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
GRAPH_URL = "http://127.0.0.1:8000"
BASELINE_PORT = 8100


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def drive(url: str, path: str, payloads: list[dict], concurrency: int, requests: int) -> dict:
    latencies: list[float] = []
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
                    status = type(exc).__name__
                latencies.append((time.perf_counter() - started) * 1000)
                if status != "200":
                    errors[status] = errors.get(status, 0) + 1

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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index-dir", type=Path, required=True)
    parser.add_argument("--queries", type=Path, required=True, help="BEIR queries.jsonl (the question texts)")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests-per-worker", type=int, default=25)
    parser.add_argument("--min-requests", type=int, default=100)
    args = parser.parse_args()

    texts = [json.loads(line)["text"] for line in args.queries.open()][:500]
    payloads = {
        "/v1/retrieve": [{"query": t, "top_k": 10} for t in texts],
        "/v1/query": [{"question": t, "top_k": 5, "use_cache": False} for t in texts],
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    # The answer cache is off: queries repeat, and this measures the pipeline (benchmarks/cache_latency.py measures the cache).
    env.update(
        RAG_INDEX_DIR=str(args.index_dir.resolve()),
        RAG_CACHE__ENABLED="false",
        RAG_AUTH__RATE_LIMIT_ENABLED="false",
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
    )
    graph = subprocess.Popen(
        ["serve", "run", "-a", "local", "configs/serve.yaml"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    baseline = subprocess.Popen(
        [sys.executable, "-m", "serve_app.local"],
        cwd=REPO_ROOT,
        env={**env, "RAG_API__PORT": str(BASELINE_PORT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    baseline_url = f"http://127.0.0.1:{BASELINE_PORT}"
    try:
        health = wait_healthy(GRAPH_URL)
        wait_healthy(baseline_url)
        print(f"index {health['index_version']}: {health['chunks_indexed']} chunks, model {health['embedding_model']}", flush=True)
        for url in (GRAPH_URL, baseline_url):  # warm both before measuring
            asyncio.run(drive(url, "/v1/retrieve", payloads["/v1/retrieve"], 4, 40))
            asyncio.run(drive(url, "/v1/query", payloads["/v1/query"], 4, 40))
        rows = []
        for path in ("/v1/retrieve", "/v1/query"):
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                requests = max(args.min_requests, concurrency * args.requests_per_worker)
                graph_result = asyncio.run(drive(GRAPH_URL, path, payloads[path], concurrency, requests))
                base_result = asyncio.run(drive(baseline_url, path, payloads[path], concurrency, requests))
                row = {
                    "endpoint": path,
                    "concurrency": concurrency,
                    "serve_graph": graph_result,
                    "single_process": base_result,
                    "p50_ratio_graph_over_single": round(graph_result["p50_ms"] / base_result["p50_ms"], 2),
                    "throughput_ratio_graph_over_single": round(graph_result["rps"] / base_result["rps"], 2),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
        print(
            "\n| endpoint | concurrency | Serve p50 / p95 / p99 ms | Serve req/s | errors | "
            "single-process p50 / p95 / p99 ms | single req/s | p50 ratio | throughput ratio |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            g, b = r["serve_graph"], r["single_process"]
            print(
                f"| {r['endpoint']} | {r['concurrency']} | {g['p50_ms']} / {g['p95_ms']} "
                f"/ {g['p99_ms']} | {g['rps']} | {sum(g['errors'].values())} | "
                f"{b['p50_ms']} / {b['p95_ms']} / {b['p99_ms']} | {b['rps']} | "
                f"{r['p50_ratio_graph_over_single']} | {r['throughput_ratio_graph_over_single']} |"
            )
    finally:
        for process in (graph, baseline):
            os.killpg(process.pid, signal.SIGTERM)
        for process in (graph, baseline):
            process.wait(timeout=120)


if __name__ == "__main__":
    main()
