"""Ray Serve deployment of a registered model (jobs/serve_model.py): answers, batching, input limits,
and following an alias move from version 1 to version 2 without a restart."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fixtures.ports import free_port, wait_until
from mlflow import MlflowClient
from PIL import Image

from resnet_platform.serving.serve import ServeConfig, start_serving
from resnet_platform.tracking import load_model

# Serve + an MLflow server; one Serve app (a module fixture) for its tests, in one pytest process.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serve")]

ALIAS = "serving"


def _post(url: str, body: bytes, content_type: str = "application/json", timeout: float = 120):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def images(digits_folder):
    return sorted((digits_folder.root / "val").glob("*/*.JPEG"))[::40][:8]


@pytest.fixture(scope="module")
def server(ray_local, registered_digits_model):
    """Serve on the session Ray, bound to 127.0.0.1 on a free port, following models:/NAME@serving."""
    from ray import serve

    reg = registered_digits_model
    MlflowClient(reg.tracking_uri).set_registered_model_alias(reg.name, ALIAS, reg.versions[0])
    config = ServeConfig(
        model=f"models:/{reg.name}@{ALIAS}",
        tracking_uri=reg.tracking_uri,
        port=free_port(),
        app_name="resnet-test",
        cpus_per_replica=0.5,
        max_batch_size=8,
        batch_wait_timeout_s=0.5,  # long enough that concurrent requests meet in one batch
        max_rows=4,
        max_image_bytes=20_000,
        reload_on_alias_change=True,
        poll_interval_s=0.5,
    )
    try:
        url = start_serving(config)
        assert url.startswith("http://127.0.0.1:")
        yield url
    finally:
        serve.shutdown()


def test_answers_json_and_raw_bytes(server, registered_digits_model, images):
    reg = registered_digits_model
    assert _get(server) == {"model": reg.uri(reg.versions[0]), "model_version": reg.versions[0]}
    status, out = _post(server, json.dumps({"images": [_b64(p) for p in images[:3]], "k": 3}).encode())
    assert status == 200, out
    expected = load_model(reg.uri(reg.versions[0]), tracking_uri=reg.tracking_uri).predict_topk(
        images[:3], k=3
    )
    assert out["model_version"] == reg.versions[0] and len(out["predictions"]) == 3
    for row, top in zip(out["predictions"], expected, strict=True):
        assert row["top_indices"] == [p.index for p in top]
        assert row["top_classes"] == [p.label for p in top]
        assert np.allclose(row["top_probabilities"], [p.probability for p in top], atol=1e-5)
    status, raw = _post(server + "?k=2", images[0].read_bytes(), "image/jpeg")
    assert status == 200 and raw["predictions"][0]["top_indices"] == [p.index for p in expected[0][:2]]


def test_concurrent_requests_share_a_batch(server, images):
    bodies = [json.dumps({"image": _b64(p)}).encode() for p in images[:6]]
    with ThreadPoolExecutor(len(bodies)) as pool:
        results = list(pool.map(lambda b: _post(server, b), bodies))
    assert all(status == 200 for status, _ in results), results
    sizes = [out["predictions"][0]["batch_size"] for _, out in results]
    assert max(sizes) > 1, sizes  # requests arriving within the batch window ran as one model call


def test_input_limits(server, images):
    rng = np.random.default_rng(0)
    big = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (120, 120, 3), dtype=np.uint8)).save(big, format="PNG")
    assert 20_000 < len(big.getvalue()) < 80_000  # over the image limit, under the body limit
    status, out = _post(server, json.dumps({"images": [base64.b64encode(big.getvalue()).decode()]}).encode())
    assert status == 413 and "image 0" in out["error"], out
    status, out = _post(server, big.getvalue(), "image/png")
    assert status == 413, out
    status, out = _post(server, json.dumps({"images": [_b64(images[0])] * 5}).encode())
    assert status == 413 and "5" in out["error"], out
    # A path is never opened on the server; junk and malformed JSON are 400s with a message.
    status, out = _post(server, json.dumps({"images": [str(images[0])]}).encode())
    assert status == 400 and out["error"], out
    status, out = _post(server, b"{not json")
    assert status == 400 and "JSON" in out["error"], out


def test_follows_alias_move_to_version_2(server, registered_digits_model, images):
    reg = registered_digits_model
    MlflowClient(reg.tracking_uri).set_registered_model_alias(reg.name, ALIAS, reg.versions[1])
    wait_until(
        lambda: _get(server)["model_version"] == reg.versions[1],
        120,
        "the deployment to follow the alias",
        0.5,
    )
    status, out = _post(server, json.dumps({"images": [_b64(p) for p in images[:2]]}).encode())
    assert status == 200 and out["model_version"] == reg.versions[1]
    expected = load_model(reg.uri(reg.versions[1]), tracking_uri=reg.tracking_uri).predict_topk(images[:2])
    assert [r["top_indices"] for r in out["predictions"]] == [[p.index for p in t] for t in expected]
