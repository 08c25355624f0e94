"""One place that turns a URI into a filesystem: ``/path``, ``file:///path`` or ``s3://bucket/prefix``.

S3 endpoint and credentials come from the standard AWS variables (``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION``), so AWS, MinIO, Ceph and moto all work the same way. Every client gets short
connect/request timeouts and few retries: a wrong endpoint, a missing bucket or bad credentials
fail within seconds with the URI named, never a retry storm.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 60.0
MAX_ATTEMPTS = 3


class StorageError(RuntimeError):
    """A storage location cannot be used (unreachable endpoint, missing bucket, bad credentials)."""


def is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "s3a://"))


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/").rstrip("/")
    if not bucket:
        raise StorageError(f"{uri}: no bucket in S3 URI (expected s3://bucket/prefix)")
    return bucket, key


def s3_filesystem(
    *, connect_timeout: float = CONNECT_TIMEOUT_S, request_timeout: float = REQUEST_TIMEOUT_S
) -> pafs.S3FileSystem:
    endpoint = s3_endpoint()
    kwargs: dict = {
        "region": _region(),
        "connect_timeout": connect_timeout,
        "request_timeout": request_timeout,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=MAX_ATTEMPTS),
    }
    if endpoint:
        parsed = urlparse(endpoint)
        if parsed.scheme:
            kwargs["scheme"] = parsed.scheme
            kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
        else:
            kwargs["endpoint_override"] = endpoint
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        kwargs.update(access_key=key, secret_key=secret, session_token=os.environ.get("AWS_SESSION_TOKEN"))
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """URI -> (pyarrow filesystem, path inside it). S3 paths come back as ``bucket/prefix``."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        return s3_filesystem(), f"{bucket}/{key}" if key else bucket
    if uri.startswith("file://"):
        uri = urlparse(uri).path
    elif "://" in uri:
        raise StorageError(f"{uri}: unsupported URI scheme (use a local path, file:// or s3://)")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI, keeping its scheme."""
    base = str(uri).rstrip("/")
    return "/".join([base, *(p.strip("/") for p in parts)])


def s3_client(*, connect_timeout: float = CONNECT_TIMEOUT_S, read_timeout: float = REQUEST_TIMEOUT_S):
    """A boto3 S3 client from the same environment as :func:`resolve`, with short timeouts."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
    )
    return boto3.client("s3", endpoint_url=s3_endpoint(), region_name=_region(), config=config)


def check_reachable(uri: str, *, timeout_s: float = 10) -> None:
    """Fail fast (StorageError naming ``uri``) when the storage behind ``uri`` cannot be used.

    S3: the endpoint answers, the credentials are accepted and the bucket exists.
    Local: the nearest existing ancestor of the path is a directory.
    """
    uri = str(uri)
    if not is_s3(uri):
        _, path = resolve(uri)
        p = Path(path)
        while not p.exists():
            p = p.parent
        if not p.is_dir():
            raise StorageError(f"{uri}: {p} exists and is not a directory")
        return
    import botocore.exceptions as bce
    from botocore.config import Config

    bucket, _ = _split_s3(uri)
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint(),
        region_name=_region(),
        config=Config(
            connect_timeout=min(timeout_s, CONNECT_TIMEOUT_S),
            read_timeout=timeout_s,
            retries={"max_attempts": 1, "mode": "standard"},
        ),
    )
    where = f" (endpoint {s3_endpoint()})" if s3_endpoint() else ""
    try:
        client.head_bucket(Bucket=bucket)
    except bce.NoCredentialsError as e:
        raise StorageError(f"{uri}: no S3 credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)") from e
    except bce.ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise StorageError(f"{uri}: bucket {bucket!r} does not exist{where}") from e
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"):
            raise StorageError(
                f"{uri}: access denied to bucket {bucket!r}{where}: bad or missing credentials ({code})"
            ) from e
        raise StorageError(f"{uri}: S3 error {code or status}{where}: {e}") from e
    except (bce.EndpointConnectionError, bce.ConnectTimeoutError, bce.ReadTimeoutError) as e:
        raise StorageError(f"{uri}: S3 endpoint unreachable{where}: {e}") from e
    except bce.BotoCoreError as e:
        raise StorageError(f"{uri}: S3 error{where}: {e}") from e
