#!/usr/bin/env bash
# Stop the redis-server started by start.sh. Idempotent.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
port=${FIRSTMILE_REDIS_PORT:-16379}
run_dir=${FIRSTMILE_REDIS_RUN_DIR:-$repo/.run/redis}
if redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
  redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
  for _ in $(seq 1 100); do
    redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 || break
    sleep 0.1
  done
  echo "Redis stopped"
else
  echo "Redis is not running"
fi
rm -f "$run_dir/redis.pid"
