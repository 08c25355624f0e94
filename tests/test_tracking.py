"""MLflow tracking and registry against a real `mlflow server` whose artifacts land in the S3 test server."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from resnet_platform.models import build_model
from resnet_platform.tracking import (
    ModelSpec,
    RunLogger,
    download_model,
    end_run,
    find_run,
    flatten_params,
    load_model,
    log_resnet_model,
    plot_error_curves,
    promote,
    redact,
    resolve_tracking_uri,
    start_run,
)
from resnet_platform.tracking.params import MAX_PARAM_VALUE_LENGTH, redact_text

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAKE_TOKEN = "hf_tok_0123456789abcdef"
FAKE_DB_PASSWORD = "pg-pass-7f3a9c"


@dataclass
class _Optim:
    lr: float = 0.1
    milestones: list[int] = field(default_factory=lambda: [32000, 48000])


@dataclass
class _Config:
    arch: str = "cifar_resnet20"
    optim: _Optim = field(default_factory=_Optim)
    data: dict = field(default_factory=lambda: {"uri": "s3://bucket/cifar", "augment": {"flip": True}})
    note: str | None = None


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- no server --------------------------------------------------------------------------------------


def test_flatten_params_nested_lists_dataclasses_none():
    flat = flatten_params(
        {
            "cfg": _Config(),
            "stages": [3, 4, 6, 3],
            "schedules": [{"kind": "step", "at": 30}, {"kind": "warmup"}],
            "empty": {},
            "path": Path("/data/x"),
            "bad key!": 1,
            "long": "x" * 10_000,
            "obj": object.__new__(type("Weird", (), {"__str__": lambda self: 1 / 0})),
        }
    )
    assert flat["cfg.arch"] == "cifar_resnet20"
    assert flat["cfg.optim.lr"] == "0.1"
    assert flat["cfg.optim.milestones"] == "[32000, 48000]"
    assert flat["cfg.data.augment.flip"] == "True"
    assert flat["cfg.note"] == "None"
    assert flat["stages"] == "[3, 4, 6, 3]"
    assert flat["schedules.0.kind"] == "step" and flat["schedules.1.kind"] == "warmup"
    assert flat["empty"] == "{}"
    assert flat["path"] == "/data/x"
    assert flat["bad key_"] == "1"
    assert len(flat["long"]) == MAX_PARAM_VALUE_LENGTH
    assert flat["obj"].startswith("<unprintable")
    assert all(isinstance(v, str) for v in flat.values())


def test_redact_keys_env_values_and_url_passwords(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    out = redact(
        {
            "storage": {"aws_secret_access_key": "abc", "endpoint": "http://h:9000"},
            "apiKey": "k",
            "hub_token": "t",
            "db_password": "p",
            "copied": "prefix-very-secret-value-suffix",
            "db": f"postgresql://user:{FAKE_DB_PASSWORD}@db:5432/mlflow",
            "lr": 0.1,
            "steps": ["very-secret-value"],
        }
    )
    assert out["storage"] == {"aws_secret_access_key": "***", "endpoint": "http://h:9000"}
    assert out["apiKey"] == out["hub_token"] == out["db_password"] == "***"
    assert out["copied"] == "prefix-***-suffix"
    assert out["db"] == "postgresql://user:***@db:5432/mlflow"
    assert out["lr"] == 0.1 and out["steps"] == ["***"]
    assert "very-secret-value" not in redact_text("x very-secret-value y")


def test_redact_bare_token_in_url():
    assert redact_text("http://ghp_tok3n@git.example.com/x.git", []) == "http://***@git.example.com/x.git"
    assert redact({"uri": "https://tok3n@mlflow.example"}) == {"uri": "https://***@mlflow.example"}
    # "@" after a path is not a credential: data locations stay readable.
    assert redact_text("s3://bucket/data@2024/x and models:/m@champion", []) == (
        "s3://bucket/data@2024/x and models:/m@champion"
    )


def test_redact_password_holding_slash_and_at():
    out = redact_text("tracking https://user:pa/ss@word@mlflow.example:5000/api next", [])
    assert out == "tracking https://user:***@mlflow.example:5000/api next"
    assert redact({"db": "postgresql://u:p@ss/w@rd@db:5432/mlflow"}) == {
        "db": "postgresql://u:***@db:5432/mlflow"
    }


def test_redact_signed_url_query_strings():
    presigned = (
        "https://b.s3.amazonaws.com/k.tar?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F2026"
        "&X-Amz-Security-Token=FQoGZXIvYXdzEXAMPLE&X-Amz-Signature=5d672d79c15b13162d9279b0855cfba6&X-Amz-Expires=60"
    )
    out = redact_text(presigned, [])
    for secret in ("AKIDEXAMPLE", "FQoGZXIvYXdzEXAMPLE", "5d672d79c15b"):
        assert secret not in out
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in out and "X-Amz-Expires=60" in out
    assert redact_text("https://a.blob.core.windows.net/c/b?sv=2024&sig=abc%2Fdef&se=2026", []) == (
        "https://a.blob.core.windows.net/c/b?sv=2024&sig=***&se=2026"
    )
    assert redact_text("http://h/x?Signature=abc&AWSAccessKeyId=AKID&page=2", []) == (
        "http://h/x?Signature=***&AWSAccessKeyId=***&page=2"
    )
    assert redact_text("http://h/?token=t0k&access_token=a&api_key=k", []) == (
        "http://h/?token=***&access_token=***&api_key=***"
    )


def test_checkpoint_stores_the_redacted_config(tmp_path, monkeypatch):
    from resnet_platform.train.checkpoint import TrainingState, load_checkpoint, save_checkpoint

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", FAKE_TOKEN)
    net = build_model("cifar_resnet20", num_classes=10)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    config = {
        "tracking_uri": "https://user:pa/ss@word@mlflow.example",
        "data": "https://b.s3.amazonaws.com/cifar.tar.gz?X-Amz-Signature=feedface99&X-Amz-Expires=60",
        "storage": "http://ghp_tok3n@git.example.com/runs",
        "note": f"token {FAKE_TOKEN} copied",
        "lr_milestones": (30, 60),
    }
    save_checkpoint(
        tmp_path,
        model=net,
        optimizer=optimizer,
        schedule=torch.optim.lr_scheduler.StepLR(optimizer, 30),
        scaler=None,
        state=TrainingState(),
        config=config,
        model_config={"arch": "cifar_resnet20"},
    )
    stored = load_checkpoint(tmp_path)["config"]
    for secret in ("pa/ss", "word@", "feedface99", "ghp_tok3n", FAKE_TOKEN):
        assert secret not in stored
    assert json.loads(stored)["lr_milestones"] == [30, 60]


def test_plot_error_curves_png(tmp_path):
    history = [
        {
            "epoch": e,
            "train_top1_error": 0.9 - 0.1 * e,
            "val_top1_error": 0.95 - 0.1 * e,
            "val_top5_error": 0.5,
        }
        for e in range(1, 6)
    ]
    path = plot_error_curves(history, tmp_path / "sub" / "curves.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    cmp = plot_error_curves({"plain": history, "resnet": history}, tmp_path / "cmp.png", title="Fig. 4")
    assert cmp.read_bytes()[:8] == PNG_MAGIC


def _reject_message(call) -> str:
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as err:
        call()
    return err.value.message


def test_saved_model_is_pinned_and_carries_its_own_code(tmp_path):
    """Requirements are name==version only (the tree below them in constraints.txt), nothing asks an
    index for resnet-platform, and MLflow imports this package from the model's code/ folder."""
    import mlflow
    import pandas as pd
    import yaml

    from resnet_platform.tracking import save_resnet_model
    from resnet_platform.tracking.model_logging import example_image_b64

    pinned = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[^\s;,<>=!~*]+$")
    mdir = tmp_path / "model"
    torch.manual_seed(0)
    save_resnet_model(
        mdir, build_model("cifar_resnet20", 10).state_dict(), ModelSpec.for_arch("cifar_resnet20")
    )
    requirements = [ln.strip() for ln in (mdir / "requirements.txt").read_text().splitlines() if ln.strip()]
    constraints = [ln.strip() for ln in (mdir / "constraints.txt").read_text().splitlines() if ln.strip()]
    assert "-c constraints.txt" in requirements
    for line in [r for r in requirements if r != "-c constraints.txt"] + constraints:
        assert pinned.match(line), f"not pinned: {line!r}"
        assert not line.lower().replace("_", "-").startswith("resnet-platform"), line
    names = {line.split("==")[0] for line in constraints}
    assert {"mlflow", "torch", "pillow", "numpy", "pandas"} <= names
    env = yaml.safe_load((mdir / "python_env.yaml").read_text())
    assert env["dependencies"] == ["-r requirements.txt"]
    assert all(pinned.match(d) for d in env["build_dependencies"]), env
    assert (mdir / "code" / "resnet_platform" / "tracking" / "inference.py").is_file()

    # Load it the way `mlflow models serve` does, with this package not yet imported.
    mine = {k: m for k, m in sys.modules.items() if k.split(".")[0] == "resnet_platform"}
    saved_path = list(sys.path)
    for k in mine:
        del sys.modules[k]
    try:
        model = mlflow.pyfunc.load_model(str(mdir))
        origin = Path(sys.modules["resnet_platform"].__file__).resolve()
        assert origin.is_relative_to(mdir.resolve() / "code"), origin
        b64 = example_image_b64(32, "PNG")
        out = model.predict(pd.DataFrame({"image": [b64, b64]}), params={"k": 3})
        assert len(out) == 2 and len(out["top_classes"][0]) == 3
        image = tmp_path / "on-the-server.png"
        image.write_bytes(base64.b64decode(b64))
        msg = _reject_message(lambda: model.predict(pd.DataFrame({"image": [str(image)]})))
        assert "never opens paths" in msg
        msg = _reject_message(lambda: model.predict(pd.DataFrame({"image": [b64] * 257})))
        assert "257 images in one request; the limit is 256" in msg
    finally:
        for k in [k for k in sys.modules if k.split(".")[0] == "resnet_platform"]:
            del sys.modules[k]
        sys.modules.update(mine)
        sys.path[:] = saved_path


