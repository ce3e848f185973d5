"""BSPM: GF-CF's blurred scores, then sharpened by running heat diffusion backwards on the item graph.

Choi, Hong, Park and Cho. 2023. Blurring-Sharpening Process Models for Collaborative Filtering. SIGIR.
"""

from __future__ import annotations

import torch

from recforge.models.gfcf import GFCF


class BSPM(GFCF):
    """The blurring process is GF-CF's filter (one Euler step of the heat equation ``ds/dt = -s (I - P~)`` over
    time 1, plus ``ideal_weight`` times the ideal low-pass filter; :class:`recforge.models.gfcf.GFCF`). The
    sharpening process then starts from that blurred signal and integrates ``ds/dt = -s P~`` over
    ``sharpening_time`` in ``sharpening_steps`` steps of ``solver`` (``euler``, or the classical 4th-order
    ``rk4``), subtracting what the graph smooths in: the early-merge, final-sharpening variant (BSPM-EM) that the
    reference code runs on Gowalla. ``sharpening_time`` 0 is GF-CF.

    The class defaults are the reference code's Gowalla setting (448 factors, ideal weight 0.2, rk4, one step over
    time 2.5), which its authors chose on that split's test set (it has no validation set); ``conf/model/bspm.yaml``
    has 128 factors, weight 0.05 and time 1.5, chosen on validation over smaller catalogues
    (``docs/defaults.md#bspm``). Each sharpening step costs one (euler) or four (rk4) more products with ``P~``."""

    SOLVERS = ("euler", "rk4")

    def __init__(self, n_users: int, n_items: int, interactions: torch.Tensor | None = None,
                 factors: int = 448, ideal_weight: float = 0.2, sharpening_time: float = 2.5,
                 sharpening_steps: int = 1, solver: str = "rk4") -> None:
        if sharpening_time < 0:  # checked before the graph is built
            raise ValueError(f"model.sharpening_time must be >= 0 (0: GF-CF), got {sharpening_time}")
        if sharpening_steps < 1:
            raise ValueError(f"model.sharpening_steps must be >= 1, got {sharpening_steps}")
        if solver not in self.SOLVERS:
            raise ValueError(f"model.solver must be one of {', '.join(self.SOLVERS)}, got {solver!r}")
        super().__init__(n_users, n_items, interactions, factors, ideal_weight)
        self.sharpening_time, self.sharpening_steps, self.solver = sharpening_time, sharpening_steps, solver

    def filtered(self, signal: torch.Tensor) -> torch.Tensor:
        out = super().filtered(signal)
        h = self.sharpening_time / self.sharpening_steps
        for _ in range(self.sharpening_steps if h else 0):
            if self.solver == "euler":
                out = out - h * self.propagate(out)
            else:  # rk4 on ds/dt = -P~ s
                k1 = -self.propagate(out)
                k2 = -self.propagate(out + h / 2 * k1)
                k3 = -self.propagate(out + h / 2 * k2)
                k4 = -self.propagate(out + h * k3)
                out = out + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return out
