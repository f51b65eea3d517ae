"""Scale-out figures on a local multi-node Ray cluster (`ray start` per node, one core per worker
node via taskset), with the index in a ChromaDB server and the cache in Redis, as on a cluster.

    python benchmarks/cluster_scaling.py [--repeat 2] [--seconds 30] [--json out.json]

1. Ingest vs nodes: the real job through `ray job submit` over the shared PDFs of at most 20
   pages (as benchmarks/ingest_throughput.py), on a 1-worker and a 2-worker cluster, alternated,
   one embedding actor per worker; chunks/s from the job's own summary (chunks_added /
   duration_s, model loading included). The last 2-worker index is then served.
2. Serving per replica: on the 2-worker cluster, Embedder and Retriever fixed at 1, then 2
   replicas (one per node), alternated; closed-loop clients, cache off, fresh SQuAD questions.
   The CPU time each stage's processes used per request (psutil, over the measured window) gives
   what one replica can serve per core, independent of how many cores this machine has.
3. Autoscaling: Embedder and Retriever autoscaled from 1 (max 3); idle, then load, then idle;
   replica counts read from the Serve API (GET /api/serve/applications/, what `serve status`
   reads) every second, with requests/s and p50 per 5-second window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.ingest_throughput import pick_corpus  # noqa: E402
from tests.local_cluster import ChromaServer, LocalRayCluster, free_port, ingest_summary, local_serve_config  # noqa: E402
from tests.redis_server import SHARED_REDIS_URL, unique_prefix  # noqa: E402

QA = REPO_ROOT.parent / "shared/data/qa/squad2_dev_cs224n"


def submit_ingest(cluster: LocalRayCluster, source: Path, chroma_url: str, index_dir: Path, prefix: str, nodes: int) -> dict[str, Any]:
    env_vars = {
        "RAG_CONFIG": str(REPO_ROOT / "configs/rag.yaml"),
        "RAG_CHROMA_URL": chroma_url,
        "RAG_INDEX_DIR": str(index_dir),
        "RAG_CHROMA_COLLECTION_PREFIX": prefix,
        "RAG_INGEST__EMBED_ACTORS_MIN": str(nodes),
        "RAG_INGEST__EMBED_ACTORS_MAX": str(nodes),
    }
    done = cluster.submit_ingest(source, env_vars)
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-3000:] + done.stderr[-3000:])
    return ingest_summary(done)


def start_cluster(workers: int, workdir: Path) -> LocalRayCluster:
    return LocalRayCluster(workers=workers, worker_cpus=2, pin_cores=True).start(Path(tempfile.mkdtemp(prefix="rsc", dir="/tmp")))


def ingest_scaling(args: argparse.Namespace, corpus: Path, chroma: ChromaServer, workdir: Path) -> dict[str, Any]:
    runs: dict[int, list[float]] = {1: [], 2: []}
    nodes_used: dict[int, list[dict]] = {1: [], 2: []}
    chunks, prefix = 0, ""
    for round_ in range(args.repeat):
        for workers in (1, 2):
            cluster = start_cluster(workers, workdir)
            try:
                prefix = f"bench-{workers}n-{round_}"
                summary = submit_ingest(cluster, corpus, chroma.url, workdir / prefix, prefix, workers)
            finally:
                cluster.stop()
            chunks = summary["chunks_added"]
            rate = summary["chunks_added"] / summary["duration_s"]
            runs[workers].append(rate)
            nodes_used[workers].append(summary["embed_nodes"])
            print(
                f"ingest round {round_} workers={workers}: {summary['chunks_added']} chunks in {summary['duration_s']:.1f}s "
                f"= {rate:.1f} chunks/s; embedded per node {list(summary['embed_nodes'].values())}",
                flush=True,
            )
    medians = {n: statistics.median(v) for n, v in runs.items()}
    return {
        "chunks": chunks,
        "files": len(list(corpus.iterdir())),
        "chunks_per_s": runs,
        "median_chunks_per_s": medians,
        "ratio_2_over_1": medians[2] / medians[1],
        "embed_nodes": nodes_used,
        "last_2_node_prefix": prefix,
    }


def serve_config(port: int, chroma_url: str, index_prefix: str, cache_prefix: str, deployments: dict[str, dict]) -> dict[str, Any]:
    config = local_serve_config(
        port,
        {
            "chroma_url": chroma_url,
            "chroma_collection_prefix": index_prefix,
            "redis_url": SHARED_REDIS_URL,
            "cache.key_prefix": cache_prefix,
            "cache.enabled": "false",
            "auth.rate_limit_enabled": "false",
            "index_dir": tempfile.mkdtemp(),
        },
    )
    app = config["applications"][0]
    for deployment in app["deployments"]:
        options = deployments.get(deployment["name"], {})
        deployment.pop("autoscaling_config", None)
        deployment["ray_actor_options"] = {"num_cpus": 0.25}
        # A fixed count must also clear the code's autoscaling_config, or Serve keeps autoscaling.
        deployment.update(options if "autoscaling_config" in options else {"num_replicas": 1, "autoscaling_config": None, **options})
    return config


def deploy(cluster: LocalRayCluster, config: dict[str, Any], workdir: Path, expect: dict[str, int]) -> None:
    path = workdir / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    done = cluster.ray("serve", "deploy", str(path), "--address", cluster.dashboard_url)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        counts = replica_counts(cluster)
        if (
            counts
            and all(counts.get(name, {}).get("RUNNING", 0) == n for name, n in expect.items())
            and all(sum(v for k, v in state.items() if k != "RUNNING") == 0 for state in counts.values())
        ):
            return
        time.sleep(2)
    raise TimeoutError(f"replicas not running: {replica_counts(cluster)}")


def replica_counts(cluster: LocalRayCluster) -> dict[str, dict[str, int]]:
    try:
        details = httpx.get(f"{cluster.dashboard_url}/api/serve/applications/", timeout=10).json()
    except httpx.HTTPError:
        return {}
    app = details.get("applications", {}).get("rag")
    if not app:
        return {}
    counts: dict[str, dict[str, int]] = {}
    for name, deployment in app["deployments"].items():
        states: dict[str, int] = {}
        for replica in deployment["replicas"]:
            states[replica["state"]] = states.get(replica["state"], 0) + 1
        counts[name] = states
    return counts


class Load:
    """Closed-loop clients posting fresh questions; records (finish time, latency, status)."""

    def __init__(self, url: str, questions: list[str]):
        self.url = url
        self.questions = questions
        self.next = 0
        self.samples: list[tuple[float, float, int]] = []

    async def run(self, concurrency: int, seconds: float) -> None:
        stop = time.monotonic() + seconds
        async with httpx.AsyncClient(timeout=120) as client:

            async def worker() -> None:
                while time.monotonic() < stop:
                    question = self.questions[self.next % len(self.questions)]
                    self.next += 1
                    started = time.monotonic()
                    try:
                        status = (await client.post(f"{self.url}/v1/query", json={"question": question, "use_cache": False})).status_code
                    except httpx.HTTPError:
                        status = 0
                    self.samples.append((time.monotonic(), time.monotonic() - started, status))

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    def window(self, start: float, end: float) -> tuple[float, float | None, int]:
        inside = [s for s in self.samples if start <= s[0] < end]
        ok = [s[1] for s in inside if s[2] == 200]
        return len(ok) / (end - start), (statistics.median(ok) * 1000 if ok else None), len(inside) - len(ok)


PROCESS_GROUPS = {  # Ray's process titles (and the Chroma server's command line) -> a stage
    "ServeReplica:rag:Embedder": "Embedder",
    "ServeReplica:rag:Retriever": "Retriever",
    "ServeReplica:rag:Ingress": "Ingress",
    "ServeReplica:rag:Generator": "Generator",
    "ServeReplica:rag:Reranker": "Reranker",
    "ProxyActor": "HTTP proxy",
    "chroma run": "Chroma server",
}


def cpu_seconds_by_group() -> dict[str, float]:
    """CPU time (user + system) so far of every process of the serving path, by stage (/proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            group = next((g for key, g in PROCESS_GROUPS.items() if key in command), None)
            if group is None:
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            totals[group] = totals.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
    return totals


def serving_per_replica(
    args, cluster: LocalRayCluster, chroma: ChromaServer, index_prefix: str, questions: list[str], workdir: Path
) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    results: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    load = Load(url, questions)
    for round_ in range(args.repeat):
        for replicas in (1, 2):
            spread = {"num_replicas": replicas, "max_replicas_per_node": 1}
            config = serve_config(port, chroma.url, index_prefix, unique_prefix("bench"), {"Embedder": spread, "Retriever": spread})
            deploy(cluster, config, workdir, {"Embedder": replicas, "Retriever": replicas})
            asyncio.run(load.run(args.concurrency, 5))  # warm-up, not counted
            before, start = cpu_seconds_by_group(), time.monotonic()
            asyncio.run(load.run(args.concurrency, args.seconds))
            end, after = time.monotonic(), cpu_seconds_by_group()
            rps, p50, errors = load.window(start, end)
            served = rps * (end - start)
            cpu_ms = {g: round((after[g] - before.get(g, 0.0)) / served * 1000, 2) for g in after}
            results[replicas].append({"rps": rps, "p50_ms": p50, "errors": errors, "cpu_ms_per_request": cpu_ms})
            print(
                f"serve round {round_} replicas={replicas}: {rps:.1f} req/s, p50 {p50:.0f} ms, errors {errors}; "
                f"CPU ms per request {cpu_ms}",
                flush=True,
            )
    medians = {n: statistics.median(r["rps"] for r in v) for n, v in results.items()}
    cpu = {g: statistics.median(r["cpu_ms_per_request"].get(g, 0.0) for v in results.values() for r in v) for g in PROCESS_GROUPS.values()}
    return {
        "runs": results,
        "median_rps": medians,
        "ratio_2_over_1": medians[2] / medians[1],
        "concurrency": args.concurrency,
        "median_cpu_ms_per_request": cpu,
        # What one replica with one core of its own could serve, from its CPU cost per request.
        "requests_per_core_second": {g: round(1000 / ms, 1) for g, ms in cpu.items() if ms > 0},
    }


def autoscaling_timeline(
    args, cluster: LocalRayCluster, chroma: ChromaServer, index_prefix: str, questions: list[str], workdir: Path
) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    policy = {
        "min_replicas": 1,
        "max_replicas": 3,
        "target_ongoing_requests": 2,
        "upscale_delay_s": 3,
        "downscale_delay_s": 15,
        "look_back_period_s": 5,
        "metrics_interval_s": 1,
    }
    autoscaled = {"autoscaling_config": policy}
    config = serve_config(port, chroma.url, index_prefix, unique_prefix("bench"), {"Embedder": autoscaled, "Retriever": autoscaled})
    deploy(cluster, config, workdir, {"Embedder": 1, "Retriever": 1})
    load = Load(url, questions[::-1])
    timeline: list[dict[str, Any]] = []
    started = time.monotonic()
    phases = [("idle", args.idle_s, 0), ("load", args.load_s, args.autoscale_concurrency), ("after", args.after_s, 0)]

    async def sample(stop_at: float) -> None:
        while time.monotonic() < stop_at:
            counts = await asyncio.to_thread(replica_counts, cluster)
            timeline.append(
                {
                    "t": round(time.monotonic() - started, 1),
                    **{name: counts.get(name, {}).get("RUNNING", 0) for name in ("Embedder", "Retriever")},
                    "starting": sum(c.get("STARTING", 0) for c in counts.values()),
                    "stopping": sum(c.get("STOPPING", 0) for c in counts.values()),
                }
            )
            await asyncio.sleep(1)

    async def run() -> None:
        offset = time.monotonic()
        for name, seconds, concurrency in phases:
            end = offset + seconds
            tasks = [sample(end)]
            if concurrency:
                tasks.append(load.run(concurrency, end - time.monotonic()))
            await asyncio.gather(*tasks)
            for point in timeline:
                point.setdefault("phase", name)
            offset = end

    asyncio.run(run())
    for point in timeline:
        t = started + point["t"]
        rps, p50, errors = load.window(t - 5, t)
        point.update(rps_5s=round(rps, 1), p50_ms_5s=round(p50) if p50 else None, errors_5s=errors)
    return {"policy": policy, "concurrency": args.autoscale_concurrency, "timeline": timeline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30, help="measured seconds per serving run")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--autoscale-concurrency", type=int, default=24)
    parser.add_argument("--idle-s", type=float, default=10)
    parser.add_argument("--load-s", type=float, default=60)
    parser.add_argument("--after-s", type=float, default=60)
    parser.add_argument("--parts", default="ingest,serve,autoscale", help="comma-separated subset")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="cluster-scaling-"))
    corpus = pick_corpus(None, 20, workdir)
    questions = [json.loads(line)["question"] for line in (QA / "questions.jsonl").open()]
    random.Random(0).shuffle(questions)
    chroma = ChromaServer(workdir / "chroma").start()
    report: dict[str, Any] = {}
    try:
        parts = set(args.parts.split(","))
        if "ingest" in parts:
            report["ingest"] = ingest_scaling(args, corpus, chroma, workdir)
            served = report["ingest"]["last_2_node_prefix"]
        cluster = start_cluster(2, workdir)
        try:
            if "ingest" not in parts:
                served = "serve"
                submit_ingest(cluster, corpus, chroma.url, workdir / served, served, 2)
            if "serve" in parts:
                report["serving"] = serving_per_replica(args, cluster, chroma, served, questions, workdir)
                cluster.ray("serve", "shutdown", "-y", "--address", cluster.dashboard_url)
            if "autoscale" in parts:
                report["autoscaling"] = autoscaling_timeline(args, cluster, chroma, served, questions, workdir)
        finally:
            cluster.stop()
    finally:
        chroma.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(json.dumps({k: v for k, v in report.items() if k != "autoscaling"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if "autoscaling" not in report:
        return
    print("\nautoscaling timeline (t s, phase, Embedder, Retriever replicas running, starting, stopping, req/s and p50 over 5 s)")
    for point in report["autoscaling"]["timeline"]:
        print(
            f"{point['t']:6.1f} {point['phase']:6} E={point['Embedder']} R={point['Retriever']} start={point['starting']} "
            f"stop={point['stopping']} {point['rps_5s']:5.1f} req/s p50={point['p50_ms_5s']}"
        )


if __name__ == "__main__":
    main()
