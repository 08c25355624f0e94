"""The modern techniques and the --recipe presets, without Ray Train: each changes what it should.

Mixup/CutMix, EMA, gradient accumulation, the warmup, augmentations, the resolution schedule (and
the sizes the platform's pipeline yields under it), presets and flags, and the techniques'
checkpoint round trip.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from resnet_platform.data.augment import augment_image
from resnet_platform.data.device_decode import DeviceDecoder
from resnet_platform.data.pipeline import TransformConfig, build_split_dataset, transform_image
from resnet_platform.train import TrainConfig
from resnet_platform.train.accumulate import Accumulator, with_last
from resnet_platform.train.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from resnet_platform.train.cli import config_from_args, parse_config
from resnet_platform.train.device import Normalizer
from resnet_platform.train.ema import ModelEma, adjusted_decay
from resnet_platform.train.mixing import BatchMixer, MixDraw
from resnet_platform.train.optim import EpochSchedule, build_optimizer
from resnet_platform.train.recipes import RECIPES, describe, recipe_config
from resnet_platform.train.resolution import eval_sizes, progressive_size, resize_batch, schedule
from resnet_platform.train.techniques import WorkerTechniques
from resnet_platform.train.worker_data import epoch_batches, transform_config_of

# ------------------------------------------------------------------------------------ Mixup / CutMix


def batch(n=8, c=3, h=12, w=16, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g), torch.randint(classes, (n,), generator=g)


def test_mixup_is_the_convex_combination_with_the_drawn_lambda():
    torch.manual_seed(3)
    x, y = batch()
    mixer = BatchMixer(num_classes=5, mixup_alpha=0.2)
    mixed, target, hard = mixer(x, y)
    draw = mixer.last
    assert draw.op == "mixup" and 0 < draw.lam < 1
    lam = draw.lam
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.roll(1, 0), atol=1e-6)
    onehot = torch.nn.functional.one_hot(y, 5).float()
    assert torch.allclose(target, lam * onehot + (1 - lam) * onehot.roll(1, 0), atol=1e-6)
    assert torch.allclose(target.sum(1), torch.ones(8))
    assert torch.equal(hard, y if lam >= 0.5 else y.roll(1, 0))


def test_mixup_lambda_follows_beta_alpha_alpha():
    torch.manual_seed(0)
    mixer = BatchMixer(num_classes=5, mixup_alpha=0.2)
    lams = np.array([mixer.draw(4, 4).lam for _ in range(600)])
    # Beta(0.2, 0.2): mean 1/2, variance 1 / (4 (2a + 1)) = 0.179, mass piled at both ends.
    assert abs(lams.mean() - 0.5) < 0.07 and abs(lams.var() - 1 / (4 * 1.4)) < 0.04
    assert (lams < 0.1).mean() > 0.2 and (lams > 0.9).mean() > 0.2


def test_cutmix_pastes_a_box_whose_area_matches_lambda():
    torch.manual_seed(5)
    x, y = batch(h=20, w=30)
    mixer = BatchMixer(num_classes=5, cutmix_alpha=1.0)
    for _ in range(10):
        mixed, target, _ = mixer(x, y)
        draw = mixer.last
        left, top, right, bottom = draw.box
        area = (right - left) * (bottom - top)
        assert draw.op == "cutmix" and draw.lam == pytest.approx(1 - area / (20 * 30))
        inside = torch.zeros(20, 30, dtype=torch.bool)
        inside[top:bottom, left:right] = True
        rolled = x.roll(1, 0)
        assert torch.equal(mixed[..., inside], rolled[..., inside])
        assert torch.equal(mixed[..., ~inside], x[..., ~inside])
        changed = (mixed != x).any(dim=1)  # pixels taken from the rolled batch, per image
        assert int(changed[0].sum()) == area  # random data: every pasted pixel differs
        onehot = torch.nn.functional.one_hot(y, 5).float()
        assert torch.allclose(target, draw.lam * onehot + (1 - draw.lam) * onehot.roll(1, 0))


def test_mixup_and_cutmix_together_pick_one_per_batch_with_equal_odds():
    torch.manual_seed(1)
    mixer = BatchMixer(num_classes=5, mixup_alpha=0.2, cutmix_alpha=1.0)
    ops = [mixer.draw(8, 8).op for _ in range(400)]
    assert abs(ops.count("cutmix") / len(ops) - 0.5) < 0.1  # 4 standard deviations


def test_soft_targets_get_label_smoothing_like_hard_ones():
    logits = torch.randn(4, 5)
    y = torch.tensor([0, 3, 1, 4])
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    x = torch.randn(4, 3, 4, 4)
    _, target = BatchMixer(5, mixup_alpha=1.0).apply(x, y, MixDraw("mixup", 1.0))  # lam 1: no mixing
    assert torch.allclose(criterion(logits, target), criterion(logits, y))
    lam = 0.3
    _, target = BatchMixer(5, mixup_alpha=1.0).apply(x, y, MixDraw("mixup", lam))
    smoothed = target * 0.9 + 0.1 / 5
    expected = -(smoothed * logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(criterion(logits, target), expected)


def test_mixing_off_returns_the_batch_untouched():
    x, y = batch()
    out, target, hard = BatchMixer(5)(x, y)
    assert out is x and target is y and hard is y


# ------------------------------------------------------------------------------------------------- EMA


def test_ema_after_n_updates_is_the_closed_form():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    decay, n = 0.9, 7
    ema = ModelEma(model, decay)
    seen = []
    for k in range(n):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.full_like(p, float(k + 1)))
            model[1].running_mean.fill_(10.0 * (k + 1))
            model[1].num_batches_tracked.fill_(k + 1)
        seen.append(float(k + 1))
        ema.update(model)
    # The first update copies; then ema = d ema + (1 - d) w: w_1 d^(n-1) + sum_k (1 - d) d^(n-k) w_k.
    expected = seen[0] * decay ** (n - 1) + sum(
        (1 - decay) * decay ** (n - k) * seen[k - 1] for k in range(2, n + 1)
    )
    for p in ema.module.parameters():
        assert torch.allclose(p, torch.full_like(p, expected), atol=1e-6)
    assert torch.allclose(ema.module[1].running_mean, torch.full((2,), 10 * expected), atol=1e-5)
    assert int(ema.module[1].num_batches_tracked) == n  # integer buffers are copied
    assert ema.updates == n and all(not p.requires_grad for p in ema.module.parameters())


def test_ema_warmup_resets_so_the_first_update_after_it_copies():
    model = nn.Linear(2, 1, bias=False)
    ema = ModelEma(model, 0.5)
    for value, warmup in ((1.0, True), (2.0, True), (4.0, False), (8.0, False)):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model, warmup=warmup)
    # 1 (copy), 2 (copy: reset after a warmup update), 4 (copy: still reset), then 0.5*4 + 0.5*8.
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 6.0))


def test_ema_decay_is_torchvisions_adjustment():
    # 0.99998 at 8 GPUs x 128, every 32 steps, 600 epochs: each update weighs 2e-5 x 1024 x 32 / 600.
    assert 1 - adjusted_decay(0.99998, 1024, 32, 600) == pytest.approx(2e-5 * 1024 * 32 / 600)
    assert adjusted_decay(0.9, 1024, 32, 1) == 0.0  # capped: the EMA is the weights


# ----------------------------------------------------------------------------------- accumulation


class Net(nn.Module):
    """No BatchNorm: a batch's gradient is the mean of its examples' (BN makes it batch-dependent)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 5)
        self.syncs: list[bool] = []

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean((2, 3)))

    @contextlib.contextmanager
    def no_sync(self):  # DDP's: records which backward passes would skip the all-reduce
        self.syncs.append(False)
        yield


