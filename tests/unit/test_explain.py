"""Explanations: each method against a tiny example checked by hand or by its exactness (weights plus rest are
the score), the choice of method per model family, the what-if scores faithfulness is measured with, and a
faithfulness smoke test."""

from __future__ import annotations

import math

import pytest
import torch

from recforge.explain import Histories, explainer_for, records
from recforge.explain.base import with_histories
from recforge.explain.counterfactual import counterfactual_for
from recforge.explain.faithfulness import measure
from recforge.explain.features import variable_names
from recforge.explain.report import ExplainedRun, Section, _html, _markdown
from recforge.models.bert4rec import BERT4Rec
from recforge.models.caser import Caser
from recforge.models.cdae import CDAE
from recforge.models.dcnv2 import DCNv2
from recforge.models.deepfm import DeepFM
from recforge.models.ease import EASE
from recforge.models.fm import FactorizationMachine
from recforge.models.gmf import GMF
from recforge.models.gru4rec import GRU4Rec
from recforge.models.ials import IALS
from recforge.models.itemknn import ItemKNN
from recforge.models.lightgcn import LightGCN
from recforge.models.mf import MatrixFactorization
from recforge.models.multvae import MultVAE
from recforge.models.neumf import NeuMF
from recforge.models.ngcf import NGCF
from recforge.models.pop import Popularity
from recforge.models.sasrec import SASRec

# user 0: items 0, 2; user 1: 1, 2, 3; user 2: 0, 1, 3; user 3: 2 (in this time order)
PAIRS = torch.tensor([[0, 0, 1, 1, 1, 2, 2, 2, 3], [0, 2, 1, 2, 3, 0, 1, 3, 2]])
N_USERS, N_ITEMS = 4, 5
HISTORIES = Histories(torch.tensor([0, 2, 5, 8, 9]), PAIRS[1])
ITEMS = torch.tensor([1, 3, 4])


def everything(explainer, user: int, items: torch.Tensor = ITEMS):
    """An explanation keeping every reason (so exact weights add up)."""
    return explainer.explain(user, items, 10 ** 6)


