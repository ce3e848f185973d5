"""Explanations in the service (``POST /recommend`` with ``"explain": true``) and in ``recforge-recommend
--explain``: raw ids, the documented schema, fallbacks that say so, limits, and the fast path left alone."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from recforge.models.ease import EASE
from recforge.serving.answers import answer_recommend
from recforge.serving.batch import (explanations_path, main as recommend_main, recommend_to_parquet,
                                    recommend_to_parts)
from recforge.serving.core import ServedModel
from recforge.serving.registry import ModelRef
from recforge.serving.schemas import RecommendResponse
from recforge.serving.service import Service
from recforge.tracking.bundle import Bundle, save_bundle
from tests.unit.test_serving_core import make_bundle

USERS, ITEMS = np.arange(10, 30), np.arange(500, 540)


@pytest.fixture(scope="module")
def ease_dir(tmp_path_factory):
    """An EASE bundle over raw ids: seen items are what it scores from."""
    tmp = tmp_path_factory.mktemp("ease")
    seen = sp.random(len(USERS), len(ITEMS), density=0.2, random_state=1, format="csr")
    pairs = torch.as_tensor(np.stack(seen.nonzero()))
    kwargs = {"n_users": len(USERS), "n_items": len(ITEMS), "interactions": pairs, "l2_reg": 2.0}
    model = EASE(**kwargs)
    model.fit(pairs[0], pairs[1], torch.ones(pairs.shape[1]))
    return save_bundle(tmp / "model", model, "recforge.models.ease.EASE", kwargs, USERS, ITEMS, seen, {})


def ask(service: Service, **body) -> tuple[int, dict]:
    status, payload = answer_recommend(service, json.dumps(body).encode(), {})
    return status, json.loads(payload)


def test_explain_gives_each_item_its_history_reasons_with_raw_ids(ease_dir):
    served = ServedModel(Bundle.load(ease_dir), ModelRef(str(ease_dir)))
    status, body = ask(Service(served), user=12, k=4, explain=True, n_reasons=100)
    assert status == 200
    RecommendResponse.model_validate(body)
    explanation = body["explanation"]
    assert explanation["method"] == "item_weights" and explanation["exact"]
    assert [entry["item"] for entry in explanation["items"]] == body["items"]
    seen = set(ITEMS[served.bundle.seen[2].indices].tolist())  # user 12 is row 2
    for entry, score in zip(explanation["items"], body["scores"]):
        assert {reason["item"] for reason in entry["reasons"]} == seen  # every history item, as n_reasons allows
        weights = [reason["weight"] for reason in entry["reasons"]]
        assert weights == sorted(weights, reverse=True)
        assert sum(weights) + entry["rest"] == pytest.approx(score, abs=1e-4)
    status, few = ask(Service(served), user=12, k=4, explain=True, n_reasons=2)
    assert all(len(entry["reasons"]) == 2 for entry in few["explanation"]["items"])


def test_unknown_users_and_the_fast_path(ease_dir):
    service = Service(ServedModel(Bundle.load(ease_dir), ModelRef(str(ease_dir))))
    status, body = ask(service, user="nobody", k=3, explain=True)
    assert status == 200 and body["fallback"]
    RecommendResponse.model_validate(body)
    assert body["explanation"]["method"] == "popularity_fallback" and "unknown user" in body["explanation"]["note"]
    assert [entry["reasons"] for entry in body["explanation"]["items"]] == [[], [], []]
    status, plain = ask(service, user=12, k=3)
    assert status == 200 and "explanation" not in plain
    assert service.model._explainer is None  # nothing built until a request asks for it
    status, empty = ask(service, user=12, k=3, explain=True, allow_items=[])
    assert status == 200 and empty["items"] == [] and empty["explanation"]["items"] == []


@pytest.mark.parametrize("n_reasons", [0, 101])
def test_n_reasons_out_of_range_is_a_400(ease_dir, n_reasons):
    service = Service(ServedModel(Bundle.load(ease_dir), ModelRef(str(ease_dir))))
    status, body = ask(service, user=12, k=3, explain=True, n_reasons=n_reasons)
    assert status == 400 and f"n_reasons={n_reasons} is out of range; use 1 <= n_reasons <= 100" in body["detail"]


def test_an_embedding_model_names_its_method(tmp_path):
    served = ServedModel(make_bundle(tmp_path, USERS, ITEMS), ModelRef("x"))
    status, body = ask(Service(served), user=10, k=2, explain=True, n_reasons=3)
    assert status == 200 and body["explanation"]["method"] == "item_similarity"
    assert not body["explanation"]["exact"] and all("rest" not in e for e in body["explanation"]["items"])
    assert all(len(entry["reasons"]) == 3 and set(entry["reasons"][0]) == {"item", "weight"}
               for entry in body["explanation"]["items"])


def test_batch_writes_reasons_beside_the_lists(ease_dir, tmp_path):
    bundle = Bundle.load(ease_dir)
    output = tmp_path / "recs.parquet"
    rows = recommend_to_parquet(bundle, np.asarray(["10", "12", "ghost"], dtype=object), output, k=3, chunk_size=2,
                                progress=False, explain=2)
    recs, reasons = pd.read_parquet(output), pd.read_parquet(explanations_path(output))
    assert explanations_path(output).name == "recs.explanations.parquet" and rows == len(recs) == 9
    assert list(reasons.columns) == ["user", "item", "rank", "method", "reason_rank", "reason", "weight", "position"]
    known = reasons[reasons["method"] == "item_weights"]
    assert len(known) == 2 * 6 and set(known["reason_rank"]) == {1, 2} and known["position"].isna().all()
    merged = known.merge(recs, on=["user", "item", "rank"])
    assert len(merged) == len(known)  # every explained row is one of the recommendations
    seen_of_12 = set(ITEMS[bundle.seen[2].indices].tolist())
    assert set(known.loc[known["user"] == "12", "reason"].astype(int)) <= seen_of_12
    ghost = reasons[reasons["user"] == "ghost"]
    assert len(ghost) == 3 and (ghost["method"] == "popularity_fallback").all() and ghost["reason"].isna().all()


def test_a_folder_output_writes_the_same_reasons_in_parts(ease_dir, tmp_path):
    bundle = Bundle.load(ease_dir)
    users = np.asarray(["10", "12", "ghost", "13", "14"], dtype=object)
    recommend_to_parquet(bundle, users, tmp_path / "one.parquet", k=3, chunk_size=2, progress=False, explain=2)
    rows, written, kept, at = recommend_to_parts(bundle, users, tmp_path / "recs", k=3, chunk_size=2,
                                                 progress=False, explain=2)
    folder = explanations_path(tmp_path / "recs")
    assert folder == tmp_path / "recs.explanations" and (rows, written, kept, at) == (15, 3, 0, None)
    assert sorted(p.name for p in folder.iterdir()) == [f"part-00000{i}.parquet" for i in range(3)]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "recs"), pd.read_parquet(tmp_path / "one.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(folder), pd.read_parquet(explanations_path(tmp_path / "one.parquet")))
    (tmp_path / "recs" / "part-000001.parquet").unlink()  # as if killed before that part: it is written again
    assert recommend_to_parts(bundle, users, tmp_path / "recs", k=3, chunk_size=2, progress=False,
                              explain=2) == (15, 1, 2, None)
    pd.testing.assert_frame_equal(pd.read_parquet(folder), pd.read_parquet(explanations_path(tmp_path / "one.parquet")))


def test_recommend_cli_explain_and_its_errors(ease_dir, tmp_path, capsys):
    output = tmp_path / "out.parquet"
    recommend_main(["--bundle", str(ease_dir), "--output", str(output), "--k", "2", "--explain", "--n-reasons", "1",
                    "--no-progress"])
    assert "and their reasons to" in capsys.readouterr().out
    reasons = pd.read_parquet(explanations_path(output))
    assert len(reasons) == 2 * len(USERS) and (reasons["reason_rank"] == 1).all()
    assert reasons["reason"].dtype == np.int64  # raw item ids keep their type
    recommend_main(["--bundle", str(ease_dir), "--output", str(tmp_path / "plain.parquet"), "--no-progress"])
    assert not explanations_path(tmp_path / "plain.parquet").exists()
    with pytest.raises(SystemExit) as stopped:
        recommend_main(["--bundle", str(ease_dir), "--output", str(tmp_path / "x.parquet"), "--explain",
                        "--n-reasons", "0"])
    assert stopped.value.code == 2 and capsys.readouterr().err.strip() == "error: --n-reasons 0 must be in 1..100"
