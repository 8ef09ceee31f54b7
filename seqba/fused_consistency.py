"""Label-smoothed cross-entropy plus a consistency term across the M copies, fused from the logits.

:func:`cross_entropy_with_consistency` returns what ``label_smoothed_cross_entropy(logits, ...)`` and
``kind(log_softmax(logits.float()), layout, pad_mask)`` (:mod:`seqba.consistency`) give, in one pass over the
logits, without the (M·B, T, V) float32 log-probabilities that the unfused pair needs (and their gradient, and
``log_softmax``'s backward). Forward and backward walk the expanded batch in chunks of positions that hold all M
copies of each position (:meth:`seqba.layout.CopyLayout.copies` views the rows as copies, for either layout); per
chunk, in float32, the log-sum-exp of every row is computed once and shared by the cross-entropy and the term::

    z (M, n, V) logits of n positions -> lse = logsumexp(z), l = z - lse, p = exp(l)
    forward:   CE from l (nll = -l[target], smooth = -Σ_v l);  term from kind.chunk_forward(l, p)
    backward:  g = kind.chunk_backward(l, p, ...)            gradient of the term w.r.t. l, as p·coef - offset
               dz = g - p·Σ_v g                               log_softmax's Jacobian
                  + c·(p - eps_i - (1 - epsilon - eps_i)·onehot(target))     the CE's (c: its incoming gradient)

Between forward and backward only the logits (which exist anyway), each row's lse and each row's kind state (one
number per row) are kept: nothing of size rows × V. A kind gives the fused kernel its value and its gradient per
chunk through :meth:`seqba.consistency.ConsistencyKind.chunk_forward` / ``chunk_backward``; the defaults there
reuse the kind's ``forward`` (and autograd, or a hand-written ``backward``), so any registered kind works fused,
and a kind that writes the two hooks (``sym_kl``, ``js``) skips autograd and its own log-softmax-sized
intermediates. Its speed and memory against the unfused pair: ``benchmarks/bench_consistency.py``.

Shape notation: B = distinct samples, M = repeats, P = positions per sample (T for text, 1 for images),
n = positions in one chunk, V = vocab (or classes).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple

import torch
from torch import Tensor

from seqba.layout import CopyLayout

# A seqba.consistency.ConsistencyKind; not imported here (that module imports this one for LogProbGrad).
ConsistencyKind = Any

__all__ = ["LogProbGrad", "cross_entropy_with_consistency", "default_chunk_rows"]

#: float32 elements of one CPU chunk (a few MiB: the chunk and its temporaries stay in cache).
CPU_CHUNK_ELEMENTS = 1 << 19


class LogProbGrad(NamedTuple):
    """A kind's gradient w.r.t. the log-probabilities l of one chunk, as ``g = p · coef - offset``.

    Fields:
        coef: (M, n..., V) float, or None for 0 (the fused kernel may overwrite it in place).
        offset: broadcastable to (M, n..., V): e.g. (n..., V) when shared by the copies, a 0-d tensor or a float.
        row_sum: (M, n...) ``Σ_v g`` of every row (what log_softmax's Jacobian needs).
    """

    coef: Tensor | None
    offset: Tensor | float
    row_sum: Tensor


def default_chunk_rows(vocab: int, device: torch.device) -> int:
    """Rows per float32 chunk: ``CPU_CHUNK_ELEMENTS // vocab`` (at least 1) on the CPU, 4096 elsewhere."""
    return max(1, CPU_CHUNK_ELEMENTS // vocab) if device.type == "cpu" else 4096


def cross_entropy_with_consistency(
    logits: Tensor,
    target: Tensor,
    epsilon: float,
    layout: CopyLayout,
    kind: ConsistencyKind,
    alpha: float,
    *,
    ignore_index: int | None = 0,
    chunk_rows: int | None = None,
    compiled: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Label-smoothed cross-entropy + ``alpha`` × consistency term, from the logits in one fused pass.

    The sums equal ``label_smoothed_cross_entropy(logits, target, epsilon, ignore_index)`` (:mod:`seqba.losses`)
    and ``kind(log_softmax(logits.float()), layout, target.eq(ignore_index))`` up to float rounding, and so do
    their gradients. The copies share their padding (an expanded batch's do): the first copy's targets say which
    positions are padding, for the cross-entropy as for the term.

    Args:
        logits: (M·B, ..., V) unnormalised scores of the expanded batch, rows in ``layout``, any float dtype
            (bf16 included: chunks are computed in float32, float64 for float64 logits).
        target: (M·B, ...) int64 gold ids.
        epsilon: label smoothing mass in [0, 1).
        layout: where the copies are (``layout.repeats`` >= 2).
        kind: a :class:`seqba.consistency.ConsistencyKind` instance (``seqba.consistency.consistency_kind(name)``).
        alpha: weight of the term in ``loss_sum``.
        ignore_index: target id of padding; ``None`` keeps every position.
        chunk_rows: rows per chunk, rounded down to whole positions (M rows each, at least one position);
            default :func:`default_chunk_rows` (a quarter of it on a GPU when not ``compiled``).
        compiled: run each chunk's forward and backward through ``torch.compile`` (one fused loop per step of the
            chunk instead of one pass per operation; compiled once per process and kind, recompiled for new chunk
            shapes as ``torch.compile`` decides). Needs a working inductor backend (a C++ compiler on the CPU).

    Returns:
        ``(loss_sum, nll_sum, term)``, 0-d float32 (float64 for float64 logits), sums over kept positions:
        ``loss_sum = CE + alpha · term``; ``nll_sum`` (not differentiable); ``term`` summed over the B samples.
        One hand-written backward serves ``loss_sum`` and ``term``; differentiable once.

    Raises:
        ValueError: ``target``'s shape is not ``logits``'s without its last dimension, ``logits`` has fewer than
            2 dimensions, ``layout.repeats < 2``, a row count not a multiple of M, or ``chunk_rows < 1``.
    """
    if logits.dim() < 2 or target.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy_with_consistency: target shape {tuple(target.shape)} does not match logits "
                         f"shape {tuple(logits.shape)} without its vocab dimension")
    if layout.repeats < 2:
        raise ValueError(f"a consistency term needs repeats >= 2 (copies to compare), got {layout.repeats}")
    layout.samples(logits.size(0))  # raises unless the rows are a multiple of M
    if chunk_rows is None:  # an eager GPU chunk holds about four float32 tensors of its size, the CE's two
        chunk_rows = default_chunk_rows(logits.size(-1), logits.device)
        chunk_rows = chunk_rows if compiled or logits.device.type == "cpu" else chunk_rows // 4
    if chunk_rows < 1:
        raise ValueError(f"cross_entropy_with_consistency: chunk_rows={chunk_rows} must be >= 1")
    rows, vocab = logits.size(0), logits.size(-1)
    return _FusedCEConsistency.apply(logits.reshape(rows, -1, vocab), target.reshape(rows, -1), float(epsilon),
                                     ignore_index, layout, kind, float(alpha), max(1, chunk_rows // layout.repeats),
                                     compiled)


def _chunks(samples: int, positions: int, per_chunk: int) -> Iterator[tuple[slice, slice, slice]]:
    """Index tuples into a (M, B, P, ...) copies view: about ``per_chunk`` positions each, all M copies, every
    position once (whole samples when a sample has fewer positions than a chunk, else pieces of one sample)."""
    every_copy = slice(None)
    if per_chunk >= positions:
        step = per_chunk // positions
        for b in range(0, samples, step):
            yield every_copy, slice(b, b + step), slice(None)
    else:
        for b in range(samples):
            for t in range(0, positions, per_chunk):
                yield every_copy, slice(b, b + 1), slice(t, t + per_chunk)


def _forward_chunk(logits: Tensor, target: Tensor, dtype: torch.dtype, kind: ConsistencyKind):
    """One chunk's forward: (M, b, t, V) logits, (M, b, t) targets -> lse, nll, smooth (M, b, t), the kind's value
    (b, t) and state ((M, b, t) or None)."""
    z = logits.to(dtype)
    top = z.amax(dim=-1, keepdim=True)
    lprobs = z - top
    probs = lprobs.exp()
    norm = probs.sum(dim=-1, keepdim=True)
    log_norm = norm.log()
    lprobs.sub_(log_norm)  # log_softmax
    probs.div_(norm)  # softmax
    value, state = kind.chunk_forward(lprobs, probs)
    nll = lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1).neg_()
    return (top + log_norm).squeeze(-1), nll, lprobs.sum(dim=-1).neg_(), value, state


def _backward_chunk(logits: Tensor, target: Tensor, lse: Tensor, state: Tensor | None, ce: Tensor, term: Tensor,
                    kind: ConsistencyKind, on_target: float, eps_i: float, out: Tensor) -> None:
    """One chunk's backward into ``out`` (M, b, t, V): the CE's weight ``ce`` and the term's ``term`` per position
    (b, t), the row's ``lse`` and kind ``state`` (M, b, t) saved by :func:`_forward_chunk`."""
    lprobs = logits.to(lse.dtype) - lse.unsqueeze(-1)  # (M, b, t, V)
    probs = lprobs.exp()
    g = kind.chunk_backward(lprobs, probs, state, term)
    shift = (ce - g.row_sum).unsqueeze(-1)  # (M, b, t, 1): the CE's p and the Jacobian's -p·Σ_v g
    dz = probs.mul_(shift) if g.coef is None else g.coef.add_(shift).mul_(probs)
    tgt = target.unsqueeze(-1)
    dz.scatter_add_(-1, tgt, (ce * -on_target).expand(tgt.shape[:-1]).unsqueeze(-1).contiguous())
    torch.sub(dz, g.offset + (ce * eps_i).unsqueeze(-1), out=out)


_COMPILED: dict[str, Callable] = {}


def _chunk_kernels(compiled: bool) -> tuple[Callable, Callable]:
    """(forward, backward) chunk functions, eager or through ``torch.compile`` (built once per process)."""
    if not compiled:
        return _forward_chunk, _backward_chunk
    if not _COMPILED:
        _COMPILED["forward"] = torch.compile(_forward_chunk)
        _COMPILED["backward"] = torch.compile(_backward_chunk)
    return _COMPILED["forward"], _COMPILED["backward"]


class _FusedCEConsistency(torch.autograd.Function):
    """(M·B, P, V) logits -> (loss_sum, nll_sum, term); see :func:`cross_entropy_with_consistency`."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, epsilon: float, ignore_index: int | None, layout: CopyLayout,
                kind: ConsistencyKind, alpha: float, per_chunk: int, compiled: bool):
        rows, positions, vocab = logits.shape
        dtype = torch.promote_types(logits.dtype, torch.float32)
        z_copies, t_copies = layout.copies(logits), layout.copies(target)  # (M, B, P, V), (M, B, P)
        lse = logits.new_empty((rows, positions), dtype=dtype)  # (M·B, P)
        nll, smooth = torch.empty_like(lse), torch.empty_like(lse)
        lse_c, nll_c, smooth_c = layout.copies(lse), layout.copies(nll), layout.copies(smooth)  # (M, B, P) views
        value = logits.new_empty(t_copies.shape[1:], dtype=dtype)  # (B, P)
        # before the chunks' temporaries: a small tensor kept to the backward, allocated between them, could split
        # the heap block that the gradient of the last step left (and the backward's gradient would fault new pages)
        state = torch.empty_like(lse)
        state_c = layout.copies(state)
        forward_chunk = _chunk_kernels(compiled)[0]
        for idx in _chunks(*value.shape, per_chunk):
            lse_c[idx], nll_c[idx], smooth_c[idx], value[idx[1:]], row_state = forward_chunk(
                z_copies[idx], t_copies[idx], dtype, kind)
            if row_state is None:
                state = None
            else:
                state_c[idx] = row_state
        keep = None if ignore_index is None else t_copies[0].ne(ignore_index)  # (B, P), the first copy's padding
        if keep is not None:  # masked_fill, not a product: a padded position's garbage (inf, NaN) adds nothing
            nll_c, smooth_c = nll_c.masked_fill(~keep, 0.0), smooth_c.masked_fill(~keep, 0.0)
            value = value.masked_fill(~keep, 0.0)
        eps_i = epsilon / (vocab - 1)
        nll_sum, term = nll_c.sum(), value.sum()
        loss = (1.0 - epsilon - eps_i) * nll_sum + eps_i * smooth_c.sum() + alpha * term
        ctx.save_for_backward(logits, target, lse, state, keep)
        ctx.layout, ctx.kind, ctx.alpha, ctx.per_chunk, ctx.compiled = layout, kind, alpha, per_chunk, compiled
        ctx.weights = (1.0 - epsilon - eps_i, eps_i)
        ctx.mark_non_differentiable(nll_sum)
        return loss, nll_sum, term

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor, _grad_nll: Tensor, grad_term: Tensor):
        logits, target, lse, state, keep = ctx.saved_tensors
        layout = ctx.layout
        z_copies, t_copies, lse_c = layout.copies(logits), layout.copies(target), layout.copies(lse)
        state_c = None if state is None else layout.copies(state)
        grad = torch.empty_like(logits)
        grad_c = layout.copies(grad)  # (M, B, P, V) view
        ce = grad_loss.to(lse.dtype).expand(t_copies.shape[1:])  # (B, P): the CE's weight per position
        term = (ctx.alpha * grad_loss + grad_term).to(lse.dtype).expand(t_copies.shape[1:])
        if keep is not None:
            ce, term = ce * keep, term * keep
        backward_chunk = _chunk_kernels(ctx.compiled)[1]
        for idx in _chunks(*ce.shape, ctx.per_chunk):
            backward_chunk(z_copies[idx], t_copies[idx], lse_c[idx], None if state_c is None else state_c[idx],
                           ce[idx[1:]], term[idx[1:]], ctx.kind, *ctx.weights, grad_c[idx])
        return grad, None, None, None, None, None, None, None, None
