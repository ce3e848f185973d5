"""Context features of the interaction (data.context_columns: hour of day, weekday): the encoding of known timestamps,
the one-line errors, the context each training example, ranking query and labelled pair carries, the models that read
it (an FM score equal to the FM over the whole variable vector), the refusal of those that do not, and tiny runs."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate

from recforge.data.context import (checked_times, context_names, encode_context, pair_times, parse_context,
                                   request_times)
from recforge.errors import RecForgeError
from recforge.explain.report import explained_run, top_items
from recforge.metrics.evaluator import rating_batch_errors
from recforge.models.deepfm import DeepFM
from recforge.models.fm import FactorizationMachine
from recforge.pipeline import build_experiment
from recforge.train import train
from tests.conftest import TINY, compose_train

CONTEXT = "data.context_columns={hour:{kind:hour},weekday:{kind:weekday}}"


def one_hot_codes(matrix: np.ndarray, columns) -> list[tuple[str, ...]]:
    """Each row's set columns by name, e.g. ``('hour=19', 'weekday=Wed')``."""
    names = np.array(context_names(columns))
    return [tuple(map(str, names[row > 0])) for row in matrix]


def test_hour_and_weekday_of_known_timestamps_with_a_utc_offset():
    columns = parse_context({"hour": "hour", "weekday": {"kind": "weekday"},
                             "local_hour": {"kind": "hour", "utc_offset_hours": -5},
                             "local_day": {"kind": "weekday", "utc_offset_hours": 5.5}})
    # 1970-01-01 00:00 UTC, a Thursday (19:00 at UTC-5, 05:30 on Thursday at UTC+5:30); 2023-11-14 22:13:20 UTC,
    # a Tuesday (03:43 on Wednesday at UTC+5:30); 1969-12-28 23:59:59 UTC, a Sunday before the epoch (negative seconds)
    times = np.array([0, 1_700_000_000, -259_201])
    matrix = encode_context(columns, {"timestamp": times})
    assert matrix.shape == (3, 24 + 7 + 24 + 7) and matrix.dtype == np.float32
    assert one_hot_codes(matrix, columns) == [
        ("hour=0", "weekday=Thu", "local_hour=19", "local_day=Thu"),
        ("hour=22", "weekday=Tue", "local_hour=17", "local_day=Wed"),
        ("hour=23", "weekday=Sun", "local_hour=18", "local_day=Mon"),
    ]
    for t, row in zip(times, one_hot_codes(matrix, columns)):   # the same as the calendar's
        utc = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=int(t))
        assert row[:2] == (f"hour={utc.hour}", f"weekday={utc.strftime('%a')}")


def test_bad_declarations_and_timestamps_stop_in_one_line_naming_the_key():
    with pytest.raises(RecForgeError, match=r"data.context_columns.when.kind='month' must be one of hour, weekday"):
        parse_context({"when": {"kind": "month"}})
    with pytest.raises(RecForgeError, match=r"data.context_columns.hour.zone is not a context setting"):
        parse_context({"hour": {"kind": "hour", "zone": "CET"}})
    with pytest.raises(RecForgeError, match=r"utc_offset_hours='CET' must be a number of hours"):
        parse_context({"hour": {"kind": "hour", "utc_offset_hours": "CET"}})
    columns = parse_context({"hour": {"kind": "hour", "column": "ts"}})
    frame = pd.DataFrame({"user": [0, 1], "item": [0, 0], "rating": [1.0, 1.0], "timestamp": [5, 6]})
    with pytest.raises(RecForgeError, match=r"data.context_columns.hour: the demo interactions have no column 'ts'; "
                                            r"they carry \['timestamp'\]; set data.context_columns.hour.column"):
        checked_times(columns, frame, "demo")
    with pytest.raises(RecForgeError, match=r"column 'ts' of the demo interactions has 1 missing or non-numeric"):
        checked_times(columns, frame.assign(ts=[1.0, float("nan")]), "demo")
    with pytest.raises(RecForgeError, match=r"is 0 everywhere \(the data has no timestamps\)"):
        checked_times(parse_context({"hour": "hour"}), frame.assign(timestamp=0), "demo")


