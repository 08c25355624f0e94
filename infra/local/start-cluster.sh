#!/usr/bin/env bash
# Start, on 127.0.0.1 only, a local stand-in for the production cluster:
#   - an S3-compatible server (moto_server) with one bucket,
#   - an MLflow tracking server (SQLite store, artifacts proxied to that bucket),
#   - a two-node Ray cluster: a head node and a "data" node that advertises the
#     custom resource used to keep Ray Data preprocessing off the training nodes.
# Every process runs in its own session (process group); its pid is kept in the
# state dir, so stop-cluster.sh stops exactly these processes and nothing else
# (it never runs `ray stop`, which would kill every Ray on the machine).
#
# Usage:  infra/local/start-cluster.sh        # then:  source infra/local/.state/env.sh
# Ports, sizes and names are overridable through the LOCAL_* variables below.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STATE="${LOCAL_CLUSTER_STATE:-$HERE/.state}"

RAY_PORT="${LOCAL_RAY_PORT:-6380}"
DASHBOARD_PORT="${LOCAL_DASHBOARD_PORT:-8265}"
S3_PORT="${LOCAL_S3_PORT:-9100}"
MLFLOW_PORT="${LOCAL_MLFLOW_PORT:-5050}"
HEAD_CPUS="${LOCAL_HEAD_CPUS:-1}"
DATA_CPUS="${LOCAL_DATA_CPUS:-1}"
DATA_RESOURCE="${LOCAL_DATA_RESOURCE:-data_cpu}"
DATA_LABEL="${LOCAL_DATA_LABEL:-role=data}"  # --data-node-label: data tasks there, training workers not
BUCKET="${LOCAL_BUCKET:-resnet-platform}"
TIMEOUT="${LOCAL_START_TIMEOUT:-120}"

# Prefer the project's virtual environment when there is one.
if [[ -x "$REPO/.venv/bin/ray" ]]; then
    export PATH="$REPO/.venv/bin:$PATH"
fi
PY="$(command -v python)"
for exe in ray moto_server mlflow; do
    command -v "$exe" >/dev/null || { echo "start-cluster: '$exe' not found (make install)" >&2; exit 1; }
done

log() { echo "start-cluster: $*" >&2; }

# The state folder is ours only if this script created or claimed it (the marker says which):
# stop-cluster.sh deletes nothing else. A folder that holds anything else is refused untouched.
MARKER="$STATE/.local-cluster-state"
if [[ -d "$STATE" && ! -f "$MARKER" && "$STATE" != "$HERE/.state" && -n "$(ls -A "$STATE")" ]]; then
    log "$STATE is not empty and was not created by start-cluster.sh: set LOCAL_CLUSTER_STATE to a new or empty folder"
    exit 1
fi

