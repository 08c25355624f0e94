#!/usr/bin/env bash
# Stop what infra/local/start-cluster.sh started, and only that: each recorded pid is the
# leader of its own process group, which is terminated (then killed after a grace period).
# Safe to run twice, or when nothing is running.  --keep-logs keeps $STATE/logs.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${LOCAL_CLUSTER_STATE:-$HERE/.state}"
GRACE="${LOCAL_STOP_GRACE:-45}"  # a Ray node drains for up to 30 s on SIGTERM
KEEP_LOGS=0
[[ "${1:-}" == "--keep-logs" ]] && KEEP_LOGS=1

log() { echo "stop-cluster: $*" >&2; }

if [[ ! -d "$STATE" ]]; then
    log "nothing to stop ($STATE does not exist)"
    exit 0
fi
# Written by start-cluster.sh: without it the folder is not ours, and nothing in it is touched.
MARKER="$STATE/.local-cluster-state"
if [[ ! -f "$MARKER" && "$STATE" != "$HERE/.state" ]]; then
    log "$STATE was not created by start-cluster.sh (no $(basename "$MARKER")): nothing stopped or deleted"
    exit 1
fi
CREATED_DIR=1
[[ -f "$MARKER" ]] && grep -q "^created_dir=0" "$MARKER" && CREATED_DIR=0
# What start-cluster.sh puts in a folder it was given (and so may remove from it).
OWN_FILES=(pids logs env.sh ray_auth_token head_temp_dir data_temp_dir mlflow.db "$(basename "$MARKER")")

group_alive() { kill -0 -- "-$1" 2>/dev/null; }

descendants() {  # descendants PID...: every process below these (Ray workers start their own sessions)
    ps -eo pid=,ppid= | awk -v roots="$*" '
        BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
        { parent[$1] = $2 }
        END {
            do { changed = 0
                 for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 }
            } while (changed)
            for (p in keep) print p
        }'
}

stop_groups() {  # stop_groups NAME...: SIGTERM these process groups together, SIGKILL after GRACE
    local name f pid i pids=()
    for name in "$@"; do
        f="$STATE/pids/$name.pid"
        [[ -f "$f" ]] || continue
        pid="$(cat "$f")"
        if group_alive "$pid"; then
            log "stopping $name (process group $pid)"
            kill -TERM -- "-$pid" 2>/dev/null
            pids+=("$pid")
        fi
        rm -f "$f"
    done
    for ((i = 0; i < GRACE * 4; i++)); do
        local any=0
        for pid in "${pids[@]}"; do group_alive "$pid" && any=1; done
        ((any)) || return 0
        sleep 0.25
    done
    for pid in "${pids[@]}"; do
        if group_alive "$pid"; then
            log "process group $pid did not exit in ${GRACE}s: killing it"
            kill -KILL -- "-$pid" 2>/dev/null
        fi
    done
    sleep 0.5
}

# Snapshot the process trees first: once a parent exits, its children are re-parented.
roots=()
for f in "$STATE"/pids/*.pid; do
    [[ -f "$f" ]] && roots+=("$(cat "$f")")
done
tree=()
if ((${#roots[@]})); then
    mapfile -t tree < <(descendants "${roots[@]}")
fi

# Both Ray nodes (each drains for up to 30 s), then the servers they were using.
stop_groups ray-data ray-head
stop_groups mlflow moto

# Anything of those trees still alive (Ray workers in their own sessions) is killed by pid.
for pid in "${tree[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
        log "killing leftover process $pid"
        kill -KILL "$pid" 2>/dev/null
    fi
done

for tf in "$STATE/data_temp_dir" "$STATE/head_temp_dir"; do
    [[ -f "$tf" ]] || continue
    tmp="$(cat "$tf")"
    [[ -n "$tmp" && "$tmp" == /tmp/rpl-* ]] && rm -rf "$tmp"
    rm -f "$tf"
done

if [[ "$KEEP_LOGS" == 1 ]]; then
    # The marker stays with the logs: a later stop may still clean this folder up.
    for name in "${OWN_FILES[@]}"; do
        [[ "$name" == logs || "$name" == "$(basename "$MARKER")" ]] || rm -rf "${STATE:?}/$name"
    done
    log "stopped (logs kept in $STATE/logs)"
elif [[ "$CREATED_DIR" == 1 ]]; then
    rm -rf "$STATE"
    log "stopped"
else
    for name in "${OWN_FILES[@]}"; do rm -rf "${STATE:?}/$name"; done
    log "stopped ($STATE itself kept: start-cluster.sh did not create it)"
fi
