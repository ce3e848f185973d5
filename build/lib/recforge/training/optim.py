"""Optimizers for embedding tables.

:class:`LazyAdam` is Adam that, for a parameter with a sparse gradient (``nn.Embedding(sparse=True)``), updates
only the rows the batch touched: their first and second moments and their values, as
``torch.optim.SparseAdam`` and TensorFlow's LazyAdam do. The update is done on a dense ``(rows, dim)`` block
gathered once per step, instead of through sparse-tensor arithmetic, which makes a step several times cheaper
on a CPU (BPR-MF on Gowalla, batch 2,048: 14 ms per step with ``torch.optim.SparseAdam``, see
``scripts/bench.py --sparse``). The arithmetic is one pass of torch's fused Adam kernel (what
``torch.optim.Adam(fused=True)`` runs) over the gathered block, instead of six elementwise passes, where the
kernel exists for the device and dtype (``fused=None``, the default); ``fused=False`` spells the update out in
tensor operations. Dense gradients (MLP layers, a global bias) get the ordinary Adam update, so a model may
mix both.
"""

from __future__ import annotations

import math

import torch


class LazyAdam(torch.optim.Optimizer):
    """Adam (Kingma and Ba, ICLR 2015) with lazy row-wise updates for sparse gradients; see the module doc."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, fused: bool | None = None) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"lr, eps and weight_decay must not be negative (got {lr}, {eps}, {weight_decay})")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if fused and not hasattr(torch, "_fused_adam_"):
            raise ValueError(f"fused=True needs torch's fused Adam kernel, which torch {torch.__version__} lacks; "
                             "use fused=None (it is used where available) or fused=False")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.fused = fused

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                grad = p.grad
                if grad.is_sparse:
                    rows, values = _rows_and_sums(grad)
                    blocks = [table.index_select(0, rows) for table in (p, m, v)]
                    self._adam(*blocks, values, state, group)
                    for table, block in zip((p, m, v), blocks):
                        _put_rows(table, rows, block)
                else:
                    self._adam(p, m, v, grad, state, group)
        return loss

    def _adam(self, p: torch.Tensor, m: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, state: dict,
              group: dict) -> None:
        """One Adam update of ``p``, ``m`` and ``v`` in place (L2 ``weight_decay`` added to the gradient, eps after
        the bias correction, as ``torch.optim.Adam``), at step ``state["step"]``."""
        lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        step = state["step"]
        if self.fused is not False and _fused_kernel_takes(p):
            # the kernel reads the step from a tensor on p's device: kept in the state and refilled in place, as
            # a fresh torch.tensor(step, device="cuda") every step would copy from the host and wait for the GPU
            step_tensor = state.get("step_tensor")
            if step_tensor is None or step_tensor.device != p.device:
                step_tensor = state["step_tensor"] = torch.zeros((), dtype=torch.float32, device=p.device)
            step_tensor.fill_(step)
            torch._fused_adam_([p], [grad], [m], [v], [], [step_tensor], lr=lr, beta1=beta1, beta2=beta2,
                               weight_decay=decay, eps=eps, amsgrad=False, maximize=False)
            return
        if decay:
            grad = grad.add(p, alpha=decay)
        m.mul_(beta1).add_(grad, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        root_correction = math.sqrt(1 - beta2**step)
        p.addcdiv_(m, v.sqrt().div_(root_correction).add_(eps), value=-lr / (1 - beta1**step))


def _fused_kernel_takes(p: torch.Tensor) -> bool:
    """Whether torch's fused Adam kernel runs for ``p`` (it exists on CPUs and CUDA, for floating dtypes)."""
    return hasattr(torch, "_fused_adam_") and p.device.type in ("cpu", "cuda") and p.is_floating_point()


def _put_rows(table: torch.Tensor, rows: torch.Tensor, block: torch.Tensor) -> None:
    """``table[rows] = block`` for distinct ``rows``; on a CPU through numpy, several times faster than torch's
    ``index_copy_``/``index_put_`` there."""
    if table.device.type == "cpu" and table.is_contiguous():
        table.numpy()[rows.numpy()] = block.numpy()
    else:
        table.index_copy_(0, rows, block)


def _rows_and_sums(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of a sparse row gradient and their summed values (duplicate lookups add up)."""
    indices = grad._indices()[0]
    values = grad._values()
    rows, inverse = torch.unique(indices, return_inverse=True)
    summed = values.new_zeros((len(rows), *values.shape[1:])).index_add_(0, inverse, values)
    return rows, summed