def grads_after(steps: int, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]):
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    acc = Accumulator(net, opt, None, steps)
    captured = {}
    original_step = opt.step

    def step(*args, **kwargs):
        captured.update({n: p.grad.clone() for n, p in net.named_parameters()})
        return original_step(*args, **kwargs)

    opt.step = step
    stepped = []
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    for (x, y), is_last in with_last(micro_batches):
        with acc.micro_step(is_last):
            acc.backward(criterion(net(x), y))
        stepped.append(acc.stepped)
    return captured, stepped, net


def test_two_micro_batches_give_the_gradient_of_one_batch_twice_the_size():
    x, y = batch(n=16, h=9, w=9)
    whole, stepped_whole, _ = grads_after(1, [(x, y)])
    halves, stepped, net = grads_after(2, [(x[:8], y[:8]), (x[8:], y[8:])])
    assert stepped_whole == [True] and stepped == [False, True]
    assert net.syncs == [False]  # the first backward skipped DDP's all-reduce, the second did not
    for name, g in whole.items():
        assert torch.allclose(halves[name], g, atol=1e-6), name


def test_a_short_last_group_steps_with_the_mean_of_what_it_has():
    x, y = batch(n=24, h=9, w=9)
    # 3 micro-batches with K=2: one full group, then a group of one that is the last of the epoch.
    _, stepped, _ = grads_after(2, [(x[:8], y[:8]), (x[8:16], y[8:16]), (x[16:], y[16:])])
    assert stepped == [False, True, True]
    single, _, _ = grads_after(1, [(x[16:], y[16:])])
    tail, _, _ = grads_after(2, [(x[16:], y[16:])])  # a lone micro-batch: rescaled to its own mean
    for name, g in single.items():
        assert torch.allclose(tail[name], g, atol=1e-6), name