def test_request_and_pair_times():
    # the query of a user is at its earliest held-out time; users without rows get 0
    assert request_times(np.array([2, 0, 2, 2]), np.array([30, 7, 10, 20]), 4).tolist() == [7, 0, 10, 0]
    # a part: user 0 has positives at items 1 (t=100) and 3 (t=300); user 1 at item 0 (t=50)
    users, items, times = np.array([0, 0, 1]), np.array([3, 1, 0]), np.array([300, 100, 50])
    # labelled pairs sorted by user then item: two negatives for user 0 (items 2, 5), one for user 1 (item 4)
    pair_u, pair_i = np.array([0, 0, 0, 0, 1, 1]), np.array([1, 2, 3, 5, 0, 4])
    got = pair_times(pair_u, pair_i, users, items, times, n_items=6)
    assert got.tolist() == [100, 100, 300, 300, 50, 50]   # positives their own; each negative one of its user's


def write_data(folder) -> None:
    """20 users with 12 interactions each on 30 items; every interaction at a different hour and day."""
    rows = [(f"u{u}", f"i{(u * 7 + k * 2) % 30}", 1_600_000_000 + 3_600 * (u * 13 + k * 29) + 86_400 * k)
            for u in range(20) for k in range(12)]
    pd.DataFrame(rows, columns=["user", "item", "timestamp"]).to_csv(folder / "inter.csv", index=False)


def custom(tmp_path, *extra: str) -> list[str]:
    write_data(tmp_path)
    return ["data=custom", f"data.path={tmp_path / 'inter.csv'}", "data.columns.rating=null", "model=fm",
            "loss=bce", "tracking=none", "eval.ks=[5]", "monitor=val/ndcg_at_5", "datamodule.cache=false",
            "datamodule.batch_size=64", "eval.pointwise=true", "eval.beyond=null", CONTEXT, *extra]


def own_context(dm, part: pd.DataFrame) -> np.ndarray:
    return encode_context(dm.context_columns, {"timestamp": part["timestamp"].to_numpy(np.int64)})


def test_a_training_batch_scores_positives_and_their_negatives_in_the_positives_context(tmp_path):
    exp = build_experiment(compose_train(custom(tmp_path), tmp_path))
    dm, module = exp.datamodule, exp.module
    assert dm.train_context.shape == (len(dm.split.train), 31) and exp.model.reads_context
    users, items, ratings, context = next(iter(dm.train_dataloader()))
    train = dm.split.train
    time_of = dict(zip(train["user"] * dm.n_items + train["item"], train["timestamp"]))
    wanted = encode_context(dm.context_columns, {"timestamp": np.array([time_of[k] for k in
                                                                        (users * dm.n_items + items).tolist()])})
    assert torch.equal(context, torch.from_numpy(wanted))   # each interaction's own time
    seen = {}
    forward = exp.model.forward

    def spy(users, items, context=None):
        seen.update(users=users, items=items, context=context)
        return forward(users, items, context=context)

    exp.model.forward = spy
    module.compute_loss((users, items, ratings, context))
    assert seen["items"].shape == (len(users), 1 + module.loss.num_negatives)
    assert torch.equal(seen["items"][:, 0], items) and torch.equal(seen["context"], context)
    # a (B, n) candidates call scores every candidate of a row in that row's context: the same as one pair at a time
    with torch.no_grad():
        rows = forward(users, seen["items"], context=context)
        for j in range(seen["items"].shape[1]):
            assert torch.allclose(rows[:, j], forward(users, seen["items"][:, j], context=context), atol=1e-6)


