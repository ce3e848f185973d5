"""End to end: one trained model re-evaluated through Lightning with different chunk sizes (and with a sampled
protocol) gives identical metrics; sampled metrics are named for their protocol and can be monitored."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict

from recforge.errors import RecForgeError
from recforge.pipeline import build_experiment


def _trainer():
    return pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


def test_metrics_do_not_depend_on_chunk_size(tiny_cfg):
    sampled = "eval.sampled={n_negatives:20,strategy:popularity,seed:3}"
    cfg = tiny_cfg(sampled)
    pl.seed_everything(0, verbose=False)
    exp = build_experiment(cfg)
    _trainer().fit(exp.module, datamodule=exp.datamodule)
    state = exp.model.state_dict()
    n_items = exp.datamodule.n_items

    results = []
    for users_per_chunk in (10_000, 7, 1):
        with open_dict(cfg):
            cfg.datamodule.max_scores_in_memory = users_per_chunk * n_items
        again = build_experiment(cfg)
        again.model.load_state_dict(state)
        n_batches = len(again.datamodule.test_dataloader())
        test = _trainer().test(again.module, datamodule=again.datamodule, verbose=False)[0]
        val = _trainer().validate(again.module, datamodule=again.datamodule, verbose=False)[0]
        results.append((n_batches, {**test, **val}, again.module.test_results))
    assert results[0][0] == 1 and results[1][0] > 1 and results[2][0] > results[1][0]
    _, metrics, per_user = results[0]
    assert "test/popsampled20_ndcg_at_10" in metrics and "val/popsampled20_hr_at_20" in metrics
    assert metrics["test/popsampled20_hr_at_10"] >= metrics["test/hr_at_10"]  # 21 candidates vs all items
    for _, other, other_users in results[1:]:
        assert other == metrics  # exactly equal, every metric
        for key, value in per_user.items():
            # the model's own scores may differ in the last bit with the matmul's shape (BLAS blocking);
            # everything the evaluator computes from them is identical
            exact = key != "scores"
            torch.testing.assert_close(other_users[key], value, rtol=0 if exact else 1e-6, atol=0 if exact else 1e-6,
                                       equal_nan=True, msg=key)


def test_sampled_metric_can_be_monitored_and_bad_keys_are_named(tiny_cfg):
    cfg = tiny_cfg("eval.sampled={n_negatives:99}", "monitor=val/sampled99_hr_at_10")
    exp = build_experiment(cfg)
    assert exp.module.evaluator.prefix == "sampled99"
    with pytest.raises(RecForgeError, match="eval.sampled.negatives"):
        build_experiment(tiny_cfg("eval.sampled={negatives:99}"))
    with pytest.raises(RecForgeError, match="eval.sampled.strategy"):
        build_experiment(tiny_cfg("eval.sampled={n_negatives:99,strategy:zipf}"))
    with pytest.raises(RecForgeError, match="monitor=val/sampled99_hr_at_10"):
        build_experiment(tiny_cfg("monitor=val/sampled99_hr_at_10"))  # not logged without eval.sampled
