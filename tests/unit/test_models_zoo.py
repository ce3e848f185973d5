"""Model-specific behaviour of the zoo: closed forms against direct solves, similarities and graph
normalisation against dense hand computations, caches, objectives. The shared contract test covers shapes,
determinism and learning for every ``conf/model`` file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recforge.models.base import by_user_chunks
from recforge.models.ease import EASE, interaction_matrix
from recforge.models.gmf import GMF
from recforge.models.ials import IALS, ials_objective
from recforge.models.itemknn import ItemKNN
from recforge.models.lightgcn import LightGCN, normalized_adjacency
from recforge.models.mlp import MLP
from recforge.models.neumf import NeuMF
from recforge.models.ngcf import NGCF

# 4 users x 5 items; user 3 has a duplicated pair, item 4 is never seen
X = np.array([[1, 1, 0, 0, 0],
              [1, 0, 1, 0, 0],
              [0, 1, 1, 1, 0],
              [1, 1, 1, 0, 0]], dtype=np.float64)
USERS = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 3])
ITEMS = torch.tensor([0, 1, 0, 2, 1, 2, 3, 0, 1, 2, 2])
PAIRS = torch.stack([USERS, ITEMS])


def fitted(cls, **kwargs):
    torch.manual_seed(0)
    extra = {} if cls is IALS else {"interactions": PAIRS}
    model = cls(n_users=4, n_items=5, **extra, **kwargs)
    model.fit(USERS, ITEMS, torch.ones(len(USERS)))
    return model.eval()


def test_interaction_matrix_is_binary_and_deduplicated():
    assert np.array_equal(interaction_matrix(USERS, ITEMS, 4, 5).to_dense().numpy(), X)


def test_ease_matches_columnwise_ridge_solve_with_zero_diagonal():
    lam = 2.0
    model = fitted(EASE, l2_reg=lam)
    weights = model.weights.double().numpy()
    expected = np.zeros((5, 5))
    for j in range(5):  # min ||X_j - X_{-j} b||^2 + lam ||b||^2, with b_j = 0
        others = [i for i in range(5) if i != j]
        a = X[:, others]
        expected[others, j] = np.linalg.solve(a.T @ a + lam * np.eye(4), a.T @ X[:, j])
    np.testing.assert_allclose(weights, expected, atol=1e-5)
    assert np.all(np.diag(weights) == 0)
    users = torch.tensor([2, 0])
    np.testing.assert_allclose(model.score_all(users).numpy(), X[[2, 0]] @ weights, atol=1e-5)
    assert torch.allclose(model(users, torch.tensor([[3, 1], [4, 2]])), model.score_all(users)[[[0], [1]], [[3, 1], [4, 2]]])


def test_closed_form_state_survives_a_state_dict_round_trip():
    for cls in (EASE, ItemKNN):
        model = fitted(cls)
        state = model.state_dict()
        assert "history" not in state  # rebuilt from interactions, not stored
        fresh = cls(n_users=4, n_items=5, interactions=PAIRS)
        fresh.load_state_dict(state)
        users = torch.arange(4)
        assert torch.allclose(fresh.score_all(users), model.score_all(users)), cls.__name__


@pytest.mark.parametrize("shrinkage", [0.0, 1.5])
def test_itemknn_cosine_with_shrinkage_matches_hand_computation(shrinkage):
    model = fitted(ItemKNN, k_neighbors=4, shrinkage=shrinkage)
    counts = X.sum(0)
    # item 0: users {0,1,3}; item 1: {0,2,3}; item 2: {1,2,3}; item 3: {2}; item 4: {}
    co = X.T @ X
    sim = co / (np.sqrt(np.outer(counts, counts)) + shrinkage + 1e-300 * (shrinkage == 0))
    sim[~np.isfinite(sim)] = 0.0
    np.fill_diagonal(sim, 0.0)
    assert sim[0, 1] == pytest.approx(2 / (3 + shrinkage))
    assert sim[2, 3] == pytest.approx(1 / (np.sqrt(3) + shrinkage))
    dense = model.similarity().to_dense().numpy().T  # S[i, j] = sim(i, j)
    np.testing.assert_allclose(dense, sim, atol=1e-6)
    np.testing.assert_allclose(model.score_all(torch.arange(4)).numpy(), X @ sim, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_itemknn_asymmetric_cosine_with_idf_weighting_matches_hand_computation(alpha):
    model = fitted(ItemKNN, k_neighbors=4, shrinkage=1.0, asymmetric_alpha=alpha, weighting="idf")
    idf = np.log(6 / (1 + X.sum(1))) + 1  # 5 items; users hold 2, 2, 3 and 3 distinct items
    weighted = X * idf[:, None]
    co, counts = weighted.T @ weighted, (weighted ** 2).sum(0)
    # sim(i -> j): history item i (rows), target j (columns)
    sim = co / (np.outer(counts ** (1 - alpha), counts ** alpha) + 1.0)
    np.fill_diagonal(sim, 0.0)
    w2 = idf[2] ** 2  # items 1 and 3 share user 2 only; item 3 has only user 2, item 1 users 0, 2 and 3
    assert sim[1, 3] == pytest.approx(w2 / ((idf[[0, 2, 3]] ** 2).sum() ** (1 - alpha) * w2 ** alpha + 1.0))
    dense = model.similarity().to_dense().numpy().T
    np.testing.assert_allclose(dense, sim, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.score_all(torch.arange(4)).numpy(), X @ sim, rtol=1e-5, atol=1e-5)
    if alpha != 0.5:  # asymmetric: the popular item 1 (3 users) as a target weighs less than as a source
        assert sim[3, 1] < sim[1, 3]


@pytest.mark.parametrize("kwargs, key", [({"asymmetric_alpha": 1.5}, "model.asymmetric_alpha"),
                                         ({"weighting": "bm25"}, "model.weighting")])
def test_itemknn_rejects_bad_options_naming_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        ItemKNN(n_users=4, n_items=5, **kwargs)


def test_itemknn_scatter_scoring_equals_the_sparse_product_on_random_data():
    gen = torch.Generator().manual_seed(3)
    n_users, n_items = 60, 90
    users, items = torch.randint(0, n_users - 1, (700,), generator=gen), torch.randint(0, n_items, (700,), generator=gen)
    model = ItemKNN(n_users, n_items, k_neighbors=7, shrinkage=2.0, chunk_size=32)  # several fitting chunks
    model.fit(users, items, torch.ones(700))
    everyone = torch.arange(n_users)  # the last user has no history: an all-zero row

    def reference():
        return torch.sparse.mm(model.similarity(), model.user_rows(everyone).T).T

    scores = model.score_all(everyone)
    assert torch.allclose(scores, reference(), atol=1e-5) and scores.abs().sum() > 0
    assert torch.equal(scores[-1], torch.zeros(n_items))
    assert torch.allclose(model.score_all(torch.tensor([5, 2, 5])), scores[[5, 2, 5]])  # any order, repeats
    # histories replaced (test time reads validation items too; a repeated item counts once)
    indptr = torch.tensor([0, 3] + [3] * (n_users - 1))
    model.set_histories(indptr, torch.tensor([4, 4, 10]))
    assert torch.allclose(model.score_all(everyone), reference(), atol=1e-5)
    # a loaded model inverts the loaded neighbour lists, not its own
    fresh = ItemKNN(n_users, n_items, k_neighbors=7, shrinkage=2.0)
    fresh.set_history(users, items, torch.device("cpu"))
    fresh.load_state_dict(model.state_dict())
    model.set_history(users, items, torch.device("cpu"))  # back to the training rows
    assert torch.allclose(fresh.score_all(everyone), model.score_all(everyone), atol=1e-6)


def test_itemknn_keeps_only_the_top_k_neighbours_per_item():
    model = fitted(ItemKNN, k_neighbors=1, shrinkage=0.0)
    s_t = model.similarity().to_dense()  # row j: j's neighbours
    assert ((s_t > 0).sum(1) <= 1).all()
    assert s_t[3].argmax().item() in (1, 2) and s_t[3].max() == pytest.approx(1 / np.sqrt(3))


def test_lightgcn_adjacency_is_symmetric_normalised_bipartite_graph():
    adj = normalized_adjacency(PAIRS, 4, 5).to_dense().double().numpy()
    a = np.zeros((9, 9))
    a[:4, 4:] = X
    a[4:, :4] = X.T
    degree = a.sum(1)
    inv = np.where(degree > 0, 1 / np.sqrt(np.maximum(degree, 1e-12)), 0.0)
    np.testing.assert_allclose(adj, inv[:, None] * a * inv[None, :], atol=1e-6)
    assert np.all(adj[8] == 0)  # the unseen item is isolated


def test_lightgcn_layer_mean_and_buffers():
    torch.manual_seed(0)
    model = LightGCN(4, 5, PAIRS, embedding_dim=3, n_layers=2)
    assert "adjacency" not in model.state_dict()  # non-persistent: rebuilt from interactions
    assert "adjacency" in dict(model.named_buffers())
    adj = model.adjacency.to_dense()
    e0 = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    final = (e0 + adj @ e0 + adj @ adj @ e0) / 3
    users, items = model.propagate()
    assert torch.allclose(users, final[:4], atol=1e-6) and torch.allclose(items, final[4:], atol=1e-6)
    flat = LightGCN(4, 5, PAIRS, embedding_dim=3, n_layers=0)
    assert torch.allclose(flat.score_all(torch.arange(4)), flat.user_embedding.weight @ flat.item_embedding.weight.T)
    reg = model.regularization(torch.tensor([0, 1]), torch.tensor([[0, 2], [1, 4]]))
    expected = model.reg_weight * 0.5 * (model.user_embedding.weight[:2].pow(2).sum()
                                         + model.item_embedding.weight[[0, 2, 1, 4]].pow(2).sum()) / 2
    assert torch.allclose(reg, expected)


@pytest.mark.parametrize("cls", [LightGCN, NGCF])
def test_graph_models_l2_is_the_mean_over_a_rows_triples_whatever_the_negatives(cls):
    """The papers' L2 is per (user, positive, negative) triple: with several negatives a row's term is the mean
    over its triples, so reg_weight weighs the same with 1 negative as with 3 (and shared negatives, the same
    items in every row, count as often as they appear)."""
    torch.manual_seed(0)
    model = cls(4, 5, PAIRS, embedding_dim=3, reg_weight=1.0)   # a weight of 1: values far above any tolerance
    users, user_sq = torch.tensor([0, 1]), model.user_embedding.weight[:2].pow(2).sum(-1)
    item_sq = model.item_embedding.weight.pow(2).sum(-1)
    candidates = torch.tensor([[0, 2, 3, 3], [1, 4, 2, 0]])   # each row: its positive, then three negatives
    per_row = user_sq + item_sq[candidates[:, 0]] + item_sq[candidates[:, 1:]].mean(1)
    expected = 0.5 * per_row.sum() / 2
    assert float(expected) > 0.01
    torch.testing.assert_close(model.regularization(users, candidates), expected, rtol=1e-6, atol=0)
    one_each = torch.tensor([[0, 3], [1, 3]])
    torch.testing.assert_close(model.regularization(users, torch.tensor([[0, 3, 3, 3], [1, 3, 3, 3]])),
                               model.regularization(users, one_each), rtol=1e-6, atol=0)
    alone = model.regularization(users, candidates[:, :1])   # loss=softmax: the user and the positive
    torch.testing.assert_close(alone, 0.5 * (user_sq + item_sq[candidates[:, 0]]).sum() / 2, rtol=1e-6, atol=0)


@pytest.mark.parametrize("cls", [LightGCN, NGCF])
def test_graph_models_cache_propagation_while_evaluating_only(cls, monkeypatch):
    torch.manual_seed(0)
    model = cls(n_users=4, n_items=5, interactions=PAIRS, embedding_dim=4)
    calls = []
    original = model.propagate
    monkeypatch.setattr(model, "propagate", lambda: calls.append(1) or original())
    users = torch.arange(4)
    model.eval()
    with torch.no_grad():
        first = model.score_all(users[:2])
        model.score_all(users[2:])
        model(users, torch.zeros(4, 3, dtype=torch.long))
    assert len(calls) == 1  # one propagation for all evaluation chunks
    model.train()
    loss = -model(users, torch.tensor([0, 1, 2, 3])).sum()
    loss.backward()
    with torch.no_grad():  # a plain SGD step, in place as optimizers do
        for param in model.parameters():
            param.sub_(0.5 * param.grad)
    model.eval()
    with torch.no_grad():
        second = model.score_all(users[:2])
        model.score_all(users[2:])
        model.user_embedding.weight.add_(1.0)  # an in-place change while evaluating (e.g. a loaded checkpoint)
        third = model.score_all(users[:2])
    assert len(calls) == 4  # first evaluation, the training pass, after the step, after the in-place change
    assert not torch.allclose(first, second) and not torch.allclose(second, third)


def test_ngcf_concatenates_normalised_layers():
    torch.manual_seed(0)
    model = NGCF(4, 5, PAIRS, embedding_dim=6, layers=(5, 4)).eval()
    with torch.no_grad():
        users, items = model.embeddings()
    assert users.shape == (4, 6 + 5 + 4) and items.shape == (5, 15)
    assert torch.allclose(items[:, 6:11].norm(dim=1), torch.ones(5), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(model(torch.tensor([1, 2]), torch.tensor([3, 0])),
                              model.score_all(torch.tensor([1, 2]))[[0, 1], [3, 0]], atol=1e-5)


def test_ials_objective_matches_dense_formula_and_decreases():
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    p = torch.as_tensor(X)
    dense = ((1 + 2.0 * p) * (p - x @ y.T) ** 2).sum() + 0.3 * (x.pow(2).sum() + y.pow(2).sum())
    assert torch.allclose(ials_objective(x, y, USERS, ITEMS, alpha=2.0, reg=0.3), dense)
    model = fitted(IALS, factors=3, alpha=2.0, reg=0.3, iterations=8, cg_steps=2, init_std=0.1)
    history = model.objective_history
    assert len(history) == 8 and all(b <= a + 1e-5 for a, b in zip(history, history[1:]))
    assert history[-1] < 0.9 * float(ials_objective(torch.randn(4, 3) * 0.1, torch.randn(5, 3) * 0.1,
                                                   USERS, ITEMS, 2.0, 0.3))


def test_ials_conjugate_gradient_reaches_the_exact_least_squares_solution():
    torch.manual_seed(0)
    model = IALS(4, 5, factors=3, alpha=2.0, reg=0.3, cg_steps=3)  # 3 CG steps solve a 3-d system exactly
    y = torch.randn(5, 3, dtype=torch.float64)
    x = model._solve(torch.zeros(4, 3, dtype=torch.float64), y, *interaction_matrix(USERS, ITEMS, 4, 5).indices())
    p = torch.as_tensor(X)
    for u in range(4):
        c = 1 + 2.0 * p[u]
        exact = torch.linalg.solve(y.T @ (c[:, None] * y) + 0.3 * torch.eye(3, dtype=torch.float64), y.T @ (c * p[u]))
        assert torch.allclose(x[u], exact, atol=1e-6)


@pytest.mark.parametrize("cls, kwargs", [
    (GMF, {}), (MLP, {}), (MLP, {"layers": [8]}), (MLP, {"layers": [16, 8, 4], "dropout": 0.3}),
    (NeuMF, {}), (NeuMF, {"gmf_dim": 4, "mlp_layers": [8]}), (NeuMF, {"mlp_layers": [32, 32, 16], "dropout": 0.1}),
])
def test_ncf_score_all_equals_pairwise_forward(cls, kwargs):
    """score_all's shortcuts (GMF's product, the tower's first layer split into a user and an item part, no
    hidden layer at all) give forward's scores; the output bias is made non-zero so that it counts once."""
    torch.manual_seed(0)
    model = cls(n_users=3, n_items=6, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    users = torch.tensor([2, 0])
    with torch.no_grad():
        pairwise = model(users, torch.arange(6).expand(2, -1))
        assert torch.allclose(model.score_all(users), pairwise, atol=1e-6)
        assert torch.allclose(model(users, torch.tensor([5, 1])), pairwise[[0, 1], [5, 1]], atol=1e-6)


def test_by_user_chunks_bounds_activations_per_chunk_and_keeps_user_order():
    seen = []

    def score(chunk):
        seen.append(len(chunk))
        return chunk[:, None].float().expand(-1, 4)

    out = by_user_chunks(score, torch.arange(7), n_items=4, activations=12)
    assert seen == [3, 3, 1] and torch.equal(out[:, 0], torch.arange(7).float())
    seen.clear()
    by_user_chunks(score, torch.arange(7), n_items=4, activations=24, width=4)  # 24 // (4 * 4): one user a chunk
    assert seen == [1] * 7
    assert by_user_chunks(score, torch.arange(0), n_items=4, activations=12).shape == (0, 4)
    with pytest.raises(ValueError, match=r"must return \(3, 3\) scores, got \(3,\)"):   # would broadcast
        by_user_chunks(lambda chunk: torch.zeros(3), torch.arange(5), n_items=3, activations=9)


def test_by_user_chunks_passes_each_chunk_its_context_rows_and_frees_each_result_before_the_next_chunk():
    """Each chunk's result is copied into the one output and released before the next chunk is scored: results
    held in a list until the end sat between the chunks' large activations and grew glibc's heap by gigabytes."""
    import weakref

    alive = []

    def score(chunk, rows):
        assert all(ref() is None for ref in alive)   # every earlier chunk's result already freed
        part = chunk[:, None].float() * 10 + rows.float()   # (chunk, 2): each user's own context row added
        alive.append(weakref.ref(part))
        return part

    context = torch.arange(14).view(7, 2)
    out = by_user_chunks(score, torch.arange(7), n_items=2, activations=6, context=context)
    assert len(alive) == 3
    assert torch.equal(out, torch.arange(7)[:, None].float() * 10 + context.float())


def test_tower_width_is_the_widest_layer_or_the_concatenation_without_one():
    from recforge.models.mlp import MLP, mlp_tower, tower_width

    assert tower_width(mlp_tower([16, 64, 32])) == 64
    assert tower_width(mlp_tower([16]), 16) == 16   # no layer: tower_over_all_pairs returns the concatenation
    model = MLP(3, 5, layers=[8])   # no hidden layer: score_all still equals forward
    users = torch.arange(3)
    with torch.no_grad():
        torch.testing.assert_close(model.score_all(users), model(users, torch.arange(5).expand(3, -1)))


def test_lightgcn_gradients_match_a_dense_propagation():
    torch.manual_seed(0)
    model = LightGCN(4, 5, PAIRS, embedding_dim=3, n_layers=2).double()
    users, items = torch.tensor([0, 2, 3]), torch.tensor([[1, 4], [3, 0], [2, 2]])
    model(users, items).pow(2).sum().backward()
    sparse_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    adj = normalized_adjacency(PAIRS, 4, 5).to_dense().double()
    e0 = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    final = (e0 + adj @ e0 + adj @ adj @ e0) / 3
    (final[users].unsqueeze(1) * final[4 + items]).sum(-1).pow(2).sum().backward()
    for sparse, param in zip(sparse_grads, model.parameters()):
        assert torch.allclose(sparse, param.grad)


def test_mf_l2_reg_penalises_the_batch_rows_and_reaches_the_explicit_loss():
    from recforge.losses import MSELoss
    from recforge.models.mf import MatrixFactorization
    from recforge.training.module import RecommenderModule

    torch.manual_seed(0)
    model = MatrixFactorization(n_users=3, n_items=4, embedding_dim=2, l2_reg=0.5)
    users, items = torch.tensor([0, 2]), torch.tensor([1, 1])
    p, q = model.user_embedding.weight, model.item_embedding.weight
    bu, bi = model.user_bias.weight[:, 0], model.item_bias.weight[:, 0]
    with torch.no_grad():
        bu.copy_(torch.tensor([1.0, 2.0, 3.0]))
    expected = 0.5 * sum(p[u].pow(2).sum() + q[i].pow(2).sum() + bu[u] ** 2 + bi[i] ** 2
                         for u, i in zip(users, items)) / 2
    torch.testing.assert_close(model.regularization(users, items), expected)
    ratings = torch.tensor([4.0, 2.0])
    module = RecommenderModule(model, MSELoss())
    torch.testing.assert_close(module.compute_loss((users, items, ratings)),
                               torch.nn.functional.mse_loss(model(users, items), ratings) + expected)
    assert MatrixFactorization(3, 4, l2_reg=0.0).regularization(users, items) == 0
    # candidates (a positive, then negatives: shared ones repeat down the rows): the mean over every (user, item)
    candidates = torch.tensor([[1, 3, 0], [2, 3, 0]])
    expected = 0.5 * sum(p[u].pow(2).sum() + q[i].pow(2).sum() + bu[u] ** 2 + bi[i] ** 2
                         for u, row in zip(users, candidates) for i in row) / 6
    torch.testing.assert_close(model.regularization(users, candidates), expected)


def test_the_full_softmax_loss_adds_the_models_penalty_on_the_users_and_their_positives():
    """``loss=softmax`` scores the whole catalogue, and the model's regularisation still reaches the loss: its
    penalty on the batch's users and their positives (it was left out, so ``reg_weight`` did nothing there)."""
    from recforge.losses import SoftmaxLoss
    from recforge.training.module import RecommenderModule

    torch.manual_seed(0)
    pairs = torch.stack([torch.randint(0, 4, (30,)), torch.randint(0, 12, (30,))])
    users, items = torch.tensor([0, 2, 3]), torch.tensor([5, 1, 5])
    model = LightGCN(4, 12, pairs, embedding_dim=4, reg_weight=10.0).train()
    module = RecommenderModule(model, SoftmaxLoss())
    softmax = torch.nn.functional.cross_entropy(model.score_all(users), items)
    penalty = 10.0 * 0.5 * (model.user_embedding(users).pow(2).sum() + model.item_embedding(items).pow(2).sum()) / 3
    torch.testing.assert_close(module.compute_loss((users, items, torch.ones(3))), softmax + penalty)


@pytest.mark.parametrize("kwargs", [{"use_bias": True}, {"use_bias": False, "similarity": "cosine"}])
def test_mf_scores_many_candidates_a_row_by_one_product_with_the_same_scores_and_gradients(kwargs, monkeypatch):
    """k candidates a row with k * 128 >= n_items are picked from one product with the catalogue; a gather of their
    vectors (fewer candidates, or sparse gradients) gives the same scores and the same gradients."""
    from recforge.models import mf
    from recforge.models.mf import MatrixFactorization

    products = []
    monkeypatch.setattr(mf, "inner_products", lambda q, v: products.append(len(q)) or q @ v.T)
    torch.manual_seed(0)
    model = MatrixFactorization(5, 300, embedding_dim=4, **kwargs)
    users, items = torch.arange(5), torch.randint(0, 300, (5, 3))   # 3 * 128 >= 300: the product
    gathered = MatrixFactorization(5, 300, embedding_dim=4, sparse_grad=True, **kwargs)
    gathered.load_state_dict(model.state_dict())
    for m in (model, gathered):
        m(users, items).pow(2).sum().backward()
    assert products == [5]   # the product once, for the model with dense gradients
    torch.testing.assert_close(model(users, items), gathered(users, items))
    torch.testing.assert_close(model(users, items[:, :1]), gathered(users, items[:, :1]))   # 128 < 300: gathered
    for name, param in model.named_parameters():
        grad = dict(gathered.named_parameters())[name].grad
        torch.testing.assert_close(param.grad, grad.to_dense() if grad.is_sparse else grad, msg=name)


def test_shared_negatives_and_positives_see_one_user_side_in_training(monkeypatch):
    """With ``sampler.shared``, a training step scores each row's positive and the batch's shared negatives. The user
    side is computed once for both: the graph models propagate once within the step's ``one_pass`` (twice doubled
    the step and gave NGCF two message-dropout masks), SimpleX and the two-tower model draw their user dropout once,
    so (SimpleX, whose items have none) an item scores the same as a row's positive and as a shared negative. The
    default (every other model) is ``forward`` then ``score_items``."""
    from recforge.models.base import Recommender
    from recforge.models.mf import MatrixFactorization
    from recforge.models.simplex import SimpleX
    from recforge.models.twotower import TwoTower

    torch.manual_seed(0)
    pairs = torch.stack([torch.randint(0, 5, (60,)), torch.randint(0, 30, (60,))])
    users, positives, shared = torch.tensor([0, 3, 3, 4]), torch.tensor([5, 9, 17, 9]), torch.tensor([5, 9, 17])
    at = torch.tensor([0, 1, 2, 1])   # each row's positive in the shared set
    for model in (LightGCN(5, 30, pairs, embedding_dim=4),
                  NGCF(5, 30, pairs, embedding_dim=4, layers=[4, 4], message_dropout=0.1),  # a mask to share
                  SimpleX(5, 30, pairs, embedding_dim=8, dropout=0.5)):
        model.train()
        with model.one_pass():
            got = model.score_with_shared(users, positives, shared)
        assert got.shape == (4, 4) and got.requires_grad
        torch.testing.assert_close(got[:, 0], got[torch.arange(4), 1 + at], msg=type(model).__name__)
        if isinstance(model, (LightGCN, NGCF)):
            calls = []
            propagate = model.propagate
            monkeypatch.setattr(model, "propagate", lambda: calls.append(1) or propagate())
            torch.manual_seed(1)
            with model.one_pass():
                got = model.score_with_shared(users, positives, shared)
            assert len(calls) == 1
            torch.manual_seed(1)   # the same dropout draw: the vectors that one propagation gave
            u, v = propagate()
            torch.testing.assert_close(got[:, 1:], u[users] @ v[shared].T)
    towers = TwoTower(5, 30, 8, [16, 8], dropout=0.5).train()   # its item tower has dropout too: per occurrence
    passes = []
    towers.user_tower.register_forward_hook(lambda *_: passes.append(1))
    assert towers.score_with_shared(users, positives, shared).shape == (4, 4) and len(passes) == 1
    towers.eval()   # no dropout: the scores are forward's, pair by pair
    expected = torch.cat([towers(users, positives).unsqueeze(1), towers(users, shared.expand(4, -1))], 1)
    torch.testing.assert_close(towers.score_with_shared(users, positives, shared), expected)
    mf = MatrixFactorization(5, 30, 4, use_bias=True)
    expected = torch.cat([mf(users, positives).unsqueeze(1), mf(users, shared.expand(4, -1))], 1)
    torch.testing.assert_close(Recommender.score_with_shared(mf, users, positives, shared), expected)


@pytest.mark.parametrize("sampler", ["hard", "shared", "uniform"])
def test_graph_models_propagate_once_a_training_step(monkeypatch, sampler):
    """A training step of LightGCN or NGCF propagates the graph once: the hard negatives are picked by the vectors
    the step trains (one message-dropout mask), then scored with them, and the loss's gradient reaches the
    embeddings. Outside a step, in training, each call propagates afresh (nothing stale after an optimizer step)."""
    from functools import partial

    from recforge.losses import BPRLoss
    from recforge.samplers import HardNegativeSampler, NegativeSampler
    from recforge.training.module import RecommenderModule

    torch.manual_seed(0)
    pairs = torch.stack([torch.randint(0, 5, (60,)), torch.randint(0, 30, (60,))])
    keys = torch.unique(pairs[0] * 30 + pairs[1])
    users, items = pairs[0, :8], pairs[1, :8]
    # no L2 penalty: the embeddings' gradient must come through the scores, from the step's propagation
    for model in (LightGCN(5, 30, pairs, embedding_dim=4, reg_weight=0.0),
                  NGCF(5, 30, pairs, embedding_dim=4, layers=[4, 4], reg_weight=0.0, message_dropout=0.1)):
        draw = {"hard": partial(HardNegativeSampler, pool_size=4), "shared": partial(NegativeSampler, shared=True),
                "uniform": NegativeSampler}[sampler]
        module = RecommenderModule(model, BPRLoss(3), sampler=draw(30, keys)).train()
        calls = []
        propagate = model.propagate
        monkeypatch.setattr(model, "propagate", lambda: calls.append(1) or propagate())
        loss = module.compute_loss((users, items, torch.ones(8)))
        assert len(calls) == 1, type(model).__name__
        loss.backward()
        assert model.user_embedding.weight.grad.abs().sum() > 0
        model(users, items)
        model(users, items)
        assert len(calls) == 3


def test_graph_models_score_many_candidates_a_row_by_one_product_with_the_same_scores_and_gradients(monkeypatch):
    """LightGCN and NGCF pick k candidates a row with k * 128 >= n_items from one product of the propagated vectors
    with the catalogue; fewer are gathered; shared candidates (``score_items``) are one product with them alone.
    Scores and gradients equal the propagated vectors' dot products."""
    from recforge.models import lightgcn

    products = []
    monkeypatch.setattr(lightgcn, "inner_products", lambda q, v: products.append(v.shape[0]) or q @ v.T)
    torch.manual_seed(0)
    pairs = torch.stack([torch.randint(0, 5, (60,)), torch.randint(0, 300, (60,))])
    users, items = torch.arange(5), torch.randint(0, 300, (5, 3))   # 3 * 128 >= 300: the product
    for model in (LightGCN(5, 300, pairs, embedding_dim=4), NGCF(5, 300, pairs, embedding_dim=4, layers=[4, 4])):
        model.eval()   # NGCF's message dropout off: both ways see one propagation
        products.clear()
        picked = model(users, items)
        assert products == [300]   # the product once, with the whole catalogue
        u, v = model.embeddings()
        expected = (u[users].unsqueeze(1) * v[items]).sum(-1)
        torch.testing.assert_close(picked, expected)
        torch.testing.assert_close(model(users, items[:, :1]), expected[:, :1])   # 128 < 300: gathered
        assert products == [300]
        torch.testing.assert_close(model.score_items(users, items[0]), u[users] @ v[items[0]].T)
        assert products == [300, 3]   # shared candidates: a product with them alone
        grads = torch.autograd.grad(picked.pow(2).sum(), list(model.parameters()), allow_unused=True)
        reference = torch.autograd.grad(expected.pow(2).sum(), list(model.parameters()), allow_unused=True)
        for grad, want in zip(grads, reference):
            assert (grad is None) == (want is None)
            if grad is not None:
                torch.testing.assert_close(grad, want)


@pytest.mark.parametrize("init", ["xavier_normal", "xavier_uniform"])
def test_mf_and_lightgcn_glorot_init_scales_each_table_by_its_size(init):
    from recforge.models.mf import MatrixFactorization

    torch.manual_seed(0)
    mf = MatrixFactorization(n_users=400, n_items=4000, embedding_dim=64, use_bias=False, init_std=1.0, init=init)
    pairs = torch.tensor([[0, 399], [0, 3999]])  # (users, items)
    gcn = LightGCN(400, 4000, pairs, embedding_dim=64, init_std=1.0, init=init)
    for model in (mf, gcn):
        for table, rows in ((model.user_embedding, 400), (model.item_embedding, 4000)):
            assert table.weight.std().item() == pytest.approx((2 / (rows + 64)) ** 0.5, rel=0.03)
            if init == "xavier_uniform":  # bounded by sqrt(6 / (rows + dim))
                assert table.weight.abs().max().item() <= (6 / (rows + 64)) ** 0.5
    normal = MatrixFactorization(400, 4000, init_std=0.5).item_embedding.weight
    assert normal.std().item() == pytest.approx(0.5, rel=0.03)
    for make in (lambda: MatrixFactorization(3, 4, init="glorot"), lambda: LightGCN(3, 4, PAIRS, init="glorot"),
                 lambda: LightGCN(3, 4, None, init="glorot")):  # told before any graph is built from the pairs
        with pytest.raises(ValueError, match="init must be one of normal, xavier_normal, xavier_uniform, got 'glo"):
            make()


def test_sparse_mm_ignores_its_uninitialised_buffer():
    """The CPU fast path writes into ``torch.empty`` with ``addmm(beta=0)``: whatever the buffer held must not
    leak into the result, which is what beta=0 promises and what this pins (NaN * 0 would be NaN)."""
    from recforge.models.lightgcn import sparse_mm

    torch.manual_seed(0)
    adjacency = normalized_adjacency(PAIRS, 4, 5).to_sparse_csr()
    dense = torch.randn(9, 3)
    expected = adjacency.to_dense() @ dense
    poisoned = torch.full((9, 3), float("nan"))
    assert torch.allclose(torch.addmm(poisoned, adjacency, dense, beta=0, out=poisoned), expected, atol=1e-6)
    assert torch.allclose(sparse_mm(adjacency, dense), expected, atol=1e-6)
    assert torch.allclose(sparse_mm(adjacency, dense.t().contiguous().t()), expected, atol=1e-6)
