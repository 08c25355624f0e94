"""URIs -> filesystems, against a real S3-compatible server on 127.0.0.1; fast failures name the URI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from fixtures.ports import free_port, wait_http

from resnet_platform.storage import StorageError, check_reachable, join, resolve, s3_client


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
    port = free_port()
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0")
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/moto-api/", timeout=30, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


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