def assert_exact(explained) -> None:
    assert explained.exact
    torch.testing.assert_close(explained.weights.sum(1) + explained.rest, explained.scores, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ item weights
def test_ease_reasons_are_the_weights_of_the_history_items():
    model = EASE(N_USERS, 4, PAIRS[:, PAIRS[1] < 4])
    model.weights = torch.tensor([[0.0, 0.5, 0.2, 0.0], [0.1, 0.0, 0.3, 0.4], [0.2, 0.6, 0.0, 0.1],
                                  [0.0, 0.3, 0.2, 0.0]])
    explained = explainer_for(model).explain(0, torch.tensor([1, 3]), 5)  # user 0 read items 0 and 2
    assert explained.method == "item_weights"
    assert explained.reasons.tolist() == [[2, 0], [2, 0]]  # best first; item 0's W[0, 3] = 0 comes last
    torch.testing.assert_close(explained.weights, torch.tensor([[0.6, 0.5], [0.1, 0.0]]))
    torch.testing.assert_close(explained.scores, torch.tensor([1.1, 0.1]))  # W[0, i] + W[2, i]
    assert_exact(explained)


def test_itemknn_reasons_are_the_similarities_and_add_up_to_the_score():
    model = ItemKNN(N_USERS, N_ITEMS, PAIRS, k_neighbors=2, shrinkage=0.0)
    model.fit(PAIRS[0], PAIRS[1], torch.ones(PAIRS.shape[1]))
    similarity = model.similarity().to_dense()  # row i: sim(h, i) of i's neighbours h
    explained = everything(explainer_for(model), 1, torch.tensor([0, 4]))
    for row, item in enumerate([0, 4]):
        weights = dict(zip(explained.reasons[row].tolist(), explained.weights[row].tolist()))
        assert weights == pytest.approx({h: float(similarity[item, h]) for h in (1, 2, 3)})
    assert_exact(explained)


def test_explaining_leaves_the_model_as_it_was():
    model = ItemKNN(N_USERS, N_ITEMS, PAIRS, k_neighbors=2)
    model.fit(PAIRS[0], PAIRS[1], torch.ones(PAIRS.shape[1]))
    buffers = dict(model.named_buffers())
    before = model.score_all(torch.arange(N_USERS))
    everything(explainer_for(model), 2)
    view = with_histories(model, torch.tensor([0, 1]), torch.tensor([4]))
    assert view.score_all(torch.tensor([0])).shape == (1, N_ITEMS)
    assert all(buffer is buffers[name] for name, buffer in model.named_buffers())
    torch.testing.assert_close(model.score_all(torch.arange(N_USERS)), before)


# ------------------------------------------------------------------------------------------------ graph paths
def test_lightgcn_paths_add_up_to_the_score():
    torch.manual_seed(0)
    model = LightGCN(N_USERS, N_ITEMS, PAIRS, embedding_dim=3, n_layers=3).eval()
    explained = everything(explainer_for(model), 1)
    assert explained.method == "graph_paths" and sorted(explained.candidates.tolist()) == [1, 2, 3]
    torch.testing.assert_close(explained.scores, model.score_all(torch.tensor([1]))[0, ITEMS])
    assert_exact(explained)


def test_one_layer_lightgcn_path_is_the_normalised_edge_times_the_item():
    torch.manual_seed(0)
    model = LightGCN(N_USERS, N_ITEMS, PAIRS, embedding_dim=3, n_layers=1).eval()
    with torch.no_grad():
        users, items = model.embeddings()
    explained = everything(explainer_for(model), 0, torch.tensor([3]))
    # F_u = (e_u + sum_h e_h / sqrt(d_u d_h)) / 2: user 0 has 2 items, item 0 has 2 users, item 2 has 3
    expected = {0: model.item_embedding.weight[0] / math.sqrt(2 * 2) / 2,
                2: model.item_embedding.weight[2] / math.sqrt(2 * 3) / 2}
    weights = dict(zip(explained.reasons[0].tolist(), explained.weights[0].tolist()))
    assert weights == pytest.approx({h: float(v.detach() @ items[3]) for h, v in expected.items()}, abs=1e-6)
    rest = model.user_embedding.weight[0].detach() @ items[3] / 2
    assert float(explained.rest[0]) == pytest.approx(float(rest), abs=1e-6)


# ------------------------------------------------------------------------------------------------ iALS
def test_ials_weights_are_the_terms_of_the_solved_user_vector():
    torch.manual_seed(0)
    model = IALS(N_USERS, N_ITEMS, factors=3, iterations=4)
    model.fit(PAIRS[0], PAIRS[1], torch.ones(PAIRS.shape[1]))
    explained = everything(explainer_for(model, HISTORIES), 1)
    y = model.item_factors
    history = y[[1, 2, 3]]
    solved = torch.linalg.solve(y.T @ y + model.alpha * history.T @ history + model.reg * torch.eye(3),
                                (1 + model.alpha) * history.sum(0))
    torch.testing.assert_close(explained.weights.sum(1), y[ITEMS] @ solved, atol=1e-5, rtol=1e-4)
    assert_exact(explained)


# ------------------------------------------------------------------------------------------------ features
def feature_model(cls, **kwargs):
    torch.manual_seed(0)
    user_x = torch.tensor([[0.5, 0.0], [1.0, 0.2], [0.0, 0.0], [0.3, 0.3]])
    item_x = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0], [0.2, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    model = cls(N_USERS, N_ITEMS, embedding_dim=3, user_features=user_x, item_features=item_x, **kwargs)
    for parameter in model.parameters():  # embeddings start at zero biases: make every term count
        torch.nn.init.normal_(parameter, std=0.5)
    return model.eval()


@torch.no_grad()
def test_fm_pairwise_terms_add_up_to_the_score_minus_the_bias_terms():
    model = feature_model(FactorizationMachine)
    explained = everything(explainer_for(model), 1, torch.tensor([0, 4]))
    assert explained.method == "fm_terms" and explained.reason == "feature"
    assert explained.features == ["user_id", "user_feature[0]", "user_feature[1]", "item_id", "item_feature[0]",
                                  "item_feature[1]", "item_feature[2]"]
    assert_exact(explained)  # rest is the global bias w0
    for row, item in enumerate([0, 4]):
        x = torch.cat([torch.ones(1), model.user_side.features[1], torch.ones(1), model.item_side.features[item]])
        v = torch.cat([model.user_side.embedding.weight[1:2], model.user_side.feature_embedding,
                       model.item_side.embedding.weight[item:item + 1], model.item_side.feature_embedding])
        w = torch.cat([model.user_side.bias.weight[1], model.user_side.feature_bias,
                       model.item_side.bias.weight[item], model.item_side.feature_bias])
        pairwise = sum(x[j] * x[m] * v[j] @ v[m] for j in range(len(x)) for m in range(j + 1, len(x)))
        linear = x * w
        attribution = dict(zip(explained.reasons[row].tolist(), explained.weights[row].tolist()))
        active = (x != 0).nonzero()[:, 0].tolist()
        assert sorted(set(attribution) - {-1}) == active  # the user's and this item's non-zero variables only
        shares = torch.tensor([attribution[j] for j in active]) - linear[active]
        bias_terms = model.global_bias + linear.sum()
        assert float(shares.sum()) == pytest.approx(float(explained.scores[row] - bias_terms), abs=1e-5)
        assert float(shares.sum()) == pytest.approx(float(pairwise), abs=1e-5)


def test_fm_variables_take_the_given_feature_names():
    model = feature_model(FactorizationMachine)
    names = variable_names(model, ["age", "gender=F"], ["Action", "Comedy", "Drama"])
    assert names == ["user_id", "age", "gender=F", "item_id", "Action", "Comedy", "Drama"]
    explained = explainer_for(model, feature_names=names).explain(0, torch.tensor([1]), 2)
    answer = records(explained, [f"i{j}" for j in range(N_ITEMS)])
    assert all(set(reason) == {"feature", "weight"} and reason["feature"] in names
               for reason in answer["items"][0]["reasons"])
    with pytest.raises(ValueError, match="1 user feature names for 2 user features"):
        variable_names(model, ["age"], None)


def test_deepfm_integrated_gradients_are_complete():
    model = feature_model(DeepFM, mlp_layers=(8, 4), dropout=0.0)
    explainer = explainer_for(model)
    explainer.steps = 256
    explained = everything(explainer, 1, torch.tensor([0, 4]))
    assert explained.method == "integrated_gradients" and not explained.exact
    torch.testing.assert_close(explained.scores, model(torch.tensor([1, 1]), torch.tensor([0, 4])))
    torch.testing.assert_close(explained.weights.sum(1) + explained.rest, explained.scores, atol=2e-3, rtol=1e-3)


# ------------------------------------------------------------------------------------------------ context
CONTEXT = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0]])  # each user's query


