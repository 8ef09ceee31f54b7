"""Small metric helpers shared by training, validation and evaluation."""
from __future__ import annotations

import math

__all__ = ["perplexity", "MAX_LOG_PPL"]

#: exp() of a larger mean NLL overflows float64 well before it means anything; perplexities are capped there.
MAX_LOG_PPL = 50.0


def perplexity(nll: float) -> float:
    """``exp(nll)`` of a mean negative log-likelihood in nats per token (word), capped at ``exp(50)``.

    An untrained model's NLL can exceed 700 nats, where ``math.exp`` overflows; the cap keeps logs finite.
    """
    return math.exp(min(nll, MAX_LOG_PPL))
