"""User and item side features as model inputs: aligned to the id maps and encoded as float32 matrices.

Two paths: a dataset that declares its features (``data.user_columns`` / ``data.item_columns``, parsed by
:func:`recforge.data.declared.parse_columns`) is encoded by a :class:`~recforge.data.declared.FeatureEncoder`
fitted on the training rows only; any other
feature frame by :func:`features_tensor` (every numeric column scaled, text columns with few values one-hot),
whose ranges and categories also come from the training rows when ``fit_rows`` is given.
"""

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


def features_tensor(frame: pd.DataFrame | None, max_categories: int = 64,
                    fit_rows: np.ndarray | None = None) -> torch.Tensor | None:
    """A float32 ``(n, d)`` matrix: numeric columns min-max scaled to [0, 1] (0/1 flags stay as they are; NaN
    as 0), text columns with at most ``max_categories`` values one-hot; other text columns (titles, names) are
    left out. Scaled values matter to models that weight feature embeddings by value (FM, DeepFM): an age or a
    year would otherwise swamp every other feature. With ``fit_rows`` (a boolean mask: the training rows) the
    ranges and the categories come from those rows only (values outside the range are clipped, categories never
    seen there are zeros); without it, from every row."""
    return encode_frame(frame, max_categories, fit_rows)[0]


def encode_frame(frame: pd.DataFrame | None, max_categories: int = 64, fit_rows: np.ndarray | None = None
                 ) -> tuple[torch.Tensor | None, list[str]]:
    """:func:`features_tensor`'s matrix and the names of its columns (a number's column name, ``column=value`` for
    a one-hot value)."""
    if frame is None:
        return None, []
    fit = frame if fit_rows is None else frame.iloc[np.flatnonzero(fit_rows)]
    blocks, names = [], []
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            column_values = values.to_numpy(np.float32, na_value=np.nan)
            known = fit[column].to_numpy(np.float32, na_value=np.nan)
            lo, hi = np.nanmin(known, initial=np.inf), np.nanmax(known, initial=-np.inf)
            if np.isfinite(lo) and (lo < 0 or hi > 1):
                column_values = (column_values - lo) / max(hi - lo, np.finfo(np.float32).tiny)
                if fit_rows is not None:
                    column_values = np.clip(column_values, 0.0, 1.0)
            blocks.append(column_values[:, None])
            names.append(str(column))
        elif fit[column].nunique(dropna=True) <= max_categories:
            vocab = sorted(fit[column].dropna().unique().tolist())
            codes = pd.Categorical(values, categories=vocab).codes
            blocks.append((codes[:, None] == np.arange(len(vocab))).astype(np.float32))
            names += [f"{column}={value}" for value in vocab]
    if not blocks:
        return None, []
    return torch.as_tensor(np.nan_to_num(np.concatenate(blocks, axis=1))), names


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
