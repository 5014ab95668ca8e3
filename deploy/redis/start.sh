#!/usr/bin/env bash
# Start Debian's redis-server on 127.0.0.1 at a non-default port for firstmile's tests
# and local runs; installs the package if it is missing. Idempotent.
#
# Environment (all optional):
#   FIRSTMILE_REDIS_PORT     (default 16379)
#   FIRSTMILE_REDIS_RUN_DIR  data, log, pid file (default <repo>/.run/redis)
#   FIRSTMILE_REDIS_WAIT_S   bounded start-up wait (default 30)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
port=${FIRSTMILE_REDIS_PORT:-16379}
run_dir=${FIRSTMILE_REDIS_RUN_DIR:-$repo/.run/redis}
wait_s=${FIRSTMILE_REDIS_WAIT_S:-30}

die() { echo "deploy/redis/start.sh: $*" >&2; exit 1; }

if ! command -v redis-server >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "redis-server is missing and apt-get is not available to install it"
  echo "Installing Debian's redis-server ..."
  if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq >/dev/null || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq redis-server >/dev/null \
    || die "apt-get install redis-server failed"
  # The package starts a system service on the default port; ours runs separately.
fi

mkdir -p "$run_dir"
pid_file="$run_dir/redis.pid"
if redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
  echo "Redis already running on 127.0.0.1:$port"
  exit 0
fi
redis-server --bind 127.0.0.1 --port "$port" --daemonize yes --dir "$run_dir" \
  --pidfile "$pid_file" --logfile "$run_dir/redis.log" --save "" --appendonly yes --appendfsync everysec \
  --protected-mode yes || die "redis-server failed to start (see $run_dir/redis.log)"
deadline=$((SECONDS + wait_s))
until redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; do
  [ "$SECONDS" -lt "$deadline" ] || die "Redis did not answer on 127.0.0.1:$port within ${wait_s}s (see $run_dir/redis.log)"
  sleep 0.2
done
echo "Redis is up on 127.0.0.1:$port"