def test_evaluation_queries_and_pairs_carry_their_context(tmp_path):
    exp = build_experiment(compose_train(custom(tmp_path), tmp_path))
    dm = exp.datamodule
    for stage, part in (("val", dm.split.val), ("test", dm.split.test)):
        first = part.groupby("user")["timestamp"].min()
        batches = dm._eval_batches[stage]
        for batch in batches:   # full ranking: one query per user, at its earliest held-out interaction of the part
            expected = encode_context(dm.context_columns, {"timestamp": first.loc[batch["users"].numpy()].to_numpy()})
            assert torch.equal(batch["context"], torch.from_numpy(expected))
            assert torch.equal(dm.query_context(stage)[batch["users"]], batch["context"])
        pairs = pd.DataFrame({"user": torch.cat([b["users"][b["pair_rows"]] for b in batches]).numpy(),
                              "item": torch.cat([b["pair_cols"] for b in batches]).numpy(),
                              "label": torch.cat([b["pair_labels"] for b in batches]).numpy()})
        context = torch.cat([b["pair_context"] for b in batches]).numpy()
        positives = pairs["label"].to_numpy() == 1
        own = part.drop_duplicates(["user", "item"]).set_index(["user", "item"])["timestamp"]
        times = own.loc[list(zip(pairs["user"][positives], pairs["item"][positives]))].to_numpy()
        np.testing.assert_array_equal(context[positives],
                                      encode_context(dm.context_columns, {"timestamp": times}))
        # the module scores each pair in its own context, and ranks each user in its query's context
        batch = batches[0]
        out = exp.module.evaluate_batch(batch, stage)
        with torch.no_grad():
            pair_scores = exp.model(batch["users"][batch["pair_rows"]], batch["pair_cols"],
                                    context=batch["pair_context"])
            ranking = exp.model.score_all(batch["users"], context=batch["context"])
        assert torch.allclose(out["pair_scores"], pair_scores, atol=1e-6)
        valid = out["valid"]
        assert torch.allclose(out["scores"][valid], ranking.gather(1, out["topk"])[valid], atol=1e-6)
        # one negative per positive: per user, the negatives' contexts are its positives' contexts, each once
        for user in np.unique(pairs["user"]):
            mine = pairs["user"].to_numpy() == user
            pos, neg = context[mine & positives], context[mine & ~positives]
            assert sorted(map(tuple, pos)) == sorted(map(tuple, neg))


def test_fm_with_context_is_the_fm_of_the_whole_variable_vector():
    """score = w0 + sum_j w_j x_j + sum_{j<l} <v_j, v_l> x_j x_l over x = [one-hot user, one-hot item, user features,
    item features, context], computed pair by pair, equals the model's grouped computation (forward and score_all)."""
    torch.manual_seed(0)
    n_users, n_items, n_context = 4, 5, 3
    user_features, item_features = torch.rand(n_users, 2), torch.rand(n_items, 3)
    model = FactorizationMachine(n_users, n_items, 6, user_features=user_features, item_features=item_features,
                                 init_std=0.3, global_mean=0.2, n_context=n_context)
    with torch.no_grad():
        for p in (model.user_side.bias.weight, model.item_side.bias.weight, model.user_side.feature_bias,
                  model.item_side.feature_bias, model.context_side.bias):
            p.normal_()
    context = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])
    side, item_side, ctx = model.user_side, model.item_side, model.context_side
    V = torch.cat([side.embedding.weight, item_side.embedding.weight, side.feature_embedding,
                   item_side.feature_embedding, ctx.embedding])
    W = torch.cat([side.bias.weight[:, 0], item_side.bias.weight[:, 0], side.feature_bias, item_side.feature_bias,
                   ctx.bias])
    expected = torch.zeros(n_users, n_items)
    users = torch.arange(n_users)
    with torch.no_grad():
        for u in range(n_users):
            for i in range(n_items):
                x = torch.cat([torch.eye(n_users)[u], torch.eye(n_items)[i], user_features[u], item_features[i],
                               context[u]])
                pairwise = sum(V[j] @ V[m] * x[j] * x[m] for j in range(len(x)) for m in range(j + 1, len(x)))
                expected[u, i] = model.global_bias + W @ x + pairwise
        assert torch.allclose(model.score_all(users, context=context), expected, atol=1e-5)
        assert torch.allclose(model(users, torch.arange(n_items).expand(n_users, -1), context=context), expected,
                              atol=1e-5)
        assert torch.allclose(model(users, users, context=context), expected[users, users], atol=1e-5)
        # the context moves the scores; without one (a caller that knows no time) it is a zero field
        assert not torch.allclose(model.score_all(users, context=context), model.score_all(users))
        zero = torch.zeros_like(context)
        assert torch.allclose(model.score_all(users), model.score_all(users, context=zero))


