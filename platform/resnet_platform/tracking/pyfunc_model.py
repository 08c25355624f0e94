"""The MLflow pyfunc model, logged as code ("models from code"): this file is the model's definition.

``mlflow models serve`` / ``mlflow.pyfunc.load_model`` execute it; it rebuilds the ResNet from the
``model_config`` artifact and loads the ``weights`` artifact with ``weights_only=True``.

Input: a DataFrame with one column ``image`` holding base64-encoded image files (JPEG, PNG, ...)
one per row, e.g. for ``/invocations``::

    {"dataframe_split": {"columns": ["image"], "data": [["/9j/4AAQ..."]]}, "params": {"k": 5}}

Only image bytes travel: a string is base64 or refused, a file path is never opened on the server.
Each request is bounded by :class:`~resnet_platform.tracking.inference.InputLimits` (images per
request, bytes and pixels per image); a refused request gets HTTP 400 and a one-line reason.

Output: one row per image with ``top_indices`` (list[int]), ``top_classes`` (list[str]) and
``top_probabilities`` (list[float]), best first; ``params.k`` (default 5) sets the list length.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from resnet_platform.tracking.inference import (
    DEFAULT_K,
    INPUT_COLUMN,
    InputLimits,
    InputRejected,
    check_rows,
    image_from_request,
)


class ResNetClassifier(mlflow.pyfunc.PythonModel):
    limits = InputLimits()

    def load_context(self, context):
        from resnet_platform.tracking.inference import load_from_files

        self.loaded = load_from_files(context.artifacts["weights"], context.artifacts["model_config"])

    def predict(self, context, model_input: pd.DataFrame, params=None):
        try:
            k = int((params or {}).get("k", DEFAULT_K))
            if k < 1:
                raise InputRejected(f"params.k must be at least 1, got {k}")
            if isinstance(model_input, pd.DataFrame):
                column = INPUT_COLUMN if INPUT_COLUMN in model_input.columns else model_input.columns[0]
                values = list(model_input[column])
            else:
                values = list(model_input)
            check_rows(len(values), self.limits)
            images = [image_from_request(v, self.limits) for v in values]
        except (InputRejected, ValueError, TypeError) as e:
            # MlflowException: the scoring server answers 400 with this message (not a traceback).
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        rows = self.loaded.predict_topk(images, k=k)
        return pd.DataFrame(
            {
                "top_indices": [[p.index for p in row] for row in rows],
                "top_classes": [[p.label for p in row] for row in rows],
                "top_probabilities": [[p.probability for p in row] for row in rows],
            }
        )


mlflow.models.set_model(ResNetClassifier())
