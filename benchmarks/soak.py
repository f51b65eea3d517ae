"""The soak: 20 minutes (by default) of mixed load on the Serve graph over the shared PDFs (answers,
cache hits through Redis, retrievals) with a re-ingest every 5 minutes, reporting every replica's
RSS and file descriptors at start and end, Redis's client connections, and every non-200.

    python -m benchmarks.soak --source ../shared/data/pdfs --minutes 20 --reingest-every-min 5

It starts its own local Ray (6 logical CPUs on this machine's cores), ingests the source into a
fresh index, deploys configs/rag.yaml's graph with the machine's Redis, and writes
benchmarks/results/soak.json. The CI test (tests/integration/test_soak.py) runs 2 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=REPO_ROOT / "samples")
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--reingest-every-min", type=float, default=5)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "soak.json")
    args = parser.parse_args()

    import ray
    from ray import serve

    from rag_core.settings import load_settings
    from serve_app.app import build_graph
    from tests.integration.test_serve_app import wait_for
    from tests.local_cluster import free_port
    from tests.redis_server import unique_prefix
    from tests.soak import Soak, cli_reingest

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    source, index_dir = work / "docs", work / "index"
    shutil.copytree(args.source, source)
    context = ray.init(address="local", num_cpus=6, include_dashboard=True, configure_logging=False, log_to_driver=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env |= {"RAG_INDEX_DIR": str(index_dir), "RAG_CONFIG": str(REPO_ROOT / "configs" / "rag.yaml")}
    env["RAY_ADDRESS"] = context.address_info["gcs_address"]
    first = subprocess.run([sys.executable, "-m", "ingest_jobs.index", "--source", str(source)], env=env, cwd=REPO_ROOT)
    if first.returncode != 0:
        raise SystemExit("the first ingest failed")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings = load_settings(
        REPO_ROOT / "configs" / "rag.yaml",
        index_dir=index_dir,
        redis_url=args.redis_url,
        cache={"key_prefix": unique_prefix("soak")},
        auth={"rate_limit_enabled": False},
    )
    serve.run(build_graph(settings), name="soak", route_prefix="/soak")
    base = f"http://127.0.0.1:{port}/soak"
    wait_for(f"{base}/health")
    report = Soak(
        base,
        "soak",
        duration_s=args.minutes * 60,
        reingest=cli_reingest(source, index_dir, env),
        reingest_every_s=args.reingest_every_min * 60,
        redis_url=args.redis_url,
        warmup_s=60,
    ).run()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(asdict(report), indent=2) + "\n")
    print(json.dumps(asdict(report), indent=2))
    serve.shutdown()
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