def test_deepfm_reads_context_as_one_more_field_and_use_features_false_ignores_it():
    model = DeepFM(4, 5, embedding_dim=4, mlp_layers=[8], n_context=31)
    assert model.reads_context and model.dnn[0].in_features == 3 * 4   # user id, item id, context
    context = torch.zeros(4, 31)
    context[:, 3] = 1.0
    model.eval()
    with torch.no_grad():
        users = torch.arange(4)
        assert torch.allclose(model.score_all(users, context=context),
                              model(users, torch.arange(5).expand(4, -1), context=context), atol=1e-6)
    ignored = DeepFM(4, 5, embedding_dim=4, mlp_layers=[8], n_context=31, use_features=False)
    assert not ignored.reads_context and ignored.dnn[0].in_features == 2 * 4


def test_a_model_that_does_not_read_context_is_refused_before_training(tmp_path):
    cfg = compose_train(TINY + ["model=bpr", "tracking=none", CONTEXT], tmp_path)
    with pytest.raises(RecForgeError, match=r"data.context_columns is set, but model=bpr does not read the "
                                            r"interaction's context; use model=fm, deepfm, dcnv2, widedeep, autoint, "
                                            r"din") as raised:
        build_experiment(cfg)
    assert "\n" not in str(raised.value)
    # data without timestamps: the synthetic data has them; a custom file without a timestamp column has none
    write_data(tmp_path)
    no_time = compose_train(custom(tmp_path, "data.columns.timestamp=null"), tmp_path / "b")
    with pytest.raises(RecForgeError, match=r"data.context_columns.hour: column 'timestamp' of the custom "
                                            r"interactions is 0 everywhere"):
        build_experiment(no_time)


def test_the_option_composes_for_every_dataset_and_defaults_to_none(tmp_path):
    cfg = compose_train(["data=ml-100k", CONTEXT.replace("weekday}}", "weekday,utc_offset_hours:-5}}")], tmp_path)
    source = instantiate(cfg.data)   # constructing reads nothing
    assert [(c.name, c.kind, c.column, c.utc_offset_hours) for c in source.context_columns] == [
        ("hour", "hour", "timestamp", 0.0), ("weekday", "weekday", "timestamp", -5.0)]
    for data in ("ml-100k", "synthetic", "custom", "amazon-2018"):
        default = compose_train([f"data={data}", "data.path=x.csv"] if data == "custom" else [f"data={data}"],
                                tmp_path)
        assert default.data.context_columns is None
        assert instantiate(default.data).context_columns == []


def test_an_explained_run_ranks_and_explains_each_test_user_in_its_query_context(tmp_path):
    exp = build_experiment(compose_train(custom(tmp_path), tmp_path))
    run = explained_run(exp)
    queries = exp.datamodule.query_context("test")
    assert torch.equal(run.explainer.context, queries)
    assert [n for n in run.explainer.features if n.startswith(("hour=", "weekday="))] == \
        context_names(exp.datamodule.context_columns)
    user = int(exp.datamodule.split.test["user"].iloc[0])
    items = top_items(run, user, 3)
    explained = run.explainer.explain(user, items, 3)
    with torch.no_grad():
        expected = exp.model(torch.full_like(items, user), items, context=queries[[user] * len(items)])
    torch.testing.assert_close(explained.scores, expected)


@pytest.mark.parametrize("model", ["fm", "deepfm"])
def test_a_tiny_run_with_context_gives_finite_metrics(tmp_path, model):
    cfg = compose_train(TINY + [f"model={model}", "loss=bce", "tracking=none", "eval.pointwise=true",
                                "eval.beyond=null", CONTEXT], tmp_path)
    metrics = train(cfg)
    for name in ("test/ndcg_at_10", "test/auc", "test/gauc", "test/logloss", "val/ndcg_at_10"):
        assert math.isfinite(metrics[name]), name
    assert 0.0 <= metrics["test/auc"] <= 1.0


def test_a_rating_model_reads_each_rated_pairs_own_context(tmp_path):
    exp = build_experiment(compose_train(TINY + ["model=fm", "loss=mse", "tracking=none", CONTEXT], tmp_path))
    module, batch = exp.module, exp.datamodule._eval_batches["test"][0]
    users, items, ratings, context = batch
    np.testing.assert_array_equal(context.numpy(), own_context(exp.datamodule, exp.datamodule.split.test)[:len(users)])
    with torch.no_grad():
        direct = rating_batch_errors(exp.model(users, items, context=context), ratings, module.clip,
                                     module.rating_inverse)
        without = rating_batch_errors(exp.model(users, items), ratings, module.clip, module.rating_inverse)
    errors = module.evaluate_batch(batch, "test")["errors"]
    assert torch.allclose(errors, direct) and not torch.allclose(errors, without)


