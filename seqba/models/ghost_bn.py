"""Ghost Batch Normalization (Hoffer, Hubara & Soudry 2017, "Train longer, generalize better", Sec. 4, Alg. 1).

In training, a batch of N rows is cut into consecutive "ghost batches" of ``ghost_batch_size`` rows, and each
is normalized with its own mean and variance, so a large batch sees the noisier statistics of a small one.
Evaluation uses the running statistics, exactly as ``nn.BatchNorm2d``.

Which rows share statistics depends on how the core's ``repeat_batch`` lays out the M copies of B images
(here B = 3, M = 2, ghost_batch_size = 3)::

    layout "adjacent"            layout "tiled" (copy-major)
    ghost 0: a a b               ghost 0: a b c    <- distinct images
    ghost 1: b c c               ghost 1: a b c    <- the other copy of each

With "adjacent", the copies of one image land in the same ghost batch, so a ghost batch of 32 with M = 4
holds only 8 distinct images and its statistics are computed over near-duplicates. With "tiled", whenever
``ghost_batch_size <= B`` every ghost batch holds distinct images and each copy of an image falls in a
different ghost batch, so per-ghost statistics have the same distribution as a plain batch of that size.
The BA paper (Hoffer et al. 2020, Sec. 4, ImageNet ResNet-50, M = 4, ghost batch 32) keeps the statistics
of the baseline's small batches this way; **image recipes using ghost batch norm should use layout "tiled"
with ghost_batch_size <= B** (for ghost_batch_size = B each ghost batch is exactly one augmented copy of the
original batch).

Shape notation: N = rows, C = channels (``num_features``), H = height, W = width, G = number of ghost batches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GhostBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics are computed per ghost batch of consecutive rows.

    Args:
        num_features: C.
        ghost_batch_size: rows per ghost batch, >= 1; ``None`` (or any value >= N) is exactly
            ``nn.BatchNorm2d`` (same code path: outputs, running stats and gradients are identical).
        eps, momentum, affine, track_running_stats, device, dtype: as ``nn.BatchNorm2d``
            (``momentum=None`` is the cumulative moving average).

    Forward: x (N, C, H, W) floating -> (N, C, H, W), same dtype (ghost statistics of float16/bfloat16
    input are computed in float32).

    Training, ``ghost_batch_size = n < N``: rows ``[g*n, (g+1)*n)`` form ghost batch g. When n does not divide
    N, the last ghost batch is smaller (``N % n`` rows) and is normalized on its own; nothing is dropped.
    Each ghost batch is normalized with its biased variance over (rows, H, W), as BatchNorm does. The
    running statistics are updated once per forward (``num_batches_tracked`` += 1) with the mean of the
    ghost means and the mean of the ghost unbiased variances, each ghost batch weighted by its row count
    (for equal ghost batches: plain averages), with the usual ``running = (1 - momentum) * running +
    momentum * stat``. This matches Alg. 1 of Hoffer et al. 2017 up to the choice of averaging the ghost
    statistics rather than applying G sequential momentum updates.

    Evaluation (``model.eval()`` with running stats): identical to ``nn.BatchNorm2d``.

    Raises:
        ValueError: ``ghost_batch_size`` < 1 (at construction), or input not 4-D (at forward).
    """

    def __init__(
        self,
        num_features: int,
        ghost_batch_size: int | None = None,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features, eps=eps, momentum=momentum, affine=affine,
            track_running_stats=track_running_stats, device=device, dtype=dtype,
        )
        if ghost_batch_size is not None and ghost_batch_size < 1:
            raise ValueError(f"GhostBatchNorm2d: ghost_batch_size must be >= 1 or None, got {ghost_batch_size}")
        self.ghost_batch_size = ghost_batch_size

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch_size={self.ghost_batch_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"GhostBatchNorm2d: expected (N, C, H, W) input, got shape {tuple(x.shape)}")
        use_batch_stats = self.training or self.running_mean is None
        n = self.ghost_batch_size
        if not use_batch_stats or n is None or n >= x.shape[0]:
            return super().forward(x)
        full = (x.shape[0] // n) * n
        parts = [(x[:full], n)] + ([(x[full:], x.shape[0] - full)] if full < x.shape[0] else [])
        outs, means, vars_unbiased, counts = [], [], [], []
        for part, rows in parts:  # at most two: the equal ghost batches (vectorized) and a smaller tail
            out, mean, var_u = self._normalize_ghosts(part, rows)
            outs.append(out)
            means.append(mean)
            vars_unbiased.append(var_u)
            counts.append(torch.full((mean.shape[0],), float(rows), device=x.device))
        if self.training and self.track_running_stats:
            self._update_running_stats(torch.cat(means), torch.cat(vars_unbiased), torch.cat(counts))
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def _normalize_ghosts(self, x: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalize ``x`` (G*rows, C, H, W) per ghost batch of ``rows``; return output, (G, C) means and
        (G, C) unbiased variances (the latter two detached)."""
        _, c, h, w = x.shape
        count = rows * h * w
        if count < 2:
            raise ValueError(
                f"GhostBatchNorm2d: a ghost batch of {rows} row(s) of {h}x{w} has {count} value per channel; "
                "need more than 1 (raise ghost_batch_size or use a batch size divisible by it)"
            )
        groups = x.shape[0] // rows
        xg = x.reshape(groups, rows, c, h, w)  # (G, n, C, H, W)
        if xg.dtype in (torch.float16, torch.bfloat16):  # statistics in float32, as cuDNN BatchNorm does
            xg = xg.float()
        # One fused batch_norm over G*C channels: (n, G*C, H, W) holds each ghost batch's channels side by side.
        # Scratch running buffers with momentum 1 receive the ghost means and unbiased variances.
        xr = xg.transpose(0, 1).reshape(rows, groups * c, h, w)
        mean = torch.zeros(groups * c, device=x.device, dtype=xr.dtype)
        var_unbiased = torch.ones(groups * c, device=x.device, dtype=xr.dtype)
        out = F.batch_norm(xr, mean, var_unbiased, None, None, True, 1.0, self.eps)
        out = out.reshape(rows, groups, c, h, w).transpose(0, 1).reshape(x.shape)  # (N, C, H, W)
        if self.weight is not None:
            out = out * self.weight[:, None, None] + self.bias[:, None, None]
        return out.to(x.dtype), mean.view(groups, c), var_unbiased.view(groups, c)

    @torch.no_grad()
    def _update_running_stats(self, means: torch.Tensor, variances: torch.Tensor, counts: torch.Tensor) -> None:
        """Fold (G, C) ghost statistics, weighted by (G,) row counts, into the running statistics."""
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average, as nn.BatchNorm2d
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        weights = (counts / counts.sum())[:, None]  # (G, 1)
        mean = (weights * means).sum(0).to(self.running_mean.dtype)
        var = (weights * variances).sum(0).to(self.running_var.dtype)
        self.running_mean.mul_(1.0 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1.0 - factor).add_(var, alpha=factor)


def set_ghost_batch_size(model: nn.Module, ghost_batch_size: int | None) -> int:
    """Set ``ghost_batch_size`` on every ``GhostBatchNorm2d`` in ``model``; return how many were changed.

    Raises:
        ValueError: ``ghost_batch_size`` < 1.
    """
    if ghost_batch_size is not None and ghost_batch_size < 1:
        raise ValueError(f"set_ghost_batch_size: ghost_batch_size must be >= 1 or None, got {ghost_batch_size}")
    changed = 0
    for module in model.modules():
        if isinstance(module, GhostBatchNorm2d):
            module.ghost_batch_size = ghost_batch_size
            changed += 1
    return changed
