"""Fine-tuned against from scratch on the digits, after 2 epochs, per seed (issue 30's "done when").

    python benchmarks/finetune_digits.py --seeds 0,1 --train-per-class 30,all --lr 0.01 --head-lr-factor 10

A ResNet-20 is trained on the digits 0-4 (3 epochs, lr 0.1: the parent). Then, for each size of the
labelled set of classes 0-9 (``--train-per-class``: the first N training images of each class, or
``all``) and each seed, two runs of the same recipe (16 px, 1 worker, batch 64, cosine, 2 epochs,
``--lr``, ``--head-lr-factor``) that differ only in ``--init-from`` (the parent's last checkpoint,
head replaced 5 -> 10 classes): the training job's own ``run_training``. Printed per run: the
validation error after each epoch (the run's own metric), and from its last checkpoint the error on
the classes the parent saw (0-4) and on the new ones (5-9), and the error once the BatchNorm running
statistics are recomputed on the run's training images (a diagnostic: how much of a 2-epoch run's error is
the statistics lagging the weights). The 1-minute load average is printed beside each run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from resnet_platform.data.digits import DIGIT_NAMES, DIGIT_WNIDS, write_digits_imagenet  # noqa: E402
from resnet_platform.data.prepare import PrepareConfig, prepare_imagenet  # noqa: E402
from resnet_platform.data.transforms import eval_preprocessing  # noqa: E402
from resnet_platform.tracking.inference import LoadedModel, load_from_files  # noqa: E402
from resnet_platform.train.checkpoint import MODEL_CONFIG_FILE, load_checkpoint  # noqa: E402
from resnet_platform.train.config import TrainConfig  # noqa: E402
from resnet_platform.train.runner import run_training  # noqa: E402

SIZE = 16


def prepared(work: Path, name: str, classes: range, train_per_class: int | None) -> str:
    """Classes ``classes`` of the digits (the first ``train_per_class`` training images of each;
    every validation image), prepared into shards by the platform's own ``prepare_imagenet``."""
    out, src = work / name / "shards", work / name / "src"
    if (out / "manifest.json").exists():
        return str(out)
    for split in ("train", "val"):
        for c in classes:
            files = sorted((work / "digits" / split / DIGIT_WNIDS[c]).iterdir())
            if split == "train" and train_per_class:
                files = files[:train_per_class]
            (src / split / DIGIT_WNIDS[c]).mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copy(f, src / split / DIGIT_WNIDS[c] / f.name)
    (src / "synset_words.txt").write_text("".join(f"{DIGIT_WNIDS[c]} {DIGIT_NAMES[c]}\n" for c in classes))
    prepare_imagenet(PrepareConfig(source=str(src), output=str(out), shard_size_mb=0.25))
    return str(out)


def config(data: str, storage: Path, name: str, **overrides) -> TrainConfig:
    """tests/test_finetune.py's recipe: 16 px, one worker, batch 64, cosine, 2 epochs."""
    values = dict(data=data, arch="cifar_resnet20", image_size=SIZE, epochs=2, batch_size=64, lr=0.1,
                  lr_schedule="cosine", augmentation="none", num_workers=1, cpus_per_worker=1.0,
                  storage=str(storage), name=name, seed=0, shuffle_buffer=256)  # fmt: skip
    return TrainConfig(**{**values, **overrides})


def _images(folder: Path) -> tuple[list[str], torch.Tensor]:
    paths, labels = [], []
    for c, wnid in enumerate(DIGIT_WNIDS):
        for f in sorted((folder / wnid).iterdir()):
            paths.append(str(f))
            labels.append(c)
    return paths, torch.tensor(labels)


def _load(checkpoint: Path, tmp: str) -> LoadedModel:
    torch.save(load_checkpoint(checkpoint)["model"], f"{tmp}/weights.pt")
    spec = json.loads((checkpoint / MODEL_CONFIG_FILE).read_text())
    Path(f"{tmp}/spec.json").write_text(json.dumps({**spec, **eval_preprocessing(SIZE, "none", "imagenet")}))
    return load_from_files(f"{tmp}/weights.pt", f"{tmp}/spec.json")


def _errors(model: LoadedModel, paths: list[str], labels: torch.Tensor) -> dict[str, float]:
    wrong = model.predict_proba(paths).argmax(1) != labels
    return {
        "all": wrong.float().mean().item(),
        "0-4": wrong[labels < 5].float().mean().item(),
        "5-9": wrong[labels >= 5].float().mean().item(),
    }


def analyse(checkpoint: Path, val_dir: Path, train_dir: Path) -> dict[str, float]:
    """The checkpoint's error per class group, and with BN statistics recomputed on the run's own
    training images: cumulative averages of train-mode batches, weights unchanged."""
    val, train = _images(val_dir), _images(train_dir)
    with tempfile.TemporaryDirectory() as tmp:
        model = _load(checkpoint, tmp)
        out = _errors(model, *val)
        bns = [m for m in model.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        model.model.train()
        with torch.no_grad():
            for i in range(0, len(train[0]), 64):
                model.model(torch.stack([model.preprocess(p) for p in train[0][i : i + 64]]))
        model.model.eval()
        out["all, BN recomputed"] = _errors(model, *val)["all"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--train-per-class", default="30,all", help="comma list of N or 'all'")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--head-lr-factor", type=float, default=10.0)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="finetune-digits-"))
    torch.set_num_threads(1)
    from resnet_platform.console import ensure_ray

    write_digits_imagenet(work / "digits")
    ensure_ray("local", num_cpus=2, include_dashboard=True, log_to_driver=False, configure_logging=False)
    runs = Path(tempfile.mkdtemp(prefix="runs-", dir=work))  # each invocation its own parent and runs
    parent = run_training(config(prepared(work, "digits-0-4", range(5), None), runs, "parent", epochs=3))
    source = sorted(Path(parent.run_path).glob("checkpoint_epoch_*"))[-1]
    print(f"parent (classes 0-4, 3 epochs): val error {parent.history[-1]['val_top1_error']:.4f}", flush=True)
    recipe = dict(lr=args.lr, head_lr_factor=args.head_lr_factor)
    print(
        "| train images per class | seed | arm | val error ep 1 / ep 2 | classes 0-4 / 5-9 | BN recomputed | s | load |"
    )
    for size in args.train_per_class.split(","):
        n = None if size == "all" else int(size)
        data = prepared(work, f"digits-0-9-{size}", range(10), n)
        for seed in (int(s) for s in args.seeds.split(",")):
            for arm, init in (("fine-tuned", str(source)), ("scratch", None)):
                start = time.perf_counter()
                out = run_training(
                    config(data, runs, f"{arm}-{size}-{seed}", seed=seed, init_from=init, **recipe)
                )
                errs = [h["val_top1_error"] for h in out.history]
                seconds = time.perf_counter() - start
                last = sorted(Path(out.run_path).glob("checkpoint_epoch_*"))[-1]
                a = analyse(last, work / "digits" / "val", work / f"digits-0-9-{size}" / "src" / "train")
                print(
                    f"| {size} | {seed} | {arm} | {' / '.join(f'{e:.1%}' for e in errs)} | "
                    f"{a['0-4']:.1%} / {a['5-9']:.1%} | {a['all, BN recomputed']:.1%} | {seconds:.0f} | "
                    f"{os.getloadavg()[0]:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