# --- real server ------------------------------------------------------------------------------------


def test_start_run_params_tags_find_and_resume(mlflow_server):
    uri, exp, name = mlflow_server.uri, _unique("exp"), "resnet20-run"
    params = {"cfg": _Config(), "hub": {"token": FAKE_TOKEN}, "secrets": {"x": 1}}
    run_id = start_run(uri, exp, name, params=params, tags={"arch": "cifar_resnet20", "workers": 2})
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "RUNNING" and run.info.run_name == name
    assert run.data.params["cfg.optim.lr"] == "0.1"
    assert run.data.params["cfg.note"] == "None"
    assert run.data.params["hub.token"] == run.data.params["secrets"] == "***"
    assert run.data.tags["arch"] == "cifar_resnet20" and run.data.tags["workers"] == "2"
    assert find_run(uri, exp, name) == run_id
    assert find_run(uri, exp, "nope") is None and find_run(uri, _unique("none"), name) is None

    end_run(uri, run_id, "FAILED")
    again = start_run(uri, exp, name, params=params, tags={"resumed": True}, existing_run_id=run_id)
    assert again == run_id
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.tags["resumed"] == "True"
    end_run(uri, run_id)
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"


def test_run_logger_restart_logs_each_epoch_once(mlflow_server, tmp_path):
    uri = mlflow_server.uri
    run_id = start_run(uri, _unique("exp"), "restart", params={}, tags={})
    steps_per_epoch = 5
    with RunLogger(uri, run_id, flush_every=3) as rl:
        for epoch in (1, 2):
            for s in range(steps_per_epoch):
                step = (epoch - 1) * steps_per_epoch + s + 1
                rl.log_step({"loss": 1.0 / step, "lr": 0.1, "images_per_sec": 100.0}, step)
            assert rl.log_epoch(epoch, {"train_top1_error": 0.5 / epoch, "val_top1_error": 0.6 / epoch}, step)
        rl.log_step({"loss": 0.01}, 12)  # partial epoch 3, then the worker group dies

    # Restart from the epoch-2 checkpoint: epochs 2 and steps up to 12 are replayed.
    rl2 = RunLogger(uri, run_id)
    assert rl2.last_epoch == 2 and rl2.last_step == 12
    assert rl2.log_epoch(2, {"train_top1_error": 0.0, "val_top1_error": 0.0}, 10) is False
    for step in range(11, 16):
        rl2.log_step({"loss": 0.02}, step)
    assert rl2.log_epoch(3, {"train_top1_error": 0.1, "val_top1_error": 0.2}, 15) is True
    assert rl2.log_epoch(3, {"train_top1_error": 0.1, "val_top1_error": 0.2}, 15) is False
    rl2.close()

    client = MlflowClient(uri)
    epochs = [m.value for m in client.get_metric_history(run_id, "epoch")]
    assert sorted(epochs) == [1.0, 2.0, 3.0]
    val = client.get_metric_history(run_id, "val_top1_error")
    assert len(val) == 3 and 0.0 not in [m.value for m in val]
    loss_steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert sorted(loss_steps) == list(range(1, 11)) + [12, 13, 14, 15]
    assert len(client.get_metric_history(run_id, "images_per_sec")) == 10