@pytest.mark.parametrize("cls,kwargs", [(FactorizationMachine, {}), (DeepFM, {"mlp_layers": (8, 4), "dropout": 0.0})])
def test_a_model_that_reads_context_is_explained_in_each_users_query_context(cls, kwargs):
    """The context's variables join the user's (named after the user features), the scores are the model's in the
    user's context (not a zero one), the attributions add up to them, and removing a context variable scores as
    the model does without it."""
    model = feature_model(cls, n_context=3, **kwargs)
    fm = model.fm if cls is DeepFM else model
    names = variable_names(fm, ["age", "gender=F"], ["A", "B", "C"], ["hour=0", "hour=1", "weekday=Mon"])
    assert names == ["user_id", "age", "gender=F", "hour=0", "hour=1", "weekday=Mon", "item_id", "A", "B", "C"]
    with pytest.raises(ValueError, match="2 context names for 3 context columns"):
        variable_names(fm, None, None, ["hour=0", "hour=1"])
    explainer = explainer_for(model, feature_names=names, context=CONTEXT)
    items = torch.tensor([0, 4])
    if cls is DeepFM:
        explainer.steps = 256
    explained = everything(explainer, 1, items)
    with torch.no_grad():
        own = model(torch.tensor([1, 1]), items, context=CONTEXT[[1, 1]])
        zero = model(torch.tensor([1, 1]), items)
    torch.testing.assert_close(explained.scores, own)
    assert (own - zero).abs().min() > 1e-3   # the context moves the scores
    torch.testing.assert_close(explainer.user_scores(1, items), own)
    candidates = [names[j] for j in explained.candidates.tolist()]
    assert "hour=1" in candidates and not {"hour=0", "weekday=Mon"} & set(candidates)   # user 1's context only
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if cls is FactorizationMachine else {"atol": 2e-3, "rtol": 1e-3}
    torch.testing.assert_close(explained.weights.sum(1) + explained.rest, explained.scores, **tolerance)
    removal = counterfactual_for(model, context=CONTEXT)
    with torch.no_grad():
        torch.testing.assert_close(removal.scores(1, -1, torch.tensor([], dtype=torch.long)),
                                   model.score_all(torch.tensor([1]), context=CONTEXT[[1]])[0])
        torch.testing.assert_close(removal.scores(1, -1, torch.tensor([names.index("hour=1")])),
                                   model.score_all(torch.tensor([1]))[0])   # its only context variable removed


