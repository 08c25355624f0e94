#!/usr/bin/env bash
# A shared MLflow tracking server: runs and registry in a database, artifacts proxied to S3.
#
#   MLFLOW_BACKEND_STORE_URI=postgresql://mlflow:PASSWORD@db:5432/mlflow \
#   MLFLOW_ARTIFACTS_DESTINATION=s3://my-bucket/mlartifacts \
#   AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... [MLFLOW_S3_ENDPOINT_URL=http://minio:9000] \
#   infra/mlflow/run_server.sh
#
# Clients then set only MLFLOW_TRACKING_URI=http://HOST:PORT: the server holds the S3 keys and
# streams artifacts (--serve-artifacts, the default), so no client needs storage credentials.
# Binds 127.0.0.1 unless MLFLOW_HOST says otherwise (put a TLS/auth proxy in front before 0.0.0.0).
set -euo pipefail

HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"
WORKERS="${MLFLOW_WORKERS:-2}"
STATE_DIR="${MLFLOW_STATE_DIR:-$PWD/mlflow-server}"
BACKEND="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$STATE_DIR/mlflow.db}"
ARTIFACTS="${MLFLOW_ARTIFACTS_DESTINATION:-$STATE_DIR/mlartifacts}"

mkdir -p "$STATE_DIR"
if [[ "$ARTIFACTS" == s3://* ]]; then
  # AWS_ENDPOINT_URL (the project's convention) doubles as MLflow's S3 endpoint when given.
  if [[ -z "${MLFLOW_S3_ENDPOINT_URL:-}" && -n "${AWS_ENDPOINT_URL:-}" ]]; then
    export MLFLOW_S3_ENDPOINT_URL="$AWS_ENDPOINT_URL"
  fi
  if [[ -z "${AWS_ACCESS_KEY_ID:-}" && -z "${AWS_PROFILE:-}" && ! -f "$HOME/.aws/credentials" ]]; then
    echo "warning: no AWS credentials in the environment; S3 artifact uploads will fail" >&2
  fi
fi

# Background job runners cost ~10 processes and ~3 GB; the platform does not use them.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
export MLFLOW_DISABLE_TELEMETRY="${MLFLOW_DISABLE_TELEMETRY:-true}"

# Never echo the backend URI: it may hold the database password.
echo "mlflow server on http://$HOST:$PORT, artifacts -> $ARTIFACTS" >&2
exec mlflow server \
  --host "$HOST" \
  --port "$PORT" \
  --workers "$WORKERS" \
  --backend-store-uri "$BACKEND" \
  --artifacts-destination "$ARTIFACTS" \
  "$@"
