"""The contract every RecForge model keeps.

* ``forward(users, items)`` scores pairs: ``users`` is ``(B,)``, ``items`` is ``(B,)`` or ``(B, n)``; the
  result has ``items``' shape. Explicit-feedback models predict ratings, implicit ones return logits.
* ``score_all(users)`` scores a batch of users against every item, ``(B, n_items)``, so one evaluator
  serves every model.
* ``score_items(users, items)`` scores ``(B,)`` users against one ``(n,)`` set of items, ``(B, n)``, and
  ``score_with_shared(users, positives, shared)`` each user's positive and then that set, ``(B, 1 + n)``
  (``sampler.shared``); the defaults call ``forward``; models override the first with a matrix product (MF, the graph
  models, SimpleX) and the second where the user side is random, to draw it once for both.
* ``one_pass(positives)`` scopes a training step (``positives``: its rows' positive items): the graph models
  propagate once in it, for every call of the step; SimpleX leaves each row's positive out of its user's history.
* Data-dependent values (``n_users``, ``n_items``, ``global_mean``, ``item_popularity``, and
  ``interactions``, the ``(2, n_train)`` user/item pairs of the training split) are constructor
  arguments that ``train(cfg)`` fills in from the data; a model asks only for those it needs.
* ``feedbacks`` lists the feedback kinds (explicit ratings, implicit) the model can learn from.
* Models fitted in closed form (no gradient steps) set ``requires_training = False`` and implement
  ``fit(users, items, ratings)``.
* ``item_vectors()`` optionally returns ``(n_items, d)`` item representations (used for similar items by
  the service); the default ``None`` means the model has none.
* ``train_view`` says what a training batch holds for the model: ``None`` (the default) lets the loss decide
  (``(user, item, rating)`` interactions, or whole user rows for row losses); ``"users"`` / ``"items"`` are
  whole rows of the batch's users or items (autoencoders); ``"sequences"`` the users' histories in time order.
* ``reads_histories``: the model scores from users' histories, which the training module replaces before each
  evaluation (``set_histories``: validation reads the training interactions, test also validation), and a
  served copy is built with every known interaction.
* ``score_histories(indptr, items)`` scores users known only by a history of item indices (CSR over the batch,
  each row in time order), ``(B, n_items)``: a session request to the service. Models that can (sequential models
  from their sequence encoder, item-item models from the history row times their item-item weights, row
  autoencoders from the history row) set ``answers_histories = True``; the others raise.
* ``retrieval_items()`` / ``retrieval_queries(users)``: dot-product models (MF/BPR-MF, UltraGCN, SVD++, LightGCN,
  NGCF, SimpleX, iALS, the sequential models' last state, the two-tower model) return ``(n_items, d)`` item and
  ``(B, d)`` user vectors whose inner products are ``score_all``'s scores (biases ride in extra dimensions), which an
  ANN index (:mod:`recforge.retrieval.ann`) searches. ``None`` (the default): the model is not a dot product, no index.
* ``regularization(users, items)`` is a penalty added to the loss of each interaction batch (``items`` are the
  batch's candidates, positives first: ``(B, 1)`` positives alone under ``loss=softmax``); the default is none.
* ``scores_unseen(side)`` says whether the model scores ``"users"`` / ``"items"`` that had no training interaction
  from something besides their ids (their features); the cold-start splits refuse models that cannot. The
  default is no: an id-only model's score for an id it never trained on is its initialisation.
* ``reads_context``: the model reads the interaction's context (``data.context_columns``: the hour and weekday of
  its time) as part of the user's side; its ``forward`` and ``score_all`` then take a ``context`` keyword, the
  ``(B, n_context)`` rows of each query (its constructor takes ``n_context``). Other models keep their signatures.
* ``add_items(item_features)`` appends items that are their features alone (an id part of zero: no id variable),
  ``(m, d)`` rows encoded as the training items' were; only models that ``scores_unseen("items")`` (the service's
  ``POST /admin/items``).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from recforge.utils.linalg import inner_products
from recforge.utils.sparse import csr_indices, dense_rows, row_pointers


class Recommender(nn.Module):
    requires_training: bool = True
    feedbacks: tuple[str, ...] = ("explicit", "implicit")  # which losses' feedback the model can learn
    train_view: str | None = None
    reads_histories: bool = False
    answers_histories: bool = False  # score_histories works: the model can score a user from a history alone
    reads_context: bool = False  # forward/score_all take a ``context`` keyword (the interaction's context rows)
    n_items: int
    # score_all's bound on the activations one layer holds for a chunk of users (pairs times the widest layer): 16
    # MiB of float32; chunks of 128 MiB scored the tower models 1.4x (DeepFM, Wide & Deep) to 3.4x (ConvNCF) slower
    # (scripts/bench_score_chunks.py)
    max_activations: int = 1 << 22

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def score_items(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``(B, n)`` scores of ``B`` users against one shared ``(n,)`` set of items (shared negatives,
        ``sampler.shared``). Default: ``forward`` on the set repeated per user; models that score by inner
        products override it with one matrix product."""
        return self(users, items.expand(len(users), -1))

    def one_pass(self, positives: torch.Tensor | None = None) -> contextlib.AbstractContextManager:
        """The scope of one training step (its negatives' scoring, its scores, its penalty) on rows whose positive
        items are ``positives``: a model whose representations are costly and random to compute (the graph models'
        propagation) computes them once in it, for every call, so hard negatives are picked by the vectors the step
        trains; a model that reads users' histories may leave each row's positive out of them (SimpleX). Default:
        no effect."""
        return contextlib.nullcontext()

    def score_with_shared(self, users: torch.Tensor, positives: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        """``(B, 1 + n)``: each user's positive, then the ``(n,)`` negatives the batch shares (``sampler.shared``).
        Default: ``forward`` on the positives and :meth:`score_items` on the shared set (the graph models propagate
        once for both within :meth:`one_pass`); SimpleX and the two-tower model override it to draw their user
        dropout once for both."""
        return positives_then_shared(self, users, positives, shared)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Default: ``forward`` over every item, in chunks of users of at most ``max_activations`` pairs."""
        all_items = torch.arange(self.n_items, device=users.device)
        return by_user_chunks(lambda chunk: self(chunk, all_items.expand(len(chunk), -1)), users, self.n_items,
                              self.max_activations)

    def item_vectors(self) -> torch.Tensor | None:
        """``(n_items, d)`` item representations (e.g. embeddings), or ``None`` when the model has none."""
        return None

    def retrieval_items(self) -> torch.Tensor | None:
        """``(n_items, d)`` item vectors such that ``retrieval_queries(users) @ retrieval_items().T`` equals
        ``score_all(users)``; ``None`` when the model's scores are no such dot product."""
        return None

    def retrieval_queries(self, users: torch.Tensor) -> torch.Tensor:
        """``(B, d)`` query vectors of ``users`` for :meth:`retrieval_items` (dot-product models only)."""
        raise NotImplementedError(f"{type(self).__name__} has no retrieval vectors")

    def history_queries(self, indptr: torch.Tensor, items: torch.Tensor) -> torch.Tensor | None:
        """``(B, d)`` query vectors for :meth:`retrieval_items` of anonymous histories (CSR, as
        :meth:`score_histories` takes them), such that ``history_queries(...) @ retrieval_items().T`` equals
        ``score_histories(...)``; ``None`` (the default) when the model has none."""
        return None

    def fit(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} is trained by gradient steps, not fit()")

    def score_histories(self, indptr: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``(B, n_items)`` scores of ``B`` anonymous users given only their histories: ``items[indptr[b]:indptr[b +
        1]]`` are user ``b``'s item indices, oldest first. Only models with ``answers_histories``."""
        raise NotImplementedError(f"{type(self).__name__} cannot score a user from a history alone")

    def regularization(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor | None:
        """A penalty added to the loss of an interaction batch, or ``None`` (the default) for none."""
        return None

    def scores_unseen(self, side: str) -> bool:
        """Whether unseen ``side`` ids (``"users"`` or ``"items"``) get a meaningful score (from features)."""
        return False

    def set_histories(self, indptr: torch.Tensor, items: torch.Tensor) -> None:
        """Score from these histories (CSR over users) from now on; only models that ``reads_histories``."""
        raise NotImplementedError(f"{type(self).__name__} does not read histories")

    def add_items(self, item_features: torch.Tensor) -> None:
        """Append ``len(item_features)`` items scored from these encoded feature rows alone; only models that
        ``scores_unseen("items")``."""
        raise NotImplementedError(f"{type(self).__name__} cannot score items it never trained on")


class WholeRowRecommender(Recommender):
    """A model that scores all items of a user at once: ``forward`` picks the requested items out of
    ``score_all``."""

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.score_all(users).gather(1, items.view(len(users), -1)).view_as(items)


class RowInputRecommender(WholeRowRecommender):
    """A model whose input is the user's row (autoencoders, item-item models): the training ``interactions``
    are kept as non-persistent CSR index buffers and :meth:`user_rows` densifies a batch of them.

    ``reads_histories``: before each evaluation the module replaces the rows with that stage's inputs
    (:meth:`set_histories`: validation reads training and fold-in rows, test also validation), so held-out users
    of a strong-generalisation split are scored from their fold-in rows."""

    reads_histories: bool = True

    def __init__(self, n_users: int, n_items: int, interactions: torch.Tensor | None = None) -> None:
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        pairs = interactions if interactions is not None else torch.zeros(2, 0, dtype=torch.long)
        indptr, indices = csr_indices(pairs[0], pairs[1], n_users, n_items)
        self.register_buffer("history_indptr", indptr, persistent=False)
        self.register_buffer("history_indices", indices, persistent=False)

    def set_histories(self, indptr: torch.Tensor, items: torch.Tensor) -> None:
        """Read these rows (CSR over users; repeated items count once) from now on."""
        self.history_indptr, self.history_indices = indptr.long(), items.long()

    def user_rows(self, users: torch.Tensor) -> torch.Tensor:
        """Dense ``(B, n_items)`` rows of ``users`` (training rows until :meth:`set_histories`)."""
        return dense_rows(self.history_indptr, self.history_indices, users, self.n_items)

    def score_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """``(B, n_items)`` scores of dense 0/1 interaction rows; models whose scores depend on the row alone
        define it (and set ``answers_histories``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot score a row without its user")

    def score_histories(self, indptr: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The histories as dense 0/1 rows (a repeated item counts once), scored by :meth:`score_rows`."""
        rows = torch.arange(len(indptr) - 1, device=indptr.device)
        return self.score_rows(dense_rows(indptr.long(), items.long(), rows, self.n_items))


# below this share of non-zeros a CPU multiplies input rows as a sparse matrix (one thread, 500 rows x 600 outputs,
# the layer's forward and weight gradient: 2.4x faster at 0.07% of 40,981 items, 1.8x at 1.5% of 1,682, slower at 5%;
# scripts/bench_row_input.py times a whole training step)
SPARSE_ROW_DENSITY = 0.02


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, noise_scale: float = 1.0) -> torch.Tensor:
    """A training sample ``mu + noise_scale * sigma * eps`` of the Gaussian posterior ``N(mu, exp(logvar))``, ``eps``
    standard normal: 1 is the VAE papers' reparameterisation, RecBole's Mult-VAE and RecVAE draw 0.01."""
    return mu + noise_scale * torch.randn_like(mu) * torch.exp(0.5 * logvar)


def row_linear(rows: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(rows)`` for interaction rows (mostly zeros: a user's items, after input dropout). On a CPU, below
    ``SPARSE_ROW_DENSITY`` non-zeros, the product is sparse: about ``nnz x out`` multiply-adds, forward and for the
    weight's gradient, instead of ``B x n_items x out`` each; the same values up to the order of summation. Rows that
    need their own gradient, and rows on a GPU (not measured there: its dense product is fast, and finding the
    non-zeros waits for the device), take the dense product."""
    if (rows.device.type != "cpu" or rows.requires_grad
            or rows.count_nonzero() > SPARSE_ROW_DENSITY * rows.numel()):
        return layer(rows)
    return torch.sparse.mm(rows.to_sparse(), layer.weight.t()) + layer.bias


EMBEDDING_INITS = ("normal", "xavier_normal", "xavier_uniform")


def check_init(init: str) -> None:
    """A clear error for an ``init`` that :func:`init_embeddings` does not know; models that build something costly
    first (a graph) call it before that."""
    if init not in EMBEDDING_INITS:
        raise ValueError(f"init must be one of {', '.join(EMBEDDING_INITS)}, got {init!r}")


def init_embeddings(tables: list[nn.Embedding], init: str, init_std: float) -> None:
    """Initialise embedding tables: ``normal`` draws from N(0, ``init_std``); ``xavier_normal`` and
    ``xavier_uniform`` (Glorot's, as RecBole initialises its embeddings) set each table's scale by its size, std
    ``sqrt(2 / (rows + dim))``: larger for a small catalogue, smaller for a large one (``init_std`` unused)."""
    check_init(init)
    for table in tables:
        if init == "normal":
            nn.init.normal_(table.weight, std=init_std)
        elif init == "xavier_normal":
            nn.init.xavier_normal_(table.weight)
        else:
            nn.init.xavier_uniform_(table.weight)


def by_user_chunks(score, users: torch.Tensor, n_items: int, activations: int, width: int = 1,
                   context: torch.Tensor | None = None) -> torch.Tensor:
    """``score(chunk)`` -> ``(len(chunk), n_items)`` over chunks of ``users`` of at most ``activations`` (user, item)
    pairs times ``width`` (the widest layer a pair goes through) each, at least one user, written into one
    ``(len(users), n_items)`` tensor: bounds the memory of models that build a vector per pair. With ``context``
    (a row per user), ``score(chunk, rows)`` takes the chunk's rows of it too.

    The chunks fill one tensor, not a list concatenated at the end: there, each chunk's small result stayed allocated
    between the next chunks' large, short-lived activations, glibc's heap could not reuse their space, and a process
    grew by most of a chunk's activations a chunk (DeepFM, one Last.fm validation: 0.6 to 8 GB)."""
    step = max(1, activations // (n_items * width))
    out = None
    for start in range(0, len(users), step):
        chunk = users[start:start + step]
        part = score(chunk) if context is None else score(chunk, context[start:start + step])
        if part.shape != (len(chunk), n_items):
            raise ValueError(f"score(chunk) must return ({len(chunk)}, {n_items}) scores, got {tuple(part.shape)}")
        if out is None:
            out = part.new_empty(len(users), n_items)
        out[start:start + len(chunk)] = part
        del part   # freed before the next chunk's activations are allocated
    return out if out is not None else torch.empty(0, n_items, device=users.device)


def candidate_sq_norms(users: torch.Tensor, items: torch.Tensor, user_embedding: nn.Embedding,
                       item_embedding: nn.Embedding) -> torch.Tensor:
    """``sum_b ||e_u||^2 + ||e_pos||^2 + mean_j ||e_neg_j||^2`` of a batch's users and ``(B, 1 + n)`` candidates
    (positives first; ``(B, 1)``: positives alone): each row's squared norms as the mean over its ``n`` (user,
    positive, negative) triples, so an L2 weight means the same with one negative as with hundreds (the papers'
    BPR has one). The negatives' vectors are gathered when they are fewer than the table's rows; otherwise (hundreds
    a row, shared ones repeating in every row) the table's norms are taken once and picked. No host sync."""
    total = user_embedding(users).pow(2).sum() + item_embedding(items[:, 0]).pow(2).sum()
    negatives = items[:, 1:]
    if negatives.shape[1]:
        squares = item_embedding(negatives).pow(2) if negatives.numel() < item_embedding.num_embeddings \
            else item_embedding.weight.pow(2).sum(-1)[negatives]
        total = total + squares.sum() / negatives.shape[1]
    return total


def positives_then_shared(model, users: torch.Tensor, positives: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """:meth:`Recommender.score_with_shared` by two calls: ``model(users, positives[:, None])``, then
    ``model.score_items(users, shared)``."""
    return torch.cat([model(users, positives.unsqueeze(1)), model.score_items(users, shared)], dim=1)


def broadcast_users(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Expand ``(B,)`` users to ``items``' shape ``(B,)`` or ``(B, n)``."""
    return users.view(-1, *([1] * (items.dim() - 1))).expand_as(items)


TRAIN_ON = ("latest", "all")


class SequentialRecommender(WholeRowRecommender):
    """A model of the order of a user's interactions (SASRec, BERT4Rec, GRU4Rec, Caser).

    It keeps each user's chronological item sequence as non-persistent CSR buffers, built from ``sequences``
    (the ``(2, n)`` user/item pairs grouped by user in time order) and replaced by :meth:`set_histories` before
    each evaluation (validation reads the training sequences, test also the validation items). Items are
    ``0..n_items-1``; ``n_items`` is the padding token.

    * :meth:`training_sequences` says which positions predict which items: by default each input predicts the
      next item (-1 where there is nothing to predict), over the user's latest ``max_len + 1`` items
      (``train_on="latest"``, as SASRec's paper trains) or over the whole training history cut into windows of
      that length, so that every training item is a target once (``train_on="all"``, what RecBole's prefixes
      amount to; a user with more than ``max_len + 1`` items gives several rows).
    * :meth:`encode` maps ``(B, L)`` inputs to ``(B, L, d)`` hidden states; :meth:`item_logits` scores hidden
      states against all items or given candidates. The training module puts a loss on them (full softmax or
      sampled negatives), so every sequential model trains with every implicit loss.
    * :meth:`score_all` encodes the user's most recent ``context_length`` items and scores the last state.
    """

    train_view = "sequences"
    feedbacks = ("implicit",)
    reads_histories = True
    answers_histories = True

    def __init__(self, n_users: int, n_items: int, sequences: torch.Tensor | None = None, max_len: int = 50,
                 train_on: str = "latest") -> None:
        super().__init__()
        if max_len < 1:
            raise ValueError(f"max_len must be positive, got {max_len}")
        if train_on not in TRAIN_ON:
            raise ValueError(f"train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}")
        self.n_users, self.n_items, self.max_len, self.train_on = n_users, n_items, max_len, train_on
        self.padding_idx = n_items
        pairs = sequences if sequences is not None else torch.zeros(2, 0, dtype=torch.long)
        self.register_buffer("history_indptr", row_pointers(pairs[0], n_users), persistent=False)
        self.register_buffer("history_items", pairs[1].long().clone(), persistent=False)

    @property
    def context_length(self) -> int:
        """How many of a user's latest items ``score_all`` reads."""
        return self.max_len

    def set_histories(self, indptr: torch.Tensor, items: torch.Tensor) -> None:
        """Use these chronological sequences (CSR over users) as the model's input from now on."""
        self.history_indptr, self.history_items = indptr.long(), items.long()

    def recent_items(self, users: torch.Tensor, length: int) -> torch.Tensor:
        """``(B, length)``: each user's latest ``length`` items in time order, left-padded with ``padding_idx``."""
        return latest_items(self.history_indptr, self.history_items, users, length, self.padding_idx)

    def training_windows(self, users: torch.Tensor, length: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(owners, windows)``: ``(R,)`` users and ``(R, length)`` items, left-padded. ``train_on="latest"``:
        each user's latest ``length`` items (``R = B``). ``train_on="all"``: windows of ``length`` ending every
        ``step`` items back from the latest, as many as cover the history after its first ``length - step``
        items (the earliest window is left-padded)."""
        if self.train_on == "latest":
            return users, self.recent_items(users, length)
        users = users.to(self.history_indptr.device).long()
        sizes = self.history_indptr[users + 1] - self.history_indptr[users]
        head = length - step  # items every window reads before its first new one
        counts = (sizes - head - 1).clamp(min=0) // step + 1  # ceil((size - head) / step), at least one
        owners = users.repeat_interleave(counts)
        first = torch.cumsum(counts, 0) - counts
        back = torch.arange(len(owners), device=owners.device) - first.repeat_interleave(counts)  # 0 = latest
        return owners, latest_items(self.history_indptr, self.history_items, owners, length, self.padding_idx,
                                    skip=back * step)

    def training_sequences(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(owners, inputs, targets)``: ``(R,)`` users and ``(R, max_len)`` inputs and targets from
        :meth:`training_windows` of ``max_len + 1`` items shifted by one, so position ``t`` predicts the item after
        it; targets are -1 where the input is padding."""
        owners, seq = self.training_windows(users, self.max_len + 1, step=self.max_len)
        inputs, targets = seq[:, :-1], seq[:, 1:]
        return owners, inputs, torch.where(inputs == self.padding_idx, -1, targets)

    def encode(self, inputs: torch.Tensor, users: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def output_embeddings(self) -> torch.Tensor:
        """``(n_items, d)`` item vectors the hidden states are scored against (default: the input embeddings)."""
        return self.item_embedding.weight[: self.n_items]

    def item_logits(self, hidden: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of ``(N, d)`` hidden states against every item ``(N, n_items)``, ``(N, k)`` candidates, or one
        shared ``(k,)`` set of them."""
        weights = self.output_embeddings()
        if items is None:
            return inner_products(hidden, weights)
        if items.dim() == 1:
            return inner_products(hidden, weights[items])
        return (hidden.unsqueeze(1) * weights[items]).sum(-1)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.score_recent(self.recent_items(users, self.context_length), users)

    def score_recent(self, recent: torch.Tensor, users: torch.Tensor | None) -> torch.Tensor:
        """``(B, n_items)`` from ``(B, context_length)`` latest items (left-padded); ``users`` is ``None`` for
        anonymous histories (:meth:`score_histories`), which only models with user embeddings read."""
        return self.item_logits(self.last_state(recent, users))

    def last_state(self, recent: torch.Tensor, users: torch.Tensor | None) -> torch.Tensor:
        """``(B, d)``: the hidden state that :meth:`item_logits` scores against the items."""
        return self.encode(recent, users)[:, -1]

    def retrieval_items(self) -> torch.Tensor:
        """The output item vectors, with the item bias as one more dimension where :meth:`item_logits` adds one."""
        bias = getattr(self, "output_bias", None)
        weights = self.output_embeddings()
        return weights if bias is None else torch.cat([weights, bias.unsqueeze(1)], dim=1)

    def retrieval_queries(self, users: torch.Tensor) -> torch.Tensor:
        state = self.last_state(self.recent_items(users, self.context_length), users)
        return state if getattr(self, "output_bias", None) is None else with_ones(state)

    def history_queries(self, indptr: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The last hidden state of each anonymous history (:meth:`score_histories`' input) as a query vector."""
        state = self.last_state(self._latest(indptr, items), None)
        return state if getattr(self, "output_bias", None) is None else with_ones(state)

    def score_histories(self, indptr: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The latest ``context_length`` items of each history, encoded as a known user's sequence is."""
        return self.score_recent(self._latest(indptr, items), None)

    def _latest(self, indptr: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(len(indptr) - 1, device=indptr.device)
        return latest_items(indptr.long(), items.long(), rows, self.context_length, self.padding_idx)

    def item_vectors(self) -> torch.Tensor:
        return self.output_embeddings()


def with_ones(vectors: torch.Tensor) -> torch.Tensor:
    """``vectors`` with a last column of ones: the query side of an item bias carried as an extra dimension."""
    return torch.cat([vectors, vectors.new_ones(len(vectors), 1)], dim=1)


def latest_items(indptr: torch.Tensor, items: torch.Tensor, rows: torch.Tensor, length: int,
                 padding: int, skip: torch.Tensor | None = None) -> torch.Tensor:
    """``(len(rows), length)``: the last ``length`` entries of each selected CSR row, in order, left-padded with
    ``padding``; rows past the matrix are all padding. ``skip`` (per row) leaves out that many latest entries
    first."""
    rows = rows.to(indptr.device).long()
    n_stored = len(indptr) - 1
    safe = rows.clamp(0, max(n_stored - 1, 0))
    inside = (rows >= 0) & (rows < n_stored)
    starts = torch.where(inside, indptr[safe], 0)
    ends = torch.where(inside, indptr[safe + 1], 0)
    if skip is not None:
        ends = torch.maximum(ends - skip.to(ends.device), starts)
    index = ends.unsqueeze(1) - length + torch.arange(length, device=rows.device)
    valid = index >= starts.unsqueeze(1)
    if not len(items):
        return torch.full(index.shape, padding, dtype=torch.long, device=rows.device)
    return torch.where(valid, items[index.clamp(min=0, max=len(items) - 1)], padding)
