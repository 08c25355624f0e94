"""A registered model behind Ray Serve: HTTP endpoint, request batching, replica autoscaling, alias following.

``POST /`` takes JSON ``{"images": [base64, ...], "k": 5}`` (or ``{"image": base64}``) or one raw image
(any non-JSON content type; ``?k=`` in the query). Every image goes through the serving input limits
(rows, bytes, pixels; base64 or bytes only, never a path) and then through ``LoadedModel.predict_proba``,
the same code as ``load_model(...).predict_topk``. Images from concurrent requests are classified together
(``serve.batch``); each prediction reports the ``batch_size`` it ran in and the ``model_version``.
``GET /`` says which model is loaded.

With ``reload_on_alias_change`` each replica polls the registry and swaps to the version the alias
points at, so promoting a new champion reaches serving without a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import dataclass

from ray import serve

from resnet_platform.errors import ConfigError
from resnet_platform.settings import check_ranges, setting
from resnet_platform.tracking.inference import (
    InputLimits,
    InputRejected,
    check_rows,
    image_from_request,
)
from resnet_platform.tracking.registry import alias_version, load_model, pin_version, registered_version
from resnet_platform.tracking.runs import resolve_tracking_uri

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """One declaration per flag of ``jobs/serve_model.py``."""

    model: str = setting(
        help="models:/NAME@ALIAS (followed with reload_on_alias_change) or models:/NAME/VERSION",
        group="model",
    )
    tracking_uri: str | None = setting(
        None, "default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db", group="model"
    )
    host: str = setting("127.0.0.1", "loopback unless you mean to expose it", group="http")
    port: int = setting(8000, "HTTP port of Serve's proxy", group="http", at_least=0, at_most=65535)
    route_prefix: str = setting("/", "URL path the endpoint answers on", group="http")
    app_name: str = setting("resnet", "Serve application name", group="http")
    min_replicas: int = setting(1, "replicas kept running", group="scaling", at_least=0)
    max_replicas: int = setting(
        1, "above min_replicas: Serve autoscales on ongoing requests per replica", group="scaling"
    )
    target_ongoing_requests: float = setting(
        8.0, "autoscaling target: ongoing requests per replica", group="scaling"
    )
    use_gpu: bool = setting(False, "one GPU per replica", group="scaling")
    cpus_per_replica: float = setting(1.0, "CPUs reserved per replica", group="scaling", at_least=0)
    max_batch_size: int = setting(
        32, "images classified together across concurrent requests", group="batching", at_least=1
    )
    batch_wait_timeout_s: float = setting(
        0.01, "how long a batch waits to fill", group="batching", at_least=0
    )
    top_k: int = setting(
        5, "default k; a request may ask for fewer or more (up to the class count)", group="http", at_least=1
    )
    max_rows: int = setting(64, "images per request", group="limits", at_least=1)
    max_image_bytes: int = setting(10 * 2**20, "per image, decoded from base64", group="limits", at_least=1)
    max_pixels: int = setting(50_000_000, "per image, checked before decoding it", group="limits", at_least=1)
    reload_on_alias_change: bool = setting(
        False, "poll the registry; swap to the new version when the alias moves", group="model"
    )
    poll_interval_s: float = setting(
        30.0, "registry poll period with reload_on_alias_change", group="model", above=0
    )

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.max_replicas < max(1, self.min_replicas):
            raise ConfigError(
                f"--max-replicas must be at least --min-replicas and 1, got {self.max_replicas}"
            )

    @property
    def limits(self) -> InputLimits:
        return InputLimits(
            max_rows=self.max_rows, max_image_bytes=self.max_image_bytes, max_pixels=self.max_pixels
        )

    @property
    def max_body_bytes(self) -> int:
        """A request body larger than every allowed image in base64 plus JSON slack is refused unread."""
        return self.max_rows * (self.max_image_bytes * 4 // 3 + 64) + 4096


def _alias_of(model_uri: str) -> tuple[str, str] | None:
    ref = model_uri[len("models:/") :].strip("/") if model_uri.startswith("models:/") else ""
    return tuple(ref.split("@", 1)) if "@" in ref else None  # type: ignore[return-value]


def _error(status: int, message: str):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


class ModelServer:
    """The Serve deployment class (wrapped by :func:`build_app`): one replica, one loaded model."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.limits = config.limits
        self.tracking_uri = resolve_tracking_uri(config.tracking_uri)
        self.device = "cuda" if config.use_gpu else "cpu"
        self._load(pin_version(config.model, self.tracking_uri))
        self.predict.set_max_batch_size(config.max_batch_size)
        self.predict.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self._stop = threading.Event()
        alias = _alias_of(config.model)
        if config.reload_on_alias_change and alias:
            threading.Thread(target=self._follow_alias, args=alias, daemon=True, name="alias-poll").start()

    def _load(self, pinned: str) -> None:
        loaded = load_model(pinned, tracking_uri=self.tracking_uri, device=self.device)
        version = registered_version(pinned)
        # One reference swap: a batch in flight keeps the model it started with.
        self.current = (pinned, version[1] if version else None, loaded)
        log.info("serving %s", pinned)

    def _follow_alias(self, name: str, alias: str) -> None:
        """Poll the registry; load the alias's new version, then swap (requests keep being served)."""
        while not self._stop.wait(self.config.poll_interval_s):
            try:
                version = alias_version(name, alias, self.tracking_uri)
                if version is not None and version != self.current[1]:
                    self._load(f"models:/{name}/{version}")
            except Exception as e:  # a registry outage must not take serving down
                log.warning("alias poll of %s@%s failed: %s", name, alias, e)

    def __del__(self):
        self._stop.set()

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)  # set per replica from the config
    async def predict(self, items: list[tuple[object, int]]) -> list[dict]:
        """Images from concurrent requests, classified as one batch (wrapped by ``serve.batch``)."""
        pinned, version, loaded = self.current
        images = [img for img, _ in items]
        probs = await asyncio.to_thread(loaded.predict_proba, images, len(images))
        labels = loaded.class_names
        out = []
        for p, (_, k) in zip(probs, items, strict=True):
            top = p.topk(min(k, p.shape[0]))
            idx = top.indices.tolist()
            out.append(
                {
                    "top_indices": idx,
                    "top_classes": [labels[i] for i in idx],
                    "top_probabilities": top.values.tolist(),
                    "batch_size": len(items),
                    "model_version": version,
                }
            )
        return out

    def _parse(self, body: bytes, content_type: str, query_k: str | None) -> tuple[list, int]:
        k = self.config.top_k
        if content_type.startswith("application/json"):
            try:
                payload = json.loads(body)
            except ValueError as e:
                raise InputRejected(f"body is not valid JSON: {e}") from e
            if not isinstance(payload, dict):
                raise InputRejected('JSON body must be an object: {"images": [base64, ...], "k": 5}')
            if "images" in payload:
                images = payload["images"]
            elif "image" in payload:
                images = [payload["image"]]
            else:
                raise InputRejected('JSON body needs "images" (a list of base64 strings) or "image"')
            if not isinstance(images, list):
                raise InputRejected('"images" must be a list of base64 strings')
            if not images:
                raise InputRejected('"images" is empty: send at least one base64 image')
            k = payload.get("k", k)
        else:
            if not body:
                raise InputRejected("empty body: send an image file's bytes, or JSON with base64 images")
            images = [body]
            k = query_k if query_k is not None else k
        try:
            k = int(k)
        except (TypeError, ValueError) as e:
            raise InputRejected(f"k must be an integer, not {k!r}") from e
        if k < 1:
            raise InputRejected("k must be at least 1")
        return images, k

    async def __call__(self, request):
        pinned, version, _ = self.current
        if request.method == "GET":
            return {"model": pinned, "model_version": version}
        if request.method != "POST":
            return _error(405, "use POST to classify, GET for the model")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.config.max_body_bytes:
            return _error(413, f"request body over {self.config.max_body_bytes} bytes")
        body = await request.body()
        if len(body) > self.config.max_body_bytes:
            return _error(413, f"request body over {self.config.max_body_bytes} bytes")
        try:
            values, k = self._parse(
                body, request.headers.get("content-type", ""), request.query_params.get("k")
            )
        except InputRejected as e:
            return _error(400, str(e))
        try:
            check_rows(len(values), self.limits)
        except InputRejected as e:
            return _error(413 if len(values) > self.limits.max_rows else 400, str(e))
        images = []
        for i, value in enumerate(values):
            try:
                images.append(image_from_request(value, self.limits))
            except InputRejected as e:  # too large: 413; not an image, wrong type: 400
                return _error(413 if _too_large(value, self.limits) else 400, f"image {i}: {e}")
        predictions = await asyncio.gather(*(self.predict((img, k)) for img in images))
        return {"model": pinned, "model_version": predictions[0]["model_version"], "predictions": predictions}


