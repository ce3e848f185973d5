"""User and item side features as model inputs: aligned to the id maps and encoded as float32 matrices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch


def align_features(features: pd.DataFrame | None, raw_ids: np.ndarray) -> pd.DataFrame | None:
    """``features`` (indexed by raw id) reindexed to contiguous indices; rows of ids without features are NaN."""
    if features is None:
        return None
    index = features.index
    ids = pd.Index(raw_ids)
    if index.dtype != ids.dtype:  # e.g. ids read as text in one file and as integers in the other
        index, ids = index.astype(str), ids.astype(str)
    aligned = features.set_axis(index, axis=0)
    aligned = aligned[~aligned.index.duplicated()].reindex(ids)
    return aligned.reset_index(drop=True)


def features_tensor(frame: pd.DataFrame | None, max_categories: int = 64) -> torch.Tensor | None:
    """A float32 ``(n, d)`` matrix: numeric columns min-max scaled to [0, 1] (0/1 flags stay as they are; NaN
    as 0), text columns with at most ``max_categories`` values one-hot; other text columns (titles, names) are
    left out. Scaled values matter to models that weight feature embeddings by value (FM, DeepFM): an age or a
    year would otherwise swamp every other feature."""
    if frame is None:
        return None
    blocks = []
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            column_values = values.to_numpy(np.float32, na_value=np.nan)
            lo, hi = np.nanmin(column_values, initial=np.inf), np.nanmax(column_values, initial=-np.inf)
            if np.isfinite(lo) and (lo < 0 or hi > 1):
                column_values = (column_values - lo) / max(hi - lo, np.finfo(np.float32).tiny)
            blocks.append(column_values[:, None])
        elif values.nunique(dropna=True) <= max_categories:
            blocks.append(pd.get_dummies(values, dtype=np.float32).to_numpy())
    if not blocks:
        return None
    return torch.as_tensor(np.nan_to_num(np.concatenate(blocks, axis=1)))


def category_matrix(frame: pd.DataFrame | None, prefix: str = "genre_") -> torch.Tensor | None:
    """Each row's category distribution from the 0/1 columns named ``<prefix>*`` (MovieLens genres): a float32
    ``(n, G)`` matrix whose rows are the flags divided by their count (rows without a flag, or of ids without
    features, are zero). None when the frame has no such column."""
    if frame is None:
        return None
    columns = [c for c in frame.columns if str(c).startswith(prefix)]
    if not columns:
        return None
    flags = torch.as_tensor(np.nan_to_num(frame[columns].to_numpy(np.float32, na_value=0.0)) > 0).float()
    return flags / flags.sum(1, keepdim=True).clamp(min=1)
