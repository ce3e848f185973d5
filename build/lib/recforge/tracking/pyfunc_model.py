"""MLflow pyfunc model defined by code (models-from-code): nothing pickled, the bundle is plain files.

Input: a DataFrame with a ``user`` column (raw ids: integers or strings; ``"12"`` finds the integer id 12)
and optionally ``k`` (default 10) and ``exclude_seen`` (default true); ``k`` and ``exclude_seen`` are read
from the first row. Output: one row per recommendation (user, item, rank, score, fallback); unknown users
get the most popular items with ``fallback`` true.
"""

from __future__ import annotations

from pathlib import Path

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
        k = int(frame["k"].iloc[0]) if "k" in frame and len(frame) and pd.notna(frame["k"].iloc[0]) else 10
        exclude = bool(frame["exclude_seen"].iloc[0]) if "exclude_seen" in frame and len(frame) \
            and pd.notna(frame["exclude_seen"].iloc[0]) else True
        if k < 1:
            raise ValueError(f"k={k} must be >= 1")
        return self.bundle.recommend(frame["user"].to_numpy(), k=k, exclude_seen=exclude)


def model_signature(bundle_dir: str | Path):
    """The pyfunc signature of a bundle: inputs ``user`` (any: raw ids may be integers or strings; declared
    ``Any`` so both pass MLflow's schema check), ``k`` (long, optional), ``exclude_seen`` (boolean, optional);
    outputs ``user``, ``item`` (long or string, as the bundle's item ids), ``rank`` (long), ``score`` (float),
    ``fallback`` (boolean)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, DataType, Schema

    items = pd.read_parquet(Path(bundle_dir) / "items.parquet")["item"]
    item_type = DataType.long if items.dtype.kind in "iu" else DataType.string
    inputs = Schema([ColSpec(AnyType(), "user"), ColSpec(DataType.long, "k", required=False),
                     ColSpec(DataType.boolean, "exclude_seen", required=False)])
    outputs = Schema([ColSpec(AnyType(), "user"), ColSpec(item_type, "item"), ColSpec(DataType.long, "rank"),
                      ColSpec(DataType.float, "score"), ColSpec(DataType.boolean, "fallback")])
    return ModelSignature(inputs=inputs, outputs=outputs)


mlflow.models.set_model(RecForgeModel())
