"""Every splitter: sizes, seeding, the leak checks and cold-start handling, on small generated tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recforge.data.split import (ColdItemSplit, ColdUserSplit, KFoldSplit, LeaveOneOutSplit, PerUserRatioSplit,
                                 PerUserTemporalSplit, PredefinedSplit,
                                 RandomSplit, Split, StrongGeneralizationSplit, TemporalSplit, check_split, count_leaks)
from recforge.errors import RecForgeError

N_USERS, N_ITEMS = 60, 80


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    keys = rng.choice(N_USERS * N_ITEMS, 1500, replace=False)
    users, items = keys // N_ITEMS, keys % N_ITEMS
    return pd.DataFrame({"user": users, "item": items, "rating": rng.integers(1, 6, len(keys)).astype(np.float32),
                         "timestamp": rng.integers(0, 1000, len(keys)).astype(np.int64)})


def pairs(part):
    return set(zip(part.user.tolist(), part.item.tolist()))


SPLITTERS = [RandomSplit(0.1, 0.2, seed=1), PerUserRatioSplit(0.1, 0.2, "random", seed=1),
             PerUserRatioSplit(0.1, 0.2, "time", seed=1), TemporalSplit(0.1, 0.2), PerUserTemporalSplit(2, 2, 5),
             LeaveOneOutSplit(), StrongGeneralizationSplit(n_val_users=5, n_test_users=8, seed=1), KFoldSplit(5, 2),
             ColdItemSplit(0.1, 0.2, seed=1), ColdUserSplit(0.1, 0.2, seed=1)]


@pytest.mark.parametrize("splitter", SPLITTERS, ids=lambda s: type(s).__name__ + str(getattr(s, "order", "")))
def test_every_split_partitions_the_data_is_seeded_and_passes_the_checks(table, splitter):
    split = splitter(table)
    everything = pairs(split.train) | pairs(split.val) | pairs(split.test) | (
        pairs(split.fold_in) if split.fold_in is not None else set())
    total = sum(len(p) for p in split.parts().values())
    assert total == len(table) and everything == pairs(table)
    assert split.fingerprint(N_USERS, N_ITEMS) == splitter(table).fingerprint(N_USERS, N_ITEMS)
    checked, report = check_split(split, N_USERS, N_ITEMS)
    assert report["data/leak_pairs"] == 0 and report["data/temporal_violations"] == 0


def test_seed_changes_a_random_split(table):
    a, b = RandomSplit(seed=1)(table), RandomSplit(seed=2)(table)
    assert pairs(a.test) != pairs(b.test)


def test_temporal_split_has_one_cut_time(table):
    split = TemporalSplit(0.1, 0.2)(table)
    assert split.train.timestamp.max() < split.meta["val_cut"] <= split.val.timestamp.min()
    assert split.val.timestamp.max() < split.meta["test_cut"] <= split.test.timestamp.min()
    assert abs(len(split.test) / len(table) - 0.2) < 0.02
    fixed = TemporalSplit(test_start=500, val_start=400)(table)
    assert (fixed.test.timestamp >= 500).all() and fixed.train.timestamp.max() < 400
    test_cut = TemporalSplit(0.1, 0.2)(table).meta["test_cut"]  # a validation cut after the quantile's test cut
    with pytest.raises(RecForgeError, match=rf"split.val_start={test_cut + 1} is after the test cut {test_cut} "):
        TemporalSplit(0.1, 0.2, val_start=test_cut + 1)(table)


def test_per_user_temporal_holds_out_each_users_latest(table):
    split = PerUserTemporalSplit(n_val=2, n_test=2, min_interactions=5)(table)
    counts = table.user.value_counts()
    assert split.test.user.value_counts().eq(2).all()
    assert set(split.test.user) == set(counts[counts >= 5].index)
    latest_train = split.train.groupby("user").timestamp.max()
    assert (split.test.timestamp.to_numpy() >= latest_train.reindex(split.test.user).to_numpy()).all()


def test_latest_item_splits_warn_when_the_data_has_no_timestamps(table, caplog):
    LeaveOneOutSplit()(table)
    assert "no timestamps" not in caplog.text
    LeaveOneOutSplit()(table.assign(timestamp=0))  # Last.fm HetRec, Gowalla: no times, every timestamp 0
    assert "held-out items are random ones" in caplog.text


def test_per_user_ratio_gives_each_user_a_share(table):
    split = PerUserRatioSplit(0.0, 0.25, "random", min_interactions=4)(table)
    counts = table.user.value_counts()
    expected = np.maximum(np.round(counts * 0.25), 1)
    got = split.test.user.value_counts().reindex(counts.index, fill_value=0)
    eligible = counts >= 4
    assert (got[eligible] == expected[eligible]).all() and (got[~eligible] == 0).all()


def test_strong_generalization_holds_out_whole_users(table):
    split = StrongGeneralizationSplit(n_val_users=5, n_test_users=8, heldout_ratio=0.2, seed=3)(table)
    held = set(split.test.user) | set(split.val.user)
    assert len(set(split.test.user)) == 8 and len(set(split.val.user)) == 5
    assert not held & set(split.train.user)
    assert set(split.fold_in.user) == held
    _, report = check_split(split, N_USERS, N_ITEMS)
    assert report["data/n_cold_users_test"] == 0  # fold-in makes them known
    assert report["data/heldout_users_in_train"] == 0
    # targets: a fifth of each held-out history rounded down (Liang et al.'s int(0.2 n)), at least one
    n = pd.concat([split.fold_in, split.val, split.test]).groupby("user").size()
    targets = pd.concat([split.val, split.test]).groupby("user").size()
    assert (targets == np.maximum(n[targets.index] // 5, 1)).all() and (n[targets.index] % 5 >= 3).any()


def test_strong_generalization_can_keep_only_training_items_before_splitting():
    # item 19 is rated only by the held-out users: with train_items_only their item-19 rows are in no part, and
    # each one's targets are int(0.2 n) of the 9 left (1), not of 10 (2)
    table = pd.DataFrame({"user": np.repeat(np.arange(12), 10), "item": np.tile(np.arange(10), 12),
                          "rating": 1.0, "timestamp": 0})
    splitter = StrongGeneralizationSplit(n_val_users=1, n_test_users=1, seed=0, heldout_ratio=0.2)
    held = set(splitter(table).fold_in.user)  # chosen by the users' counts, which the renaming keeps
    table.loc[table.user.isin(held) & (table.item == 9), "item"] = 19
    kept = splitter(table)
    assert 19 in set(kept.fold_in.item) | set(kept.val.item) | set(kept.test.item)
    assert (pd.concat([kept.val, kept.test]).groupby("user").size() == 2).all()
    splitter.train_items_only = True
    split = splitter(table)
    parts = pd.concat([split.fold_in, split.val, split.test])
    assert set(parts.user) == held and 19 not in set(parts.item) and len(parts) == 2 * 9
    assert (pd.concat([split.val, split.test]).groupby("user").size() == 1).all()
    assert split.train.equals(kept.train)


def test_kfold_test_sets_partition_the_data(table):
    tests = [pairs(KFoldSplit(4, f, seed=7)(table).test) for f in range(4)]
    assert set().union(*tests) == pairs(table) and sum(len(t) for t in tests) == len(table)
    with pytest.raises(RecForgeError, match="split.fold must be in 0..3"):
        KFoldSplit(4, 4)


def test_predefined_split_uses_the_column_and_carves_validation(table):
    labelled = table.assign(part_official=np.where(table.timestamp > 800, 2, 0).astype(np.int8))
    carve = PredefinedSplit("official", "carve", 0.1, seed=0)(labelled)
    assert pairs(carve.test) == pairs(labelled[labelled.part_official == 2])
    assert len(carve.val) == round(0.1 * (labelled.part_official == 0).sum())
    assert pairs(carve.train) | pairs(carve.val) == pairs(labelled[labelled.part_official == 0])
    as_test = PredefinedSplit("official", "test")(labelled)
    assert pairs(as_test.val) == pairs(as_test.test) and len(as_test.train) == (labelled.part_official == 0).sum()
    check_split(as_test, N_USERS, N_ITEMS)  # validating on test is not a leak
    with pytest.raises(RecForgeError, match="available: \\['official'\\]"):
        PredefinedSplit("u1")(labelled)


def test_leaks_stop_the_run(table):
    split = RandomSplit(seed=0)(table)
    leaky = Split(pd.concat([split.train, split.test.iloc[:3]]), split.val, split.test)
    assert count_leaks(leaky, N_ITEMS)["train_test"] == 3
    with pytest.raises(RecForgeError, match="split leak: 3 .* train and test"):
        check_split(leaky, N_USERS, N_ITEMS)
    bad_time = TemporalSplit(0.1, 0.2)(table)
    bad_time.test.loc[0, "timestamp"] = -1
    with pytest.raises(RecForgeError, match="wrong side of the split's time cut"):
        check_split(bad_time, N_USERS, N_ITEMS)


def test_cold_users_and_items_are_counted_and_dropped_when_asked():
    train = pd.DataFrame({"user": [0, 0, 1], "item": [0, 1, 0], "rating": 1.0, "timestamp": 0})
    test = pd.DataFrame({"user": [0, 2, 1], "item": [2, 0, 1], "rating": 1.0, "timestamp": 0})
    split = Split(train, test.iloc[:0], test)
    kept, report = check_split(split, 3, 3)
    assert report["data/n_cold_users_test"] == 1 and report["data/n_cold_items_test"] == 1
    assert len(kept.test) == 3
    dropped, report = check_split(split, 3, 3, cold_users="drop", cold_items="drop")
    assert pairs(dropped.test) == {(1, 1)} and report["data/n_cold_dropped_test"] == 2


@pytest.mark.parametrize("kind, key", [(ColdItemSplit, "item"), (ColdUserSplit, "user")])
def test_cold_splits_hold_out_whole_ids(table, kind, key):
    split = kind(0.1, 0.2, seed=3)(table)
    train, val, test = (set(p[key]) for p in (split.train, split.val, split.test))
    n = table[key].nunique()
    assert len(test) == round(0.2 * n) and len(val) == round(0.1 * n)
    assert not (train & test) and not (train & val) and not (val & test)
    assert set(split.test[key]) | set(split.val[key]) | train == set(table[key])
    # every interaction of a held-out id is in its part
    assert len(split.test) == table[key].isin(test).sum()
    _, report = check_split(split, N_USERS, N_ITEMS)
    assert report[f"data/heldout_{key}s_in_train"] == 0
    assert report[f"data/n_cold_{key}s_test"] == len(test)
    assert set(kind(0.1, 0.2, seed=4)(table).test[key]) != test


def test_cold_split_check_stops_an_id_in_train_and_a_drop_setting(table):
    split = ColdItemSplit(0.1, 0.2, seed=3)(table)
    leaked = Split(pd.concat([split.train, split.test.head(1)]), split.val, split.test.iloc[1:], meta=split.meta)
    with pytest.raises(RecForgeError, match=r"split leak: \d+ validation/test interactions whose item was seen in "
                                            r"training and 0 test"):
        check_split(leaked, N_USERS, N_ITEMS)
    with pytest.raises(RecForgeError, match="datamodule.cold_items=drop"):
        check_split(split, N_USERS, N_ITEMS, cold_items="drop")
    with pytest.raises(RecForgeError, match="split.rank_among"):
        ColdItemSplit(rank_among="some")
    with pytest.raises(RecForgeError, match="leaves none for training"):
        ColdUserSplit(0.5, 0.49)(table.head(3))


def test_exported_split_files_hold_the_fold_in_and_the_files_ratings():
    from recforge.data.datamodule import RecDataModule
    from recforge.data.preprocess import Deduplicate, DropMissing, NormalizeRatings
    from recforge.data.sources.synthetic import SyntheticSource
    from recforge.pipeline import split_frames

    source = SyntheticSource(n_users=60, n_items=40, mean_interactions=10, seed=3)
    dm = RecDataModule(source, StrongGeneralizationSplit(val_users_ratio=0.1, test_users_ratio=0.1, seed=1),
                       feedback="explicit", preprocess=[DropMissing(), Deduplicate(), NormalizeRatings("unit")],
                       cache=False)
    dm.setup()
    frames = split_frames(dm)
    assert set(frames) == {"train", "val", "test", "fold_in"} and len(frames["fold_in"]) == len(dm.split.fold_in)
    exported = pd.concat(frames.values())
    raw = source.load().interactions.drop_duplicates(["user", "item"], keep="last")
    both = exported.merge(raw, on=["user", "item"], suffixes=("", "_file"))
    assert len(both) == len(raw) and dm.rating_inverse != (1.0, 0.0)  # every pair once, on the file's scale
    np.testing.assert_allclose(both["rating"], both["rating_file"], rtol=1e-5)
