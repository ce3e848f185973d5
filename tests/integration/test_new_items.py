"""New items scored from their features without retraining (``POST /admin/items``), end to end on a small custom
dataset whose users each like one genre: an FM trained with declared item features keeps its fitted encoder in the
bundle; a new item posted with its raw features is encoded by it as a training row is, ranked for users of its genre
above a new item of another genre, and scored as the FM formula scores its features; bad features, taken ids and
models that cannot take new items are one-line 4xx answers that leave the served model as it was. The ANN path of a
dot-product feature model (the two-tower model) grows with the catalogue."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from recforge.data.declared import FeatureEncoder, parse_columns
from recforge.serving.core import ServedModel
from recforge.serving.registry import ModelRef
from recforge.serving.service import Service, prepared
from recforge.tracking.bundle import FEATURES_FILE, Bundle, save_bundle
from recforge.train import train
from tests.conftest import compose_train
from tests.integration.test_cold_start import N_GENRES, N_ITEMS, N_USERS, write_genre_data
from tests.unit.test_serving_app import AUTH, TOKEN, call, running

ITEM_COLUMNS = {"genre": "categorical", "year": "numeric"}


@pytest.fixture(scope="module")
def genre_data(tmp_path_factory):
    """The cold-start tests' data (users of taste g like items of genre g), the items with a year too."""
    folder = tmp_path_factory.mktemp("genres")
    taste = write_genre_data(folder)
    items = pd.read_csv(folder / "items.csv")
    items.assign(year=np.random.default_rng(0).integers(1980, 2020, len(items))).to_csv(folder / "items.csv",
                                                                                         index=False)
    return folder, taste


def genre_cfg(folder: Path, tmp_path: Path, *overrides: str, tracking: str = "none"):
    return compose_train(["data=custom", f"data.path={folder / 'interactions.csv'}",
                          f"data.item_features={folder / 'items.csv'}", f"data.user_features={folder / 'users.csv'}",
                          "data.item_columns={genre:categorical,year:numeric}", "data.user_columns={taste:categorical}",
                          f"tracking={tracking}", "eval.ks=[10]", "datamodule.batch_size=256", *overrides], tmp_path)


def trained_bundle(folder: Path, tmp_path: Path, *overrides: str) -> Path:
    cfg = genre_cfg(folder, tmp_path, *overrides)
    train(cfg)
    return Path(cfg.paths.output_dir) / "model"


@pytest.fixture(scope="module")
def fm_bundle(genre_data, tmp_path_factory) -> Path:
    return trained_bundle(genre_data[0], tmp_path_factory.mktemp("fm"), "model=fm", "model.embedding_dim=16",
                          "optimizer.lr=0.05", "trainer.max_epochs=15")


def new_item(item_id, **features):
    return {"item_id": item_id, "features": features}


def fm_score(model, user: int, x: np.ndarray) -> float:
    """The FM score (Rendle 2010) of ``user`` and an item whose only variables are its encoded features ``x``,
    from the model's parameters: w0 + the user's terms + sum_f x_f w_f + <s_u, sum_f x_f v_f> + the features'
    pairwise interactions."""
    with torch.no_grad():
        side = model.item_side
        u = model.user_side(torch.tensor([user]))
        x = torch.as_tensor(x, dtype=torch.float32)
        field = x @ side.feature_embedding
        within = 0.5 * (field.pow(2).sum() - (x * x) @ side.feature_embedding.pow(2).sum(1))
        return float(model.global_bias + u.linear[0] + u.within[0] + x @ side.feature_bias + u.vector[0] @ field
                     + within)


def test_the_bundle_keeps_the_item_encoder_fitted_on_training(genre_data, fm_bundle):
    folder, _ = genre_data
    bundle = Bundle.load(fm_bundle)
    encoder = bundle.encoders["item"]
    assert encoder.columns == parse_columns(ITEM_COLUMNS, "item") and set(bundle.encoders) == {"user", "item"}
    assert encoder.state["genre"] == [f"g{g}" for g in range(N_GENRES)]
    assert FeatureEncoder.from_dict(encoder.to_dict()).to_dict() == encoder.to_dict()
    # the saved encoder gives the model's own item feature matrix, from the file and from raw records alike
    items = pd.read_csv(folder / "items.csv").set_index("item").loc[bundle.item_ids]
    features = bundle.model.item_side.features.numpy()
    np.testing.assert_array_equal(encoder.transform(items)[0], features)
    records = [{"genre": g, "year": int(y)} for g, y in zip(items["genre"], items["year"])]
    np.testing.assert_array_equal(encoder.encode_records(records, list(bundle.item_ids)), features)
    unknown = encoder.encode_records([{"genre": "g-never-seen", "year": 3000}], ["x"])
    assert unknown[0, :N_GENRES].sum() == 0 and unknown[0, N_GENRES] == 1.0  # zeros; the year clipped to 1