@torch.no_grad()
def test_a_field_model_with_context_scores_the_explained_items_in_each_users_context():
    torch.manual_seed(0)
    model = DCNv2(N_USERS, N_ITEMS, embedding_dim=4, mlp_layers=(8,), dropout=0.0, n_context=3).eval()
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.5)
    scores = model.score_all(torch.arange(N_USERS), context=CONTEXT)
    explained = everything(explainer_for(model, HISTORIES, context=CONTEXT), 2)
    assert explained.method == "item_similarity"
    torch.testing.assert_close(explained.scores, scores[2, ITEMS])
    without = everything(explainer_for(model, HISTORIES), 2)   # no context given: a zero one
    assert (without.scores - explained.scores).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------ sequential
SEQUENCES = torch.tensor([[0, 0, 0, 2, 2, 2, 2, 2, 2], [3, 1, 4, 0, 2, 3, 1, 4, 0]])  # user 2: 0 2 3 1 4 0


@pytest.mark.parametrize("cls", [GRU4Rec, Caser])
def test_sequence_occlusion_is_the_score_lost_without_the_item(cls):
    torch.manual_seed(0)
    model = cls(n_users=3, n_items=5, sequences=SEQUENCES, max_len=4).eval()
    explained = everything(explainer_for(model), 2)
    assert explained.method == "sequence_occlusion"
    window = model.context_length
    assert explained.candidates.numel() == window
    without = counterfactual_for(model)
    for row, item in enumerate(ITEMS.tolist()):
        for reason, weight, position in zip(explained.reasons[row].tolist(), explained.weights[row].tolist(),
                                            explained.positions[row].tolist()):
            assert [3, 1, 4, 0][4 - position] == reason if window == 4 else position <= window
            if reason != 0:  # item 0 occurs twice: removing it from the history removes both
                lost = explained.scores[row] - without.scores(2, item, torch.tensor([reason]))[item]
                assert weight == pytest.approx(float(lost), abs=1e-5)


@pytest.mark.parametrize("cls", [SASRec, BERT4Rec])
def test_attention_rollout_flows_from_the_history_positions_only(cls):
    torch.manual_seed(0)
    model = cls(n_users=3, n_items=5, sequences=SEQUENCES, max_len=4).eval()
    explained = everything(explainer_for(model), 0)  # user 0: 3 -> 1 -> 4
    assert explained.method == "attention_rollout"
    assert sorted(zip(explained.positions[0].tolist(), explained.reasons[0].tolist())) == [(1, 4), (2, 1), (3, 3)]
    assert (explained.weights >= 0).all() and (explained.weights == explained.weights[0]).all()
    if cls is SASRec:  # the scored position is the latest item: all of its state flows from the history
        assert float(explained.weights[0].sum()) == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(explained.scores, model.score_all(torch.tensor([0]))[0, ITEMS])
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


# ------------------------------------------------------------------------------------------------ autoencoders
@pytest.mark.parametrize("cls", [MultVAE, CDAE])
def test_row_occlusion_is_the_score_lost_without_the_item(cls):
    torch.manual_seed(0)
    model = cls(N_USERS, N_ITEMS, PAIRS, dropout=0.0).eval()
    explained = everything(explainer_for(model), 2)
    assert explained.method == "row_occlusion" and sorted(explained.candidates.tolist()) == [0, 1, 3]
    without = counterfactual_for(model)
    for row, item in enumerate(ITEMS.tolist()):
        for reason, weight in zip(explained.reasons[row].tolist(), explained.weights[row].tolist()):
            lost = explained.scores[row] - without.scores(2, item, torch.tensor([reason]))[item]
            assert weight == pytest.approx(float(lost), abs=1e-5)


