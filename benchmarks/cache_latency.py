"""Answer-cache latency at the HTTP level, measured side by side in one run on one Ray cluster.

    python benchmarks/cache_latency.py [--requests 150]

Indexes the SQuAD 2.0 dev paragraphs (../shared/data/qa, one text file per paragraph) with the
real ingest job, starts a private redis-server, and deploys the Serve graph three times over that
index: `up` (Redis running), `down` (redis_url pointing at a port where nothing listens) and `off`
(cache disabled). Then, at concurrency 1, in rounds that alternate the request kinds:

- miss (up / down / off): a SQuAD question never asked before, so the whole pipeline runs;
- exact hit (up): a question asked before, case and punctuation changed;
- semantic hit (up): a question asked before with "the" inserted or removed (other words, same
  content words), counted only when the response says cache = "semantic".

Beside them, for the same Redis: exact hits on the single-process app (`python -m serve_app.local`,
the same FastAPI app and QueryService without Serve), and GET /openapi.json on both, a route that
does no work in the app: the floor of one HTTP round trip through each.

Prints p50/p95 per kind, the hit/miss ratio and what a down Redis adds to a miss.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from tests.redis_server import PrivateRedis  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def semantic_variant(question: str) -> str:
    if re.search(r"\bthe\b", question, flags=re.I):
        return re.sub(r"\bthe\s+", "", question, count=1, flags=re.I)
    words = question.split()
    return " ".join(words[:2] + ["the"] + words[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qa", type=Path, default=REPO_ROOT.parent / "shared/data/qa/squad2_dev_cs224n")
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache/rag-eval/squad-cache")
    parser.add_argument("--requests", type=int, default=150, help="per request kind")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    docs, index_dir = args.workdir / "docs", args.workdir / "index"
    docs.mkdir(parents=True, exist_ok=True)
    for line in (args.qa / "contexts.jsonl").open():
        context = json.loads(line)
        path = docs / f"{context['_id']}.txt"
        if not path.exists():
            path.write_text(f"{context['title']}\n\n{context['text']}\n")
    env = {**os.environ, "RAG_INDEX_DIR": str(index_dir), "RAG_CONFIG": str(REPO_ROOT / "configs/rag.yaml")}
    subprocess.run(
        [sys.executable, "-m", "ingest_jobs.index", "--source", str(docs)], cwd=REPO_ROOT, env=env, check=True, stdout=subprocess.DEVNULL
    )

    import ray
    from ray import serve

    from rag_core.settings import load_settings
    from serve_app.app import build_graph

    redis_server = PrivateRedis(Path(tempfile.mkdtemp())).start()
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False, configure_logging=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    apps = {
        "up": {"redis_url": redis_server.url},
        "down": {"redis_url": f"redis://127.0.0.1:{free_port()}/0"},  # nothing listens there
        "off": {"cache": {"enabled": False}},
    }
    for name, overrides in apps.items():
        settings = load_settings(REPO_ROOT / "configs/rag.yaml", index_dir=index_dir, auth={"rate_limit_enabled": False}, **overrides)
        serve.run(build_graph(settings), name=name, route_prefix=f"/{name}")
    local_port = free_port()
    local_app = subprocess.Popen(
        [sys.executable, "-m", "serve_app.local"],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={
            **env,
            "RAG_REDIS_URL": redis_server.url,
            "RAG_API__PORT": str(local_port),
            "RAG_CACHE__KEY_PREFIX": "bench-local",
            "RAG_AUTH__RATE_LIMIT_ENABLED": "false",
        },
    )
    local_base = f"http://127.0.0.1:{local_port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{local_base}/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(1)

    questions = [json.loads(line)["question"] for line in (args.qa / "questions.jsonl").open()]
    random.Random(0).shuffle(questions)
    fresh = iter(questions)
    asked: list[str] = []
    samples: dict[str, list[float]] = {
        k: []
        for k in ("miss_up", "miss_down", "miss_off", "hit_exact", "hit_semantic", "local_hit_exact", "openapi_serve", "openapi_local")
    }
    semantic_tries = semantic_hits = 0
    errors = 0
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=60) as client, httpx.Client(base_url=local_base, timeout=60) as local:

        def post(app: str, question: str) -> tuple[float, dict]:
            nonlocal errors
            started = time.perf_counter()
            response = client.post(f"/{app}/v1/query", json={"question": question})
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                errors += 1
                return elapsed, {}
            return elapsed, response.json()

        def timed(call) -> tuple[float, dict]:
            started = time.perf_counter()
            response = call()
            return (time.perf_counter() - started) * 1000, (response.json() if response.status_code == 200 else {})

        for _ in range(20):  # warm-up: every app, every stage
            for app in apps:
                post(app, next(fresh))
            local.post("/v1/query", json={"question": next(fresh)})
        for _ in range(args.requests):
            for app in ("up", "down", "off"):
                question = next(fresh)
                elapsed, body = post(app, question)
                if body and not body["cached"]:
                    samples[f"miss_{app}"].append(elapsed)
                if app == "up":
                    asked.append(question)
            elapsed, body = post("up", random.choice(asked).upper().rstrip("?") + " ?")
            if body.get("cache") == "exact":
                samples["hit_exact"].append(elapsed)
            semantic_tries += 1
            elapsed, body = post("up", semantic_variant(random.choice(asked)))
            if body.get("cache") == "semantic":
                semantic_hits += 1
                samples["hit_semantic"].append(elapsed)
            repeated = {"question": random.choice(asked)}
            local.post("/v1/query", json=repeated)  # a miss the first time, then a hit
            elapsed, body = timed(lambda body=repeated: local.post("/v1/query", json=body))
            if body.get("cache") == "exact":
                samples["local_hit_exact"].append(elapsed)
            samples["openapi_serve"].append(timed(lambda: client.get("/up/openapi.json"))[0])
            samples["openapi_local"].append(timed(lambda: local.get("/openapi.json"))[0])

    table = {
        k: {"n": len(v), "p50_ms": round(percentile(v, 50), 2), "p95_ms": round(percentile(v, 95), 2)} for k, v in samples.items() if v
    }
    result = {
        "errors": errors,
        "latency": table,
        "semantic_variant_hit_rate": round(semantic_hits / max(1, semantic_tries), 3),
        "hit_vs_miss_p50": round(table["hit_exact"]["p50_ms"] / table["miss_up"]["p50_ms"], 3),
        "redis_down_adds_to_miss_p50_ms": round(table["miss_down"]["p50_ms"] - table["miss_up"]["p50_ms"], 2),
        "cache_off_vs_up_miss_p50_ms": round(table["miss_off"]["p50_ms"] - table["miss_up"]["p50_ms"], 2),
        "serve_hop_floor_p50_ms": round(table["openapi_serve"]["p50_ms"] - table["openapi_local"]["p50_ms"], 2),
    }
    print("| request | n | p50 ms | p95 ms |")
    print("|---|---|---|---|")
    for kind, row in table.items():
        print(f"| {kind} | {row['n']} | {row['p50_ms']} | {row['p95_ms']} |")
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    local_app.terminate()
    serve.shutdown()
    ray.shutdown()
    redis_server.kill()


if __name__ == "__main__":
    main()
