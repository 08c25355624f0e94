"""URIs -> filesystems, against a real S3-compatible server on 127.0.0.1; fast failures name the URI."""

from __future__ import annotations

import time

import pyarrow.fs as pafs
import pytest
from fixtures.ports import free_port
from fixtures.s3 import moto_server

from resnet_platform.storage import (
    ATTEMPTS_ENV,
    TIMEOUT_ENV,
    StorageError,
    check_reachable,
    check_writable,
    join,
    resolve,
    s3_client,
)


def test_resolve_local_and_file_uri(tmp_path):
    fs, path = resolve(str(tmp_path))
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path.resolve())
    fs, path = resolve(f"file://{tmp_path}/x")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path.resolve() / "x")
    assert join("s3://b/p/", "train", "a.parquet") == "s3://b/p/train/a.parquet"
    with pytest.raises(StorageError, match="gs://b/x"):
        resolve("gs://b/x")


def test_s3_round_trip_through_pyarrow_and_boto3(s3_server):
    bucket = s3_server.new_bucket()
    fs, path = resolve(f"s3://{bucket}/some/prefix")
    assert isinstance(fs, pafs.S3FileSystem) and path == f"{bucket}/some/prefix"
    with fs.open_output_stream(path + "/hello.txt") as f:
        f.write(b"hello")
    body = s3_client().get_object(Bucket=bucket, Key="some/prefix/hello.txt")["Body"].read()
    assert body == b"hello"
    check_reachable(f"s3://{bucket}/some/prefix")
    check_writable(f"s3://{bucket}/some/prefix")  # the probe object is put and deleted again
    keys = [o["Key"] for o in s3_client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["some/prefix/hello.txt"]


def test_missing_bucket_fails_fast_naming_the_uri(s3_server):
    uri = "s3://no-such-bucket-here/imagenet"
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="s3://no-such-bucket-here/imagenet.*does not exist"):
        check_reachable(uri)
    assert time.monotonic() - t0 < 5


def test_unreachable_endpoint_fails_fast(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="s3://bucket/x.*unreachable"):
        check_reachable("s3://bucket/x", timeout_s=3)
    assert time.monotonic() - t0 < 10


@pytest.fixture(scope="module")
def s3_server_with_auth():
    """A second moto server that checks credentials (no IAM users exist: every key is bad)."""
    with moto_server(INITIAL_NO_AUTH_ACTION_COUNT="0") as endpoint:
        yield endpoint


def test_bad_credentials_fail_fast_naming_the_uri(s3_server, s3_server_with_auth, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server_with_auth)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="s3://imagenet-bucket/prefix.*(access denied|credentials)"):
        check_reachable("s3://imagenet-bucket/prefix")
    assert time.monotonic() - t0 < 5


def test_local_path_under_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(StorageError, match="not a directory"):
        check_reachable(str(tmp_path / "f" / "data"))
    check_reachable(str(tmp_path / "new" / "data"))  # creatable: fine


# ----------------------------------------------------------------------------- faults with deadlines


@pytest.fixture
def silent_endpoint():
    """A TCP server on 127.0.0.1 that accepts connections and never sends a byte: a hung S3."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        server.close()


@pytest.mark.slow  # job subprocesses or deadlines: tens of seconds
def test_hung_endpoint_fails_preflight_read_and_upload_within_the_deadline(
    s3_server, silent_endpoint, monkeypatch
):
    """pyarrow 25 on Linux honours request_timeout as a stall limit (curl code 28): one deadline
    per attempt. Before, the defaults (60 s x 3 attempts, then Ray's retries) held a job 371 s."""
    deadline, attempts = 2, 2
    monkeypatch.setenv("AWS_ENDPOINT_URL", silent_endpoint)
    monkeypatch.setenv(TIMEOUT_ENV, str(deadline))
    monkeypatch.setenv(ATTEMPTS_ENV, str(attempts))
    uri = "s3://hung-bucket/runs"

    t0 = time.monotonic()
    with pytest.raises(StorageError) as err:
        check_writable(uri)  # pre-flight: one attempt
    assert time.monotonic() - t0 < 2 * deadline + 2
    message = str(err.value)
    assert uri in message and "did not answer within the deadline" in message and "\n" not in message

    fs, path = resolve(uri)
    for what, call in (
        ("read", lambda: fs.open_input_file(path + "/manifest.json").read()),
        ("upload", lambda: fs.open_output_stream(path + "/x.bin").write(b"x" * 1024)),
    ):
        t0 = time.monotonic()
        with pytest.raises(OSError):
            call()
        elapsed = time.monotonic() - t0
        # The SDK's standard retries: one deadline per attempt, plus its short backoff.
        assert elapsed < 2 * deadline * attempts + 2, (what, elapsed)


def test_training_on_a_hung_endpoint_is_refused_in_one_line(s3_server, silent_endpoint, monkeypatch):
    from resnet_platform.train import TrainConfig
    from resnet_platform.train.runner import run_training

    monkeypatch.setenv("AWS_ENDPOINT_URL", silent_endpoint)
    monkeypatch.setenv(TIMEOUT_ENV, "2")
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=r"s3://hung-bucket/imagenet: S3 endpoint did not answer"):
        run_training(TrainConfig(data="s3://hung-bucket/imagenet", arch="resnet18"))
    assert time.monotonic() - t0 < 8


