"""Flatten any config into MLflow params, and keep secrets out of everything MLflow stores.

``flatten_params`` never raises: nested mappings, lists, tuples, dataclasses, ``None``, paths, enums
and arbitrary objects all become ``{"a.b.c": "value"}`` with MLflow-valid keys and values cut to
MLflow's length limit. ``redact`` masks values whose key looks like a secret, any value that
contains a credential found in the environment (AWS keys, MLflow tokens and passwords), credentials
in URLs (``user:password@``, ``token@``) and the signatures and tokens of signed URLs' query strings.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

MAX_PARAM_VALUE_LENGTH = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH in MLflow 3
MAX_TAG_VALUE_LENGTH = 8000  # MAX_TAG_VAL_LENGTH
MAX_KEY_LENGTH = 250  # MAX_ENTITY_KEY_LENGTH
MASK = "***"

# Environment variables whose values are credentials, always; plus any variable whose *name* looks secret.
SECRET_ENV_VARS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "RAY_AUTH_TOKEN",
)
_SECRET_WORDS = ("secret", "token", "password", "passwd", "credential", "apikey", "privatekey")
_KEY_WORD = re.compile(r"(^|[^a-z0-9])(keys?|pwd)($|[^a-z0-9])")
_INVALID_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /:]")
# Credentials in a URL's authority (s3://, postgresql://, http://, ...): ``user:password@`` (the
# password may hold unescaped "/" and "@": everything up to the last "@" of the word is masked,
# erring towards masking too much) or a bare ``token@``, which may not hold "/", so
# "s3://bucket/data@2024/x" is left alone.
_URL_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)"
    r"(?:(?P<user>[^\s/?#@:'\"]*):(?P<pw>[^\s'\"]*)|(?P<token>[^\s/?#@:'\"]+))"
    r"@(?=[^\s/?#@'\"]*(?:[/?#\s'\",;)\]}]|$))"
)
# name=value pairs of a query string; the value is masked when the name is a credential's.
_QUERY_PARAM = re.compile(r"(?P<sep>[?&;])(?P<name>[A-Za-z0-9_.\-]+)=(?P<value>[^&#\s'\"]*)")
# Signed-URL parameters is_secret_key does not already catch (AWS SigV2/V4, GCS, Azure SAS).
_SIGNATURE_NAMES = ("sig", "signature")
_MIN_SECRET_LEN = 6  # shorter env values ("1", "true") would mask half of every config


def is_secret_key(key: str) -> bool:
    """Does a key name look like it holds a credential (``aws_secret_access_key``, ``apiKey``, ``token``)?"""
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key)).lower()
    squashed = re.sub(r"[^a-z0-9]", "", words)
    return any(w in squashed for w in _SECRET_WORDS) or bool(_KEY_WORD.search(words))


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Credential values present in the environment, longest first."""
    environ = os.environ if environ is None else environ
    values = {environ.get(name, "") for name in SECRET_ENV_VARS}
    values |= {v for k, v in environ.items() if is_secret_key(k)}
    return sorted((v for v in values if v and len(v) >= _MIN_SECRET_LEN), key=len, reverse=True)


def is_secret_query_param(name: str) -> bool:
    """Does a query-string parameter carry a credential (``X-Amz-Signature``, ``X-Amz-Credential``,
    ``X-Amz-Security-Token``, ``sig``, ``token``, ``access_token``, ``api_key``, ``AWSAccessKeyId``)?"""
    squashed = re.sub(r"[^a-z0-9]", "", name.lower())
    return is_secret_key(name) or squashed in _SIGNATURE_NAMES or squashed.endswith("signature")


def _mask_userinfo(m: re.Match) -> str:
    if m["token"] is not None:
        return f"{m['scheme']}{MASK}@"
    return f"{m['scheme']}{m['user']}:{MASK}@"


