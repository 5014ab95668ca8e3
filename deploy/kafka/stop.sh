#!/usr/bin/env bash
# Stop the broker started by start.sh (SIGTERM: Kafka shuts down cleanly). Idempotent.
# FIRSTMILE_KAFKA_PURGE=1 also deletes its data directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
run_dir=${FIRSTMILE_KAFKA_RUN_DIR:-$repo/.run/kafka}
pid_file="$run_dir/kafka.pid"
if [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
  pid=$(cat "$pid_file")
  kill "$pid"
  for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "Kafka (pid $pid) ignored SIGTERM for 30s; killing it" >&2
    kill -9 "$pid"
  fi
  echo "Kafka stopped"
else
  echo "Kafka is not running"
fi
rm -f "$pid_file"
if [ "${FIRSTMILE_KAFKA_PURGE:-0}" = 1 ]; then rm -rf "$run_dir"; fi