def test_accumulation_needs_the_batch_to_divide():
    with pytest.raises(ValueError, match="micro-batches"):
        TrainConfig(data="x", batch_size=96, num_workers=2, grad_accum_steps=5)
    c = TrainConfig(data="x", batch_size=1024, num_workers=4, grad_accum_steps=2)
    assert (c.per_worker_batch, c.micro_batch_size) == (256, 128)


# -------------------------------------------------------------------------------- warmup schedule


def test_linear_warmup_from_a_factor_matches_torchvisions_schedulers():
    """torchvision: SequentialLR(LinearLR(start_factor=0.01, total_iters=5), CosineAnnealingLR(
    T_max=epochs - 5)), stepped per epoch."""
    epochs, warmup = 20, 5
    config = TrainConfig(
        data="x", lr=0.5, lr_schedule="cosine", warmup_epochs=warmup, warmup_start_factor=0.01, epochs=epochs
    )
    ours_opt = build_optimizer(nn.Linear(2, 2), config)
    ours = EpochSchedule(ours_opt, config)
    ref_opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.5)
    ref = torch.optim.lr_scheduler.SequentialLR(
        ref_opt,
        [
            torch.optim.lr_scheduler.LinearLR(ref_opt, start_factor=0.01, total_iters=warmup),
            torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=epochs - warmup),
        ],
        milestones=[warmup],
    )
    for _ in range(epochs):
        assert ours.lr == pytest.approx(ref_opt.param_groups[0]["lr"], abs=1e-9)
        ours_opt.step()
        ref_opt.step()
        ours.step(0.5)
        ref.step()


# ------------------------------------------------------------------------------------ augmentations


