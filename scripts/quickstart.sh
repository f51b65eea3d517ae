#!/usr/bin/env bash
# The main job on embedded defaults: install, start a local Ray cluster, index samples/ through
# `ray job submit`. Re-running it is cheap: unchanged files are not embedded again.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
bash scripts/setup.sh
. .venv/bin/activate
SOURCE="${1:-samples}"
DASHBOARD="http://127.0.0.1:${RAY_DASHBOARD_PORT:-8265}"
if ! ray status --address "127.0.0.1:${RAY_GCS_PORT:-6380}" >/dev/null 2>&1; then
  # Port 6380: Ray's default GCS port 6379 is Redis's.
  ray start --head --port="${RAY_GCS_PORT:-6380}" --dashboard-host 127.0.0.1 \
    --dashboard-port "${RAY_DASHBOARD_PORT:-8265}" --disable-usage-stats >/dev/null
fi
ENV_VARS="{}"
if [ -n "${RAG_INDEX_DIR:-}" ]; then
  ENV_VARS="{\"env_vars\": {\"RAG_INDEX_DIR\": \"$(realpath "$RAG_INDEX_DIR")\"}}"
fi
ray job submit --address "$DASHBOARD" --working-dir . --runtime-env-json "$ENV_VARS" \
  -- python -m ingest_jobs.index --source "$SOURCE"
echo
echo "Indexed '$SOURCE'. Audit trail: python -m ingest_jobs.audit --files   Versions: python -m ingest_jobs.rollback --list"
echo "Ray dashboard: $DASHBOARD   Stop the cluster: ray stop"
