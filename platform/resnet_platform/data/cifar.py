"""CIFAR-10 from the standard python archive into Ray Data: rows ``{"image": uint8 HWC, "label": int64}``.

The archive (``cifar-10-python.tar.gz``, or its extracted ``cifar-10-batches-py/`` folder) holds
pickled dicts written by Python 2: ``data_batch_1`` .. ``data_batch_5`` (10,000 images each),
``test_batch`` and ``batches.meta``. Keys are bytes once loaded with ``encoding="bytes"``:
``b"data"`` is uint8 ``[N, 3072]`` in CHW order (1024 red, 1024 green, 1024 blue, rows of 32),
``b"labels"`` a list of ints, ``b"label_names"`` (in the meta file) the class names.

The whole set is 180 MB as uint8: it is read once, put in the object store, and the datasets are
streams of row ids that look their images up there (and augment them, for training).
"""

from __future__ import annotations

import functools
import io
import pickle
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs

from resnet_platform.data.checks import DataCheckError, check_labels
from resnet_platform.data.manifest import Manifest, SplitManifest
from resnet_platform.data.placement import DataPlacement
from resnet_platform.data.transforms import pad_crop_flip
from resnet_platform.errors import MissingInputError, one_line
from resnet_platform.storage import resolve

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
VAL_SIZE = 5000  # the paper's 45k/5k train/validation split (section 4.2)


class CifarFormatError(DataCheckError):
    """The file is not a (complete) CIFAR-10 python archive; the message names it."""


@dataclass
class Cifar10:
    train_images: np.ndarray  # uint8 (N, 32, 32, 3), HWC
    train_labels: np.ndarray  # int64 (N,)
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]

    def manifest(self, val_rows: int) -> Manifest:
        """A manifest for the trainer and MLflow (classes, row counts); no shards behind it."""
        return Manifest(
            classes=list(self.classes),
            class_names=list(self.classes),
            splits={
                "train": SplitManifest(num_rows=len(self.train_labels) - val_rows),
                "val": SplitManifest(num_rows=val_rows or len(self.test_labels)),
            },
            source_layout={"train": "cifar-10-python", "val": "cifar-10-python"},
        )


def _get(d: dict, key: str):
    """Batches pickled by Python 2 have bytes keys; re-pickled ones may have str keys."""
    if key.encode() in d:
        return d[key.encode()]
    if key in d:
        return d[key]
    raise CifarFormatError(f"no {key!r} in a CIFAR batch (keys: {sorted(map(str, d))})")


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes at protocol 2, and nothing else."""
    if not isinstance(text, str) or encoding.replace("-", "") != "latin1":
        raise pickle.UnpicklingError(f"only latin-1 text may be encoded, not {encoding!r}")
    return text.encode("latin1", errors)


def _plain_dtype(*args) -> np.dtype:
    """``numpy.dtype`` for numbers and bytes only: an object dtype would unpickle arbitrary objects."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("object arrays are not part of the CIFAR format")
    return dtype