def photo(seed: int, w: int = 120, h: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    gy, gx = np.mgrid[0:h, 0:w]
    img = np.stack([(gx * (c + 2) + gy * (4 - c)) % 256 for c in range(3)], -1).astype(np.float32)
    img += rng.normal(0, 15, img.shape)
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


IMAGES = [photo(i) for i in range(6)]


@pytest.mark.parametrize("auto_augment", ["ta_wide", "randaugment"])
def test_auto_augment_changes_images_reproducibly_from_the_draw_generator(auto_augment):
    base = TransformConfig(image_size=48, augmentation="rrc")
    t = TransformConfig(image_size=48, augmentation="rrc", auto_augment=auto_augment)
    plain = [transform_image(d, base, True, np.random.default_rng(i)) for i, d in enumerate(IMAGES)]
    first = [transform_image(d, t, True, np.random.default_rng(i)) for i, d in enumerate(IMAGES)]
    again = [transform_image(d, t, True, np.random.default_rng(i)) for i, d in enumerate(IMAGES)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert sum(not np.array_equal(a, b) for a, b in zip(first, plain, strict=True)) >= 3
    assert all(a.shape == (48, 48, 3) and a.dtype == np.uint8 for a in first)
    # Evaluation never augments.
    assert np.array_equal(
        transform_image(IMAGES[0], t, False, np.random.default_rng(0)),
        transform_image(IMAGES[0], base, False, np.random.default_rng(0)),
    )


def test_augmentation_leaves_the_training_loops_torch_random_stream_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    augment_image(torch.zeros(3, 16, 16, dtype=torch.uint8), np.random.default_rng(0), auto_augment="ta_wide")
    assert torch.equal(torch.rand(3), expected)


def test_random_erasing_fills_a_box_with_the_mean():
    image = torch.full((3, 64, 64), 7, dtype=torch.uint8)
    fill = (124, 116, 104)
    out = augment_image(image, np.random.default_rng(0), random_erase=1.0, erase_fill=fill)
    erased = (out != 7).any(0)
    assert 0.02 * 64 * 64 <= int(erased.sum()) <= 0.33 * 64 * 64
    assert (out[:, erased] == torch.tensor(fill, dtype=torch.uint8).view(3, 1)).all()
    rows, cols = erased.nonzero(as_tuple=True)
    assert int(erased.sum()) == (int(rows.max()) - int(rows.min()) + 1) * (
        int(cols.max()) - int(cols.min()) + 1
    )
    # Normalized, the fill is about 0: what the reference's erasing of the normalized tensor writes.
    normalized = Normalizer(torch.device("cpu"), False)(out.permute(1, 2, 0)[None])
    assert normalized[0][:, erased].abs().max() < 0.01


def test_the_gpu_decode_path_augments_exactly_as_the_cpu_path():
    t = TransformConfig(image_size=40, augmentation="rrc", auto_augment="ta_wide", random_erase=0.5)
    expected = np.stack([transform_image(d, t, True, np.random.default_rng(3)) for d in IMAGES[:1]])
    decoder = DeviceDecoder(t, train=True, device="cpu", rng=np.random.default_rng(3))
    out = decoder({"image": np.array(IMAGES[:1], dtype=object), "label": np.arange(1)})
    assert np.array_equal(out["image"].numpy(), expected)


# ------------------------------------------------------------------------------------- resolutions


def ffcv_resolution(epoch, min_res, max_res, end_ramp, start_ramp):
    """libffcv/ffcv-imagenet ``get_resolution``, for comparison."""
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    return int(np.round(np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])[0] / 32)) * 32


@pytest.mark.parametrize("epochs,start,end", [(16, 11, 13), (24, 17, 20)])
def test_fast_preset_reproduces_ffcvs_resolution_schedules(epochs, start, end):
    config = recipe_config("fast", data="x", epochs=epochs)
    assert schedule(config) == [ffcv_resolution(e, 160, 192, end, start) for e in range(epochs)]
    assert schedule(config)[0] == 160 and schedule(config)[-1] == 192


def test_progressive_sizes_step_and_stay_in_range():
    sizes = [progressive_size(e, 10, min_size=16, max_size=32, ramp=(0.2, 0.8), step=4) for e in range(10)]
    assert sizes == [16, 16, 16, 20, 20, 24, 28, 28, 32, 32]  # ramp over epochs 2..8, multiples of 4
    assert schedule(TrainConfig(data="x", epochs=3)) == [224, 224, 224]  # off: always --image-size


def test_resize_batch_keeps_format_and_skips_the_same_size():
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    assert resize_batch(x, 32) is x
    out = resize_batch(x, 24)
    assert out.shape == (2, 3, 24, 24) and out.is_contiguous(memory_format=torch.channels_last)
    flat = torch.full((1, 3, 32, 32), 0.25)
    assert torch.allclose(resize_batch(flat, 20), torch.full((1, 3, 20, 20), 0.25))


def test_eval_resolution_is_separate_from_training():
    tv = recipe_config("torchvision-v2", data="x")
    assert (tv.image_size, eval_sizes(tv)) == (176, (224, 232))
    val = transform_config_of(tv, train=False)
    assert (val.image_size, val.eval_resize, val.auto_augment) == (224, 232, "none")
    train = transform_config_of(tv, train=True)
    assert (train.image_size, train.auto_augment, train.random_erase) == (176, "ta_wide", 0.1)
    assert train.erase_fill == (124, 116, 104)
    assert eval_sizes(TrainConfig(data="x")) == (224, 256)
    assert eval_sizes(TrainConfig(data="x", image_size=32, augmentation="pad-crop")) == (32, 32)
    assert eval_sizes(recipe_config("fast", data="x")) == (256, 293)


