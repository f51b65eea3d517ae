#!/usr/bin/env bash
# The main job on embedded defaults: install, start a local Ray cluster, index samples/ through
# `ray job submit`, then serve the index on http://127.0.0.1:8000 with the Serve graph.
# Re-running it is cheap: unchanged files are not embedded again.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
# Measured (README, Serving latency): Ray starts worker processes, so every Serve replica, at nice
# 15, where any other busy process on the node comes first; and Ray >= 2.56's throughput-optimised
# Serve (gRPC between replicas, the Ingress replica answering HTTP itself on port 30000) halves
# each hop. Both apply to the cluster this script starts; set either to 15 / 0 to opt out.
export RAY_worker_niceness="${RAY_worker_niceness:-0}" RAY_SERVE_THROUGHPUT_OPTIMIZED="${RAY_SERVE_THROUGHPUT_OPTIMIZED:-1}"
bash scripts/setup.sh
. .venv/bin/activate
if ! command -v tesseract >/dev/null; then
  # Not installed here (that needs root): scans and images are then listed in the job's
  # files_failed with "OCR engine not installed". `sudo bash scripts/ensure_ocr.sh` adds it.
  echo "note: Tesseract OCR is not installed; scanned pages and images will not be indexed (see README, OCR)" >&2
fi
SOURCE="${1:-samples}"
DASHBOARD="http://127.0.0.1:${RAY_DASHBOARD_PORT:-8265}"
if [ -n "${RAG_INDEX_DIR:-}" ]; then
  export RAG_INDEX_DIR="$(realpath -m "$RAG_INDEX_DIR")"
fi
# The answer cache is shared in Redis when one answers on 127.0.0.1:6379, else in-process per replica.
if [ -z "${RAG_REDIS_URL:-}" ] && python -c "import redis; redis.Redis(socket_timeout=1).ping()" 2>/dev/null; then
  export RAG_REDIS_URL="redis://127.0.0.1:6379/0"
fi
# Is a cluster already up? A look at its GCS port, not `ray status`: that retries for about 40 s
# before it says no cluster runs there.
if ! (exec 3<>"/dev/tcp/127.0.0.1/${RAY_GCS_PORT:-6380}") 2>/dev/null; then
  # Port 6380: Ray's default GCS port 6379 is Redis's. The cluster inherits RAG_* from here.
  # The machine's real cores: the Serve graph reserves 1.5 CPUs at minimum replicas, and a later
  # ingest sizes its parse tasks and embedding actor to what is left (README, Ingest beside serving).
  ray start --head --port="${RAY_GCS_PORT:-6380}" --num-cpus "${RAY_NUM_CPUS:-$(nproc)}" --dashboard-host 127.0.0.1 \
    --dashboard-port "${RAY_DASHBOARD_PORT:-8265}" --metrics-export-port "${RAY_METRICS_PORT:-8080}" \
    --disable-usage-stats >/dev/null
fi
ENV_VARS="{}"
if [ -n "${RAG_INDEX_DIR:-}" ]; then
  ENV_VARS="{\"env_vars\": {\"RAG_INDEX_DIR\": \"$RAG_INDEX_DIR\"}}"
fi
# Serve first (the project is installed in this venv, which the cluster runs; `serve deploy`
# uploads no working_dir). The replicas start, import and load the model while Ray's job agent
# comes up and the ingest runs, and answer as soon as the index's first version is published
# (503 until then). Replicas follow the index pointer, so later ingests need no redeploy, and an
# ingest sizes its CPU requests to what the graph leaves free.
DEPLOYED=""
for attempt in $(seq 30); do
  if serve deploy --address "$DASHBOARD" configs/serve.yaml; then DEPLOYED=1; break; fi
  sleep 2  # the dashboard's Serve API can lag `ray start` by a few seconds
done
[ -n "$DEPLOYED" ] || { echo "serve deploy failed; see $DASHBOARD and /tmp/ray/session_latest/logs" >&2; exit 1; }
# Right after `ray start` the dashboard may not have a job agent yet; Ray says to retry.
LOG=$(mktemp)
SUBMITTED=""
for attempt in $(seq 36); do
  if ray job submit --address "$DASHBOARD" --working-dir . --runtime-env-json "$ENV_VARS" \
       -- python -m ingest_jobs.index --source "$SOURCE" 2>&1 | tee "$LOG"; then
    SUBMITTED=1
    break
  fi
  grep -q "No available agent to submit job" "$LOG" || exit 1
  sleep 5
done
if [ -z "$SUBMITTED" ]; then
  echo "the Ray job agent did not come up within 3 minutes; see $DASHBOARD and /tmp/ray/session_latest/logs" >&2
  exit 1
fi

for _ in $(seq 120); do
  curl -fs -m 2 http://127.0.0.1:8000/health >/dev/null 2>&1 && break
  sleep 2
done
curl -s http://127.0.0.1:8000/health; echo
# The first answer (extractive by default: no LLM is needed).
curl -s http://127.0.0.1:8000/v1/query -H 'content-type: application/json' \
     -d '{"question": "How many vacation days do employees get?", "top_k": 3}' \
  | python -c 'import json, sys; r = json.load(sys.stdin); print(r["answer"]); [print(" -", s["file"], s["location"]["kind"], s["page"]) for s in r["sources"]]'
cat <<'EXAMPLE'

The service answers on http://127.0.0.1:8000. Open http://127.0.0.1:8000/ in a browser to ask,
upload and manage documents, and see the index's status. Or try:
  curl -s http://127.0.0.1:8000/v1/query -H 'content-type: application/json' \
       -d '{"question": "How many vacation days do employees get?"}'
  curl -s http://127.0.0.1:8000/v1/retrieve -H 'content-type: application/json' -d '{"query": "hotel limit", "top_k": 3}'
Lowest latency: the Ingress replica itself answers on http://127.0.0.1:30000 (throughput-optimised Serve).
API docs: http://127.0.0.1:8000/docs   Audit trail: python -m ingest_jobs.audit --files
Ray dashboard: http://127.0.0.1:8265   Stop everything: ray stop
EXAMPLE
