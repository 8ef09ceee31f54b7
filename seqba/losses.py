"""Training losses: label-smoothed cross-entropy (translation) and AR/TAR (AWD-LSTM language models).

* ``label_smoothed_nll_loss``: Szegedy et al. 2016 ("Rethinking the Inception Architecture", Sec. 7), exactly as
  fairseq ``fairseq/criterions/label_smoothed_cross_entropy.py``: summed over non-pad tokens; the caller
  divides by the number of target tokens.
* ``activation_regularization`` / ``temporal_activation_regularization``: Merity et al. 2017 ("Regularizing
  and Optimizing LSTM Language Models", Sec. 4.6), as salesforce/awd-lstm-lm ``main.py``.

Shape notation: B = batch, T = time, N = tokens (flattened), V = vocab, H = hidden size.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["label_smoothed_nll_loss", "activation_regularization", "temporal_activation_regularization"]


def label_smoothed_nll_loss(
    lprobs: Tensor, target: Tensor, epsilon: float, ignore_index: int | None = 0
) -> tuple[Tensor, Tensor]:
    """Label-smoothed negative log-likelihood, summed over tokens (fairseq ``label_smoothed_nll_loss``).

    Args:
        lprobs: log-probabilities (N, V) or (B, T, V), float (compute them in float32 for fp16/bf16 models).
        target: gold token ids (N,) or (B, T), int64.
        epsilon: smoothing mass in [0, 1); eps_i = epsilon / (V - 1) goes to every class.
        ignore_index: target id that contributes nothing (pad); ``None`` keeps every token.

    Returns:
        ``(loss, nll_loss)``, 0-dim tensors, sums over kept tokens, where per token
        ``loss = (1 - epsilon - eps_i) * nll + eps_i * smooth``, ``nll = -lprobs[target]`` and
        ``smooth = -sum_v lprobs[v]``.

    Raises:
        ValueError: when ``target``'s shape is not ``lprobs``'s without the last (vocab) dimension.
    """
    if target.shape != lprobs.shape[:-1]:
        raise ValueError(
            f"label_smoothed_nll_loss: target shape {tuple(target.shape)} does not match "
            f"lprobs shape {tuple(lprobs.shape)} without its vocab dimension"
        )
    nll_loss = -lprobs.gather(dim=-1, index=target.unsqueeze(-1)).squeeze(-1)  # (N,) or (B, T)
    smooth_loss = -lprobs.sum(dim=-1)
    if ignore_index is not None:
        pad_mask = target.eq(ignore_index)
        nll_loss = nll_loss.masked_fill(pad_mask, 0.0)
        smooth_loss = smooth_loss.masked_fill(pad_mask, 0.0)
    nll_loss, smooth_loss = nll_loss.sum(), smooth_loss.sum()
    eps_i = epsilon / (lprobs.size(-1) - 1)
    loss = (1.0 - epsilon - eps_i) * nll_loss + eps_i * smooth_loss
    return loss, nll_loss


def activation_regularization(dropped_output: Tensor, alpha: float) -> Tensor:
    """AR: ``alpha * mean(h^2)`` over the last RNN layer's output after dropout, (T, B, H) -> 0-dim.

    As awd-lstm-lm ``main.py`` (``args.alpha * dropped_rnn_h.pow(2).mean()``).
    """
    return alpha * dropped_output.pow(2).mean()


def temporal_activation_regularization(raw_output: Tensor, beta: float) -> Tensor:
    """TAR (slowness): ``beta * mean((h_t - h_{t-1})^2)`` over the last RNN layer's output before dropout.

    raw_output: (T, B, H), time-major; -> 0-dim. As awd-lstm-lm ``main.py``
    (``args.beta * (rnn_h[1:] - rnn_h[:-1]).pow(2).mean()``).
    """
    return beta * (raw_output[1:] - raw_output[:-1]).pow(2).mean()
