#!/usr/bin/env bash
# The whole test suite, from a fresh clone: creates .venv/, installs firstmile with its dev
# tools, runs ruff and mypy, then pytest (the integration tests start real Kafka and Redis
# through deploy/). Servers this run started are stopped at the end. Extra arguments go
# to pytest, e.g. `bash tests/run.sh tests/unit -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev]'
export PYTHON="$PWD/.venv/bin/python"

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy

# Stop at the end only what this run starts (a developer's own servers stay up).
stop=()
[ -f .run/kafka/kafka.pid ] && kill -0 "$(cat .run/kafka/kafka.pid)" 2>/dev/null || stop+=(deploy/kafka/stop.sh)
redis-cli -p "${FIRSTMILE_REDIS_PORT:-16379}" ping >/dev/null 2>&1 || stop+=(deploy/redis/stop.sh)
cleanup() { for script in "${stop[@]}"; do bash "$script" >/dev/null 2>&1 || true; done; }
trap cleanup EXIT

echo "== pytest"
.venv/bin/python -m pytest "$@"
