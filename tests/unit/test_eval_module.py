"""The module's evaluation hooks: the rating inverse + clipping on the original scale, stage-prefixed names."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from recforge import losses
from recforge.errors import RecForgeError
from recforge.models.base import Recommender
from recforge.training.module import RecommenderModule, metric_names


class Fixed(Recommender):
    """Predicts the item index (a normalised rating) for every pair."""

    def __init__(self, n_items: int = 4) -> None:
        super().__init__()
        self.n_items = n_items
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, users, items):
        return items.float() + 0 * self.w

    def score_all(self, users):
        return torch.arange(self.n_items).float().expand(len(users), -1).clone()


class Loss(losses.Loss):
    def __init__(self, feedback: str) -> None:
        super().__init__()
        self.feedback = feedback


def test_rating_inverse_then_clip_in_rmse_and_mae():
    # normalised ratings r' = (r - 3) / 2; predictions 0, 1, 2, 3 -> ratings 3, 5, 7 (clipped to 5), 9 (clipped to 5)
    module = RecommenderModule(Fixed(), Loss("explicit"), rating_range=(1.0, 5.0),
                               rating_inverse=lambda x: 2 * x + 3)
    batch = (torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 2, 3]), torch.tensor([0.5, 1.0, -1.0, 0.0]))
    module._eval_step(batch)  # targets -> 4, 5, 1, 3; errors -1, 0, 4, 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = module._aggregate("test")
    assert metrics["test/rmse"].item() == pytest.approx(math.sqrt((1 + 0 + 16 + 4) / 4))
    assert metrics["test/mae"].item() == pytest.approx((1 + 0 + 4 + 2) / 4)
    assert module.test_results["errors"].tolist() == pytest.approx([-1, 0, 4, 2])


def test_ranking_stage_names_and_sampled_metrics():
    module = RecommenderModule(Fixed(6), Loss("implicit"), ks=[2], item_popularity=torch.ones(6), n_train_users=3,
                               sampled_negatives=3, sampled_seed=1)
    batch = {"users": torch.tensor([0, 1]), "exclude_rows": torch.tensor([0]), "exclude_cols": torch.tensor([5]),
             "relevant_rows": torch.tensor([0, 1]), "relevant_cols": torch.tensor([4, 0])}
    module._eval_step(batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = module._aggregate("val")
    assert set(metrics) == set(metric_names("implicit", [2], "val", 3, "uniform"))
    # scores = item index: user 0 (item 5 seen) ranks 4 first; user 1 ranks 0 last
    assert metrics["val/hr_at_2"].item() == pytest.approx(0.5)
    assert metrics["val/sampled3_hr_at_2"].item() == pytest.approx(0.5)
    with pytest.raises(RecForgeError, match="eval.sampled.n_negatives"):
        RecommenderModule(Fixed(), Loss("implicit"), sampled_negatives=0)
    with pytest.raises(RecForgeError, match="eval.sampled.strategy=popularity"):
        RecommenderModule(Fixed(), Loss("implicit"), sampled_negatives=5, sampled_strategy="popularity")


def test_train_loss_is_logged_once_per_epoch_as_the_mean_per_example():
    module = RecommenderModule(Fixed(), Loss("explicit"))
    losses = iter([torch.tensor(1.0), torch.tensor(4.0)])
    module.compute_loss = lambda batch: next(losses)
    logged = []
    module.log = lambda name, value, **kwargs: logged.append((name, float(value), kwargs))
    module.on_train_epoch_start()
    for n, loss in ((3, 1.0), (1, 4.0)):  # a full batch of 3 and a last batch of 1
        batch = (torch.zeros(n, dtype=torch.long),) * 2 + (torch.zeros(n),)
        assert module.training_step(batch, 0).item() == loss  # the batch's loss goes to the optimizer
    assert logged == []  # nothing per step
    module.on_train_epoch_end()
    assert logged == [("train/loss", pytest.approx((3 * 1.0 + 1 * 4.0) / 4), {"sync_dist": True})]
    module.on_train_epoch_end()  # an epoch without steps logs nothing
    assert len(logged) == 1