def test_splitting_an_evaluation_batch_keeps_each_users_and_pairs_context(tmp_path):
    from recforge.data.batches import split_eval_batch

    exp = build_experiment(compose_train(custom(tmp_path), tmp_path))
    batch = exp.datamodule._eval_batches["test"][0]
    pieces = split_eval_batch(batch, 3)
    assert torch.equal(torch.cat([p["context"] for p in pieces]), batch["context"])
    for piece in pieces:
        assert len(piece["context"]) == len(piece["users"]) and len(piece["pair_context"]) == len(piece["pair_cols"])
    order = torch.cat([p["users"][p["pair_rows"]] * 1000 + p["pair_cols"] for p in pieces])
    keys = batch["users"][batch["pair_rows"]] * 1000 + batch["pair_cols"]
    assert torch.equal(order, keys)
    assert torch.equal(torch.cat([p["pair_context"] for p in pieces]), batch["pair_context"])


def test_a_served_context_model_scores_each_request_at_its_time(tmp_path):
    import json
    import time
    from pathlib import Path

    from recforge.serving.answers import answer_recommend
    from recforge.serving.core import ServedModel
    from recforge.serving.registry import ModelRef
    from recforge.serving.service import Service
    from recforge.tracking.bundle import Bundle

    cfg = compose_train(TINY + ["model=fm", "loss=bce", "tracking=none", "eval.beyond=null", CONTEXT], tmp_path)
    train(cfg)
    bundle = Bundle.load(Path(cfg.paths.output_dir) / "model")
    assert bundle.reads_context and [c.name for c in bundle.context] == ["hour", "weekday"]
    served = ServedModel(bundle, ModelRef("x"), score_cache_bytes=1 << 30)
    assert served._score_cache is None   # the scores follow the request's time
    monday_9, saturday_23 = 1_699_866_000, 1_700_348_400   # 2023-11-13 09:00 and 2023-11-18 23:00 UTC
    user, n = bundle.user_ids[0], served.n_items
    answers = {}
    for at in (monday_9, saturday_23):
        items, scores, fallback = served.recommend(user, n, exclude_seen=False, at=at)
        context = torch.from_numpy(encode_context(bundle.context, {"timestamp": np.array([at])}))
        with torch.no_grad():
            direct = bundle.model.score_all(torch.tensor([0]), context=context)[0]
        columns = served.item_columns(items, "items")
        assert not fallback and np.allclose(scores, direct.numpy()[columns], atol=1e-6)
        answers[at] = dict(zip(items, scores))
    assert not np.allclose([answers[monday_9][i] for i in bundle.item_ids],
                           [answers[saturday_23][i] for i in bundle.item_ids])
    # explained at the request's time: its hour and weekday are among the reasons, named by the declaration
    for at, own, other in ((monday_9, {"hour=9", "weekday=Mon"}, {"hour=23", "weekday=Sat"}),
                           (saturday_23, {"hour=23", "weekday=Sat"}, {"hour=9", "weekday=Mon"})):
        explained = served.explain(user, list(bundle.item_ids[:2]), 100, at=at)
        features = {reason["feature"] for entry in explained["items"] for reason in entry["reasons"]}
        assert own <= features and not other & features
    # the HTTP answer reads "time"; without one the request is scored now
    status, payload = answer_recommend(Service(served), json.dumps({"user": int(user), "k": 5, "time": monday_9,
                                                                   "exclude_seen": False}).encode(), {})
    assert status == 200 and json.loads(payload)["items"] == served.recommend(user, 5, False, at=monday_9)[0]
    now = int(time.time())
    if now // 3600 == (now + 5) // 3600:   # not at the turn of an hour
        assert served.recommend(user, 5, False)[1] == served.recommend(user, 5, False, at=now)[1]
        # and the batch job (the bundle's own ranking) scores at the time it runs
        frame = bundle.recommend(np.array([user]), k=5, exclude_seen=False)
        assert frame["item"].tolist() == served.recommend(user, 5, False, at=now)[0]