# ------------------------------------------------------------------------------------------------ embeddings
def test_embedding_models_weigh_history_items_by_cosine_similarity():
    torch.manual_seed(0)
    model = MatrixFactorization(N_USERS, N_ITEMS, embedding_dim=3, use_bias=False)
    explainer = explainer_for(model, HISTORIES)
    explained = everything(explainer, 1)
    vectors = torch.nn.functional.normalize(model.item_embedding.weight.detach(), dim=1)
    for row, item in enumerate(ITEMS.tolist()):
        weights = dict(zip(explained.reasons[row].tolist(), explained.weights[row].tolist()))
        assert weights == pytest.approx({h: float(vectors[item] @ vectors[h]) for h in (1, 2, 3)})
    assert explainer.space == "item_vectors" and not explained.exact and explained.rest is None


def test_a_model_without_item_vectors_is_described_by_its_score_columns():
    torch.manual_seed(0)
    model = NeuMF(N_USERS, N_ITEMS, gmf_dim=2, mlp_layers=(4, 2))
    explainer = explainer_for(model, HISTORIES)
    assert explainer.space == "score_columns" and "score columns" in explainer.note
    columns = torch.nn.functional.normalize(model.score_all(torch.arange(N_USERS)).T, dim=1)
    explained = everything(explainer, 0, torch.tensor([4]))
    torch.testing.assert_close(explained.weights[0], (columns[4] @ columns[explained.reasons[0]].T).float())


# ------------------------------------------------------------------------------------------------ choice, output
@pytest.mark.parametrize("build,method", [
    (lambda: EASE(N_USERS, N_ITEMS, PAIRS), "item_weights"),
    (lambda: ItemKNN(N_USERS, N_ITEMS, PAIRS), "item_weights"),
    (lambda: LightGCN(N_USERS, N_ITEMS, PAIRS, embedding_dim=2), "graph_paths"),
    (lambda: NGCF(N_USERS, N_ITEMS, PAIRS, embedding_dim=2, layers=(2,)), "item_similarity"),
    (lambda: IALS(N_USERS, N_ITEMS, factors=2), "ials_history_weights"),
    (lambda: MatrixFactorization(N_USERS, N_ITEMS, embedding_dim=2), "item_similarity"),
    (lambda: GMF(N_USERS, N_ITEMS, embedding_dim=2), "item_similarity"),
    (lambda: FactorizationMachine(N_USERS, N_ITEMS, embedding_dim=2), "fm_terms"),
    (lambda: DeepFM(N_USERS, N_ITEMS, embedding_dim=2, mlp_layers=(4,)), "integrated_gradients"),
    (lambda: SASRec(N_USERS, N_ITEMS, PAIRS, max_len=3, embedding_dim=4), "attention_rollout"),
    (lambda: BERT4Rec(N_USERS, N_ITEMS, PAIRS, max_len=3, embedding_dim=4), "attention_rollout"),
    (lambda: GRU4Rec(N_USERS, N_ITEMS, PAIRS, max_len=3, embedding_dim=4, hidden_dim=4), "sequence_occlusion"),
    (lambda: MultVAE(N_USERS, N_ITEMS, PAIRS, hidden_dims=(4,), latent_dim=2), "row_occlusion"),
    (lambda: Popularity(N_USERS, N_ITEMS), "none"),
])
def test_each_model_family_gets_its_method_and_every_method_explains(build, method):
    explainer = explainer_for(build(), HISTORIES)
    assert explainer.method == method
    explained = explainer.explain(1, ITEMS, 2)
    assert explained.reasons.shape == explained.weights.shape and explained.reasons.shape[0] == len(ITEMS)
    assert explained.reasons.shape[1] == (0 if method == "none" else 2)
    assert torch.isfinite(explained.weights).all() and torch.isfinite(explained.scores).all()
    assert explainer.explain(1, ITEMS[:0], 2).reasons.shape[0] == 0  # nothing recommended: nothing to explain


def test_a_model_that_does_not_read_histories_needs_them():
    with pytest.raises(ValueError, match="MatrixFactorization does not read histories: give the users' histories"):
        explainer_for(MatrixFactorization(N_USERS, N_ITEMS))


