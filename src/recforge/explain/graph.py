"""LightGCN: the score split exactly over the paths through the user-item graph, grouped by their first step.

LightGCN's final embeddings are ``F = 1/(K+1) sum_{k=0..K} A^k E`` (``A`` the normalised adjacency, ``E`` the ego
embeddings). A user's only neighbours are its items, so ``(A^k E)_u = sum_h A[u, h] (A^(k-1) E)_h`` and

    score(u, i) = F_u . F_i = 1/(K+1) E_u . F_i  +  sum_{h in H_u} A[u, h] / (K+1) * (sum_{k<K} (A^k E)_h) . F_i

The term of ``h`` is everything that reaches the user through its edge to ``h``: every path ``u - h - ...`` of
length 1 to K. The first term (the user's own ego embedding) is ``rest``."""

from __future__ import annotations

import torch

from recforge.explain.base import Explainer, Explanations
from recforge.models.lightgcn import LightGCN, propagate_layer


class GraphPaths(Explainer):
    """Each history item ``h``'s share of the score: the paths from the user whose first step is the edge to
    ``h``. Exact: the shares plus ``rest`` (the user's ego embedding) are the score. The propagated layers are
    computed once, when the explainer is built."""

    method = "graph_paths"
    exact = True
    note = "the part of the score carried by the graph paths that leave the user through its edge to the " \
           "history item (LightGCN's layers, summed exactly)"

    @torch.no_grad()
    def __init__(self, model: LightGCN) -> None:
        super().__init__(model)
        ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
        layers = [ego]
        for _ in range(model.n_layers):
            layers.append(propagate_layer(model.adjacency, layers[-1]))
        self.final = torch.stack(layers).mean(0)
        self.messages = sum(layers[:-1], torch.zeros_like(ego)) / (model.n_layers + 1)  # what a first step to h carries
        self.ego = ego / (model.n_layers + 1)
        self.crow, self.col, self.values = (model.adjacency.crow_indices(), model.adjacency.col_indices(),
                                            model.adjacency.values())

    @torch.no_grad()
    def explain(self, user: int, items: torch.Tensor, top: int) -> Explanations:
        start, stop = int(self.crow[user]), int(self.crow[user + 1])
        neighbours, edge = self.col[start:stop], self.values[start:stop]
        items = items.to(self.final.device)
        targets = self.final[self.model.n_users + items]  # (k, d)
        weights = (targets @ self.messages[neighbours].T) * edge
        scores = targets @ self.final[user]
        return self.result(items, scores, weights, neighbours - self.model.n_users, top,
                           rest=targets @ self.ego[user])