@pytest.mark.slow
def test_artifacts_land_in_s3(mlflow_server, tmp_path):
    uri = mlflow_server.uri
    run_id = start_run(uri, _unique("exp"), "artifacts", params={}, tags={})
    history = [{"epoch": e, "train_top1_error": 1 / e, "val_top1_error": 1.1 / e} for e in (1, 2, 3)]
    png = plot_error_curves(history, tmp_path / "error_curves.png")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"lr": 0.1, "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"]}))
    with RunLogger(uri, run_id) as rl:
        rl.log_figure(png, "curves/error_curves.png")
        rl.log_dict({"val_top1_error": 0.3, "cfg": _Config()}, "final_metrics.json")
        rl.log_artifact_file(cfg)
        rl.log_text("resnet20 summary", "model_summary.txt")
    end_run(uri, run_id)

    dl = Path(MlflowClient(uri).download_artifacts(run_id, "", str(tmp_path / "dl")))
    assert (dl / "curves" / "error_curves.png").read_bytes()[:8] == PNG_MAGIC
    assert json.loads((dl / "final_metrics.json").read_text())["cfg"]["optim"]["lr"] == 0.1
    assert json.loads((dl / "config.json").read_text())["aws_secret_access_key"] == "***"
    keys = mlflow_server.artifact_keys()
    for name in ("curves/error_curves.png", "final_metrics.json", "config.json", "model_summary.txt"):
        assert any(k.endswith(f"{run_id}/artifacts/{name}") for k in keys), name