def _mask_query_param(m: re.Match) -> str:
    if m["value"] and is_secret_query_param(m["name"]):
        return f"{m['sep']}{m['name']}={MASK}"
    return m.group(0)


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    """Mask every known credential value in ``text``, the credentials in URLs
    (``scheme://user:password@``, ``scheme://token@``) and signed-URL query parameters."""
    secrets = secret_values() if secrets is None else secrets
    for s in secrets:
        if s in text:
            text = text.replace(s, MASK)
    text = _URL_USERINFO.sub(_mask_userinfo, text)
    return _QUERY_PARAM.sub(_mask_query_param, text)


def redact(mapping: Mapping | Any, secrets: list[str] | None = None) -> dict:
    """A copy of ``mapping`` (nested or flat) with secrets masked as ``"***"``.

    Values under secret-looking keys are masked whole; strings anywhere are scrubbed of environment
    credentials and URL passwords. Dataclasses are converted to dicts first.
    """
    secrets = secret_values() if secrets is None else secrets
    return _redact(_as_mapping(mapping), secrets)


def _redact(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if is_secret_key(str(k)) and v not in (None, "", {}, []):
                out[k] = MASK
            else:
                out[k] = _redact(v, secrets)
        return out
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _redact(_as_mapping(value), secrets)
    if isinstance(value, list):
        return [_redact(v, secrets) for v in value]
    if isinstance(value, tuple):
        return tuple(_redact(v, secrets) for v in value)
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, PurePath):
        return redact_text(str(value), secrets)
    return value


def _as_mapping(obj: Any) -> Mapping:
    if isinstance(obj, Mapping):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if obj is None:
        return {}
    if hasattr(obj, "__dict__"):
        return {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    return {"value": obj}


def sanitize_key(key: str) -> str:
    """An MLflow-valid param/metric/tag key: allowed characters only, at most 250 characters."""
    key = _INVALID_KEY_CHARS.sub("_", str(key)).strip() or "_"
    return key[:MAX_KEY_LENGTH]


def to_str(value: Any, limit: int = MAX_PARAM_VALUE_LENGTH) -> str:
    """``str(value)`` that never raises, enums as their value, cut to ``limit`` characters."""
    try:
        if isinstance(value, enum.Enum):
            value = value.value
        text = value if isinstance(value, str) else str(value)
    except Exception as e:  # a broken __str__ must not kill a training run
        text = f"<unprintable {type(value).__name__}: {type(e).__name__}>"
    if len(text) > limit:
        suffix = "...[truncated]"
        text = text[: limit - len(suffix)] + suffix
    return text


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool | PurePath | enum.Enum)


def flatten_params(config: Mapping | Any, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": [1, 2], "c": None}}`` -> ``{"a.b": "[1, 2]", "a.c": "None"}``.

    Mappings and dataclasses are walked; lists of scalars stay one value (``"[3, 4, 6, 3]"``), lists
    holding mappings or dataclasses are walked by index (``"a.0.b"``); empty containers are kept
    (``"{}"``, ``"[]"``). Keys are made MLflow-valid and values cut to MLflow's limit. Never raises.
    """
    out: dict[str, str] = {}
    _flatten(config, prefix, out, depth=0)
    return out


def _flatten(value: Any, key: str, out: dict[str, str], depth: int) -> None:
    if depth > 20:  # cycles or absurd nesting: stop, keep what we have
        out[sanitize_key(key or "value")] = to_str(value)
        return
    if isinstance(value, Mapping) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        try:
            items = list(_as_mapping(value).items())
        except Exception:
            items = []
        if not items and key:
            out[sanitize_key(key)] = "{}"
        for k, v in items:
            _flatten(v, f"{key}.{k}" if key else str(k), out, depth + 1)
        return
    if isinstance(value, list | tuple | set | frozenset) and not all(_is_scalar(v) for v in value):
        for i, v in enumerate(value):
            _flatten(v, f"{key}.{i}" if key else str(i), out, depth + 1)
        return
    if isinstance(value, list | tuple):
        value = [
            v.value if isinstance(v, enum.Enum) else (str(v) if isinstance(v, PurePath) else v) for v in value
        ]
    out[sanitize_key(key or "value")] = to_str(value)