@pytest.fixture(scope="module")
def s3_server_with_iam():
    """moto enforcing IAM: the first 4 requests are unauthenticated (``INITIAL_NO_AUTH_ACTION_COUNT``)
    and create a bucket and a user whose policy allows reads only; after that every request is
    checked against the caller's policy, so PutObject with the reader's keys is AccessDenied.
    (moto names the HeadBucket action ``s3:HeadBucket``; AWS checks ``s3:ListBucket``.)"""
    import json

    import boto3

    with moto_server(INITIAL_NO_AUTH_ACTION_COUNT="4") as endpoint:
        anon = dict(
            endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y"
        )
        boto3.client("s3", **anon).create_bucket(Bucket="read-only-bucket")
        iam = boto3.client("iam", **anon)
        iam.create_user(UserName="reader")
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["s3:GetObject", "s3:ListBucket", "s3:HeadBucket"],
                    "Resource": "*",
                }
            ],
        }
        iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]


def test_read_only_credentials_are_refused_before_training(
    s3_server, s3_server_with_iam, digits_shards, monkeypatch
):
    from test_train import small_config

    from resnet_platform.train.runner import run_training

    endpoint, key_id, secret = s3_server_with_iam
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    check_reachable("s3://read-only-bucket/runs")  # HeadBucket alone lets these credentials through
    config = small_config(digits_shards, "s3://read-only-bucket/runs", name="ro")
    t0 = time.monotonic()
    with pytest.raises(StorageError) as err:
        run_training(config)
    assert time.monotonic() - t0 < 10
    message = str(err.value)
    assert message.startswith("s3://read-only-bucket/runs: access denied") and "PutObject" in message
    assert secret not in message and "\n" not in message
    listed = s3_client().list_objects_v2(Bucket="read-only-bucket")
    assert listed.get("KeyCount", 0) == 0, "nothing was written: refused before any worker started"


class FlakyProxy:
    """A TCP proxy on 127.0.0.1 in front of the S3 server that drops the next N connections
    unanswered (closed at once, as a restarting load balancer does) and forwards the others."""

    def __init__(self, target: str) -> None:
        import socket
        import threading

        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.to_drop = 0
        self.dropped = 0
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.endpoint = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        self.server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                continue
            if self.to_drop:
                self.to_drop -= 1
                self.dropped += 1
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self.server.close()


def test_a_failed_checkpoint_copy_is_retried(s3_server, tmp_path, monkeypatch):
    """The copy Ray Train makes for a checkpoint (``pyarrow.fs.copy_files`` into the storage
    filesystem), under ``storage.with_retries`` as ``persist_with_retries`` runs it: dropped
    connections cost a retry, not the attempt. The SDK's own retries are off here (1 attempt) so
    the drop reaches our layer; without it the same drop fails the copy."""
    from resnet_platform.storage import S3Limits, with_retries

    bucket = s3_server.new_bucket()
    proxy = FlakyProxy(s3_server.endpoint)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        monkeypatch.setenv(ATTEMPTS_ENV, "1")
        local = tmp_path / "checkpoint"
        local.mkdir()
        (local / "state.pt").write_bytes(b"weights" * 1000)
        (local / "model_config.json").write_text("{}")
        fs, path = resolve(f"s3://{bucket}/runs/r/checkpoint_epoch_0001")

        proxy.to_drop = 1
        with pytest.raises(OSError):
            pafs.copy_files(str(local), path, destination_filesystem=fs, use_threads=False)

        proxy.to_drop = 2
        with_retries(
            lambda: pafs.copy_files(str(local), path, destination_filesystem=fs, use_threads=False),
            f"checkpoint upload to {path}",
            S3Limits(max_attempts=4, backoff_s=0.1),
        )
        assert proxy.dropped == 3
        keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]}
        assert keys == {
            "runs/r/checkpoint_epoch_0001/state.pt",
            "runs/r/checkpoint_epoch_0001/model_config.json",
        }
    finally:
        proxy.close()
