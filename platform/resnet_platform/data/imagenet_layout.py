"""Finding images and labels in the ILSVRC2012 layouts people actually have.

- train: ``train/<wnid>/*.JPEG``
- val, one of:
  - ``val/<wnid>/*.JPEG`` (class folders, e.g. after the usual ``valprep.sh``)
  - flat ``val/ILSVRC2012_val_*.JPEG`` + Kaggle's ``LOC_val_solution.csv``
  - flat ``val/ILSVRC2012_val_*.JPEG`` + the devkit's ``ILSVRC2012_validation_ground_truth.txt``
    and ``meta.mat`` (ground truth holds ILSVRC2012_IDs 1..1000; meta.mat maps them to wnids)

Human-readable class names come from ``synset_words.txt``, ``LOC_synset_mapping.txt`` or ``meta.mat``.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

from resnet_platform.errors import MissingInputError

KAGGLE_CSV = "LOC_val_solution.csv"
DEVKIT_GT = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_META = "meta.mat"
NAME_FILES = ("synset_words.txt", "LOC_synset_mapping.txt")


@dataclass(frozen=True)
class SourceImage:
    path: str  # absolute path of the file
    key: str  # path relative to the source root, the row's ``key``
    wnid: str | None  # None: no label found (reported as rejected)
    size: int  # bytes on disk


@dataclass
class SplitSource:
    split: str
    layout: str  # human description of the layout found
    images: list[SourceImage]


def _files(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if e.is_file() and not e.name.startswith(".")), key=lambda e: e.name)


def _dirs(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)


def _class_folders(root: Path, split_dir: Path) -> list[SourceImage]:
    images = []
    for d in _dirs(split_dir):
        for e in _files(Path(d.path)):
            rel = os.path.relpath(e.path, root)
            images.append(SourceImage(e.path, rel.replace(os.sep, "/"), d.name, e.stat().st_size))
    return images


def candidate_dirs(root: str | Path) -> list[Path]:
    """Where metadata files live: the root, its parents (Kaggle's CSVs sit above ILSVRC/Data/CLS-LOC),
    ``val/`` and devkit folders."""
    root = Path(root)
    dirs = [root, root / "val", root / "devkit", root / "devkit" / "data", root / "data"]
    if root.is_dir():
        for d in _dirs(root):
            dirs += [Path(d.path), Path(d.path) / "data"]
    dirs += list(root.resolve().parents)[:3]
    seen, out = set(), []
    for d in dirs:
        if d not in seen and d.is_dir():
            seen.add(d)
            out.append(d)
    return out


def find_file(root: str | Path, name: str) -> Path | None:
    for d in candidate_dirs(root):
        if (d / name).is_file():
            return d / name
    return None


def read_meta_mat(path: Path) -> tuple[dict[int, str], dict[str, str], list[str]]:
    """meta.mat -> (ILSVRC2012_ID -> wnid, wnid -> words, leaf wnids in ID order)."""
    import numpy as np
    import scipy.io

    synsets = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)["synsets"]
    id_to_wnid, names, leaves = {}, {}, []
    for s in np.atleast_1d(synsets):
        sid, wnid = int(s.ILSVRC2012_ID), str(s.WNID)
        id_to_wnid[sid] = wnid
        names[wnid] = str(getattr(s, "words", wnid))
        if int(getattr(s, "num_children", 0)) == 0:
            leaves.append((sid, wnid))
    return id_to_wnid, names, [w for _, w in sorted(leaves)]


def read_class_names(root: str | Path) -> dict[str, str]:
    for name in NAME_FILES:
        path = find_file(root, name)
        if path is not None:
            out = {}
            for line in path.read_text().splitlines():
                parts = line.strip().split(maxsplit=1)
                if parts:
                    out[parts[0]] = parts[1] if len(parts) > 1 else parts[0]
            return out
    meta = find_file(root, DEVKIT_META)
    if meta is not None:
        return read_meta_mat(meta)[1]
    return {}


_VAL_NUMBER = re.compile(r"(\d+)$")


def _flat_val(root: Path, val_dir: Path) -> tuple[str, list[SourceImage]]:
    files = _files(val_dir)

    def image(e: os.DirEntry, wnid: str | None) -> SourceImage:
        return SourceImage(e.path, os.path.relpath(e.path, root).replace(os.sep, "/"), wnid, e.stat().st_size)

    csv_path = find_file(root, KAGGLE_CSV)
    if csv_path is not None:
        labels = {}
        with open(csv_path, newline="") as f:
            for row in csv.DictReader(f):
                labels[row["ImageId"]] = row["PredictionString"].split()[0]
        layout = f"flat val/ + Kaggle {csv_path.name} ({csv_path})"
        return layout, [image(e, labels.get(Path(e.name).stem)) for e in files]
    gt_path, meta_path = find_file(root, DEVKIT_GT), find_file(root, DEVKIT_META)
    if gt_path is not None and meta_path is not None:
        id_to_wnid = read_meta_mat(meta_path)[0]
        ids = [int(x) for x in gt_path.read_text().split()]
        out = []
        for e in files:
            m = _VAL_NUMBER.search(Path(e.name).stem)
            n = int(m.group(1)) if m else 0
            wnid = id_to_wnid.get(ids[n - 1]) if 1 <= n <= len(ids) else None
            out.append(image(e, wnid))
        return f"flat val/ + devkit {gt_path.name} + {meta_path.name} ({gt_path.parent})", out
    raise MissingInputError(
        f"{val_dir}: flat validation images but no labels found: expected {KAGGLE_CSV} or "
        f"{DEVKIT_GT} + {DEVKIT_META} in {root} or nearby"
    )


def discover_split(root: str | Path, split: str) -> SplitSource:
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise MissingInputError(f"{root}: no {split}/ folder (expected ILSVRC2012 layout)")
    if _dirs(split_dir):
        images = _class_folders(root, split_dir)
        return SplitSource(split, f"{split}/<wnid>/ class folders", images)
    if split == "train":
        raise MissingInputError(f"{split_dir}: expected class folders train/<wnid>/*.JPEG")
    layout, images = _flat_val(root, split_dir)
    return SplitSource(split, layout, images)


def train_wnids(root: str | Path) -> list[str]:
    train = Path(root) / "train"
    return [d.name for d in _dirs(train)] if train.is_dir() else []