def test_a_new_item_is_recommended_to_the_users_of_its_genre(genre_data, fm_bundle):
    _, taste = genre_data
    service = Service(prepared(Bundle.load(fm_bundle), ModelRef(str(fm_bundle)), 0.0, 100_000))
    before = service.model
    with running(service, TOKEN) as base:
        status, body, _ = call(f"{base}/admin/items", {"items": [
            new_item("new-g0", genre="g0", year=2001), new_item("new-g1", genre="g1", year=2001)]}, AUTH)
        assert status == 200, body
        assert body["items"] == ["new-g0", "new-g1"] and body["n_items"] == N_ITEMS + 2 and body["added_items"] == 2
        health = call(f"{base}/health")[1]["model"]
        assert health["n_items"] == N_ITEMS + 2 and health["added_items"] == 2
        assert before.n_items == before.model.n_items == N_ITEMS  # the model requests held is left as it was
        first, listed = {0: [], 1: []}, {0: [], 1: []}
        for user in range(N_USERS):
            if taste[user] not in (0, 1):
                continue
            status, pair, _ = call(f"{base}/recommend", {"user": f"u{user}", "k": 2,
                                                         "allow_items": ["new-g0", "new-g1"]})
            assert status == 200 and not pair["fallback"], pair
            first[taste[user]].append(pair["items"][0])
            top = call(f"{base}/recommend", {"user": f"u{user}", "k": 40})[1]["items"]  # 40 items of each genre
            listed[taste[user]].append((f"new-g{taste[user]}" in top, f"new-g{1 - taste[user]}" in top))
            # the served score of the new item is the FM score of its features, encoded as a file row would be
            x = service.model.bundle.encoders["item"].transform(pd.DataFrame({"genre": ["g0"], "year": [2001]}))[0][0]
            served = dict(zip(pair["items"], pair["scores"]))["new-g0"]
            assert served == pytest.approx(fm_score(before.model, before.user_row(f"u{user}"), x), rel=1e-4, abs=1e-4)
    for genre in (0, 1):  # each new item is first for (nearly) all users of its genre, in the top 40 for most of them
        # (the 40 items of a genre, less those seen) and for (nearly) none of the other genre's
        assert np.mean([item == f"new-g{genre}" for item in first[genre]]) >= 0.9
        own, other = np.mean(listed[genre], axis=0)
        assert own >= 0.5 and other <= 0.1


def test_bad_new_items_are_one_line_4xx_and_change_nothing(fm_bundle):
    service = Service(prepared(Bundle.load(fm_bundle), ModelRef(str(fm_bundle)), 0.0, 100_000))
    cases = [
        ([new_item("x", genre="g0", year=2000, colour="red")], 422,
         "item 'x': column 'colour' is read by no declared feature; the declared columns are genre, year"),
        ([new_item("x", genre="g0")], 422, "item 'x': no column 'year' for feature year"),
        ([new_item("x", genre=["g0"], year=2000)], 422,
         "item 'x': column 'genre' (feature genre, categorical) needs a text or a number (got a list)"),
        ([new_item("x", genre="g0", year="soon")], 422,
         "item 'x': column 'year' (feature year, numeric) needs a number"),
        ([new_item("x", genre="g0", year=None)], 422, "column 'year' (feature year, numeric) is null"),
        ([new_item("ok", genre="g0", year=2000), new_item("y", genre={}, year=2000)], 422, "item 'y': column 'genre'"),
        ([new_item("x", genre="g0", year=2000), new_item("x", genre="g1", year=2000)], 422,
         "item id 'x' is given more than once"),
        ([new_item("i3", genre="g0", year=2000)], 409, "item id 'i3' is in the catalogue already"),
    ]
    with running(service, TOKEN) as base:
        for items, status, detail in cases:
            got, body, _ = call(f"{base}/admin/items", {"items": items}, AUTH)
            assert (got, "\n" in body["detail"]) == (status, False) and detail in body["detail"], body
        assert call(f"{base}/admin/items", {"items": [new_item("x", genre="g0", year=2000)]})[0] == 401  # no token
        assert call(f"{base}/admin/items", {"items": []}, AUTH)[0] == 422
        assert service.model.n_items == N_ITEMS and service.model.added_items == 0  # nothing of the above was added
        assert call(f"{base}/admin/items", {"items": [new_item("x", genre="g0", year=2000)]}, AUTH)[0] == 200
        got, body, _ = call(f"{base}/admin/items", {"items": [new_item("x", genre="g0", year=2000)]}, AUTH)
        assert got == 409 and "item id 'x' is in the catalogue already" in body["detail"]