@pytest.mark.slow  # Ray Data over the digits shards
@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_the_pipeline_yields_each_epochs_scheduled_size(digits_shards, ray_local, decode):
    """Datasets built once; per epoch, the platform's batches (CPU decode + device resize, or the
    worker's decoder) come out at the schedule's size: 16, 16, 24, 24 for the digits."""
    config = TrainConfig(
        data=digits_shards, arch="cifar_resnet20", image_size=24, progressive_min_size=16,
        progressive_ramp=(0.25, 0.5), progressive_step=8, epochs=4, batch_size=64, num_workers=1,
        decode=decode, shuffle_buffer=0, num_classes=10, val_image_size=32,
    )  # fmt: skip
    assert schedule(config) == [16, 16, 24, 24]
    ds = build_split_dataset(
        digits_shards, "train", train=True, transform=transform_config_of(config, train=True), decode=decode
    )
    device = torch.device("cpu")
    techniques = WorkerTechniques(config, nn.Linear(1, 1), device)
    normalize = Normalizer(device, True)
    seen = []
    for epoch in range(config.epochs):
        size = techniques.train_size(epoch)
        batches = epoch_batches(ds.iterator(), config, device, train=True, shuffle_seed=None, image_size=size)
        shapes = set()
        for i, b in enumerate(batches):
            x, _, _ = techniques.prepare(normalize(b["image"]), b["label"], size, normalize.format)
            shapes.add(tuple(x.shape[1:]))
            if i == 2:
                break
        assert len(shapes) == 1
        seen.append(shapes.pop()[-1])
    assert seen == [16, 16, 24, 24]
    val = build_split_dataset(
        digits_shards, "val", train=False, transform=transform_config_of(config, train=False), decode=decode
    )
    first = next(iter(epoch_batches(val.iterator(), config, device, train=False, shuffle_seed=None)))
    assert tuple(first["image"].shape[1:]) == (32, 32, 3)  # the eval crop, not the training one


# ------------------------------------------------------------------------------ presets and flags


def test_paper_recipe_is_todays_behaviour_exactly():
    _, args = parse_config(["--data", "/d"])
    assert config_from_args(args) == TrainConfig(data="/d")
    _, args = parse_config(["--data", "/d", "--recipe", "paper"])
    assert config_from_args(args) == TrainConfig(data="/d") == recipe_config("paper", data="/d")


@pytest.mark.parametrize("name", [n for n in RECIPES if n != "paper"])
def test_a_preset_fills_its_defaults(name):
    _, args = parse_config(["--data", "/d", "--recipe", name])
    config = config_from_args(args)
    assert config.recipe == name
    for field, value in RECIPES[name].items():
        got = getattr(config, field)
        assert got == (tuple(value) if isinstance(value, tuple) else value), field
    assert config == recipe_config(name, data="/d")


def test_torchvision_v2_preset_is_the_published_recipe():
    c = recipe_config("torchvision-v2", data="/d")
    assert (c.batch_size, c.base_lr, c.lr_schedule, c.warmup_epochs, c.warmup_start_factor) == (
        1024, 0.5, "cosine", 5, 0.01,
    )  # fmt: skip
    assert (c.weight_decay, c.no_bn_weight_decay, c.label_smoothing) == (2e-5, True, 0.1)
    assert (c.mixup_alpha, c.cutmix_alpha, c.auto_augment, c.random_erase) == (0.2, 1.0, "ta_wide", 0.1)
    assert (c.ema, c.ema_steps, c.ema_decay) == (True, 32, 0.99998)
    assert (c.image_size, c.val_image_size, c.val_resize_size) == (176, 224, 232)
    assert c.epochs == TrainConfig(data="/d").epochs  # the epoch count stays the user's


def test_explicit_flags_override_the_preset_even_with_the_papers_values():
    _, args = parse_config(
        ["--data", "/d", "--recipe", "torchvision-v2", "--lr", "0.2", "--label-smoothing", "0",
         "--no-ema", "--image-size", "224", "--epochs", "100", "--lr-schedule", "step"]
    )  # fmt: skip
    c = config_from_args(args)
    assert (c.lr, c.label_smoothing, c.ema, c.image_size, c.epochs, c.lr_schedule) == (
        0.2, 0.0, False, 224, 100, "step",
    )  # fmt: skip
    assert c.mixup_alpha == 0.2 and c.register_ema  # untouched preset values stay
    assert c.score_metric == "val_top1_error"  # without the EMA, the raw weights are the model
    # Switches a preset turns on can be given either way under any preset.
    for recipe in RECIPES:
        _, args = parse_config(["--data", "/d", "--recipe", recipe, "--ema", "--no-register-ema"])
        assert args.ema is True and args.register_ema is False