# --- models and registry ----------------------------------------------------------------------------


def _image(path: Path, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture(scope="module")
def registry(mlflow_server, tmp_path_factory):
    """Three versions of a cifar_resnet20 (random weights): val errors 0.5, 0.4 (better), 0.6 (worse)."""
    uri = mlflow_server.uri
    name = _unique("cifar-resnet20")
    classes = [f"class_{i}" for i in range(10)]
    spec = ModelSpec.for_arch("cifar_resnet20", 10, class_names=classes)
    models, versions = [], []
    for seed, err in ((0, 0.5), (1, 0.4), (2, 0.6)):
        torch.manual_seed(seed)
        net = build_model("cifar_resnet20", num_classes=10).eval()
        run_id = start_run(uri, "registry-tests", f"seed{seed}", params={"seed": seed}, tags={})
        info = log_resnet_model(
            uri, run_id, net.state_dict(), spec, registered_name=name, metrics={"val_top1_error": err}
        )
        end_run(uri, run_id)
        models.append(net)
        versions.append(info)
    imgs = tmp_path_factory.mktemp("imgs")
    images = [_image(imgs / f"img{i}.png", i) for i in range(3)]
    return {"uri": uri, "name": name, "models": models, "versions": versions, "images": images, "spec": spec}


def test_registered_versions_and_artifacts_in_s3(registry, mlflow_server):
    assert [v.version for v in registry["versions"]] == ["1", "2", "3"]
    mv = MlflowClient(registry["uri"]).get_model_version(registry["name"], "1")
    assert mv.tags["val_top1_error"] == "0.5" and mv.run_id == registry["versions"][0].run_id
    keys = mlflow_server.artifact_keys()
    for info in registry["versions"]:
        mine = [k for k in keys if f"/models/{info.model_id}/artifacts/" in k]
        names = {k.split(f"/models/{info.model_id}/artifacts/", 1)[1] for k in mine}
        assert {"MLmodel", "pyfunc_model.py", "artifacts/weights.pt", "artifacts/model_config.json"} <= names


def test_promote_aliases_and_only_if_better(registry):
    uri, name = registry["uri"], registry["name"]
    client = MlflowClient(uri)
    assert promote(name, 1, "champion", only_if_better=True, tracking_uri=uri)  # nobody holds it yet
    assert promote(name, 1, "champion", tracking_uri=uri) is False  # already holds it
    assert promote(name, 3, "champion", only_if_better=True, tracking_uri=uri) is False  # 0.6 > 0.5
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert promote(name, 2, "champion", only_if_better=True, tracking_uri=uri)  # 0.4 < 0.5
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    assert promote(name, 3, "candidate", tracking_uri=uri)  # no rule: always moves
    assert client.get_model_version_by_alias(name, "candidate").version == "3"


def test_register_model_job(registry):
    uri, name = registry["uri"], registry["name"]
    sys.path.insert(0, str(ROOT / "jobs"))
    try:
        import register_model
    finally:
        sys.path.remove(str(ROOT / "jobs"))
    args = ["--name", name, "--alias", "staging", "--tracking-uri", uri]
    assert register_model.main([*args, "--version", "1", "--only-if-better"])
    assert not register_model.main([*args, "--version", "3", "--only-if-better"])
    assert register_model.main([*args, "--version", "3"])
    assert MlflowClient(uri).get_model_version_by_alias(name, "staging").version == "3"


def test_load_model_by_alias_matches_original(registry):
    uri, name = registry["uri"], registry["name"]
    promote(name, 2, "champion", tracking_uri=uri)
    loaded = load_model(f"models:/{name}@champion", tracking_uri=uri)
    assert not loaded.model.training and loaded.class_names == registry["spec"].class_names
    x = torch.stack([loaded.preprocess(p) for p in registry["images"]])
    assert x.shape == (3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), registry["models"][1](x), atol=1e-6)
    by_version = load_model(f"models:/{name}/3", tracking_uri=uri)
    with torch.no_grad():
        assert torch.allclose(by_version.model(x), registry["models"][2](x), atol=1e-6)
    top = loaded.predict_topk(registry["images"], k=5)
    assert len(top) == 3 and all(len(t) == 5 for t in top)
    probs = [p.probability for p in top[0]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6


def _predict_env(uri: str) -> dict[str, str]:
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_DISABLE_TELEMETRY="true")
    # `mlflow models serve` execs uvicorn from PATH: put the virtual environment's bin first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # The clients need no S3 access: the server proxies artifacts.
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        env.pop(k, None)
    return env


