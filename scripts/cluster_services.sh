#!/usr/bin/env bash
# The shared stores on the cluster's head node: the ChromaDB server (the index every node reads)
# and Redis (answer cache, rate limits). `start` is idempotent; `stop` ends both.
# Data lives under RAG_DATA_DIR (default ~/rag-data): put it on a persistent volume.
set -euo pipefail
DATA="${RAG_DATA_DIR:-$HOME/rag-data}"
CHROMA_PORT="${RAG_CHROMA_PORT:-8001}"
REDIS_PORT="${RAG_REDIS_PORT:-6379}"
BIND="${RAG_SERVICES_BIND:-0.0.0.0}"   # the nodes' private network; the security group keeps it internal
mkdir -p "$DATA/chroma" "$DATA/redis" "$DATA/logs"

case "${1:-start}" in
  start)
    if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
      redis-server --bind "$BIND" --port "$REDIS_PORT" --protected-mode no --dir "$DATA/redis" \
        --appendonly no --save "" --daemonize yes --logfile "$DATA/logs/redis.log"
    fi
    if ! curl -sf "http://127.0.0.1:$CHROMA_PORT/api/v2/heartbeat" >/dev/null; then
      nohup chroma run --path "$DATA/chroma" --host "$BIND" --port "$CHROMA_PORT" \
        > "$DATA/logs/chroma.log" 2>&1 &
      echo $! > "$DATA/chroma.pid"
      for _ in $(seq 60); do
        curl -sf "http://127.0.0.1:$CHROMA_PORT/api/v2/heartbeat" >/dev/null && break
        sleep 1
      done
    fi
    curl -sf "http://127.0.0.1:$CHROMA_PORT/api/v2/heartbeat" >/dev/null || { echo "chroma did not start; see $DATA/logs/chroma.log" >&2; exit 1; }
    redis-cli -p "$REDIS_PORT" ping >/dev/null || { echo "redis did not start; see $DATA/logs/redis.log" >&2; exit 1; }
    echo "chroma on :$CHROMA_PORT, redis on :$REDIS_PORT, data in $DATA"
    ;;
  stop)
    [ -f "$DATA/chroma.pid" ] && kill "$(cat "$DATA/chroma.pid")" 2>/dev/null || true
    redis-cli -p "$REDIS_PORT" shutdown nosave 2>/dev/null || true
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
