"""Paper reproduction: layer responses, Table 6 / Figure 6 writers, and the Tune grid on a tiny archive."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from resnet_platform.data.cifar import write_cifar10_archive
from resnet_platform.models import build_model
from resnet_platform.paper.responses import layer_responses, plot_layer_responses, response_layers
from resnet_platform.paper.tables import TrialResult, degradation_summary, plot_figure6, table6_markdown

REPO = Path(__file__).resolve().parents[1]
STATS = dict(mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))


@pytest.mark.parametrize("arch", ["cifar_plain20", "cifar_resnet20", "cifar_resnet32"])
def test_one_std_per_3x3_layer(arch):
    model = build_model(arch, 10)
    images = np.random.default_rng(0).integers(0, 256, size=(24, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(24) % 10
    r = layer_responses(model, images, labels, batch_size=10, **STATS)
    depth = int(arch.rsplit("plain", 1)[-1].rsplit("resnet", 1)[-1])
    assert len(r.stds) == depth - 1  # 6n+2 weighted layers: all but the fc are 3x3 convolutions
    assert r.names[0] == "bn1" and r.names[1:3] == ["layer1.0.bn1", "layer1.0.bn2"]
    assert all(s > 0 for s in r.stds) and r.images == 24 and 0 <= r.error <= 1
    assert model.training is False


def test_responses_match_the_branch_output_of_a_block():
    """The hooked BN output is the residual branch before the addition (``branch_output``)."""
    import torch

    model = build_model("cifar_resnet20", 10).eval()
    images = np.random.default_rng(1).integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    r = layer_responses(model, images, **STATS)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    m = torch.tensor(STATS["mean"]).view(1, 3, 1, 1) * 255
    s = torch.tensor(STATS["std"]).view(1, 3, 1, 1) * 255
    with torch.no_grad():
        h = model.relu(model.bn1(model.conv1((x - m) / s)))
        branch = model.layer1[0].branch_output(h).double()
    expected = branch.permute(1, 0, 2, 3).reshape(16, -1).std(dim=1, unbiased=False).mean()
    assert r.stds[2] == pytest.approx(float(expected), rel=1e-6)


def test_projection_shortcut_bn_is_not_a_3x3_layer():
    model = build_model("resnet18", 10)
    names = [n for n, _ in response_layers(model)]
    assert len(names) == 16 and not any("downsample" in n for n in names) and "bn1" not in names


def _results() -> list[TrialResult]:
    def hist(err):
        return [
            {"epoch": e, "step": 100 * e, "train_top1_error": err + 0.1 / e, "val_top1_error": err + 0.12 / e}
            for e in (1, 2)
        ]

    return [
        TrialResult("cifar_plain20", 270_000, 0.09, 0.03, hist(0.03), {"stds": [1.0, 0.8]}),
        TrialResult("cifar_plain56", 850_000, 0.12, 0.06, hist(0.06), {"stds": [1.0, 0.9]}),
        TrialResult("cifar_resnet20", 270_000, 0.0875, 0.02, hist(0.02), {"stds": [0.6, 0.5]}),
        TrialResult("cifar_resnet56", 850_000, 0.07, 0.01, hist(0.01), {"stds": [0.4, 0.3]}),
    ]


def test_table6_markdown_has_ours_beside_the_papers(tmp_path):
    results = _results()
    md = table6_markdown(results, note=degradation_summary(results))
    assert "| ResNet-20 | 20 | 0.27M | 0.27M | 2.00 | 8.75 | 8.75 |" in md
    assert "| ResNet-56 | 56 | 0.85M | 0.85M | 1.00 | 7.00 | 6.97 |" in md
    assert "| plain-56 |" in md and "Fig. 6" in md
    assert "plain-56 ends above plain-20" in md and "ResNet-56 ends not above ResNet-20" in md
    for path in (
        plot_figure6(results, tmp_path / "f6.png"),
        plot_layer_responses({r.label: r.responses for r in results}, tmp_path / "f7.png"),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_reproduce_paper_grid_on_a_tiny_archive(tmp_path, ray_local, mlflow_server):
    from mlflow import MlflowClient

    archive = write_cifar10_archive(str(tmp_path / "cifar-10-python.tar.gz"), per_batch=20, test_size=40)
    # In-process on the session's Ray (a second Ray is too much for 2 cores); one 0.5-CPU worker
    # per net leaves a whole CPU for the Ray Data tasks beside the trial.
    from resnet_platform.paper.reproduce import ReproduceConfig, reproduce

    config = ReproduceConfig(
        data=archive, depths=(20,), epochs=1, batch_size=50, num_workers=1,
        storage=str(tmp_path / "runs"), name="tiny", output=str(tmp_path / "out"),
        tracking_uri=mlflow_server.uri, experiment="paper-test",
    )  # fmt: skip
    outcome = reproduce(config)
    assert set(outcome.files) == {"table6.md", "figure6.png", "figure7.png", "results.json"}
    md = (tmp_path / "out" / "table6.md").read_text()
    for label in ("plain-20", "ResNet-20"):
        assert f"| {label} |" in md
    assert "8.75" in md  # the paper's ResNet-20 error beside ours
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(results) == 2 and all(len(r["responses"]["stds"]) == int(r["arch"][-2:]) - 1 for r in results)
    for png in ("figure6.png", "figure7.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000
    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("paper-test").experiment_id])
    assert len(runs) == 3  # two nets and the summary
    summary = next(r for r in runs if r.info.run_name == "tiny-summary")
    assert {"table6.md", "figure6.png", "figure7.png"} <= {
        a.path for a in client.list_artifacts(summary.info.run_id)
    }
