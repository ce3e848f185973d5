"""The service's request path: single-row top-K equals the evaluator's top-K (ties, -inf), id coercion,
filters and errors, and agreement with Bundle.recommend."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recforge.metrics.ranking import topk_items
from recforge.models.ease import EASE
from recforge.models.mf import MatrixFactorization
from recforge.serving.core import InvalidRequest, ServedModel, topk_row
from recforge.serving.registry import ModelRef
from recforge.tracking.bundle import Bundle, save_bundle


def test_topk_row_equals_topk_items_with_ties_and_masked_items():
    rng = np.random.default_rng(0)
    for _ in range(500):
        n = int(rng.integers(1, 40))
        k = int(rng.integers(1, n + 1))
        scores = rng.integers(0, 4, n).astype(np.float32)  # many ties, also at the k boundary
        scores[rng.random(n) < 0.3] = -np.inf
        top, values = topk_row(scores, k)
        want_values, want_top = topk_items(torch.from_numpy(scores)[None], k)
        finite = torch.isfinite(want_values[0])
        assert top.tolist() == want_top[0][finite].tolist()
        assert values.tolist() == want_values[0][finite].tolist()


def make_bundle(tmp_path, user_ids, item_ids) -> Bundle:
    torch.manual_seed(0)
    kwargs = {"n_users": len(user_ids), "n_items": len(item_ids), "embedding_dim": 4, "use_bias": False}
    seen = sp.random(len(user_ids), len(item_ids), density=0.3, random_state=0, format="csr")
    save_bundle(tmp_path / "model", MatrixFactorization(**kwargs), "recforge.models.mf.MatrixFactorization", kwargs,
                np.asarray(user_ids), np.asarray(item_ids), seen, {})
    return Bundle.load(tmp_path / "model")


@pytest.mark.parametrize("user_ids,item_ids", [(np.arange(10, 30), np.arange(500, 540)),
                                               (np.array([f"u{i}" for i in range(20)], dtype=object),
                                                np.array([f"i{i}" for i in range(40)], dtype=object))])
def test_served_model_agrees_with_bundle_recommend(tmp_path, user_ids, item_ids):
    bundle = make_bundle(tmp_path, user_ids, item_ids)
    served = ServedModel(bundle, ModelRef(str(tmp_path / "model")))
    users = list(user_ids[:20]) + ["nobody"]
    frame = bundle.recommend(np.asarray(users, dtype=object), k=7)
    for user in users:
        items, scores, fallback = served.recommend(user, 7)
        rows = frame[frame["user"] == user]
        assert items == rows["item"].tolist() and fallback == bool(rows["fallback"].iloc[0])
        assert np.allclose(scores, rows["score"].to_numpy(), atol=1e-6)


def test_ids_are_coerced_between_integers_and_strings(tmp_path):
    served = ServedModel(make_bundle(tmp_path, np.arange(10, 30), np.arange(500, 540)), ModelRef("x"))
    assert served.user_row(12) == served.user_row("12") == 2
    assert served.user_row("12.5") is None and served.user_row(True) is None and served.user_row("abc") is None
    assert served.item_columns(["500", 539], "allow_items").tolist() == [0, 39]
    assert served.recommend("12", 5) == served.recommend(12, 5)


def test_filters_and_errors(tmp_path):
    served = ServedModel(make_bundle(tmp_path, np.arange(10, 30), np.arange(500, 540)), ModelRef("x"))
    everything, _, _ = served.recommend(10, 40, exclude_seen=False)
    assert len(everything) == 40
    allowed, _, _ = served.recommend(10, 3, exclude_seen=False, allow_items=everything[10:20][::-1])
    assert allowed == everything[10:13]
    denied, _, _ = served.recommend(10, 3, exclude_seen=False, deny_items=everything[:2])
    assert denied == everything[2:5]
    for bad, message in [({"k": 0}, "k=0 is out of range"), ({"k": 41}, "1 <= k <= 40"),
                         ({"allow_items": [1]}, "allow_items: unknown item id\\(s\\) 1"),
                         ({"deny_items": ["nope"]}, "deny_items: unknown item id\\(s\\) 'nope'")]:
        with pytest.raises(InvalidRequest, match=message):
            served.recommend(10, **{"k": 3, **bad})
    with pytest.raises(InvalidRequest, match="unknown item id 7") as error:
        served.similar_items(7)
    assert error.value.status == 404


def test_similar_items_fall_back_to_score_matrix_columns(tmp_path):
    """EASE has no item vectors: similarity is cosine over the item columns of the full score matrix."""
    n_users, n_items = 8, 12
    rng = np.random.default_rng(1)
    seen = sp.csr_matrix((rng.random((n_users, n_items)) < 0.4).astype(np.float32))
    coo = seen.tocoo()
    interactions = torch.tensor(np.vstack([coo.row, coo.col]), dtype=torch.long)
    kwargs = {"n_users": n_users, "n_items": n_items, "interactions": interactions, "l2_reg": 10.0}
    model = EASE(**kwargs)
    model.fit(interactions[0], interactions[1], torch.ones(interactions.shape[1]))
    save_bundle(tmp_path / "model", model, "recforge.models.ease.EASE", kwargs, np.arange(n_users),
                np.arange(n_items), seen, {})
    served = ServedModel(Bundle.load(tmp_path / "model"), ModelRef("x"))
    assert served.similar_source == "score_columns"
    with torch.no_grad():
        columns = model.score_all(torch.arange(n_users)).T.numpy()
    columns = columns / np.linalg.norm(columns, axis=1, keepdims=True)
    cosine = columns @ columns[3]
    cosine[3] = -np.inf
    items, scores = served.similar_items(3, 4)
    assert items == np.argsort(-cosine, kind="stable")[:4].tolist()
    assert np.allclose(scores, np.sort(cosine)[::-1][:4], atol=1e-5)


def test_item_vectors_of_embedding_models_score_like_the_model():
    """Models with item embeddings expose them: (n_items, d), and for dot-product models the scores are
    user vectors times these item vectors (so cosine over them is a meaningful item similarity)."""
    from recforge.models.base import Recommender
    from recforge.models.gmf import GMF
    from recforge.models.ials import IALS
    from recforge.models.lightgcn import LightGCN
    from recforge.models.ngcf import NGCF
    from recforge.models.pop import Popularity

    torch.manual_seed(0)
    pairs = torch.tensor([[0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5]])
    models = [MatrixFactorization(5, 6, embedding_dim=3, use_bias=False), GMF(5, 6, embedding_dim=3),
              IALS(5, 6, factors=3), LightGCN(5, 6, pairs, embedding_dim=3), NGCF(5, 6, pairs, embedding_dim=3)]
    for model in models:
        model.eval()
        with torch.no_grad():
            vectors = model.item_vectors()
            assert vectors.shape[0] == 6 and vectors.dim() == 2, type(model).__name__
    with torch.no_grad():
        mf = models[0]
        assert torch.allclose(mf.score_all(torch.arange(5)), mf.user_embedding.weight @ mf.item_vectors().T)
    assert Recommender.item_vectors(Popularity(5, 6)) is None


def test_score_cache_gives_the_same_answers(tmp_path):
    bundle = make_bundle(tmp_path, np.arange(10, 30), np.arange(500, 540))
    plain = ServedModel(bundle, ModelRef("x"))
    cached = ServedModel(bundle, ModelRef("x"), score_cache_bytes=1 << 20)
    assert plain.info()["score_cache"] is False and cached.info()["score_cache"] is True
    assert ServedModel(bundle, ModelRef("x"), score_cache_bytes=4 * 20 * 40 - 1).info()["score_cache"] is False
    for user in [10, 15, 29, "nobody"]:
        for exclude in (True, False):
            (items, scores, fallback), (want_items, want_scores, want_fallback) = \
                cached.recommend(user, 8, exclude), plain.recommend(user, 8, exclude)
            assert (items, fallback) == (want_items, want_fallback)
            assert np.allclose(scores, want_scores, rtol=1e-5)  # a batched product may differ in the last bit


def test_service_and_bundle_coerce_raw_ids_the_same_way():
    import numpy as np

    from recforge.serving.core import _find, _lookup_table
    from recforge.tracking.bundle import _index_of

    raw = np.array(["12", "12.0", True, 12.0, "+1", "x", 30, 12, np.int64(1)], dtype=object)
    for ids in (np.array([1, 12, 30]), np.array(["1", "12", "x"], dtype=object)):
        table, int_ids = _lookup_table(ids)
        service = [-1 if _find(table, int_ids, r) is None else _find(table, int_ids, r) for r in raw]
        assert _index_of(ids, raw).tolist() == service
    assert _index_of(np.array([1, 12, 30]), raw).tolist() == [1, -1, -1, -1, 0, -1, 2, 1, 0]
