"""Run an exported model (``jobs/export_model.py``) with ONNX Runtime: the parity check's runtime and
``jobs/batch_predict.py --runtime onnx``'s model actors.

The network's input is what ``preprocessing.json`` beside it says: float32 NCHW, the evaluation crop
normalized with the recorded mean/std. :meth:`OnnxClassifier.normalize` does that normalization with
the same float32 arithmetic as ``data/transforms.normalize``, so the ONNX and torch runtimes see
identical inputs and differ only by their kernels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MODEL_FILE = "model.onnx"
PROGRAM_FILE = "model.pt2"
PREPROCESSING_FILE = "preprocessing.json"
PARITY_FILE = "parity.json"
EXPORT_FILES = (MODEL_FILE, PROGRAM_FILE, PREPROCESSING_FILE, PARITY_FILE)
EXPORT_ARTIFACT_DIR = "export"  # under the model version's run


def ort_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session; ``threads``: intra-op threads (a Ray actor's CPU count, as torch
    gets from Ray's ``OMP_NUM_THREADS``), None for ONNX Runtime's default (every physical core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initializers etc. are not the user's business
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class OnnxClassifier:
    """An exported network and its recorded preprocessing."""

    def __init__(self, directory: str | Path, threads: int | None = None) -> None:
        directory = Path(directory)
        self.preprocessing = json.loads((directory / PREPROCESSING_FILE).read_text())
        self.session = ort_session(directory / MODEL_FILE, threads)
        self.input_name = self.session.get_inputs()[0].name
        p = self.preprocessing
        self.mean = np.asarray(p["mean"], np.float32).reshape(1, 3, 1, 1) * np.float32(255)
        self.std = np.asarray(p["std"], np.float32).reshape(1, 3, 1, 1) * np.float32(255)

    @property
    def labels(self) -> list[str]:
        return list(self.preprocessing["labels"])

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """uint8 NHWC crops -> normalized float32 NCHW (``transforms.normalize``'s arithmetic)."""
        x = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).astype(np.float32)
        return np.ascontiguousarray((x - self.mean) / self.std)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """uint8 NHWC crops -> softmax probabilities [N, classes] (float32)."""
        z = self.logits(self.normalize(images))
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)


__all__ = [
    "EXPORT_ARTIFACT_DIR",
    "EXPORT_FILES",
    "MODEL_FILE",
    "OnnxClassifier",
    "PARITY_FILE",
    "PREPROCESSING_FILE",
    "PROGRAM_FILE",
    "ort_session",
]
