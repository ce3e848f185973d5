"""A deterministic synthetic dataset with real structure, embedded so the default experiment runs offline."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from recforge.data.context import DeclaresContext
from recforge.data.sources.base import RawData
from recforge.errors import RecForgeError


class SyntheticSource(DeclaresContext):
    """Interactions drawn from latent user/item factors with a popularity skew.

    Each user ``u`` and item ``i`` get Gaussian factors ``p_u, q_i`` (``n_factors`` dims) and each item a
    popularity logit ``b_i`` from a Zipf-like law (``popularity_skew`` sets how steep). A user's items are
    drawn without replacement with probability proportional to ``exp(p_u . q_i / temperature + b_i)``
    (Gumbel top-k), so both preference and popularity are learnable, and a personalised model beats the
    popularity baseline. History lengths are log-normal (at least ``min_interactions``). Ratings 1-5 come from
    the same affinity plus noise; timestamps increase along each user's history. Same seed, same data.
    """

    name = "synthetic"

    def __init__(
        self,
        n_users: int = 2000,
        n_items: int = 1000,
        n_factors: int = 16,
        mean_interactions: float = 40.0,
        min_interactions: int = 5,
        popularity_skew: float = 1.0,
        temperature: float = 0.5,
        rating_noise: float = 0.5,
        seed: int = 0,
        context_columns: Mapping | None = None,
    ) -> None:
        self.declare_context(context_columns)
        if n_users < 2 or n_items < 2:
            raise RecForgeError("data.n_users and data.n_items must be at least 2")
        if not 0 < min_interactions <= mean_interactions < n_items:
            raise RecForgeError(
                "data: need 0 < data.min_interactions <= data.mean_interactions < data.n_items; "
                f"got {min_interactions}, {mean_interactions}, {n_items}"
            )
        self.n_users, self.n_items, self.n_factors = n_users, n_items, n_factors
        self.mean_interactions, self.min_interactions = mean_interactions, min_interactions
        self.popularity_skew, self.temperature, self.rating_noise = popularity_skew, temperature, rating_noise
        self.seed = seed

    def load(self) -> RawData:
        rng = np.random.default_rng(self.seed)
        p = rng.normal(0.0, 1.0 / np.sqrt(self.n_factors), (self.n_users, self.n_factors)) * 2.0
        q = rng.normal(0.0, 1.0 / np.sqrt(self.n_factors), (self.n_items, self.n_factors)) * 2.0
        ranks = rng.permutation(self.n_items) + 1
        item_logit = -self.popularity_skew * np.log(ranks)
        item_logit -= item_logit.mean()

        lengths = rng.lognormal(np.log(self.mean_interactions) - 0.5 * 0.6**2, 0.6, self.n_users)
        lengths = np.clip(np.round(lengths), self.min_interactions, self.n_items // 2).astype(np.int64)
        max_len = int(lengths.max())

        affinity = p @ q.T  # (n_users, n_items)
        logits = affinity / self.temperature + item_logit
        gumbel = -np.log(-np.log(rng.uniform(1e-12, 1.0, logits.shape)))
        # Gumbel top-k = sampling without replacement proportional to exp(logits)
        top = np.argpartition(-(logits + gumbel), max_len - 1, axis=1)[:, :max_len]
        order = np.argsort(-(logits + gumbel)[np.arange(self.n_users)[:, None], top], axis=1)
        top = np.take_along_axis(top, order, axis=1)
        keep = np.arange(max_len)[None, :] < lengths[:, None]
        users = np.broadcast_to(np.arange(self.n_users)[:, None], top.shape)[keep]
        items = top[keep]

        aff = affinity[users, items]
        z = (aff - aff.mean()) / (aff.std() + 1e-12)
        raw = 3.6 + 1.0 * z + rng.normal(0.0, self.rating_noise, len(z))
        ratings = np.clip(np.round(raw), 1, 5).astype(np.float32)

        start = rng.integers(1_000_000_000, 1_100_000_000, self.n_users)
        gaps = rng.exponential(86_400.0, top.shape).cumsum(axis=1).astype(np.int64)
        timestamps = (start[:, None] + gaps)[keep]

        frame = pd.DataFrame(
            {"user": users.astype(np.int64), "item": items.astype(np.int64), "rating": ratings, "timestamp": timestamps}
        )
        settings = (
            f"{self.n_users},{self.n_items},{self.n_factors},{self.mean_interactions},{self.min_interactions},"
            f"{self.popularity_skew},{self.temperature},{self.rating_noise},{self.seed}"
        )
        return RawData(self.name, frame, rating_range=(1.0, 5.0), checksums={"generator": settings})