def test_recipe_in_python_and_the_effective_values_printed():
    c = recipe_config("fast", data="/d", epochs=8)
    assert (c.epochs, c.progressive_min_size, c.image_size) == (8, 160, 192)
    text = describe(c)
    assert text.startswith("recipe fast") and "progressive_min_size=160" in text and "epochs=8" in text
    assert "effective lr 0.425" in text
    with pytest.raises(ValueError, match="torchvision-v2"):
        recipe_config("timm", data="/d")


@pytest.mark.parametrize(
    "bad",
    [
        dict(auto_augment="augmix"),
        dict(random_erase=1.5),
        dict(mixup_alpha=-1),
        dict(ema_decay=1.0),
        dict(progressive_min_size=256),
        dict(progressive_min_size=128, progressive_ramp=(0.8, 0.2)),
        dict(warmup_start_factor=0.0),
        dict(deterministic=True, augmentation="none", auto_augment="ta_wide"),
        dict(recipe="timm"),
    ],
)
def test_bad_technique_settings_are_refused(bad):
    with pytest.raises(ValueError):
        TrainConfig(data="x", **bad)


# --------------------------------------------------------------------------- checkpoint round trip


def test_ema_state_survives_a_checkpoint_round_trip(tmp_path):
    from resnet_platform.models import build_model

    config = TrainConfig(data="x", arch="cifar_resnet20", ema=True, ema_steps=1, num_classes=10)
    net = build_model("cifar_resnet20", 10)
    techniques = WorkerTechniques(config, net, torch.device("cpu"))
    opt = build_optimizer(net, config)
    x, y = torch.randn(2, 3, 8, 8), torch.randint(10, (2,))
    for step in range(1, 4):
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        opt.zero_grad()
        techniques.after_step(step, epoch=0)
    save_checkpoint(
        tmp_path, model=net, optimizer=opt, schedule=EpochSchedule(opt, config), scaler=None,
        state=TrainingState(1, 3), config=config.to_dict(), model_config={}, extra=techniques.state_dict(),
    )  # fmt: skip
    saved = load_checkpoint(tmp_path)  # weights_only=True
    restored = WorkerTechniques(config, build_model("cifar_resnet20", 10), torch.device("cpu"))
    restored.net.load_state_dict(saved["model"])
    restored.load_state_dict(saved)
    assert restored.ema.updates == 3 and restored.ema.fresh is False
    for (k, a), b in zip(
        techniques.ema.module.state_dict().items(), restored.ema.module.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    # The EMA weights load into a plain network, as the registered model does.
    build_model("cifar_resnet20", 10).load_state_dict(saved["model_ema"]["model"])


def test_without_a_schedule_batches_keep_the_size_their_data_came_in():
    """An in-memory set at its own size (the degradation job's 16-pixel digits under the CIFAR
    recipe's image_size 32) trains at the size it is validated at; a schedule still resizes."""
    x, y = torch.rand(4, 3, 16, 16), torch.arange(4)
    plain = WorkerTechniques(
        TrainConfig(data="x", arch="cifar_resnet20", image_size=32, num_classes=10),
        nn.Linear(1, 1),
        torch.device("cpu"),
    )
    out, _, _ = plain.prepare(x, y, plain.train_size(0), torch.contiguous_format)
    assert tuple(out.shape) == (4, 3, 16, 16)
    ramped = WorkerTechniques(
        TrainConfig(
            data="x", arch="cifar_resnet20", image_size=32, num_classes=10, progressive_min_size=24,
            progressive_ramp=(0.25, 0.5), progressive_step=8, epochs=4,
        ),
        nn.Linear(1, 1),
        torch.device("cpu"),
    )  # fmt: skip
    out, _, _ = ramped.prepare(x, y, ramped.train_size(0), torch.contiguous_format)
    assert tuple(out.shape) == (4, 3, 24, 24)