alive() {  # alive NAME: the process recorded as NAME is running
    local f="$STATE/pids/$1.pid"
    [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

if [[ -f "$STATE/pids/ray-head.pid" ]]; then
    if alive ray-head && alive ray-data && alive moto && alive mlflow; then
        log "already running (state in $STATE); source $STATE/env.sh"
        exit 0
    fi
    log "stale or partial state in $STATE: stopping it first"
    "$HERE/stop-cluster.sh"
fi

if [[ ! -d "$STATE" ]]; then
    mkdir -p "$STATE"
    echo "created_dir=1" >"$MARKER"     # stop-cluster.sh removes the folder itself
elif [[ ! -f "$MARKER" ]]; then
    echo "created_dir=0" >"$MARKER"     # an empty folder we were given: stop removes only our files
fi
mkdir -p "$STATE/pids" "$STATE/logs"
chmod 700 "$STATE"

started_ok=0
cleanup_on_failure() {
    if [[ "$started_ok" != 1 ]]; then
        log "start failed; logs in $STATE/logs; stopping what was started"
        "$HERE/stop-cluster.sh" --keep-logs || true
    fi
}
trap cleanup_on_failure EXIT

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_in_use() {
    "$PY" - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers do not count
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
EOF
}

for p in "$RAY_PORT" "$DASHBOARD_PORT" "$S3_PORT" "$MLFLOW_PORT"; do
    if port_in_use "$p"; then
        log "port $p on 127.0.0.1 is in use: set LOCAL_RAY_PORT / LOCAL_DASHBOARD_PORT / LOCAL_S3_PORT / LOCAL_MLFLOW_PORT"
        exit 1
    fi
done

spawn() {  # spawn NAME CMD...: run CMD in its own session, log and pid in the state dir
    local name="$1"
    shift
    setsid "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$STATE/pids/$name.pid"
}

wait_http() {  # wait_http NAME URL: until URL answers (any HTTP status) or NAME exits
    local name="$1" url="$2"
    "$PY" - "$url" "$TIMEOUT" "$(cat "$STATE/pids/$name.pid")" <<'EOF' || { log "$name did not come up: see $STATE/logs/$name.log"; exit 1; }
import os, sys, time, urllib.error, urllib.request
url, timeout, pid = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(1)
    try:
        urllib.request.urlopen(url, timeout=2)
        sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)  # it answered (401 before auth is still an answer)
    except Exception:
        time.sleep(0.25)
sys.exit(1)
EOF
}

# Everything below inherits these: Ray workers (and so `ray job submit` entrypoints) see the
# S3 endpoint, fake keys and the tracking server because they are exported before Ray starts.
export RAY_USAGE_STATS_ENABLED=0
export MLFLOW_DISABLE_TELEMETRY=true
export AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT"
export AWS_ACCESS_KEY_ID="local-testing-key"
export AWS_SECRET_ACCESS_KEY="local-testing-secret"
export AWS_REGION="us-east-1"
export AWS_DEFAULT_REGION="us-east-1"
export MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT"

# 1. S3-compatible server and the bucket.
log "moto S3 server on 127.0.0.1:$S3_PORT"
spawn moto moto_server -H 127.0.0.1 -p "$S3_PORT"
wait_http moto "$AWS_ENDPOINT_URL/moto-api/"
"$PY" -c "import boto3; boto3.client('s3').create_bucket(Bucket='$BUCKET')"

# 2. MLflow: SQLite metadata in the state dir, artifacts proxied to the bucket.
log "MLflow server on 127.0.0.1:$MLFLOW_PORT"
MLFLOW_S3_ENDPOINT_URL="$AWS_ENDPOINT_URL" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    spawn mlflow mlflow server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "sqlite:///$STATE/mlflow.db" \
    --artifacts-destination "s3://$BUCKET/mlflow-artifacts"
wait_http mlflow "$MLFLOW_TRACKING_URI/health"

# 3. Ray with token authentication; the token lives in the state dir, not ~/.ray.
"$PY" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$STATE/ray_auth_token"
chmod 600 "$STATE/ray_auth_token"
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$STATE/ray_auth_token"
# Short temp dirs: Ray puts Unix sockets there (path length limit).
HEAD_TMP="$(mktemp -d /tmp/rpl-head.XXXXXX)"
DATA_TMP="$(mktemp -d /tmp/rpl-data.XXXXXX)"
echo "$HEAD_TMP" >"$STATE/head_temp_dir"
echo "$DATA_TMP" >"$STATE/data_temp_dir"

log "Ray head on 127.0.0.1:$RAY_PORT (dashboard 127.0.0.1:$DASHBOARD_PORT, $HEAD_CPUS CPU)"
spawn ray-head ray start --head --block --disable-usage-stats \
    --node-ip-address 127.0.0.1 --port "$RAY_PORT" \
    --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
    --dashboard-agent-listen-port "$(free_port)" \
    --ray-client-server-port "$(free_port)" \
    --num-cpus "$HEAD_CPUS" --num-gpus 0 --temp-dir "$HEAD_TMP"
wait_http ray-head "http://127.0.0.1:$DASHBOARD_PORT/api/version"

log "Ray data node ($DATA_CPUS CPU, resource {\"$DATA_RESOURCE\": $DATA_CPUS}, label $DATA_LABEL)"
# On a loaded machine a joining raylet can miss Ray's fixed 30 s registration window and exit
# ("The current node timed out during startup"): start it again, up to 3 times.
data_node_joined() {
# Ready when the state API lists two alive nodes, one of them with the data resource.
"$PY" - "$DASHBOARD_PORT" "$DATA_RESOURCE" "$TIMEOUT" "$(cat "$STATE/pids/ray-data.pid")" <<'EOF' 
import json, os, sys, time, urllib.request
port, resource, timeout, pid = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
token = open(os.environ["RAY_AUTH_TOKEN_PATH"]).read().strip()
req = urllib.request.Request(
    f"http://127.0.0.1:{port}/api/v0/nodes", headers={"Authorization": f"Bearer {token}"}
)
deadline, last = time.monotonic() + timeout, None
while time.monotonic() < deadline:
    os.kill(pid, 0)
    try:
        nodes = json.load(urllib.request.urlopen(req, timeout=10))["data"]["result"]["result"]
        alive = [n for n in nodes if n["state"] == "ALIVE"]
        if len(alive) >= 2 and any(resource in n["resources_total"] for n in alive):
            sys.exit(0)
        last = f"{len(alive)} alive node(s)"
    except Exception as e:
        last = repr(e)
    time.sleep(0.5)
print(f"last check: {last}", file=sys.stderr)
sys.exit(1)
EOF
}
for attempt in 1 2 3; do
    spawn ray-data ray start --block --disable-usage-stats \
        --address "127.0.0.1:$RAY_PORT" --node-ip-address 127.0.0.1 \
        --dashboard-agent-listen-port "$(free_port)" \
        --num-cpus "$DATA_CPUS" --num-gpus 0 --resources "{\"$DATA_RESOURCE\": $DATA_CPUS}" \
        --labels "$DATA_LABEL" \
        --temp-dir "$DATA_TMP"
    if data_node_joined; then
        break
    fi
    if [[ "$attempt" == 3 ]] || kill -0 "$(cat "$STATE/pids/ray-data.pid")" 2>/dev/null; then
        log "the data node did not join: see $STATE/logs/ray-data.log"
        exit 1
    fi
    log "the data node exited during start-up (attempt $attempt; see $STATE/logs/ray-data.log): starting it again"
    cp "$STATE/logs/ray-data.log" "$STATE/logs/ray-data.attempt$attempt.log"
done

cat >"$STATE/env.sh" <<EOF
# Written by infra/local/start-cluster.sh: \`source\` it to use the local cluster.
export RAY_ADDRESS=127.0.0.1:$RAY_PORT
export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$STATE/ray_auth_token
export RAY_USAGE_STATS_ENABLED=0
export LOCAL_DATA_RESOURCE=$DATA_RESOURCE
export LOCAL_DATA_LABEL=$DATA_LABEL
export LOCAL_BUCKET=$BUCKET
export AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL
export AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
export AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export AWS_REGION=$AWS_REGION
export AWS_DEFAULT_REGION=$AWS_DEFAULT_REGION
export MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI
export MLFLOW_DISABLE_TELEMETRY=true
EOF

started_ok=1
log "ready. source $STATE/env.sh, then e.g.:"
log "  ray job submit --address http://127.0.0.1:$DASHBOARD_PORT --working-dir . -- python jobs/train_imagenet.py --data s3://$BUCKET/... "
log "stop with infra/local/stop-cluster.sh"
