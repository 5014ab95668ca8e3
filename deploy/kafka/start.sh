#!/usr/bin/env bash
# Start a single-node Apache Kafka 4.x broker (KRaft, broker+controller) on 127.0.0.1
# for firstmile's tests and local runs, and create firstmile's topics. Idempotent: a
# broker already running from this run directory is reused.
#
# Environment (all optional):
#   FIRSTMILE_KAFKA_PORT        broker port              (default 19092)
#   FIRSTMILE_KAFKA_CTL_PORT    controller port          (default 19093)
#   FIRSTMILE_KAFKA_RUN_DIR     data, logs, pid file     (default <repo>/.run/kafka)
#   FIRSTMILE_KAFKA_CACHE       resolved jars            (default ~/.cache/firstmile/kafka)
#   FIRSTMILE_KAFKA_HEAP        JVM heap                 (default 512m)
#   FIRSTMILE_KAFKA_WAIT_S      bounded start-up wait    (default 90)
#   FIRSTMILE_TOPIC_EVENTS / _SEGMENTS / _TRIGGERS / _DEADLETTER   topic names
#   FIRSTMILE_EVENTS_PARTITIONS (default 4)
#   PYTHON                      interpreter with kafka-python (default <repo>/.venv/bin/python)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
port=${FIRSTMILE_KAFKA_PORT:-19092}
ctl_port=${FIRSTMILE_KAFKA_CTL_PORT:-19093}
run_dir=${FIRSTMILE_KAFKA_RUN_DIR:-$repo/.run/kafka}
cache=${FIRSTMILE_KAFKA_CACHE:-$HOME/.cache/firstmile/kafka}
heap=${FIRSTMILE_KAFKA_HEAP:-512m}
wait_s=${FIRSTMILE_KAFKA_WAIT_S:-90}
python=${PYTHON:-$repo/.venv/bin/python}

die() { echo "deploy/kafka/start.sh: $*" >&2; exit 1; }

command -v java >/dev/null 2>&1 || die "Java 17+ is required to run Kafka, but 'java' is not on PATH (Debian: apt-get install openjdk-17-jre-headless)."
java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)
[ -n "$java_major" ] && [ "$java_major" -ge 17 ] || die "Kafka 4 needs Java 17 or newer; found: $(java -version 2>&1 | head -n 1)"
[ -x "$python" ] || python=$(command -v python3) || die "no Python interpreter found for topic creation"

# 1. Resolve the broker's jars once into the cache (keyed by the pom's content).
pom_hash=$(sha256sum "$here/pom.xml" | cut -c1-16)
libs="$cache/$pom_hash/libs"
if [ ! -f "$libs/.complete" ]; then
  command -v mvn >/dev/null 2>&1 || die "Maven is required to resolve Kafka's jars, but 'mvn' is not on PATH (Debian: apt-get install maven)."
  echo "Resolving Apache Kafka jars with Maven into $libs ..."
  mkdir -p "$libs"
  mvn -q -B -f "$here/pom.xml" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$libs" \
    || die "Maven could not resolve Kafka's jars (see the output above)."
  touch "$libs/.complete"
fi

mkdir -p "$run_dir/data" "$run_dir/logs"
pid_file="$run_dir/kafka.pid"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
  echo "Kafka already running (pid $(cat "$pid_file")) on 127.0.0.1:$port"
else
  port_open "$port" && die "port $port is already in use by another process; set FIRSTMILE_KAFKA_PORT"
  props="$run_dir/server.properties"
  cat > "$props" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$ctl_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctl_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$run_dir/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
PROPS
  cat > "$run_dir/log4j2.properties" <<LOG
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $run_dir/logs/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache
logger.apache.level = WARN
LOG
  jvm=(java "-Xms$heap" "-Xmx$heap" -XX:+UseG1GC
       "-Dlog4j2.configurationFile=$run_dir/log4j2.properties"
       "-Dkafka.logs.dir=$run_dir/logs" -cp "$libs/*")
  if [ ! -f "$run_dir/data/meta.properties" ]; then
    # A cluster id is 16 random bytes, URL-safe base64 without padding, not starting with '-'.
    cluster_id=$("$python" -c 'import base64,os
while True:
    c = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
    if not c.startswith("-"):
        print(c); break')
    "${jvm[@]}" kafka.tools.StorageTool format --standalone -t "$cluster_id" -c "$props" -g \
      > "$run_dir/logs/format.log" 2>&1 || { cat "$run_dir/logs/format.log" >&2; die "formatting KRaft storage failed"; }
  fi
  : > "$run_dir/logs/server.log"
  nohup "${jvm[@]}" kafka.Kafka "$props" > "$run_dir/logs/stdout.log" 2>&1 &
  echo $! > "$pid_file"
  echo "Starting Kafka (pid $!) on 127.0.0.1:$port, waiting up to ${wait_s}s ..."
  deadline=$((SECONDS + wait_s))
  until grep -q "Kafka Server started" "$run_dir/logs/server.log" 2>/dev/null && port_open "$port"; do
    if ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then
      tail -n 30 "$run_dir/logs/stdout.log" "$run_dir/logs/server.log" >&2 || true
      rm -f "$pid_file"
      die "Kafka exited during start-up (logs in $run_dir/logs)"
    fi
    [ "$SECONDS" -lt "$deadline" ] || die "Kafka did not start within ${wait_s}s (logs in $run_dir/logs)"
    sleep 0.5
  done
  echo "Kafka is up on 127.0.0.1:$port"
fi

"$python" "$here/topics.py" --bootstrap "127.0.0.1:$port"
