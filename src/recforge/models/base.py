"""The contract every RecForge model keeps.

* ``forward(users, items)`` scores pairs: ``users`` is ``(B,)``, ``items`` is ``(B,)`` or ``(B, n)``; the
  result has ``items``' shape. Explicit-feedback models predict ratings, implicit ones return logits.
* ``score_all(users)`` scores a batch of users against every item, ``(B, n_items)``, so one evaluator
  serves every model.
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
* ``regularization(users, items)`` is a penalty added to the loss of each interaction batch (``items`` are the
  batch's candidates, positives first); the default is none.
* ``scores_unseen(side)`` says whether the model scores ``"users"`` / ``"items"`` that had no training interaction
  from something besides their ids (their features); the cold-start splits refuse models that cannot. The
  default is no: an id-only model's score for an id it never trained on is its initialisation.
"""

from __future__ import annotations

import torch
from torch import nn

from recforge.utils.linalg import inner_products
from recforge.utils.sparse import csr_indices, dense_rows, row_pointers


class Recommender(nn.Module):
    requires_training: bool = True
    feedbacks: tuple[str, ...] = ("explicit", "implicit")  # which losses' feedback the model can learn
    train_view: str | None = None
    reads_histories: bool = False
    n_items: int

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Default: ``forward`` over every item, in sub-chunks bounded to ~4M pairs."""
        all_items = torch.arange(self.n_items, device=users.device)
        step = max(1, (1 << 22) // self.n_items)
        return torch.cat([
            self(chunk, all_items.expand(len(chunk), -1)) for chunk in users.split(step)
        ]) if len(users) else torch.empty(0, self.n_items, device=users.device)

    def item_vectors(self) -> torch.Tensor | None:
        """``(n_items, d)`` item representations (e.g. embeddings), or ``None`` when the model has none."""
        return None

    def fit(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} is trained by gradient steps, not fit()")

    def regularization(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor | None:
        """A penalty added to the loss of an interaction batch, or ``None`` (the default) for none."""
        return None

    def scores_unseen(self, side: str) -> bool:
        """Whether unseen ``side`` ids (``"users"`` or ``"items"``) get a meaningful score (from features)."""
        return False

    def set_histories(self, indptr: torch.Tensor, items: torch.Tensor) -> None:
        """Score from these histories (CSR over users) from now on; only models that ``reads_histories``."""
        raise NotImplementedError(f"{type(self).__name__} does not read histories")


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


def broadcast_users(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Expand ``(B,)`` users to ``items``' shape ``(B,)`` or ``(B, n)``."""
    return users.view(-1, *([1] * (items.dim() - 1))).expand_as(items)


class SequentialRecommender(WholeRowRecommender):
    """A model of the order of a user's interactions (SASRec, BERT4Rec, GRU4Rec, Caser).

    It keeps each user's chronological item sequence as non-persistent CSR buffers, built from ``sequences``
    (the ``(2, n)`` user/item pairs grouped by user in time order) and replaced by :meth:`set_histories` before
    each evaluation (validation reads the training sequences, test also the validation items). Items are
    ``0..n_items-1``; ``n_items`` is the padding token.

    * :meth:`training_sequences` says which positions predict which items: by default the last ``max_len``
      inputs each predict the next item (-1 where there is nothing to predict).
    * :meth:`encode` maps ``(B, L)`` inputs to ``(B, L, d)`` hidden states; :meth:`item_logits` scores hidden
      states against all items or given candidates. The training module puts a loss on them (full softmax or
      sampled negatives), so every sequential model trains with every implicit loss.
    * :meth:`score_all` encodes the user's most recent ``context_length`` items and scores the last state.
    """

    train_view = "sequences"
    feedbacks = ("implicit",)
    reads_histories = True

    def __init__(self, n_users: int, n_items: int, sequences: torch.Tensor | None = None, max_len: int = 50) -> None:
        super().__init__()
        if max_len < 1:
            raise ValueError(f"max_len must be positive, got {max_len}")
        self.n_users, self.n_items, self.max_len = n_users, n_items, max_len
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
        users = users.to(self.history_indptr.device).long()
        n_stored = len(self.history_indptr) - 1
        safe = users.clamp(0, max(n_stored - 1, 0))
        inside = (users >= 0) & (users < n_stored)
        starts = torch.where(inside, self.history_indptr[safe], 0)
        ends = torch.where(inside, self.history_indptr[safe + 1], 0)
        index = ends.unsqueeze(1) - length + torch.arange(length, device=users.device)
        valid = index >= starts.unsqueeze(1)
        if not len(self.history_items):
            return torch.full(index.shape, self.padding_idx, dtype=torch.long, device=users.device)
        return torch.where(valid, self.history_items[index.clamp(min=0, max=len(self.history_items) - 1)],
                           self.padding_idx)

    def training_sequences(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)``, both ``(B, max_len)``: the latest ``max_len + 1`` items shifted by one, so
        position ``t`` predicts the item after it; targets are -1 where the input is padding."""
        seq = self.recent_items(users, self.max_len + 1)
        inputs, targets = seq[:, :-1], seq[:, 1:]
        return inputs, torch.where(inputs == self.padding_idx, -1, targets)

    def encode(self, inputs: torch.Tensor, users: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def output_embeddings(self) -> torch.Tensor:
        """``(n_items, d)`` item vectors the hidden states are scored against (default: the input embeddings)."""
        return self.item_embedding.weight[: self.n_items]

    def item_logits(self, hidden: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of ``(N, d)`` hidden states against every item ``(N, n_items)`` or ``(N, k)`` candidates."""
        weights = self.output_embeddings()
        if items is None:
            return inner_products(hidden, weights)
        return (hidden.unsqueeze(1) * weights[items]).sum(-1)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.item_logits(self.encode(self.recent_items(users, self.context_length), users)[:, -1])

    def item_vectors(self) -> torch.Tensor:
        return self.output_embeddings()