@pytest.mark.slow  # a fresh interpreter importing torch + mlflow: ~20 s on 2 busy cores
def test_predict_job_prints_top5(registry):
    uri, name = registry["uri"], registry["name"]
    promote(name, 2, "champion", tracking_uri=uri)
    images = [str(p) for p in registry["images"][:2]]
    out = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "predict.py"), "--model", f"models:/{name}@champion", *images],
        env=_predict_env(uri),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    expected = load_model(f"models:/{name}@champion", tracking_uri=uri).predict_topk(images, k=5)
    for img, top in zip(images, expected, strict=True):
        block = out.stdout.split(img, 1)[1].splitlines()[1:6]
        assert len(block) == 5
        assert [line.split()[1] for line in block] == [p.label for p in top]
        assert abs(float(block[0].split()[-1]) - top[0].probability) < 1e-4


@pytest.mark.slow
def test_no_credentials_in_any_run(registry, mlflow_server, s3_server, tmp_path):
    """Every run on the server: params, tags, metric names and artifact text hold no credential."""
    uri = mlflow_server.uri
    run_id = start_run(
        uri,
        _unique("leak"),
        "leak-check",
        params={
            "storage": {
                "aws_access_key_id": s3_server.env["AWS_ACCESS_KEY_ID"],
                "endpoint": s3_server.endpoint,
            },
            "hub_token": FAKE_TOKEN,
            "copied": "k=" + s3_server.env["AWS_SECRET_ACCESS_KEY"],
            "db": f"postgresql://mlflow:{FAKE_DB_PASSWORD}@db/mlflow",
        },
        tags={"db_uri": f"postgresql://mlflow:{FAKE_DB_PASSWORD}@db/mlflow", "api_token": FAKE_TOKEN},
    )
    with RunLogger(uri, run_id) as rl:
        rl.log_dict({"env": dict(os.environ)}, "env.json")
        rl.log_text(f"secret={s3_server.env['AWS_SECRET_ACCESS_KEY']}", "notes.txt")
        rl.log_step({"loss": 1.0}, 1)
    end_run(uri, run_id)

    secrets = [
        s3_server.env["AWS_ACCESS_KEY_ID"],
        s3_server.env["AWS_SECRET_ACCESS_KEY"],
        FAKE_TOKEN,
        FAKE_DB_PASSWORD,
    ]
    client = MlflowClient(uri)
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments], max_results=1000)
    assert len(runs) >= 5
    blobs: list[str] = []
    for run in runs:
        blobs += [f"{k}={v}" for k, v in run.data.params.items()]
        blobs += [f"{k}={v}" for k, v in run.data.tags.items()]
        blobs += list(run.data.metrics)
        dst = tmp_path / run.info.run_id
        dst.mkdir()
        local = Path(client.download_artifacts(run.info.run_id, "", str(dst)))
        blobs += [p.read_bytes().decode("latin-1") for p in local.rglob("*") if p.is_file()]
    for info in registry["versions"]:  # logged models live outside the run's artifact folder
        mdir = download_model(info.model_uri, tmp_path / info.model_id, tracking_uri=uri)
        blobs += [p.read_bytes().decode("latin-1") for p in mdir.rglob("*") if p.is_file()]
        mv = client.get_model_version(registry["name"], info.version)
        blobs += [f"{k}={v}" for k, v in mv.tags.items()]
    text = "\n".join(blobs)
    assert "postgresql://mlflow:***@db/mlflow" in text  # the leak run was scanned
    for s in secrets:
        assert s not in text, f"credential {s[:4]}... found in the tracking store"


