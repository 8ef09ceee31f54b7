"""Training losses: label-smoothed cross-entropy (translation), AR/TAR (AWD-LSTM language models), and the
cross-copy consistency term of Batch Augmentation.

* ``label_smoothed_nll_loss``: Szegedy et al. 2016 ("Rethinking the Inception Architecture", Sec. 7), exactly as
  fairseq ``fairseq/criterions/label_smoothed_cross_entropy.py``: summed over non-pad tokens; the caller
  divides by the number of target tokens.
* ``label_smoothed_cross_entropy``: the same loss computed from the logits in one fused pass (log-sum-exp
  forward, ``softmax - smoothed target`` backward, in row chunks), without materialising the (N, V)
  log-probabilities; what the translation task trains with. With a consistency term across the copies, the same
  loss fused with the term: :func:`seqba.fused_consistency.cross_entropy_with_consistency`.
* ``activation_regularization`` / ``temporal_activation_regularization``: Merity et al. 2017 ("Regularizing
  and Optimizing LSTM Language Models", Sec. 4.6), as salesforce/awd-lstm-lm ``main.py``.
* ``consistency_loss``: agreement between the M copies of each sample of a BA batch (R-Drop's symmetric KL,
  AugMix's Jensen-Shannon term), a function form of the components in :mod:`seqba.consistency`.
  ``copies_view`` shows the expanded batch's rows as (copy, sample) (:meth:`seqba.layout.CopyLayout.copies`).

Shape notation: B = batch (distinct samples), M = repeats (copies per sample), T = time, N = tokens
(flattened), V = vocab (or classes), H = hidden size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from seqba.consistency import CONSISTENCY, ConsistencyTerm, consistency_kind
from seqba.fused_consistency import default_chunk_rows
from seqba.layout import CopyLayout

__all__ = [
    "label_smoothed_nll_loss",
    "label_smoothed_cross_entropy",
    "cross_entropy_with_term",
    "activation_regularization",
    "temporal_activation_regularization",
    "consistency_loss",
    "copies_view",
    "CONSISTENCY_KINDS",
]

#: the consistency kinds registered when this module was imported (the live registry: ``seqba.consistency``)
CONSISTENCY_KINDS = tuple(CONSISTENCY)


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


def label_smoothed_cross_entropy(
    logits: Tensor, target: Tensor, epsilon: float, ignore_index: int | None = 0, *, chunk_rows: int | None = None
) -> tuple[Tensor, Tensor]:
    """``label_smoothed_nll_loss(log_softmax(logits), ...)`` fused: the same two sums, without the log-probabilities.

    Per kept token, with ``lse = logsumexp(logits)``, ``nll = lse - logits[target]`` and
    ``smooth = V * lse - sum_v logits[v]``, ``loss = (1 - epsilon - eps_i) * nll + eps_i * smooth``,
    ``eps_i = epsilon / (V - 1)`` (fairseq's weights). Since ``(1 - epsilon - eps_i) + V * eps_i = 1``, the gradient
    w.r.t. the logits is ``softmax(logits) - (1 - epsilon - eps_i) * onehot(target) - eps_i`` per kept token (0 at
    ignored ones), which backward recomputes from the saved logits and ``lse``. Forward and backward work in
    float32 on ``chunk_rows`` rows at a time (cache-sized), so bf16/fp16 logits are never copied whole to float32;
    the (N, V) float32 log-probabilities, their gather/sum gradients and ``log_softmax``'s backward are skipped.
    Its speed against the unfused loss: ``benchmarks/bench_kernels.py``.

    Args:
        logits: (N, V) or (B, T, V) unnormalised scores, any float dtype (bf16 under autocast).
        target: gold ids (N,) or (B, T), int64.
        epsilon: smoothing mass in [0, 1).
        ignore_index: target id that contributes nothing (pad); ``None`` keeps every token.
        chunk_rows: rows per float32 chunk; default :func:`seqba.fused_consistency.default_chunk_rows` (on the CPU
            a few MiB, so that a chunk stays in cache: 64 rows of an 8k vocabulary, 16 of a 32k one; 4096 rows
            elsewhere, for fewer kernel launches on a GPU). Each row's sums do not depend on it.

    Returns:
        ``(loss, nll_loss)``, 0-dim float32 tensors (float64 for float64 logits), sums over kept tokens; only
        ``loss`` is differentiable.

    Raises:
        ValueError: when ``target``'s shape is not ``logits``'s without the last dimension, or ``chunk_rows < 1``.
    """
    if target.shape != logits.shape[:-1]:
        raise ValueError(
            f"label_smoothed_cross_entropy: target shape {tuple(target.shape)} does not match "
            f"logits shape {tuple(logits.shape)} without its vocab dimension"
        )
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(logits.size(-1), logits.device)
    if chunk_rows < 1:
        raise ValueError(f"label_smoothed_cross_entropy: chunk_rows={chunk_rows} must be >= 1")
    return _LabelSmoothedCE.apply(logits.reshape(-1, logits.size(-1)), target.reshape(-1), float(epsilon),
                                  ignore_index, chunk_rows)


class _LabelSmoothedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, epsilon: float, ignore_index: int | None, chunk_rows: int):
        n, v = logits.shape  # (N, V)
        eps_i = epsilon / (v - 1)
        dtype = torch.promote_types(logits.dtype, torch.float32)  # float32, or float64 for float64 logits
        lse = torch.empty(n, dtype=dtype, device=logits.device)  # (N,)
        total = torch.empty(n, dtype=dtype, device=logits.device)  # (N,) sum_v logits[v]
        for start in range(0, n, chunk_rows):
            rows = logits[start:start + chunk_rows].to(dtype)  # (chunk, V)
            torch.logsumexp(rows, dim=-1, out=lse[start:start + chunk_rows])
            torch.sum(rows, dim=-1, out=total[start:start + chunk_rows])
        nll = lse - logits.gather(1, target[:, None]).squeeze(1).to(dtype)  # (N,)
        smooth = v * lse - total
        keep = None if ignore_index is None else target.ne(ignore_index)
        if keep is not None:
            nll, smooth = nll * keep, smooth * keep
        nll_sum = nll.sum()
        loss = (1.0 - epsilon - eps_i) * nll_sum + eps_i * smooth.sum()
        ctx.save_for_backward(logits, target, lse, keep)
        ctx.weights, ctx.chunk_rows = (1.0 - epsilon - eps_i, eps_i), chunk_rows
        ctx.mark_non_differentiable(nll_sum)
        return loss, nll_sum

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_nll: Tensor):
        logits, target, lse, keep = ctx.saved_tensors
        on_target, eps_i = ctx.weights
        scale = grad_loss.to(lse.dtype).expand(logits.size(0))  # (N,)
        if keep is not None:
            scale = scale * keep
        grad = torch.empty_like(logits)
        step = ctx.chunk_rows
        for start in range(0, logits.size(0), step):
            sl = slice(start, start + step)
            g = torch.sub(logits[sl], lse[sl, None]).exp_().sub_(eps_i)  # softmax - eps_i, (chunk, V), lse's dtype
            g.scatter_add_(1, target[sl, None], g.new_full((g.size(0), 1), -on_target))
            grad[sl] = g.mul_(scale[sl, None])
        return grad, None, None, None, None


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


def copies_view(x: Tensor, repeats: int, layout: str = "adjacent") -> Tensor:
    """View the rows of an expanded batch as (copy, sample): (M·B, ...) -> (M, B, ...), no data copied.

    ``CopyLayout(repeats, layout).copies(x)`` (:meth:`seqba.layout.CopyLayout.copies`, with a diagram); the inverse
    of :func:`seqba.repeat.repeat_batch`: ``copies_view(repeat_batch(x, M, layout), M, layout)[c]`` is ``x`` for
    every copy c.

    Args:
        x: (M·B, ...) tensor, rows laid out as ``layout`` says.
        repeats: M, an int >= 1.
        layout: ``"adjacent"`` (copies of sample b are rows b·M ... b·M+M-1; a transposed, non-contiguous view) or
            ``"tiled"`` (copy c of sample b is row c·B+b; contiguous when ``x`` is).

    Returns:
        (M, B, ...) view of ``x``: ``[c, b]`` is copy c of sample b.

    Raises:
        ValueError: for an unknown ``layout``, ``repeats`` not an int >= 1, a 0-d ``x``, or a row count that is
            not a multiple of ``repeats``.
    """
    return CopyLayout(repeats, layout).copies(x)


def cross_entropy_with_term(term: ConsistencyTerm, logits: Tensor, target: Tensor, epsilon: float,
                            logs: dict[str, Any], *, ignore_index: int | None = 0, layout: CopyLayout | None = None,
                            compiled: bool = False) -> tuple[Tensor, Tensor]:
    """Label-smoothed CE + ``term.alpha`` × the consistency term, the way that is faster on ``logits``' device.

    Fused from the logits (:meth:`seqba.consistency.ConsistencyTerm.cross_entropy`: nothing of size rows × V kept)
    on the CPU or with ``compiled``; on a GPU without ``compiled`` the unfused pair, ``label_smoothed_nll_loss`` on
    float32 ``log_softmax`` and :meth:`~seqba.consistency.ConsistencyTerm.add`: there the eager fused chunks are many
    small launches, slower than two whole-tensor passes (``benchmarks/results/consistency_cuda.json``). Both give
    the same sums up to float rounding.

    Args:
        logits: (M·B, ..., V) any float dtype; target: (M·B, ...) int64; epsilon: smoothing mass in [0, 1);
        logs: gets ``"consistency_sum"``; ignore_index: padding id (None: none); layout: where the copies are
        (default: the term's).

    Returns:
        ``(loss_sum, nll_sum)``, 0-d: CE + alpha × term (differentiable) and the NLL sum.

    Raises:
        ValueError: what :meth:`~seqba.consistency.ConsistencyTerm.cross_entropy` raises.
    """
    if compiled or not logits.is_cuda:
        return term.cross_entropy(logits, target, epsilon, logs, ignore_index=ignore_index, layout=layout,
                                  compiled=compiled)
    lprobs = F.log_softmax(logits, dim=-1, dtype=torch.float32)
    loss, nll = label_smoothed_nll_loss(lprobs, target, epsilon, ignore_index=ignore_index)
    pad_mask = None if ignore_index is None else target.eq(ignore_index)
    return term.add(loss, logs, lprobs, pad_mask, layout=layout), nll


def consistency_loss(
    lprobs: Tensor,
    repeats: int,
    *,
    layout: str = "adjacent",
    pad_mask: Tensor | None = None,
    kind: str = "sym_kl",
) -> Tensor:
    """Disagreement between the M copies of each sample, summed over the B distinct samples and their positions.

    ``consistency_kind(kind)(lprobs, CopyLayout(repeats, layout), pad_mask)``: the kinds, their equations, costs
    and gradients, and how to normalise the term (R-Drop's and timm's alphas) are in :mod:`seqba.consistency`.
    Tasks use :class:`seqba.consistency.ConsistencyTerm`, which also weighs and logs the term.

    Args:
        lprobs: (M·B, ..., V) float log-probabilities (log_softmax of the logits) of the expanded batch, e.g.
            (M·B, T, V) for text or (M·B, V) for images; rows laid out as ``layout`` says. Must be finite (a -inf
            entry gives NaN: clamp, e.g. ``lprobs.clamp(min=-1e4)``); compute it in float32 for fp16/bf16 models.
        repeats: M, an int >= 2.
        layout: ``"adjacent"`` or ``"tiled"`` (:class:`seqba.layout.CopyLayout`).
        pad_mask: optional (M·B, ...) bool, True at positions to ignore (padding). The copies share their padding,
            so only the first copy's mask is read.
        kind: a name in :data:`seqba.consistency.CONSISTENCY` (``"sym_kl"``, ``"js"``).

    Returns:
        0-d tensor, differentiable once: the per-position term summed over the B samples and their kept positions
        (nats).

    Raises:
        ValueError: for an unknown ``kind`` or ``layout``; ``repeats`` not an int >= 2 (a consistency term at
            M = 1 is a configuration mistake, so it is refused rather than returned as 0); ``lprobs`` with fewer
            than 2 dimensions or a row count not a multiple of ``repeats``; a ``pad_mask`` that is not bool or not
            of shape ``lprobs.shape[:-1]``.
    """
    term = consistency_kind(kind)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 2:
        raise ValueError(f"consistency_loss needs repeats as an int >= 2 (copies to compare), got {repeats!r}")
    return term(lprobs, CopyLayout(repeats, layout), pad_mask)
