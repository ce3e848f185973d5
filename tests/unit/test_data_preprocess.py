"""Preprocessing steps on hand-made tables: each one's exact effect, and the rating inverse."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recforge.data.interactions import prepare
from recforge.data.preprocess import (Deduplicate, DropMissing, KCore, NormalizeRatings, PreprocessState, RatingThreshold,
                                      TimestampFeatures, ValidateRatings)
from recforge.data.sources.base import RawData
from recforge.errors import RecForgeError


def frame(rows):
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]).astype(
        {"rating": np.float32, "timestamp": np.int64})


def state(**kw):
    return PreprocessState(rating_range=kw.pop("rating_range", (1.0, 5.0)), **kw)


def test_drop_missing_drops_rows_and_stops_on_an_empty_column():
    f = pd.DataFrame({"user": pd.array([1, None, 3], dtype="Int64"), "item": ["a", "b", None],
                      "rating": np.ones(3, np.float32), "timestamp": np.zeros(3, np.int64)})
    s = state()
    out = DropMissing()(f, s)
    assert out["user"].tolist() == [1] and out["user"].dtype == np.int64
    assert s.report["data/pre_drop_missing_removed"] == 2
    f["user"] = pd.array([None, None, None], dtype="Int64")
    with pytest.raises(RecForgeError, match="'user' is missing in every row"):
        DropMissing()(f, state())


@pytest.mark.parametrize("keep, rating, ts", [("first", 1.0, 10), ("last", 5.0, 30), ("mean", 3.0, 30)])
def test_deduplicate_keeps_first_last_or_mean_by_time(keep, rating, ts):
    # rows out of time order on purpose; (1, 'a') appears three times
    f = frame([(1, "a", 5.0, 30), (1, "a", 1.0, 10), (2, "a", 4.0, 5), (1, "a", 3.0, 20), (1, "b", 2.0, 1)])
    out = Deduplicate(keep)(f, state())
    assert len(out) == 3
    row = out[(out.user == 1) & (out.item == "a")].iloc[0]
    assert row.rating == pytest.approx(rating) and row.timestamp == ts


def test_validate_ratings_errors_or_drops():
    f = frame([(1, 1, 3.0, 0), (1, 2, 6.0, 0), (2, 1, np.nan, 0)])
    with pytest.raises(RecForgeError, match=r"^r.csv: 1 rating is not a finite number .* data row 3, user 2, item 1"):
        ValidateRatings()(f, state(origin="r.csv"))
    with pytest.raises(RecForgeError, match=r"1 rating is outside the rating range \[1.0, 5.0\], the first at data "
                                            r"row 2, user 1, item 2, rating 6.0; .* data.rating_range"):
        ValidateRatings()(f.iloc[:2], state())
    with pytest.raises(RecForgeError, match=r"outside the rating range \[1.0, 4.0\], the first at user 1, .* "
                                            r"ValidateRatings low/high"):  # rows removed before: no row number
        ValidateRatings(high=4.0)(f.iloc[:2], state(file_order=False))
    s = state()
    assert ValidateRatings(on_invalid="drop")(f, s)["item"].tolist() == [1]
    assert s.report["data/pre_validate_ratings_removed"] == 2


def test_rating_threshold_only_for_implicit_by_default():
    f = frame([(1, 1, 3.0, 0), (1, 2, 4.0, 0), (2, 1, 5.0, 0)])
    assert len(RatingThreshold(4)(f, state(feedback="implicit"))) == 2
    assert len(RatingThreshold(4)(f, state(feedback="explicit"))) == 3
    assert len(RatingThreshold(4, implicit_only=False)(f, state(feedback="explicit"))) == 2


def test_kcore_is_iterative():
    # user 3 has 1 interaction -> dropped; then item 'c' falls to 1 -> dropped; then user 2 falls to 1 -> dropped
    rows = [(1, "a", 1, 0), (1, "b", 1, 0), (2, "a", 1, 0), (2, "c", 1, 0), (3, "c", 1, 0), (4, "a", 1, 0),
            (4, "b", 1, 0)]
    out = KCore(user_k=2, item_k=2)(frame(rows), s := state())
    assert sorted(zip(out.user, out.item)) == [(1, "a"), (1, "b"), (4, "a"), (4, "b")]
    assert s.report["data/pre_kcore_removed"] == 3
    counts_u, counts_i = out.user.value_counts(), out.item.value_counts()
    assert counts_u.min() >= 2 and counts_i.min() >= 2
    with pytest.raises(RecForgeError, match="removed every interaction"):
        KCore(user_k=10, item_k=10)(frame(rows), state())


def test_kcore_warns_when_max_iterations_ends_it_before_the_core_holds(caplog):
    # a path u1-a-u2-b-u3-c-u4 loses its two end pairs each pass: one pass leaves four, not a 2-core
    rows = [(1, "a", 1, 0), (2, "a", 1, 0), (2, "b", 1, 0), (3, "b", 1, 0), (3, "c", 1, 0), (4, "c", 1, 0)]
    with caplog.at_level("WARNING", logger="recforge"):
        assert len(KCore(user_k=2, item_k=2, max_iterations=1)(frame(rows), state())) == 4
    assert "stopped after max_iterations=1 passes with 2 interactions still below" in caplog.text
    caplog.clear()
    with pytest.raises(RecForgeError, match="removed every interaction"):  # to the end: nothing is a 2-core
        KCore(user_k=2, item_k=2, max_iterations=10)(frame(rows), state())
    assert "max_iterations" not in caplog.text


def test_implicit_threshold_runs_before_the_kcore_so_the_core_holds_on_what_is_kept():
    # every pair rated 5 but user 1's items b and c (2 stars): a 2-core of them all, but not of the kept ratings
    rows = [(u, i, 2.0 if (u, i) in ((1, "b"), (1, "c")) else 5.0, 0) for u in (1, 2, 3, 4) for i in "abc"]
    out, maps, s = prepare(RawData("t", frame(rows), rating_range=(1.0, 5.0)), "implicit", 4.0,
                           [DropMissing(), Deduplicate(), KCore(user_k=2, item_k=2)])
    assert list(maps.users) == [2, 3, 4] and out.groupby("user").size().min() == 3
    assert s.report["data/pre_rating_threshold_removed"] == 2 and s.report["data/pre_kcore_removed"] == 1


@pytest.mark.parametrize("target, lo, hi", [("unit", 0.0, 1.0), ("symmetric", -1.0, 1.0)])
def test_normalize_ratings_and_its_inverse(target, lo, hi):
    f = frame([(1, 1, 1.0, 0), (1, 2, 3.0, 0), (2, 1, 5.0, 0)])
    s = state()
    out = NormalizeRatings(target)(f, s)
    assert out.rating.min() == lo and out.rating.max() == hi and s.rating_range == (lo, hi)
    restored = out.rating.to_numpy() * s.rating_scale + s.rating_offset
    np.testing.assert_allclose(restored, [1.0, 3.0, 5.0], atol=1e-6)


def test_timestamp_features():
    # 1970-01-05 was a Monday; 1970-01-01 a Thursday
    f = frame([(1, 1, 1.0, 4 * 86400 + 3600 * 13), (1, 2, 1.0, 0), (2, 1, 1.0, 86400)])
    out = TimestampFeatures(["hour", "weekday", "day", "user_rank"])(f, state())
    assert out.ts_hour.tolist() == [13, 0, 0]
    assert out.ts_weekday.tolist() == [0, 3, 4]
    assert out.ts_day.tolist() == [4, 0, 1]
    assert out.ts_user_rank.tolist() == [1, 0, 0]


def test_prepare_runs_steps_in_order_and_encodes_ids():
    raw = RawData("t", frame([(10, "x", 4.0, 1), (10, "x", 2.0, 2), (5, "y", 5.0, 3), (7, "y", 1.0, 4)]),
                  rating_range=(1.0, 5.0))
    encoded, ids, st = prepare(raw, "implicit", 3.0, [Deduplicate("first")])
    assert ids.users.tolist() == [5, 10] and ids.items.tolist() == ["x", "y"]
    assert sorted(zip(encoded.user, encoded.item, encoded.rating)) == [(0, 1, 5.0), (1, 0, 4.0)]
    # order matters: thresholding the latest duplicate first keeps nothing for (10, x)
    encoded, _, _ = prepare(raw, "implicit", 3.0, [Deduplicate("last")])
    assert len(encoded) == 1


def test_implicit_threshold_judges_the_rating_deduplication_keeps():
    from recforge.data.interactions import threshold_position

    # user 1 rated a 5, then 2: the latest (2) is kept, so a is not a positive, wherever the KCore stands
    rows = [(1, "a", 5.0, 1), (1, "a", 2.0, 2), (1, "b", 5.0, 0), (1, "c", 5.0, 0), (2, "a", 5.0, 0),
            (2, "b", 5.0, 0), (2, "c", 5.0, 0)]
    for steps in ([DropMissing(), Deduplicate(), KCore(1, 1)], [DropMissing(), KCore(1, 1), Deduplicate()]):
        out, maps, _ = prepare(RawData("t", frame(rows), rating_range=(1.0, 5.0)), "implicit", 4.0, steps)
        kept = set(zip(maps.users[out["user"]], maps.items[out["item"]]))
        assert (1, "a") not in kept and (2, "a") in kept, steps
    assert threshold_position([DropMissing(), Deduplicate(), KCore(), NormalizeRatings()]) == 2
    assert threshold_position([KCore(), Deduplicate(), NormalizeRatings()]) == 2
    assert threshold_position([DropMissing()]) == 1