@pytest.mark.slow
def test_mlflow_models_serve_answers(registry, tmp_path):
    """`mlflow models serve` on 127.0.0.1 answers base64 images and refuses a path (HTTP 400)."""
    import urllib.error
    import urllib.request

    from fixtures.ports import free_port, wait_http

    uri, name = registry["uri"], registry["name"]
    promote(name, 2, "champion", tracking_uri=uri)
    port = free_port()
    exe = str(Path(sys.executable).parent / "mlflow")
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [exe, "models", "serve", "-m", f"models:/{name}@champion", "--env-manager", "local"]
            + ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=_predict_env(uri),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/ping", timeout=240, proc=proc)
        except Exception as e:
            raise AssertionError(f"{e}\n{log_path.read_text()[-3000:]}") from e
        b64 = [base64.b64encode(p.read_bytes()).decode() for p in registry["images"]]
        body = {"dataframe_split": {"columns": ["image"], "data": [[b] for b in b64]}, "params": {"k": 3}}
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                preds = json.loads(resp.read())["predictions"]
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{e}: {e.read()[:2000]!r}") from e
        # A file path (of an image that exists on the server's machine) is refused, not opened.
        path_body = {"dataframe_split": {"columns": ["image"], "data": [[str(registry["images"][0])]]}}
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(path_body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=60)
        assert refused.value.code == 400
        assert "never opens paths" in json.loads(refused.value.read())["message"]
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    assert len(preds) == 3
    expected = load_model(f"models:/{name}@champion", tracking_uri=uri).predict_topk(registry["images"], k=3)
    for row, top in zip(preds, expected, strict=True):
        assert row["top_classes"] == [p.label for p in top]
        assert row["top_indices"] == [p.index for p in top]
        assert len(row["top_probabilities"]) == 3


