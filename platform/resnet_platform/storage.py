"""One place that turns a URI into a filesystem: ``/path``, ``file:///path`` or ``s3://bucket/prefix``.

S3 endpoint and credentials come from the standard AWS variables (``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION``), so AWS, MinIO, Ceph and moto all work the same way.

Every S3 call has a deadline (:class:`S3Limits`). pyarrow documents ``request_timeout`` as ignored
on Linux, but pyarrow 25's AWS SDK build passes it to curl as a stall limit (no byte for that many
seconds: curl code 28): measured here, an endpoint that accepts and never answers fails a
``get_file_info``, a read and an upload after one deadline per attempt, while a slow but moving
transfer of 6 s passes a 2 s deadline. So the deadline bounds a stall, never a large upload.
boto3 clients get the same numbers (``read_timeout`` is also a per-read stall limit).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

import pyarrow.fs as pafs

from resnet_platform.errors import UserError

log = logging.getLogger(__name__)

T = TypeVar("T")

TIMEOUT_ENV = "RESNET_PLATFORM_S3_TIMEOUT_S"
ATTEMPTS_ENV = "RESNET_PLATFORM_S3_MAX_ATTEMPTS"


@dataclass(frozen=True)
class S3Limits:
    """How long an S3 call may stall and how often it is tried.

    Worst case for one call: ``max_attempts * request_timeout_s`` plus backoff. The environment
    (``RESNET_PLATFORM_S3_TIMEOUT_S``, ``RESNET_PLATFORM_S3_MAX_ATTEMPTS``) overrides the
    defaults, so the driver, Ray workers and jobs agree without a flag on every job.
    """

    connect_timeout_s: float = 5.0
    request_timeout_s: float = 20.0  # a stall deadline: no byte for this long fails the attempt
    max_attempts: int = 3  # per call, with the AWS SDK's standard backoff for transient errors
    backoff_s: float = 1.0  # first pause of our own retries (checkpoint uploads), doubled each time

    @classmethod
    def from_env(cls) -> S3Limits:
        limits = cls()
        timeout = os.environ.get(TIMEOUT_ENV)
        attempts = os.environ.get(ATTEMPTS_ENV)
        try:
            if timeout:
                t = float(timeout)
                limits = cls(min(limits.connect_timeout_s, t), t, limits.max_attempts, limits.backoff_s)
            if attempts:
                limits = cls(
                    limits.connect_timeout_s,
                    limits.request_timeout_s,
                    max(1, int(attempts)),
                    limits.backoff_s,
                )
        except ValueError as e:
            raise StorageError(f"{TIMEOUT_ENV}/{ATTEMPTS_ENV}: not a number ({e})") from e
        return limits


class StorageError(UserError, RuntimeError):
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


def s3_filesystem(limits: S3Limits | None = None) -> pafs.S3FileSystem:
    limits = limits or S3Limits.from_env()
    endpoint = s3_endpoint()
    kwargs: dict = {
        "region": _region(),
        "connect_timeout": limits.connect_timeout_s,
        "request_timeout": limits.request_timeout_s,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=limits.max_attempts),
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


@dataclass(frozen=True)
class Location:
    """A URI resolved once: the URI (for messages and for whatever runs elsewhere), its filesystem
    and the path inside it. Where a URI enters a job (its configuration, the prepared data) it is
    resolved into one of these and handed down; a place below it takes a sub-location with
    :meth:`child` rather than joining and resolving the URI again. Driver-side: a Ray worker gets
    the URI in its plain-data config and resolves it in its own process, with its own credentials."""

    uri: str
    fs: pafs.FileSystem
    path: str

    @classmethod
    def of(cls, uri: str) -> Location:
        fs, path = resolve(uri)
        return cls(str(uri), fs, path)

    def child(self, *parts: str) -> Location:
        return Location(join(self.uri, *parts), self.fs, join(self.path, *parts))


def absolute(uri: str) -> str:
    """A local path made absolute (Ray workers and Tune trials run in other directories); a URI
    (``s3://``, ``file://``, ...) unchanged."""
    uri = str(uri)
    return uri if "://" in uri else os.path.abspath(uri)


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI, keeping its scheme."""
    base = str(uri).rstrip("/")
    return "/".join([base, *(p.strip("/") for p in parts)])


def s3_client(limits: S3Limits | None = None, *, max_attempts: int | None = None):
    """A boto3 S3 client from the same environment as :func:`resolve`, with the same deadlines."""
    import boto3
    from botocore.config import Config

    limits = limits or S3Limits.from_env()
    config = Config(
        connect_timeout=limits.connect_timeout_s,
        read_timeout=limits.request_timeout_s,
        retries={"max_attempts": max_attempts or limits.max_attempts, "mode": "standard"},
    )
    # A new session reads the credentials from the environment now: boto3's default session keeps
    # the first ones it found for the life of the process.
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=s3_endpoint(), region_name=_region(), config=config)


def with_retries(fn: Callable[[], T], what: str, limits: S3Limits | None = None) -> T:
    """``fn()``, tried ``max_attempts`` times with doubling pauses on ``OSError`` (pyarrow's and the
    network's errors); the last error is raised naming ``what``. For whole operations that the
    SDK's per-request retries do not cover, such as copying a checkpoint directory."""
    limits = limits or S3Limits.from_env()
    attempts = max(1, limits.max_attempts)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except OSError as e:
            if attempt == attempts:
                raise StorageError(f"{what}: failed after {attempt} attempts: {_one_line(e)}") from e
            pause = limits.backoff_s * 2 ** (attempt - 1)
            log.warning("%s: attempt %d failed (%s); retrying in %.0f s", what, attempt, _one_line(e), pause)
            time.sleep(pause)
    raise AssertionError("unreachable")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) < 300 else text[:297] + "..."


def _preflight_client(timeout_s: float | None):
    """One attempt per call: a pre-flight answers in seconds, it does not wait out an outage."""
    limits = S3Limits.from_env()
    if timeout_s is not None:
        limits = S3Limits(min(limits.connect_timeout_s, timeout_s), timeout_s, 1, limits.backoff_s)
    return s3_client(limits, max_attempts=1)


def _explain(uri: str, bucket: str, e: Exception, action: str) -> StorageError:
    """A botocore error as one line that names the URI (never the credentials)."""
    import botocore.exceptions as bce

    where = f" (endpoint {s3_endpoint()})" if s3_endpoint() else ""
    if isinstance(e, bce.NoCredentialsError):
        return StorageError(f"{uri}: no S3 credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
    if isinstance(e, bce.ClientError):
        code = str(e.response.get("Error", {}).get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("404", "NoSuchBucket", "NotFound"):
            return StorageError(f"{uri}: bucket {bucket!r} does not exist{where}")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StorageError(f"{uri}: access denied to bucket {bucket!r}{where}: bad credentials ({code})")
        if code in ("403", "AccessDenied", "Forbidden"):
            return StorageError(
                f"{uri}: access denied to bucket {bucket!r}{where}: these credentials cannot {action} ({code})"
            )
        return StorageError(f"{uri}: S3 error {code or status} on {action}{where}")
    if isinstance(e, bce.ConnectTimeoutError | bce.ReadTimeoutError):
        return StorageError(f"{uri}: S3 endpoint did not answer within the deadline{where} ({action})")
    if isinstance(e, bce.EndpointConnectionError):
        return StorageError(f"{uri}: S3 endpoint unreachable{where}")
    return StorageError(f"{uri}: S3 error on {action}{where}: {_one_line(e)}")


def check_reachable(uri: str, *, timeout_s: float | None = None) -> None:
    """Fail fast (StorageError naming ``uri``) when the storage behind ``uri`` cannot be read.

    S3: the endpoint answers, the credentials are accepted and the bucket exists (one attempt of
    at most ``timeout_s``, default the S3 deadline). Local: the nearest existing ancestor of the
    path is a directory.
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

    bucket, _ = _split_s3(uri)
    try:
        _preflight_client(timeout_s).head_bucket(Bucket=bucket)
    except (bce.BotoCoreError, bce.ClientError) as e:
        raise _explain(uri, bucket, e, "list the bucket") from e


def check_writable(uri: str, *, timeout_s: float | None = None) -> None:
    """:func:`check_reachable`, then prove write access: put and delete a small probe object
    under ``uri``. Read-only credentials pass ``HeadBucket``; without this they would fail at the
    first checkpoint, an epoch later. Local paths: create and remove a probe file."""
    uri = str(uri)
    check_reachable(uri, timeout_s=timeout_s)
    probe = f".write-probe-{uuid.uuid4().hex[:12]}"
    if not is_s3(uri):
        _, path = resolve(uri)
        p = Path(path)
        try:
            p.mkdir(parents=True, exist_ok=True)
            (p / probe).write_bytes(b"probe")
            (p / probe).unlink()
        except OSError as e:
            raise StorageError(f"{uri}: cannot write here: {_one_line(e)}") from e
        return
    import botocore.exceptions as bce

    bucket, prefix = _split_s3(uri)
    key = f"{prefix}/{probe}" if prefix else probe
    client = _preflight_client(timeout_s)
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"probe")
    except (bce.BotoCoreError, bce.ClientError) as e:
        raise _explain(uri, bucket, e, "write (PutObject)") from e
    try:
        client.delete_object(Bucket=bucket, Key=key)
    except (bce.BotoCoreError, bce.ClientError) as e:
        raise _explain(uri, bucket, e, f"delete (DeleteObject; probe s3://{bucket}/{key} left behind)") from e
