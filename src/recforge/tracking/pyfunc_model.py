"""MLflow pyfunc model defined by code (models-from-code): nothing pickled, the bundle is plain files.

Input: a DataFrame with a ``user`` column (raw ids) and optionally ``k`` (default 10) and
``exclude_seen`` (default true). Output: one row per recommendation (user, item, rank, score, fallback).
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class RecForgeModel(PythonModel):
    def load_context(self, context) -> None:
        from recforge.tracking.bundle import Bundle

        self.bundle = Bundle.load(context.artifacts["bundle"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        if "user" not in frame:
            raise ValueError("input needs a 'user' column of user ids")
        k = int(frame["k"].iloc[0]) if "k" in frame and len(frame) else 10
        exclude = bool(frame["exclude_seen"].iloc[0]) if "exclude_seen" in frame and len(frame) else True
        return self.bundle.recommend(frame["user"].to_numpy(), k=k, exclude_seen=exclude)


mlflow.models.set_model(RecForgeModel())