def test_records_carry_raw_ids_positions_and_say_when_there_is_no_history():
    torch.manual_seed(0)
    model = GRU4Rec(n_users=3, n_items=5, sequences=SEQUENCES, max_len=4).eval()
    raw = [f"movie-{j}" for j in range(5)]
    answer = records(explainer_for(model).explain(0, torch.tensor([2]), 2), raw)
    assert answer["method"] == "sequence_occlusion" and not answer["exact"]
    reasons = answer["items"][0]["reasons"]
    assert answer["items"][0]["item"] == "movie-2" and len(reasons) == 2
    assert all(r["item"] == {1: "movie-4", 2: "movie-1", 3: "movie-3"}[r["position"]] for r in reasons)
    empty = records(explainer_for(model).explain(1, torch.tensor([2]), 2), raw)  # user 1 has no history
    assert empty["items"][0]["reasons"] == [] and empty["note"].startswith("no reasons")


# ------------------------------------------------------------------------------------------------ counterfactuals
@pytest.mark.parametrize("build", [
    lambda: EASE(N_USERS, N_ITEMS, PAIRS),
    lambda: LightGCN(N_USERS, N_ITEMS, PAIRS, embedding_dim=2),
    lambda: FactorizationMachine(N_USERS, N_ITEMS, embedding_dim=2),
    lambda: DeepFM(N_USERS, N_ITEMS, embedding_dim=2, mlp_layers=(4,)),
    lambda: SASRec(N_USERS, N_ITEMS, PAIRS, max_len=3, embedding_dim=4),
])
def test_removing_nothing_gives_the_models_own_scores(build):
    torch.manual_seed(0)
    model = build()
    if not model.requires_training:
        model.fit(PAIRS[0], PAIRS[1], torch.ones(PAIRS.shape[1]))
    counterfactual = counterfactual_for(model, HISTORIES)
    assert counterfactual.exact
    torch.testing.assert_close(counterfactual.scores(1, 0, torch.tensor([], dtype=torch.long)),
                               model.score_all(torch.tensor([1]))[0], atol=1e-5, rtol=1e-5)


def test_removing_edges_changes_only_what_flows_through_them():
    torch.manual_seed(0)
    model = LightGCN(N_USERS, N_ITEMS, PAIRS, embedding_dim=2, n_layers=1).eval()
    cut = counterfactual_for(model).scores(0, 0, torch.tensor([0, 2]))  # user 0 loses both its edges
    torch.testing.assert_close(cut, model.item_embedding.weight.detach() @ model.user_embedding.weight[0].detach() / 4
                               + _item_side_after_cut(model) @ model.user_embedding.weight[0].detach() / 4)


def _item_side_after_cut(model):
    """With user 0 isolated, one layer's item embeddings (e_i + sum_u e_u / sqrt(d_i d_u)) minus e_i."""
    from recforge.models.lightgcn import normalized_adjacency

    pairs = PAIRS[:, PAIRS[0] != 0]
    adjacency = normalized_adjacency(pairs, N_USERS, N_ITEMS).to_dense()
    ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight]).detach()
    return (adjacency @ ego)[N_USERS:]


# ------------------------------------------------------------------------------------------------ faithfulness
def clustered_interactions(n_users: int = 60, n_items: int = 24, seed: int = 0) -> torch.Tensor:
    """Users each drawn to one of 4 item clusters (most of its items) plus a little noise."""
    generator = torch.Generator().manual_seed(seed)
    cluster = torch.arange(n_items) % 4
    taste = torch.arange(n_users) % 4
    chance = torch.where(cluster.unsqueeze(0) == taste.unsqueeze(1), 0.6, 0.08)
    users, items = (torch.rand(n_users, n_items, generator=generator) < chance).nonzero().T
    return torch.stack([users, items])


def test_removing_the_top_reasons_lowers_items_more_than_random_ones():
    pairs = clustered_interactions()
    model = EASE(60, 24, pairs, l2_reg=5.0)
    model.fit(pairs[0], pairs[1], torch.ones(pairs.shape[1]))
    result = measure(model, explainer_for(model), counterfactual_for(model), list(range(60)), None, k=3, remove=2,
                     draws=3)
    assert result.method == "item_weights" and result.counterfactual == "history_removal"
    assert result.pairs > 100 and result.base_overlap == 1.0
    assert result.rank_drop_reasons > result.rank_drop_random + 1 and result.wins > 0.5
    assert result.score_drop_ratio > 1.5