def test_embedded_sqlite_default_roundtrip(tmp_path, monkeypatch):
    """No server: the default sqlite:///mlflow.db store (made absolute for Ray workers) and local artifacts."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_tracking_uri(None)
    assert uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    torch.manual_seed(0)
    net = build_model("cifar_resnet20", num_classes=10).eval()
    run_id = start_run(None, "resnet-imagenet", "local", params={"arch": "cifar_resnet20"}, tags={})
    with RunLogger(None, run_id) as rl:
        assert rl.log_epoch(1, {"val_top1_error": 0.5}, 10)
    info = log_resnet_model(
        None, run_id, net.state_dict(), ModelSpec.for_arch("cifar_resnet20"), registered_name="m"
    )
    end_run(None, run_id)
    assert promote("m", info.version, "champion", only_if_better=True)
    loaded = load_model("models:/m@champion")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), net(x), atol=1e-6)
    assert loaded.class_names == [str(i) for i in range(10)]


def test_sqlite_store_keeps_artifacts_beside_the_database(tmp_path, monkeypatch):
    """make demo's promise: everything under its output folder, nothing in the working directory."""
    from resnet_platform.tracking.runs import client_for, get_or_create_experiment

    monkeypatch.chdir(tmp_path)
    store = tmp_path / "out" / "mlflow.db"
    store.parent.mkdir()
    client = client_for(f"sqlite:///{store}")
    experiment = client.get_experiment(get_or_create_experiment(client, "beside"))
    assert experiment.artifact_location == (store.parent / "mlartifacts").as_uri()
    assert not (tmp_path / "mlruns").exists()


def test_training_and_sweep_run_lifecycles(tmp_path):
    """tracking/'s typed interface on a SQLite store: a training run recorded from plain values,
    a sweep's parent, a trial's child reopened by trial id, trials closed as they ended."""
    from resnet_platform.tracking import (
        RunDescription,
        SweepRun,
        TrainingRecord,
        TrainingRun,
        TrialEnd,
        TrialRun,
        client_for,
    )

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = client_for(uri)
    history = [
        {"epoch": e, "step": 10 * e, "train_top1_error": 0.5 / e, "val_top1_error": 0.6 / e} for e in (1, 2)
    ]

    def describe(**kw):
        values = dict(experiment="lifecycle", name="r", arch="cifar_resnet20", lr=0.1, data="/d",
                      num_workers=1, use_gpu=False, params={"lr": 0.1, "arch": "cifar_resnet20"})  # fmt: skip
        return RunDescription(**{**values, **kw})

    run = TrainingRun(uri)
    run_id = run.open(describe())
    assert run.open(describe(resume=True)) == run_id  # resume reopens the run of that name
    recorded = run.record(TrainingRecord(config={"lr": 0.1}, arch="cifar_resnet20", history=history,
                                         best_metrics={"val_top1_error": 0.3}))  # fmt: skip
    assert recorded.closed and recorded.model_uri is None and recorded.model_version is None
    stored = client.get_run(run_id)
    assert stored.info.status == "FINISHED" and stored.data.tags["worker_kind"] == "cpu"
    assert [m.value for m in client.get_metric_history(run_id, "epoch")] == [1.0, 2.0]
    assert {"config.json", "final_metrics.json", "model_summary.md", "error_curves.png"} <= {
        a.path for a in client.list_artifacts(run_id)
    }

    sweep = SweepRun(uri)
    parent = sweep.open("lifecycle", "s", "/sweeps/s", {"space": {"archs": "a"}})
    assert SweepRun(uri).open("lifecycle", "s", "/sweeps/s", {}, resume=True) == parent
    trial = TrialRun(uri, parent, "s", "t1")
    child = trial.open(describe(name="t1"))
    assert TrialRun(uri, parent, "s", "t1").open(describe(name="t1")) == child  # a restarted trial
    done = TrialRun(uri, parent, "s", "t2").open(describe(name="t2", lr=5.0))
    assert sweep.children() == {"t1": child, "t2": done}
    tags = client.get_run(child).data.tags
    assert tags["mlflow.parentRunId"] == parent and tags["sweep.trial_id"] == "t1"
    assert client.get_run(child).info.run_name == "cifar_resnet20-lr0.1-t1"
    trial.close(failed=True)  # ASHA's stop reaches a trial as an error inside fit()
    sweep.close_trials(
        [TrialEnd(child, 1, stopped_early=True, failed=False), TrialEnd(done, 2, False, False)]
    )
    for rid, early in ((child, "true"), (done, "false")):
        assert client.get_run(rid).info.status == "FINISHED"
        assert client.get_run(rid).data.tags["sweep.stopped_early"] == early
    sweep.tag_best("t2", done, "cifar_resnet20", 5.0)
    sweep.log_results(texts={"table.md": "| a |\n"}, figures={}, metrics={"trials": 2, "nan": float("nan")})
    sweep.close()
    stored = client.get_run(parent)
    assert stored.info.status == "FINISHED" and stored.data.tags["sweep.best_trial"] == "t2"
    assert stored.data.metrics == {"trials": 2.0}
    assert client.get_run(done).data.tags["sweep.best"] == "true"
    assert [a.path for a in client.list_artifacts(parent)] == ["table.md"]