# The only callables a CIFAR batch needs: numpy's array reconstruction (under its numpy 1 and 2
# module names; the function itself read from numpy, not imported by name) and protocol 2 bytes.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _plain_dtype,
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray((0,), np.uint8).__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray((0,), np.uint8).__reduce__()[0],
    ("numpy.core.numeric", "_frombuffer"): np.arange(1).__reduce_ex__(5)[0],
    ("numpy._core.numeric", "_frombuffer"): np.arange(1).__reduce_ex__(5)[0],
    ("_codecs", "encode"): _latin1_encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """Builds dicts, lists, bytes, str, numbers and numpy arrays; refuses every other global, so a
    tampered batch cannot run code (``os.system``, ``builtins.eval``, ...) while it is read."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}") from None


def _check_plain(value, depth: int = 0) -> None:
    """The shapes of the format, all the way down: dict, list, bytes, str, int, float, ndarray."""
    if depth > 4:
        raise pickle.UnpicklingError("nested deeper than any CIFAR batch")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, bytes | str):
                raise pickle.UnpicklingError(f"a {type(k).__name__} key")
            _check_plain(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_plain(v, depth + 1)
    elif isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise pickle.UnpicklingError("an object array")
    elif not isinstance(value, bytes | str | int | float):
        raise pickle.UnpicklingError(f"a {type(value).__name__} value")


def load_pickled(raw: bytes, name: str) -> dict:
    """One CIFAR pickle (a batch or ``batches.meta``) through the restricted unpickler."""
    try:
        value = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
        if not isinstance(value, dict):
            raise pickle.UnpicklingError(f"a {type(value).__name__} where a dict belongs")
        _check_plain(value)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise CifarFormatError(
            f"{name} is not a CIFAR-10 pickle (only dicts, lists, bytes, str, ints and numpy arrays "
            f"are loaded): {e}"
        ) from None
    return value


def decode_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (uint8 NHWC images, int64 labels)."""
    d = load_pickled(raw, name)
    data = np.asarray(_get(d, "data"), dtype=np.uint8)
    labels = np.asarray(_get(d, "labels"), dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise CifarFormatError(f"{name}: data {data.shape} and {len(labels)} labels are not CIFAR-10's")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def _members_from_tar(blob: bytes, where: str) -> Callable[[str], bytes]:
    if not blob:
        raise CifarFormatError(f"{where}: empty file (0 bytes), not a CIFAR-10 archive ({ARCHIVE})")
    try:
        tar = tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")
        by_name = {m.name.rsplit("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, zlib.error, EOFError, OSError) as e:
        reason = one_line(e).rstrip(":")  # tarfile lists every method it tried below
        raise CifarFormatError(
            f"{where}: not a CIFAR-10 archive (expected a tar.gz like {ARCHIVE}): {reason}"
        ) from e
    if not by_name:
        raise CifarFormatError(f"{where}: empty archive (no files), not a CIFAR-10 archive ({ARCHIVE})")

    def read(name: str) -> bytes:
        if name not in by_name:
            raise CifarFormatError(
                f"{where}: no {name} in the archive: incomplete, or not {ARCHIVE} "
                f"(it holds {', '.join(sorted(by_name)[:8])})"
            )
        return tar.extractfile(by_name[name]).read()

    return read


def _members_from_folder(fs: pafs.FileSystem, folder: str, where: str) -> Callable[[str], bytes]:
    def read(name: str) -> bytes:
        path = f"{folder.rstrip('/')}/{name}"
        if fs.get_file_info(path).type != pafs.FileType.File:
            raise CifarFormatError(f"{where}: no {name} in {folder}")
        with fs.open_input_stream(path) as f:
            return f.read()

    return read


def _open_source(uri: str) -> Callable[[str], bytes]:
    """The archive file, the extracted folder, or a folder holding either."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        # compression=None: tarfile reads the gzip itself; pyarrow's detection by name would fail a
        # file called .tar.gz that is not gzip with a bare "zlib inflate failed".
        with fs.open_input_stream(path, compression=None) as f:
            return _members_from_tar(f.read(), uri)
    if info.type != pafs.FileType.Directory:
        raise MissingInputError(f"no CIFAR-10 archive or folder at {uri}")
    for folder in (path, f"{path.rstrip('/')}/{FOLDER}"):
        if fs.get_file_info(f"{folder}/{TRAIN_BATCHES[0]}").type == pafs.FileType.File:
            return _members_from_folder(fs, folder, uri)
    archive = f"{path.rstrip('/')}/{ARCHIVE}"
    if fs.get_file_info(archive).type == pafs.FileType.File:
        with fs.open_input_stream(archive, compression=None) as f:
            return _members_from_tar(f.read(), uri)
    raise MissingInputError(f"{uri}: neither {FOLDER}/ nor {ARCHIVE} (nor the batches themselves) found")


def check_cifar_source(uri: str) -> None:
    """Fail in seconds, naming the file, unless ``uri`` opens as CIFAR-10 and holds every batch (the
    members are read, not decoded): what a driver checks before it starts workers that each read it."""
    read = _open_source(uri)
    for name in (*TRAIN_BATCHES, TEST_BATCH, META):
        read(name)


def read_cifar10(uri: str) -> Cifar10:
    """Read all of CIFAR-10 (path, ``file://`` or ``s3://``; archive or extracted folder)."""
    read = _open_source(uri)
    train = [decode_batch(read(name), name) for name in TRAIN_BATCHES]
    test_images, test_labels = decode_batch(read(TEST_BATCH), TEST_BATCH)
    meta = load_pickled(read(META), META)
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in _get(meta, "label_names")]
    data = Cifar10(
        train_images=np.concatenate([b[0] for b in train]),
        train_labels=np.concatenate([b[1] for b in train]),
        test_images=test_images,
        test_labels=test_labels,
        classes=classes,
    )
    check_labels(data.train_labels, len(classes), f"{uri}: training batches")
    check_labels(data.test_labels, len(classes), f"{uri}: {TEST_BATCH}")
    return data


def split_train_val(n: int, val_size: int = VAL_SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint (train, val) index arrays covering ``range(n)``; both sorted."""
    if not 0 < val_size < n:
        raise ValueError(f"validation size {val_size} must be between 0 and {n} exclusive")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[val_size:]), np.sort(order[:val_size])


def _lookup(
    batch: dict[str, np.ndarray], *, refs: dict, augment: bool, rng_seed: int | None
) -> dict[str, np.ndarray]:
    import ray

    images, labels = ray.get(refs["images"]), ray.get(refs["labels"])
    ids = batch["id"]
    out = images[ids]
    if augment:
        out = pad_crop_flip(out, np.random.default_rng(rng_seed))
    return {"image": out, "label": labels[ids].astype(np.int64)}


def _dataset(
    images: np.ndarray, labels: np.ndarray, *, shuffle: bool, augment: bool, blocks: int, task_args: dict
):
    import ray
    import ray.data

    refs = {"images": ray.put(np.ascontiguousarray(images)), "labels": ray.put(labels)}
    ds = ray.data.range(len(labels), override_num_blocks=max(1, min(blocks, len(labels))))
    if shuffle:
        ds = ds.random_shuffle()  # ids only: a full reshuffle per epoch costs next to nothing
    fn = functools.partial(_lookup, refs=refs, augment=augment, rng_seed=None)
    ds = ds.map_batches(fn, batch_size=1024, batch_format="numpy", **task_args)
    if not shuffle:
        ds.context.execution_options.preserve_order = True
    return ds


def cifar_datasets(
    data: Cifar10,
    *,
    val_split: bool = False,
    seed: int = 0,
    augment: bool = True,
    blocks: int = 16,
    placement: DataPlacement | None = None,
) -> dict:
    """``{"train", "val"}`` Ray datasets; ``val`` is the test set, or 5k held out of the training set
    (seeded) with ``val_split``. Training rows get pad-crop-flip when ``augment``. ``placement``
    holds the lookup and augmentation tasks on the data nodes."""
    task_args = placement.task_args() if placement is not None else {}
    if val_split:
        train_idx, val_idx = split_train_val(len(data.train_labels), seed=seed)
        train = (data.train_images[train_idx], data.train_labels[train_idx])
        val = (data.train_images[val_idx], data.train_labels[val_idx])
    else:
        train = (data.train_images, data.train_labels)
        val = (data.test_images, data.test_labels)
    return {
        "train": _dataset(*train, shuffle=True, augment=augment, blocks=blocks, task_args=task_args),
        "val": _dataset(*val, shuffle=False, augment=False, blocks=blocks, task_args=task_args),
    }


def write_cifar10_archive(
    path: str, *, per_batch: int = 40, test_size: int = 100, seed: int = 0, extracted: bool = False
) -> str:
    """A small CIFAR-10 in the exact format of ``cifar-10-python.tar.gz`` (for tests and demos).

    Five training batches of ``per_batch`` images and a test batch, pickled (protocol 2) as the
    real ones are: bytes keys, ``b"data"`` uint8 [N, 3072] in CHW order, ``b"labels"`` ints,
    ``b"filenames"``, ``b"batch_label"``; ``batches.meta`` with bytes ``b"label_names"``. Each class
    has its own colour and stripe direction, so a small net can learn it. ``extracted``: write the
    ``cifar-10-batches-py/`` folder under ``path`` instead of the ``.tar.gz`` at ``path``.
    """
    from pathlib import Path

    rng = np.random.default_rng(seed)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    colours = rng.integers(40, 216, size=(10, 3))

    def images(n: int, batch_label: str) -> dict:
        labels = rng.integers(0, 10, size=n)
        gy, gx = np.mgrid[0:32, 0:32]
        hwc = np.empty((n, 32, 32, 3), np.uint8)
        for i, c in enumerate(labels):
            stripes = np.sin((gx if c % 2 else gy) * (0.4 + 0.1 * (c // 2)))[..., None] * 30
            img = colours[c] + stripes + rng.normal(0, 12, size=(32, 32, 3))
            hwc[i] = img.clip(0, 255).astype(np.uint8)
        return {
            b"batch_label": batch_label.encode(),
            b"labels": [int(c) for c in labels],
            b"data": hwc.transpose(0, 3, 1, 2).reshape(n, 3072),
            b"filenames": [f"img_{batch_label[-6:]}_{i}.png".encode() for i in range(n)],
        }

    files = {f"data_batch_{i}": images(per_batch, f"training batch {i} of 5") for i in range(1, 6)}
    files[TEST_BATCH] = images(test_size, "testing batch 1 of 1")
    files[META] = {
        b"num_cases_per_batch": per_batch,
        b"label_names": [n.encode() for n in names],
        b"num_vis": 3072,
    }
    blobs = {name: pickle.dumps(obj, protocol=2) for name, obj in files.items()}
    out = Path(path)
    if extracted:
        folder = out / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        for name, blob in blobs.items():
            (folder / name).write_bytes(blob)
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        for name, blob in blobs.items():
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return str(out)