@pytest.mark.parametrize("cls,kwargs", [(FactorizationMachine, {}), (DeepFM, {"mlp_layers": (4,), "dropout": 0.0})])
def test_removing_features_zeroes_the_users_for_every_item_and_the_items_for_that_item(cls, kwargs):
    model = feature_model(cls, **kwargs)
    removal = counterfactual_for(model)
    # variables: 0 user_id, 1-2 user features, 3 item_id, 4-6 item features; remove user feature 0, item feature 0
    scores = removal.scores(1, 4, torch.tensor([1, 4]))
    user_x = model.fm.user_side.features.clone() if cls is DeepFM else model.user_side.features.clone()
    item_x = (model.fm if cls is DeepFM else model).item_side.features.clone()
    user_x[1, 0] = 0
    item_x[4, 0] = 0
    edited = cls(N_USERS, N_ITEMS, embedding_dim=3, user_features=user_x, item_features=item_x, **kwargs)
    edited.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(scores, edited.eval().score_all(torch.tensor([1]))[0])


def test_ials_fold_in_is_the_models_own_user_update_and_other_embeddings_get_a_surrogate():
    torch.manual_seed(0)
    model = IALS(N_USERS, N_ITEMS, factors=3, iterations=4)
    model.fit(PAIRS[0], PAIRS[1], torch.ones(PAIRS.shape[1]))
    fold_in = counterfactual_for(model, HISTORIES)
    assert (fold_in.name, fold_in.exact) == ("ials_fold_in", True)
    y = model.item_factors
    kept = y[[1, 3]]  # user 1 read 1, 2, 3; item 2 removed
    solved = torch.linalg.solve(y.T @ y + model.alpha * kept.T @ kept + model.reg * torch.eye(3),
                                (1 + model.alpha) * kept.sum(0))
    torch.testing.assert_close(fold_in.scores(1, 0, torch.tensor([2])), y @ solved, atol=1e-5, rtol=1e-4)
    surrogate = counterfactual_for(MatrixFactorization(N_USERS, N_ITEMS, embedding_dim=2), HISTORIES)
    assert (surrogate.name, surrogate.exact) == ("least_squares_fold_in", False)


# ------------------------------------------------------------------------------------------------ the report
@pytest.mark.parametrize("render", [_markdown, _html])
def test_report_lists_reasons_every_item_shares_once_and_labels_items_by_title_and_id(render):
    torch.manual_seed(0)
    model = SASRec(n_users=3, n_items=5, sequences=SEQUENCES, max_len=4).eval()
    explained = explainer_for(model).explain(0, ITEMS, 3)  # user 0: 3 -> 1 -> 4; the same reasons for every item
    titles = ["A (1990)", "B & C (1991)", "D (1992)", "E (1993)", ""]  # item 4 has no title
    run = ExplainedRun(model, explainer_for(model), None, [10, 11, 12, 13, 14], None, titles)
    header = {"model": "SASRec", "dataset": "toy", "method": explained.method, "exact": False,
              "note": explained.note, "k": 3}
    section = Section("u0", 3, {3}, records(explained, list(range(5))), explained.scores.tolist())
    text = render(header, [section], run)
    assert "User u0 · 3 history items · test items in the top 3: 1 of 1" in text
    assert "The same reasons for every item" in text and "reasons |" not in text and "<th>reasons" not in text
    assert text.count("item 14, position 1 (the latest)") == 1
    e = "E (1993) · #13" if render is _markdown else "E (1993) <span class=\"id\">#13</span>"
    b = "B & C (1991) · #11" if render is _markdown else "B &amp; C (1991) <span class=\"id\">#11</span>"
    assert text.count(f"{e}, position 3:") == 1 and text.count(f"{b}, position 2:") == 1
    assert text.count(e) == 2 and text.count(b) == 2  # a reason once, and a recommended item
    ease = EASE(N_USERS, N_ITEMS, PAIRS)
    ease.weights = torch.rand(N_ITEMS, N_ITEMS)
    other = explainer_for(ease).explain(1, ITEMS, 2)  # each item its own reasons
    text = render({**header, "exact": True}, [Section("u1", 3, set(), records(other, list(range(5))),
                                                      other.scores.tolist())], run)
    assert "The same reasons" not in text and "% of the score)" in text