def test_models_that_cannot_take_new_items_refuse_in_one_line(genre_data, fm_bundle, tmp_path):
    bpr = trained_bundle(genre_data[0], tmp_path / "bpr", "model=bpr", "trainer.max_epochs=1")
    old = tmp_path / "old-fm"
    shutil.copytree(fm_bundle, old)
    (old / FEATURES_FILE).unlink()  # a bundle written before bundles kept their encoder
    body = {"items": [new_item("x", genre="g0", year=2000)]}
    for bundle, detail in [
        (bpr, "items: MatrixFactorization scores items by their ids only and cannot score items it never trained on; "
              "serve a model that scores them from their item features (model=fm, deepfm, dcnv2, widedeep, autoint, "
              "din, twotower, sasrecf; with model.use_features=true)"),
        (old, "items: this FactorizationMachine bundle keeps no fitted encoder of its item features (no "
              "features.json")]:
        service = Service(prepared(Bundle.load(bundle), ModelRef(str(bundle)), 0.0, 100_000))
        with running(service, TOKEN) as base:
            status, answer, _ = call(f"{base}/admin/items", body, AUTH)
        assert status == 409 and answer["detail"].startswith(detail) and "\n" not in answer["detail"], answer


def test_the_named_models_are_the_training_side_lists():
    from recforge.pipeline import FEATURE_MODELS, ITEM_FEATURE_MODELS
    from recforge.serving.core import ITEM_FEATURE_MODELS as SERVED

    assert SERVED == "model=" + ", ".join(FEATURE_MODELS + ITEM_FEATURE_MODELS)


def test_the_ann_index_grows_with_the_catalogue(tmp_path):
    """A two-tower bundle with an exact (flat) index, served through it: after new items, the index answers what
    exact ranking of the grown model answers, and the served index is left as it was."""
    from recforge.models.twotower import TwoTower
    from recforge.retrieval.ann import AnnIndex

    torch.manual_seed(0)
    genres = pd.DataFrame({"genre": [f"g{i % 3}" for i in range(30)]})
    encoder = FeatureEncoder(parse_columns({"genre": "categorical"}, "item")).fit(genres, np.ones(30, bool))
    kwargs = {"n_users": 12, "n_items": 30, "embedding_dim": 8, "tower_layers": [16, 8],
              "item_features": torch.from_numpy(encoder.transform(genres)[0])}
    model = TwoTower(**kwargs).eval()
    seen = sp.random(12, 30, density=0.2, random_state=0, format="csr")
    save_bundle(tmp_path, model, "recforge.models.twotower.TwoTower", kwargs, np.arange(12),
                np.array([f"i{i}" for i in range(30)], dtype=object), seen, {}, encoders={"item": encoder})
    with torch.no_grad():
        AnnIndex("flat").build(model.retrieval_items()).save(tmp_path)
    through_index = ServedModel(Bundle.load(tmp_path), ModelRef(str(tmp_path)), ann_min_items=0)
    items = [(f"n{g}", {"genre": f"g{g}"}) for g in range(3)] + [("n-unknown", {"genre": "other"})]
    grown = prepared(through_index.bundle_with_items(items), through_index.ref, 0.0, 0)
    exact = ServedModel(grown.bundle, grown.ref, ann_min_items=10**9)
    assert grown.ann is not None and grown.ann.n_items == 34 and exact.ann is None
    assert through_index.bundle.ann.n_items == 30  # the served index is left as it was
    for user in range(12):
        items_ann, scores_ann, _ = grown.recommend(user, k=34, exclude_seen=False)
        items_exact, scores_exact, _ = exact.recommend(user, k=34, exclude_seen=False)
        assert items_ann == items_exact and np.allclose(scores_ann, scores_exact, atol=1e-4)


