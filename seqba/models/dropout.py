"""Dropout whose mask costs less on the CPU: the Transformer's residual, embedding and activation dropout.

BA's dropout copies differ only by their masks, so a Transformer step draws one mask per residual branch for all
M·B rows. ``nn.Dropout`` draws it with ``bernoulli_`` and scales in ``native_dropout``; on the CPU that is slower
than drawing float32 uniforms and keeping ``u >= p`` (forward + backward, fp32 and bf16, measured by
``benchmarks/bench_kernels.py``). The distribution is the same: every element is kept independently
with probability 1 - p and scaled by 1 / (1 - p) (Srivastava et al. 2014, "inverted" dropout, as
``torch.nn.functional.dropout``); only the random stream differs from ``nn.Dropout``'s.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Dropout", "dropout"]


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Inverted dropout: ``x * keep / (1 - p)``, ``keep ~ Bernoulli(1 - p)`` per element, any shape and float dtype.

    The uniforms are float32 whatever ``x``'s dtype (bf16 uniforms have 8 bits: p would be off by up to 1/256).
    ``p == 1`` gives zeros, ``p == 0`` or ``training=False`` returns ``x`` itself.

    Raises:
        ValueError: for p outside [0, 1].
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p={p} must be in [0, 1]")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    scale = torch.rand(x.shape, dtype=torch.float32, device=x.device).ge_(p).div_(1.0 - p)  # 0 or 1/(1-p)
    return x * scale.to(x.dtype)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same arguments, repr and state) drawing its mask with ``dropout`` above."""

    def forward(self, input: Tensor) -> Tensor:
        return dropout(input, self.p, self.training)
