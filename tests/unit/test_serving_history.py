"""Session requests: ``POST /recommend`` with a ``history`` of raw item ids instead of a user. Each model that
answers one is checked against what its scores must be (EASE: the history row times B; ItemKNN: the sum of the
history items' similarity rows; sequential models: a known user's own sequence scores as that user; autoencoders:
the decoded row), and the request path against hand-built cases: unknown ids dropped and counted, no known id
falls back to popularity, the request's own limits and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recforge.models.bert4rec import BERT4Rec
from recforge.models.caser import Caser
from recforge.models.ease import EASE
from recforge.models.gru4rec import GRU4Rec
from recforge.models.itemknn import ItemKNN
from recforge.models.multvae import MultVAE
from recforge.models.recvae import RecVAE
from recforge.models.sasrec import SASRec
from recforge.serving.answers import answer_recommend
from recforge.serving.core import InvalidRequest, ServedModel
from recforge.serving.registry import ModelRef
from recforge.serving.service import Service
from recforge.tracking.bundle import Bundle, save_bundle
from recforge.utils.sparse import row_pointers
from tests.unit.test_serving_core import make_bundle

N_USERS, N_ITEMS = 9, 14
ITEM_IDS = np.arange(100, 100 + N_ITEMS)  # raw item id = column + 100


def interactions(seed: int = 3) -> tuple[torch.Tensor, sp.csr_matrix]:
    rng = np.random.default_rng(seed)
    dense = rng.random((N_USERS, N_ITEMS)) < 0.35
    dense[:, 0] = True  # item 100 is the most popular
    seen = sp.csr_matrix(dense.astype(np.float32))
    coo = seen.tocoo()
    return torch.tensor(np.vstack([coo.row, coo.col]), dtype=torch.long), seen


def served_model(tmp_path, model, target: str, kwargs: dict, seen: sp.csr_matrix) -> ServedModel:
    save_bundle(tmp_path / "model", model, target, kwargs, np.arange(N_USERS), ITEM_IDS, seen, {})
    return ServedModel(Bundle.load(tmp_path / "model"), ModelRef(str(tmp_path / "model")))


@pytest.fixture()
def ease(tmp_path):
    pairs, seen = interactions()
    kwargs = {"n_users": N_USERS, "n_items": N_ITEMS, "interactions": pairs, "l2_reg": 2.0}
    model = EASE(**kwargs)
    model.fit(pairs[0], pairs[1], torch.ones(pairs.shape[1]))
    return model, served_model(tmp_path, model, "recforge.models.ease.EASE", kwargs, seen)


def test_ease_answers_a_history_with_its_row_times_b_without_the_history_items(ease):
    model, served = ease
    weights = model.weights.numpy()
    history = [103, 107, 103, "no-such-item", 999, 101]  # a repeat, two unknown ids
    items, scores, fallback, unknown = served.recommend_history(history, k=N_ITEMS)
    row = np.zeros(N_ITEMS, dtype=np.float32)
    row[[3, 7, 1]] = 1.0
    want = row @ weights
    want[[3, 7, 1]] = -np.inf
    order = np.argsort(-want, kind="stable")[:N_ITEMS - 3]
    assert items == (order + 100).tolist()
    assert np.allclose(scores, want[order], atol=1e-5)
    assert (fallback, unknown) == (False, 2)
    # exclude_seen=false keeps the history's own items in the ranking
    items, scores, _, _ = served.recommend_history(history, k=N_ITEMS, exclude_seen=False)
    assert sorted(items) == ITEM_IDS.tolist() and np.allclose(scores, np.sort(row @ weights)[::-1], atol=1e-5)


def test_a_history_with_no_known_item_gets_popular_items_flagged_as_fallback(ease):
    _, served = ease
    items, scores, fallback, unknown = served.recommend_history(["a", 5, "b"], k=3)
    popularity = np.asarray(served.bundle.seen.astype(bool).sum(axis=0)).ravel()
    order = np.argsort(-popularity, kind="stable")[:3]
    assert (items, scores, fallback, unknown) == ((order + 100).tolist(), popularity[order].tolist(), True, 3)
    assert items[0] == 100
    assert served.recommend_history([], k=2)[2:] == (True, 0)  # an empty history is the same case


def test_itemknn_answers_a_history_with_the_sum_of_its_items_similarities(tmp_path):
    pairs, seen = interactions()
    kwargs = {"n_users": N_USERS, "n_items": N_ITEMS, "interactions": pairs, "k_neighbors": 4, "shrinkage": 1.0}
    model = ItemKNN(**kwargs)
    model.fit(pairs[0], pairs[1], torch.ones(pairs.shape[1]))
    similarity = model.similarity().to_dense().numpy()  # row j: the weights w(i, j) of j's sources i
    history = torch.tensor([2, 5, 2, 9])  # item 2 twice: it counts once, as in a training row
    scores = model.score_histories(torch.tensor([0, 4]), history)[0].numpy()
    assert np.allclose(scores, similarity[:, [2, 5, 9]].sum(axis=1), atol=1e-6)
    # the service ranks the same scores, the history's items left out
    served = served_model(tmp_path, model, "recforge.models.itemknn.ItemKNN", kwargs, seen)
    items, values, fallback, _ = served.recommend_history([102, 105, 102, 109], k=5)
    want = similarity[:, [2, 5, 9]].sum(axis=1)
    want[[2, 5, 9]] = -np.inf
    order = np.argsort(-want, kind="stable")[:5]
    assert items == (order + 100).tolist() and np.allclose(values, want[order], atol=1e-6) and not fallback


@pytest.mark.parametrize("cls", [SASRec, GRU4Rec, BERT4Rec, Caser])
def test_sequential_models_score_a_history_as_the_user_whose_sequence_it_is(cls):
    torch.manual_seed(0)
    users = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 2])
    items = torch.tensor([1, 4, 2, 7, 3, 3, 9, 8, 7, 6, 5, 4, 0])
    model = cls(n_users=3, n_items=10, sequences=torch.stack([users, items]), max_len=4).eval()
    indptr = row_pointers(users, 3)
    with torch.no_grad():
        known = model.score_all(torch.arange(3))
        if cls is Caser:  # an anonymous history takes the mean user embedding where a user has its own
            model.user_embedding.weight.copy_(model.user_embedding.weight.mean(0, keepdim=True).expand(3, -1))
            known = model.score_all(torch.arange(3))
        anonymous = model.score_histories(indptr, items)
        assert torch.allclose(anonymous, known, atol=1e-5)
        # only the latest context_length items count, and their order does
        latest = items[indptr[2] + 7 - model.context_length:indptr[3]]
        assert torch.allclose(model.score_histories(torch.tensor([0, len(latest)]), latest)[0], known[2], atol=1e-5)
        if cls is not Caser or model.context_length > 1:
            swapped = latest.flip(0)
            assert not torch.allclose(model.score_histories(torch.tensor([0, len(swapped)]), swapped)[0], known[2])


@pytest.mark.parametrize("cls", [MultVAE, RecVAE])
def test_autoencoders_decode_a_history_row(cls):
    torch.manual_seed(0)
    pairs, _ = interactions()
    model = cls(n_users=N_USERS, n_items=N_ITEMS, interactions=pairs).eval()
    with torch.no_grad():
        rows = model.user_rows(torch.arange(N_USERS))
        indptr = torch.from_numpy(sp.csr_matrix(rows.numpy()).indptr).long()
        history = torch.from_numpy(sp.csr_matrix(rows.numpy()).indices).long()
        assert torch.allclose(model.score_histories(indptr, history), model.score_all(torch.arange(N_USERS)))


def test_a_model_that_cannot_score_a_history_says_which_can(tmp_path):
    served = ServedModel(make_bundle(tmp_path, np.arange(10, 30), np.arange(500, 540)), ModelRef("x"))
    with pytest.raises(InvalidRequest, match="MatrixFactorization cannot score a history without a user; send a "
                                             "user id, or serve a model that can \\(sequential: SASRec"):
        served.recommend_history([500, 501], k=3)


def post(service: Service, body) -> tuple[int, dict, dict]:
    info: dict = {}
    status, payload = answer_recommend(service, json.dumps(body).encode(), info)
    return status, json.loads(payload), info


def test_history_requests_through_the_request_path(ease):
    model, served = ease
    service = Service(served, max_history_items=5)
    status, answer, info = post(service, {"history": [103, "nope"], "k": 2})
    assert status == 200 and answer["user"] is None and answer["unknown_history_items"] == 1
    assert answer["fallback"] is False and len(answer["items"]) == 2 and 103 not in answer["items"]
    assert info["history_length"] == 2 and "user" not in info and info["unknown_history_items"] == 1
    status, answer, _ = post(service, {"history": ["nope"], "k": 2})
    assert status == 200 and answer["fallback"] is True and answer["unknown_history_items"] == 1
    status, answer, _ = post(service, {"user": 3, "k": 2})  # user requests are unchanged: no history count
    assert status == 200 and "unknown_history_items" not in answer and answer["user"] == 3

    for body, code, message in [
            ({"user": 3, "history": [101]}, 422, "give exactly one of user (a user id) or history (a list of item "
                                                 "ids); got both"),
            ({"k": 3}, 422, "got neither"),
            ({"history": [101, 1.5]}, 422, "history.1"),
            ({"history": list(range(6))}, 400, "history: 6 ids, more than the 5 allowed; send the latest ones "
                                               "(recforge-serve --max-history-items)"),
            ({"history": [101], "k": N_ITEMS + 1}, 400, f"k={N_ITEMS + 1} is out of range"),
            ({"history": [101], "explain": True}, 400, "explain: explanations need a user id"),
            ({"history": [101], "allow_items": [7]}, 400, "allow_items: unknown item id(s) 7")]:
        status, answer, _ = post(service, body)
        assert status == code and message in answer["detail"], (body, answer)


def test_the_openapi_schema_documents_history(tmp_path):
    from recforge.serving.app import create_app

    served = ServedModel(make_bundle(tmp_path, np.arange(10, 30), np.arange(500, 540)), ModelRef("x"))
    doc = create_app(Service(served)).openapi()
    body = doc["paths"]["/recommend"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["oneOf"] == [{"required": ["user"]}, {"required": ["history"]}]
    assert body["properties"]["history"]["anyOf"][0]["type"] == "array"
    assert "unknown_history_items" in doc["components"]["schemas"]["RecommendResponse"]["properties"]


@pytest.mark.parametrize("cls", [SASRec, GRU4Rec, BERT4Rec, Caser])
def test_sequential_histories_through_a_flat_index_equal_the_exact_answers(cls, tmp_path, monkeypatch):
    """With the service ranking through the bundle's ANN index, a session request is answered from the history's
    query vector (its last hidden state): with a flat index, the exact path's items and scores."""
    pytest.importorskip("faiss")
    from recforge.retrieval.ann import AnnIndex
    from recforge.serving.index import build_for_bundle

    torch.manual_seed(0)
    users = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 5, 6, 7, 8, 8])
    items = torch.tensor([1, 4, 2, 3, 3, 9, 8, 7, 6, 5, 0, 11, 12, 13, 10, 2])
    kwargs = {"n_users": N_USERS, "n_items": N_ITEMS, "sequences": torch.stack([users, items]), "max_len": 4}
    model = cls(**kwargs).eval()
    if cls in (Caser, BERT4Rec):
        with torch.no_grad():
            model.output_bias.normal_()  # the bias rides in the query's extra dimension
    _, seen = interactions()
    exact = served_model(tmp_path, model, f"{cls.__module__}.{cls.__name__}", kwargs, seen)
    build_for_bundle(tmp_path / "model", AnnIndex(kind="flat"))
    ann = ServedModel(Bundle.load(tmp_path / "model"), ModelRef("x"), ann_min_items=0)
    assert ann.info()["retrieval"] == "ann:flat" and exact.info()["retrieval"] == "exact"
    with torch.no_grad():
        indptr, history = torch.tensor([0, 3]), torch.tensor([5, 1, 7])
        assert torch.allclose(ann.model.history_queries(indptr, history) @ ann.model.retrieval_items().T,
                              ann.model.score_histories(indptr, history), atol=1e-5)
    monkeypatch.setattr(ann.model, "score_histories", None)  # the index path never scores the whole catalogue
    for history, kwargs in [([105, 101, 107], {"k": 5}), ([113, 100, 100, 102, 108, 104, 109], {"k": 6}),
                            ([103, "nope", 103], {"k": 4, "exclude_seen": False}),
                            ([110, 111], {"k": 3, "deny_items": [100, 101, 102, 103]}),
                            ([112], {"k": N_ITEMS})]:
        want_items, want_scores, want_fallback, want_unknown = exact.recommend_history(history, **kwargs)
        items, scores, fallback, unknown = ann.recommend_history(history, **kwargs)
        assert items == want_items and np.allclose(scores, want_scores, atol=1e-5), (history, kwargs)
        assert (fallback, unknown) == (want_fallback, want_unknown) == (False, history.count("nope"))
    assert ann.recommend_history(["nope"], k=3) == exact.recommend_history(["nope"], k=3)  # popularity either way
    with pytest.raises(TypeError):  # allow_items is scored exactly (here: the patched-out exact path)
        ann.recommend_history([105], k=2, allow_items=[101, 102])