def _too_large(value: object, limits: InputLimits) -> bool:
    """Whether a rejected image was refused for its size (bytes, or pixels read from its header)."""
    import base64
    import io

    from PIL import Image

    try:
        data = base64.b64decode(value) if isinstance(value, str) else bytes(value)  # type: ignore[arg-type]
        if len(data) > limits.max_image_bytes:
            return True
        with Image.open(io.BytesIO(data)) as img:
            return img.size[0] * img.size[1] > limits.max_pixels
    except Exception:
        return False


def build_app(config: ServeConfig):
    """The Serve application: ``ModelServer`` with batching, replica bounds and resources from ``config``."""
    if not 1 <= config.min_replicas <= config.max_replicas:
        raise ValueError("need 1 <= --min-replicas <= --max-replicas")
    scaling: dict = (
        {"num_replicas": config.min_replicas}
        if config.min_replicas == config.max_replicas
        else {
            "autoscaling_config": {
                "min_replicas": config.min_replicas,
                "max_replicas": config.max_replicas,
                "target_ongoing_requests": config.target_ongoing_requests,
            }
        }
    )
    deployment = serve.deployment(
        ModelServer,
        name="ModelServer",
        ray_actor_options={"num_cpus": config.cpus_per_replica, "num_gpus": 1 if config.use_gpu else 0},
        max_ongoing_requests=max(2 * config.max_batch_size, 16),
        **scaling,
    )
    return deployment.bind(config)


def start_serving(config: ServeConfig) -> str:
    """Start Serve's HTTP proxy on ``host:port`` (loopback by default), deploy, wait until it runs;
    returns the endpoint URL. Needs a Ray runtime in this process."""
    config.tracking_uri = resolve_tracking_uri(config.tracking_uri)  # one store for every replica
    pin_version(config.model, config.tracking_uri)  # fail here, in one line, if the alias is unset
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_app(config), name=config.app_name, route_prefix=config.route_prefix)
    prefix = config.route_prefix if config.route_prefix != "/" else ""
    return f"http://{config.host}:{config.port}{prefix}/"
