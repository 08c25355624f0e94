"""One preprocessing (``data/transforms.py``) for validation and serving: for a non-square image, the
tensor a served model is given equals the one its validation fed the network.

Validation: the training config's eval transform (``transform_config_of``) applied by the data
pipeline (``transform_image``, JPEG bytes -> uint8 HWC), then the training loop's ``Normalizer``.
Serving: the model saved with the spec the tracker writes (``eval_preprocessing`` of the same
config), loaded as MLflow's pyfunc model and asked through its ``predict`` with the image's base64,
the network's input captured by a forward hook. No Ray, no server.
"""

from __future__ import annotations

import base64
import io

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from resnet_platform.data.pipeline import transform_image
from resnet_platform.data.transforms import NORMALIZATION_STATS, eval_preprocessing
from resnet_platform.models import build_model
from resnet_platform.tracking import ModelSpec, Preprocess, save_resnet_model
from resnet_platform.train.config import TrainConfig
from resnet_platform.train.device import Normalizer
from resnet_platform.train.worker_data import transform_config_of

ARCH = "cifar_resnet20"

# (augmentation, normalization): ImageNet-style, validated on a center crop after the 256/224 resize
# (every augmentation but pad-crop), and the CIFAR recipe's pad-crop, validated on the whole image.
CASES = [("rrc", "imagenet"), ("pad-crop", "cifar10")]


def _jpeg(width: int, height: int) -> bytes:
    """A smooth, non-square photo-like JPEG (gradients and a disc: resizing shows in every pixel)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    disc = ((x - width * 0.3) ** 2 + (y - height * 0.6) ** 2 < (height * 0.3) ** 2) * 120.0
    rgb = np.stack([255 * x / width, 255 * y / height, 128 + disc - 60 * (x > width / 2)], -1)
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module", params=CASES, ids=[a for a, _ in CASES])
def served(request, tmp_path_factory):
    """A model saved as the tracker saves it for this training config, loaded as the served pyfunc."""
    augmentation, normalization = request.param
    config = TrainConfig(
        data="x", arch=ARCH, image_size=32, augmentation=augmentation, normalization=normalization
    )
    spec = ModelSpec(
        arch=ARCH,
        num_classes=10,
        **eval_preprocessing(config.image_size, config.augmentation, config.normalization),
    )
    path = tmp_path_factory.mktemp("served") / augmentation
    save_resnet_model(path, build_model(ARCH, 10).state_dict(), spec)
    return config, mlflow.pyfunc.load_model(str(path))


def _validation_input(config: TrainConfig, data: bytes) -> torch.Tensor:
    t = transform_config_of(config, train=False)
    image = transform_image(data, t, False, np.random.default_rng(0))
    normalize = Normalizer(torch.device("cpu"), False, *NORMALIZATION_STATS[config.normalization])
    return normalize(torch.from_numpy(image)[None])


def _served_input(model, data: bytes) -> torch.Tensor:
    net = model.unwrap_python_model().loaded.model
    seen = []
    hook = net.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    try:
        model.predict(pd.DataFrame({"image": [base64.b64encode(data).decode()]}), params={"k": 3})
    finally:
        hook.remove()
    (x,) = seen
    return x


@pytest.mark.slow  # saves and loads two pyfunc models: ~20 s
@pytest.mark.parametrize("size", [(45, 30), (30, 52)], ids=["wide", "tall"])
def test_served_input_equals_validation_input(served, size):
    config, model = served
    data = _jpeg(*size)
    validated, given = _validation_input(config, data), _served_input(model, data)
    assert given.shape == validated.shape == (1, 3, 32, 32)
    assert torch.equal(given, validated), (given - validated).abs().max()


def test_pad_crop_models_are_validated_and_served_on_the_whole_image():
    """Not a center crop: the left edge of a wide image is in a pad-crop model's input."""
    wide = np.zeros((30, 45, 3), np.uint8)
    wide[:, :4] = 255  # a white band at the left edge, outside any center crop
    spec = ModelSpec(arch=ARCH, num_classes=10, **eval_preprocessing(32, "pad-crop", "cifar10"))
    crop = Preprocess.from_spec(spec).crop(wide)
    assert crop[:, 0].mean() > 200 and crop[:, -1].max() == 0
    center = ModelSpec(arch=ARCH, num_classes=10, **eval_preprocessing(32, "rrc", "cifar10"))
    assert Preprocess.from_spec(center).crop(wide)[:, 0].max() == 0