def test_retraining_candidates_keep_the_context_declaration(tmp_path):
    from omegaconf import OmegaConf

    from recforge.retrain import candidate_config

    champion = compose_train(TINY + ["model=fm", CONTEXT], tmp_path)
    cfg = candidate_config(champion, tmp_path / "merged.parquet", "merged", None, (10, 20), [], champion.paths, None)
    assert OmegaConf.to_container(cfg.data.context_columns) == {"hour": {"kind": "hour"},
                                                                "weekday": {"kind": "weekday"}}
    assert instantiate(cfg.data).context_columns == parse_context(cfg.data.context_columns)
    plain = candidate_config(compose_train(TINY, tmp_path), tmp_path / "merged.parquet", "merged", None, (10, 20), [],
                             champion.paths, None)
    assert plain.data.context_columns is None


def test_the_batch_job_scores_every_user_at_one_time_that_a_resumed_job_keeps(tmp_path, capsys):
    import json
    from pathlib import Path

    from recforge.serving import batch
    from recforge.tracking.bundle import Bundle

    cfg = compose_train(TINY + ["model=fm", "loss=bce", "tracking=none", "eval.beyond=null", CONTEXT], tmp_path)
    train(cfg)
    model_dir = Path(cfg.paths.output_dir) / "model"
    bundle = Bundle.load(model_dir)
    monday_9, saturday_23 = 1_699_866_000, 1_700_348_400   # 2023-11-13 09:00 and 2023-11-18 23:00 UTC
    assert batch.parse_time("2023-11-13T10:00:00+01:00") == batch.parse_time("2023-11-13T09:00:00") == monday_9
    assert batch.parse_time(str(saturday_23)) == saturday_23
    with pytest.raises(RecForgeError, match=r"--time 'Monday' is neither Unix seconds nor an ISO 8601 time"):
        batch.parse_time("Monday")

    def run(output: Path, *extra: str) -> pd.DataFrame:
        batch.main(["--bundle", str(model_dir), "--output", str(output), "--k", "5", "--chunk-size", "7",
                    "--include-seen", "--no-progress", *extra])
        return pd.read_parquet(output)

    folder = tmp_path / "recs"
    got = run(folder, "--time", "2023-11-13T09:00:00Z")
    assert "at 2023-11-13T09:00:00Z" in capsys.readouterr().out
    for at, frame in ((monday_9, got), (saturday_23, run(tmp_path / "sat.parquet", "--time", str(saturday_23)))):
        expected = bundle.recommend(bundle.user_ids, k=5, exclude_seen=False, at=at)
        pd.testing.assert_frame_equal(frame.reset_index(drop=True), expected, check_dtype=False)
    assert not got["item"].equals(pd.read_parquet(tmp_path / "sat.parquet")["item"])  # the time matters
    manifest = json.loads((folder / batch.MANIFEST).read_text())
    assert manifest["time"] == monday_9 and manifest["complete"]
    (folder / "part-000001.parquet").unlink()   # as if killed: the rerun, without --time, continues at Monday 9:00
    pd.testing.assert_frame_equal(run(folder), got)
    assert json.loads((folder / batch.MANIFEST).read_text())["time"] == monday_9
    with pytest.raises(SystemExit) as exit_:     # another time is another job
        run(folder, "--time", str(saturday_23))
    assert exit_.value.code == 2 and "holds recommendations of another run (time 1699866000 there, 1700348400 " \
                                     "now)" in capsys.readouterr().err

    plain = compose_train(TINY + ["model=bpr", "tracking=none", "eval.beyond=null"], tmp_path / "bpr")
    train(plain)
    with pytest.raises(SystemExit) as exit_:
        batch.main(["--bundle", str(Path(plain.paths.output_dir) / "model"), "--output", str(tmp_path / "b.parquet"),
                    "--time", str(monday_9), "--no-progress"])
    assert exit_.value.code == 2 and "does not read context (data.context_columns), so its recommendations do " \
                                     "not depend on the time; leave --time out" in capsys.readouterr().err