@pytest.mark.slow  # logs, registers and loads back a model: ~40 s on 2 busy cores
def test_register_ema_logs_the_ema_weights_with_their_errors_and_the_validation_preprocessing(tmp_path):
    """train/run_record.py over tracking's TrainingRun on a SQLite store: with ``--ema
    --register-ema`` the registered version holds the EMA's weights, is tagged with the EMA's
    validation errors, and preprocesses as validation did (``--val-image-size`` 40: resize 46, crop 40)."""
    from ray.train import Checkpoint

    from resnet_platform.data.manifest import Manifest, SplitManifest
    from resnet_platform.tracking import TrainingRun, load_model, version_metric
    from resnet_platform.train.checkpoint import TrainingState, model_config_of, save_checkpoint
    from resnet_platform.train.config import TrainConfig
    from resnet_platform.train.ema import ModelEma
    from resnet_platform.train.optim import EpochSchedule, build_optimizer
    from resnet_platform.train.run_record import describe_run, training_record

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = TrainConfig(
        data="/d", arch="cifar_resnet20", num_classes=3, image_size=32, val_image_size=40, ema=True,
        register_ema=True, register_as="ema-model", experiment="ema", name="r", tracking_uri=uri,
    )  # fmt: skip
    model = build_model(config.arch, 3)
    ema = ModelEma(model, decay=0.5)
    with torch.no_grad():
        for p in ema.module.parameters():
            p.add_(1.0)  # the EMA's weights differ from the raw ones
    optimizer = build_optimizer(model, config)
    schedule = EpochSchedule(optimizer, config)
    save_checkpoint(
        tmp_path / "ckpt", model=model, optimizer=optimizer, schedule=schedule, scaler=None,
        state=TrainingState(epoch=1, step=7), config=config.to_dict(), model_config=model_config_of(config),
        extra={"model_ema": ema.state_dict()},
    )  # fmt: skip
    manifest = Manifest(
        classes=["a", "b", "c"],
        class_names=["A", "B", "C"],
        splits={"train": SplitManifest(6), "val": SplitManifest(3)},
    )
    best = {
        "val_top1_error": 0.5,
        "val_top5_error": 0.1,
        "ema_val_top1_error": 0.2,
        "ema_val_top5_error": 0.0,
    }
    history = [{"epoch": 1, "step": 7, **best}]

    run = TrainingRun(uri)
    run.open(describe_run(config))
    record = training_record(config, manifest, history, best, Checkpoint.from_directory(tmp_path / "ckpt"))
    recorded = run.record(record)
    assert recorded.closed and recorded.model_version == "1"

    assert version_metric("ema-model", 1, "val_top1_error", tracking_uri=uri) == pytest.approx(0.2)
    assert version_metric("ema-model", 1, "val_top5_error", tracking_uri=uri) == pytest.approx(0.0)
    served = load_model("models:/ema-model/1", tracking_uri=uri)
    for key, value in ema.module.state_dict().items():
        assert torch.equal(served.model.state_dict()[key], value), key
    spec = served.spec
    assert (spec.image_size, spec.resize_size, spec.eval_crop) == (40, 46, "center")
    assert spec.class_names == ["A", "B", "C"]