@pytest.mark.parametrize("ip_to_l2", [False, True])
@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_an_extended_index_answers_as_one_built_over_all_items(ip_to_l2, scale):
    """New vectors shorter and longer than the indexed ones (under ip_to_l2 a longer one rebuilds the index)."""
    from recforge.retrieval.ann import AnnIndex

    rng = np.random.default_rng(0)
    old, new = rng.normal(size=(50, 6)).astype(np.float32), scale * rng.normal(size=(5, 6)).astype(np.float32)
    queries = rng.normal(size=(8, 6)).astype(np.float32)
    index = AnnIndex("flat", ip_to_l2=ip_to_l2).build(old)
    grown = index.extended(np.vstack([old, new]))
    scores, items = grown.search(queries, 55)
    want_scores, want_items = AnnIndex("flat", ip_to_l2=ip_to_l2).build(np.vstack([old, new])).search(queries, 55)
    assert grown.n_items == 55 and index.n_items == index.index.ntotal == 50
    np.testing.assert_array_equal(items, want_items)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)


def test_retraining_takes_new_items_with_their_features(genre_data, tmp_path):
    """``recforge-retrain new_items=<file>``: new items with interactions in new_data are in the retrained catalogue,
    their features encoded by the champion's encoder; one without interactions is reported, not added."""
    from recforge.retrain import retrain
    from recforge.serving.registry import register

    folder, taste = genre_data
    cfg = genre_cfg(folder, tmp_path / "champion", "model=fm", "model.embedding_dim=16", "optimizer.lr=0.05",
                    "trainer.max_epochs=5", tracking="mlflow")
    uri = f"sqlite:///{Path(cfg.paths.log_dir).resolve()}/mlflow.db"
    register(train(cfg)["run_id"], "fm", "champion", uri)
    champion = Path(cfg.paths.output_dir) / "model"
    pd.DataFrame({"item": ["n0", "n1", "n2"], "genre": ["g0", "g1", "g2"], "year": [2021, 2022, 2023]}).to_csv(
        tmp_path / "new_items.csv", index=False)
    rng = np.random.default_rng(1)
    rows = []
    for step, user in enumerate(rng.permutation(N_USERS)):  # one new item of the user's taste (g0, g1), one old one
        if taste[user] in (0, 1):
            rows.append((f"u{user}", f"n{taste[user]}", 1.0, 2_000_000 + 2 * step))
        rows.append((f"u{user}", f"i{rng.choice(np.arange(taste[user], N_ITEMS, N_GENRES))}", 1.0,
                     2_000_001 + 2 * step))
    pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]).drop_duplicates(["user", "item"]).to_csv(
        tmp_path / "new.csv", index=False)
    out = retrain(compose_train(["champion=models:/fm@champion", f"new_data={tmp_path / 'new.csv'}",
                                f"new_items={tmp_path / 'new_items.csv'}", f"tracking.uri={uri}", "mode=finetune",
                                "finetune_epochs=2"], tmp_path / "retrain", config_name="retrain"))
    assert out["new_items"] == 3 and out["new_items_without_interactions"] == ["n2"]
    candidate = Bundle.load(tmp_path / "retrain" / "out" / "finetune" / "model")
    assert {"n0", "n1"} <= set(candidate.item_ids) and "n2" not in set(candidate.item_ids)
    encoder = Bundle.load(champion).encoders["item"]
    assert candidate.encoders["item"].to_dict() == encoder.to_dict()  # the champion's encoding, kept
    rows = candidate.item_index(np.array(["n0", "n1"], dtype=object))
    np.testing.assert_array_equal(candidate.model.item_side.features[torch.as_tensor(rows)].numpy(),
                                  encoder.encode_records([{"genre": "g0", "year": 2021}, {"genre": "g1", "year": 2022}],
                                                         ["n0", "n1"]))


def test_a_new_items_file_without_a_declared_column_is_one_line(tmp_path):
    from recforge.errors import RecForgeError
    from recforge.retrain import read_new_items

    pd.DataFrame({"item": ["n0"], "genre": ["g0"]}).to_csv(tmp_path / "new_items.csv", index=False)
    with pytest.raises(RecForgeError, match=r"new_items.csv: no column 'year' for feature year"):
        read_new_items(str(tmp_path / "new_items.csv"), "item", parse_columns(ITEM_COLUMNS, "item"))
    with pytest.raises(RecForgeError, match=r"new_items=.*none.csv: file not found"):
        read_new_items(str(tmp_path / "none.csv"), "item", [])