def test_bad_requests_to_a_service_ranking_through_an_index_are_4xx_with_one_line(tmp_path):
    """The service's default limits, a SASRec bundle answered through its ANN index: an over-long history, ids of a
    wrong type and ``k`` beyond the catalogue (which the index holds whole) are 4xx naming the field; ``k`` equal to
    the catalogue is answered."""
    pytest.importorskip("faiss")
    from recforge.retrieval.ann import AnnIndex
    from recforge.serving.index import build_for_bundle

    pairs, seen = interactions()
    kwargs = {"n_users": N_USERS, "n_items": N_ITEMS, "sequences": pairs, "max_len": 4}
    served_model(tmp_path, SASRec(**kwargs).eval(), "recforge.models.sasrec.SASRec", kwargs, seen)
    build_for_bundle(tmp_path / "model", AnnIndex(kind="hnsw"))
    service = Service(ServedModel(Bundle.load(tmp_path / "model"), ModelRef("x"), ann_min_items=0))
    assert service.model.info()["retrieval"] == "ann:hnsw" and service.model.ann.n_items == N_ITEMS
    long_history = [100 + i % N_ITEMS for i in range(10_000)]
    for body, code, message in [
            ({"history": long_history}, 400, "history: 10000 ids, more than the 1000 allowed; send the latest ones "
                                             "(recforge-serve --max-history-items)"),
            ({"user": {"id": 3}}, 422, "user: an id is an integer or a string (got {'id': 3})"),
            ({"user": 3.0}, 422, "user: an id is an integer or a string (got 3.0)"),
            ({"user": True}, 422, "user: an id is an integer or a string (got True)"),
            ({"user": [3]}, 422, "user: an id is an integer or a string (got [3])"),
            ({"history": [101, 2.5]}, 422, "history.1: an id is an integer or a string (got 2.5)"),
            ({"history": [{"item": 101}]}, 422, "history.0: an id is an integer or a string (got {'item': 101})"),
            ({"history": {"item": 101}}, 422, "history: Input should be a valid array"),
            ({"user": 3, "deny_items": [1.5]}, 422, "deny_items.0: an id is an integer or a string (got 1.5)"),
            ({"user": 3, "k": 2.0}, 422, "k: Input should be a valid integer (got 2.0)"),
            ({"user": 3, "k": N_ITEMS + 1}, 400, f"k={N_ITEMS + 1} is out of range; use 1 <= k <= {N_ITEMS} (the "
                                                 f"catalogue size)"),
            ({"history": [101], "k": 10 ** 6}, 400, f"k=1000000 is out of range; use 1 <= k <= {N_ITEMS}"),
            ({"user": 3, "k": 2 ** 64}, 422, "k: Input should be less than or equal to 9223372036854775807")]:
        status, answer, info = post(service, body)
        assert status == code and answer["detail"].startswith(message), (body, answer)
        assert "\n" not in answer["detail"] and info["error"] == answer["detail"]
    status, answer, _ = post(service, {"user": 3, "k": N_ITEMS, "exclude_seen": False})
    assert status == 200 and sorted(answer["items"]) == list(ITEM_IDS)  # the whole catalogue, through the index
    status, answer, _ = post(service, {"history": long_history[:1000], "k": N_ITEMS})
    assert status == 200 and answer["items"] == []  # the history holds every item: nothing left to recommend
