"""Consistency losses across the M copies of a Batch Augmentation batch, as components: one class per kind.

A kind measures, at each position (a target token, an image), how much the M copies of a sample disagree. Two
kinds ship, both generalised from 2 or 3 copies to any M:

* ``sym_kl`` (:class:`SymKL`): R-Drop's symmetric KL (Liang et al., NeurIPS 2021; fairseq
  ``criterions/label_smoothed_cross_entropy_with_rdrop.py``), the mean over the copy pairs;
* ``js`` (:class:`JS`): AugMix's Jensen-Shannon divergence (Hendrycks et al., ICLR 2020; timm ``loss/jsd.py``).

:data:`CONSISTENCY` is the registry (the config's ``ba.consistency`` choices are its keys, plus ``none``);
:class:`ConsistencyTerm` is what a task calls: it adds ``ba.consistency_alpha × term`` to the task's loss and logs
the term, so a task only says where its log-probabilities, padding mask and copy layout are. As fairseq's
``register_criterion`` and torchtune's ``instantiate(cfg.loss)``, a new kind is one class and one registration::

    @register_consistency("mse")
    class MSE(ConsistencyKind):
        def forward(self, copies):                       # (M, B, ..., D) -> (B, ...)
            return (copies - copies.mean(0)).pow(2).sum(-1).mean(0)

A kind written so is differentiated by autograd; :class:`HandWrittenKind` subclasses also give ``backward``
(:class:`SymKL` and :class:`JS` do, to keep no (M·B, ..., V) tensor between forward and backward). For the
cross-entropy fused with the term from the logits (:mod:`seqba.fused_consistency`,
:meth:`ConsistencyTerm.cross_entropy`), a kind gives its value and gradient per chunk of positions through
:meth:`ConsistencyKind.chunk_forward` and :meth:`ConsistencyKind.chunk_backward`; their defaults reuse ``forward``
(and autograd, or a hand-written ``backward``), so the MSE kind above works fused unchanged, and :class:`SymKL`
and :class:`JS` write both hooks to skip autograd and keep one number per row between them.

Normalisation, and R-Drop's alpha (fairseq ``--rdrop-alpha``, ``reg_alpha`` in the R-Drop code). Let N be the
number of distinct (un-repeated) non-pad target tokens, CE_c the cross-entropy summed over copy c's tokens, and C
the term (summed over the B distinct samples and their positions). seqba's loss is ``(Σ_c CE_c + alpha·C) / (M·N)``
(the CE is a mean over the M·N rows). fairseq R-Drop duplicates the batch (tiled, M = 2), sums the CE over both
copies, adds ``reg_alpha · compute_kl_loss``, whose value is exactly C (``sym_kl``) at M = 2, and divides by the
un-doubled count N: ``(CE_1 + CE_2 + reg_alpha·C) / N``. So at M = 2, with ``consistency_alpha = reg_alpha``
seqba's loss is exactly fairseq's divided by 2 (a factor on the whole loss, which Adam ignores up to its epsilon;
with SGD double the learning rate). Per distinct token, R-Drop weighs ½·reg_alpha·(pair term) against the copies'
mean CE, and seqba weighs (alpha / M)·C against it, so

    consistency_alpha = (M / 2) × reg_alpha

keeps R-Drop's balance at any M (= reg_alpha at M = 2). For images, timm ``JsdCrossEntropy`` per image is
``CE + alpha_timm · JS`` (its CE on the clean split only), so ``consistency_alpha = M × alpha_timm`` gives the
same balance against seqba's mean CE over the copies (AugMix: M = 3, alpha_timm = 12 -> 36).

Shape notation: B = distinct samples, M = repeats (copies per sample), V = vocab (or classes), D = features.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch
from torch import Tensor

from seqba.fused_consistency import LogProbGrad, cross_entropy_with_consistency
from seqba.layout import CopyLayout

__all__ = ["CONSISTENCY", "ConsistencyKind", "HandWrittenKind", "SymKL", "JS", "ConsistencyTerm",
           "register_consistency", "consistency_kind"]

#: name -> kind class; ``ba.consistency`` accepts these names and ``none``.
CONSISTENCY: dict[str, type[ConsistencyKind]] = {}


def register_consistency(name: str) -> Callable[[type[ConsistencyKind]], type[ConsistencyKind]]:
    """Class decorator: register a :class:`ConsistencyKind` subclass under ``name`` in :data:`CONSISTENCY`.

    Raises:
        ValueError: ``name`` is ``"none"`` or already registered.
    """
    def register(cls: type[ConsistencyKind]) -> type[ConsistencyKind]:
        if name == "none" or name in CONSISTENCY:
            raise ValueError(f"consistency kind {name!r} is reserved or already registered")
        cls.name = name
        CONSISTENCY[name] = cls
        return cls

    return register


def consistency_kind(name: str) -> ConsistencyKind:
    """A new instance of the kind registered as ``name``.

    Raises:
        ValueError: ``name`` not in :data:`CONSISTENCY` (naming the valid kinds).
    """
    if name not in CONSISTENCY:
        raise ValueError(f"kind must be one of {tuple(CONSISTENCY)}, got {name!r}")
    return CONSISTENCY[name]()


class ConsistencyKind:
    """A disagreement of the M copies of each sample at each position; subclasses define :meth:`forward`.

    Calling the kind checks its inputs, views the rows as copies (:meth:`seqba.layout.CopyLayout.copies`), and
    sums :meth:`forward`'s per-position term over the samples and kept (non-pad) positions; autograd gives the
    gradient unless the subclass writes its own (:class:`HandWrittenKind`).
    """

    name: ClassVar[str] = ""

    def forward(self, copies: Tensor) -> Tensor:
        """(M, B, ..., D) copies -> (B, ...) term per sample and position."""
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def chunk_forward(self, lprobs: Tensor, probs: Tensor) -> tuple[Tensor, Tensor | None]:
        """The fused kernel's forward on one chunk: the term per position, and a state per row for the backward.

        Args:
            lprobs: (M, n..., V) float log-probabilities l of the chunk's M copies (do not modify).
            probs: (M, n..., V) ``exp(lprobs)`` (do not modify).

        Returns:
            ``(value, state)``: value (n...) as :meth:`forward` gives it; state (M, n...) or None, handed to
            :meth:`chunk_backward` (the fused kernel keeps one number per row, never a vocab axis). The default is
            ``(self.forward(lprobs), None)``.
        """
        return self.forward(lprobs), None

    def chunk_backward(self, lprobs: Tensor, probs: Tensor, state: Tensor | None, weight: Tensor) -> LogProbGrad:
        """The fused kernel's backward on one chunk: the gradient of ``Σ weight · value`` w.r.t. ``lprobs``.

        Args:
            lprobs, probs: as :meth:`chunk_forward` (recomputed from the logits; both may be overwritten).
            state: what :meth:`chunk_forward` returned for these rows, (M, n...) or None.
            weight: (n...) the incoming gradient of each position's value (0 at padding).

        Returns:
            a :class:`seqba.fused_consistency.LogProbGrad` ``g = p · coef - offset`` with ``Σ_v g`` per row. The
            default differentiates :meth:`forward` by autograd and returns ``coef = None``, ``offset = -g``.
        """
        with torch.enable_grad():
            x = lprobs.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.forward(x), x, weight)
        return LogProbGrad(None, grad.neg(), grad.sum(dim=-1))

    def __call__(self, x: Tensor, layout: CopyLayout, pad_mask: Tensor | None = None) -> Tensor:
        """The term of an expanded batch, summed over the B samples and their kept positions.

        Args:
            x: (M·B, ..., D) float rows of the expanded batch in ``layout`` (log-probabilities for the shipped
                kinds: (M·B, T, V) for text, (M·B, V) for images).
            layout: where the copies are; ``layout.repeats`` must be >= 2.
            pad_mask: optional (M·B, ...) bool, True at positions to ignore. The copies share their padding, so
                only the first copy's mask is read (checking the others would cost a device sync).

        Returns:
            0-d tensor, differentiable.

        Raises:
            ValueError: ``layout.repeats < 2`` (with one copy there is nothing to agree with: a configuration
                mistake, refused rather than returned as 0); ``x`` with fewer than 2 dimensions or a row count not
                a multiple of M; a ``pad_mask`` that is not bool or not of shape ``x.shape[:-1]``.
        """
        if layout.repeats < 2:
            raise ValueError(f"a consistency term needs repeats >= 2 (copies to compare), got {layout.repeats}")
        if x.dim() < 2:
            raise ValueError(f"lprobs must be (M·B, ..., V), got shape {tuple(x.shape)}")
        if pad_mask is not None and (pad_mask.shape != x.shape[:-1] or pad_mask.dtype != torch.bool):
            raise ValueError(
                f"pad_mask must be a bool tensor of shape {tuple(x.shape[:-1])} (lprobs without its vocab "
                f"dimension), got {pad_mask.dtype} {tuple(pad_mask.shape)}"
            )
        keep = None if pad_mask is None else ~layout.copies(pad_mask)[0]  # (B, ...)
        return self.total(x, layout, keep)

    def total(self, x: Tensor, layout: CopyLayout, keep: Tensor | None) -> Tensor:
        """(M·B, ..., D) rows -> 0-d sum of :meth:`forward` over the positions where ``keep`` (B, ...) is True."""
        term = self.forward(layout.copies(x))  # (B, ...)
        if keep is not None:
            term = term.masked_fill(~keep, 0.0)
        return term.sum()


class HandWrittenKind(ConsistencyKind):
    """A kind with its own :meth:`backward`: forward runs without a graph, backward recomputes from the saved input.

    Checked against autograd of :meth:`forward` by ``torch.autograd.gradcheck`` in the tests. Differentiable once
    (no double backward).
    """

    def backward(self, copies: Tensor, grad: Tensor) -> Tensor:
        """(M, B, ..., D) copies, incoming gradient of each position (0-d, or (B, ...) with 0 at ignored ones)
        -> (M, B, ..., D) gradient of the summed term with respect to ``copies``."""
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def total(self, x: Tensor, layout: CopyLayout, keep: Tensor | None) -> Tensor:
        return _HandWritten.apply(x, keep, layout, self)

    def chunk_backward(self, lprobs: Tensor, probs: Tensor, state: Tensor | None, weight: Tensor) -> LogProbGrad:
        """:meth:`backward` as a :class:`seqba.fused_consistency.LogProbGrad` (``coef = None``, ``offset = -g``)."""
        grad = self.backward(lprobs, weight)
        return LogProbGrad(None, grad.neg(), grad.sum(dim=-1))


class _HandWritten(torch.autograd.Function):
    """``kind.forward`` summed over the kept positions, with ``kind.backward`` as its gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, keep: Tensor | None, layout: CopyLayout, kind: HandWrittenKind) -> Tensor:
        term = kind.forward(layout.copies(x))  # (B, ...)
        if keep is not None:
            term = term.masked_fill(~keep, 0.0)
        ctx.save_for_backward(x, keep)
        ctx.layout, ctx.kind = layout, kind
        return term.sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, keep = ctx.saved_tensors
        per_position = grad if keep is None else keep * grad  # 0-d, or (B, ...)
        out = ctx.kind.backward(ctx.layout.copies(x), per_position)  # (M, B, ..., D)
        return ctx.layout.rows(out), None, None, None


def _per_position(grad: Tensor, divisor: int) -> Tensor:
    """``grad / divisor`` broadcastable against (M, B, ..., V): a vocab axis added to a (B, ...) gradient."""
    scale = grad / divisor
    return scale if scale.dim() == 0 else scale.unsqueeze(-1)


@register_consistency("sym_kl")
class SymKL(HandWrittenKind):
    """The mean over the M(M-1)/2 unordered copy pairs of ½·(KL(p_i‖p_j) + KL(p_j‖p_i)); R-Drop's term at M = 2.

    On log-probabilities l_i = log p_i over V classes. Computed without the pair loop, from the identity
    ``Σ_{i<j} ½(KL_ij + KL_ji) = ½ Σ_{i<j} Σ_v (p_i - p_j)(l_i - l_j) = ½ [M Σ_i Σ_v p_i l_i - Σ_v (Σ_i p_i)(Σ_j l_j)]
    = ½ M Σ_i Σ_v p_i (l_i - l̄)``, with l̄ = (1/M) Σ_j l_j, so the term is ``S = (1 / (M-1)) Σ_i Σ_v p_i (l_i - l̄)``.
    This last form subtracts log-probabilities before multiplying, so it does not cancel two large sums when the
    copies nearly agree. O(M·V) time per position (the pair loop would be O(M²·V)); >= 0, and 0 when the copies
    agree. Gradient: ``∂S/∂l_k = (p_k (l_k - l̄ + 1) - p̄) / (M-1)`` (Σ_i ∂l̄/∂l_k = 1), p̄ = (1/M) Σ_i p_i; its
    sum over v is ``r_k / (M-1)``, r_k = Σ_v p_k (l_k - l̄) (Σ_v p_k = Σ_v p̄ = 1): the fused kernel keeps r_k per row.
    """

    def forward(self, copies: Tensor) -> Tensor:
        return self.chunk_forward(copies, copies.exp())[0]

    def chunk_forward(self, lprobs: Tensor, probs: Tensor) -> tuple[Tensor, Tensor]:
        rows = (lprobs - lprobs.mean(dim=0)).mul_(probs).sum(dim=-1)  # (M, B, ...): r_k
        return rows.sum(dim=0) / (lprobs.size(0) - 1), rows

    def chunk_backward(self, lprobs: Tensor, probs: Tensor, state: Tensor | None, weight: Tensor) -> LogProbGrad:
        scale = (weight / (lprobs.size(0) - 1)).unsqueeze(-1)  # (n..., 1)
        coef = torch.addcmul(scale - scale * lprobs.mean(dim=0), lprobs, scale)  # (l_k - l̄ + 1) · scale
        return LogProbGrad(coef, probs.mean(dim=0).mul_(scale), state * scale.squeeze(-1))

    def backward(self, copies: Tensor, grad: Tensor) -> Tensor:
        probs = copies.exp()
        out = copies - copies.mean(dim=0)
        out.add_(1.0).mul_(probs).sub_(probs.mean(dim=0))
        return out.mul_(_per_position(grad, copies.size(0) - 1))


@register_consistency("js")
class JS(HandWrittenKind):
    """Generalised Jensen-Shannon divergence ``J = (1/M) Σ_i KL(p_i ‖ p̄)``, p̄ = (1/M) Σ_i p_i, in [0, log M].

    The AugMix / timm ``JsdCrossEntropy`` form (there with M = 3), on log-probabilities l_i = log p_i. Numerical
    safety: p̄ is clamped below at ``tiny``, the dtype's smallest normal number, before the log, so log p̄ is finite
    even where every copy's probability underflows. Where the clamp acts every p_i < M·tiny, so it moves the term by
    less than about M·tiny·log M per entry: nothing. timm clamps p̄ at 1e-7, which changes the term wherever
    p̄ < 1e-7 (most of a large vocabulary). In float16, tiny is 6.1e-5: use float32. O(M·V) time per position.
    Gradient: ``∂J/∂l_k = p_k (l_k - log p̄) / M`` (Σ_i p_i ∂log p̄/∂l_k = p_k); where p̄ is clamped this is the
    unclamped function's gradient, which differs by < M·tiny. Its sum over v is ``r_k / M``, r_k = KL(p_k ‖ p̄):
    the fused kernel keeps r_k per row.
    """

    def forward(self, copies: Tensor) -> Tensor:
        return self.chunk_forward(copies, copies.exp())[0]

    def chunk_forward(self, lprobs: Tensor, probs: Tensor) -> tuple[Tensor, Tensor]:
        rows = (lprobs - self._log_mean(probs)).mul_(probs).sum(dim=-1)  # (M, B, ...): r_k
        return rows.sum(dim=0) / lprobs.size(0), rows

    def chunk_backward(self, lprobs: Tensor, probs: Tensor, state: Tensor | None, weight: Tensor) -> LogProbGrad:
        scale = (weight / lprobs.size(0)).unsqueeze(-1)  # (n..., 1)
        coef = torch.addcmul(-scale * self._log_mean(probs), lprobs, scale)  # (l_k - log p̄) · scale
        return LogProbGrad(coef, 0.0, state * scale.squeeze(-1))

    def backward(self, copies: Tensor, grad: Tensor) -> Tensor:
        probs = copies.exp()
        out = copies - self._log_mean(probs)
        out.mul_(probs)
        return out.mul_(_per_position(grad, copies.size(0)))

    @staticmethod
    def _log_mean(probs: Tensor) -> Tensor:
        """(M, B, ..., V) -> (B, ..., V): log p̄, p̄ clamped below at the dtype's smallest normal number."""
        return probs.mean(dim=0).clamp_min(torch.finfo(probs.dtype).tiny).log()


class ConsistencyTerm:
    """``alpha × kind(lprobs)`` added to a task's loss and logged: the one call a task makes for ``ba.consistency``.

    Args:
        kind: a name in :data:`CONSISTENCY`.
        alpha: the weight, ``ba.consistency_alpha`` (see the module docstring for R-Drop's and timm's alphas).
        layout: where the copies are in the rows given to :meth:`__call__` (a task whose copies change per batch
            passes ``layout=`` per call instead).

    Raises:
        ValueError: an unknown ``kind`` (naming the valid ones).
    """

    def __init__(self, kind: str, alpha: float, layout: CopyLayout | None = None) -> None:
        self.kind = consistency_kind(kind)
        self.alpha = alpha
        self.layout = layout

    @classmethod
    def from_config(cls, ba: Any) -> ConsistencyTerm | None:
        """The term of a ``BAConfig`` (``consistency``, ``consistency_alpha``, ``repeats``, ``layout``), or None for
        ``consistency: none``."""
        if ba.consistency == "none":
            return None
        return cls(ba.consistency, ba.consistency_alpha, CopyLayout(ba.repeats, ba.layout))

    def __call__(self, lprobs: Tensor, pad_mask: Tensor | None = None, *, layout: CopyLayout | None = None) -> Tensor:
        """The unweighted term (0-d, nats), summed over the B samples and their kept positions.

        Args:
            lprobs: (M·B, ..., V) float log-probabilities of the expanded batch (compute them in float32 for
                fp16/bf16 models; a -inf entry gives NaN: clamp it).
            pad_mask: optional (M·B, ...) bool, True at padding.
            layout: overrides the constructor's layout for this call.

        Raises:
            ValueError: no layout at all, or what :meth:`ConsistencyKind.__call__` raises.
        """
        layout = layout or self.layout
        if layout is None:
            raise ValueError("ConsistencyTerm: no copy layout given (pass layout= here or to the constructor)")
        return self.kind(lprobs, layout, pad_mask)

    def add(self, loss: Tensor, logs: dict[str, Any], lprobs: Tensor, pad_mask: Tensor | None = None, *,
            layout: CopyLayout | None = None) -> Tensor:
        """``loss + alpha × term``; writes ``logs["consistency_sum"] = term × M`` (detached), so that divided by
        the M·B rows' sample size it reads as the mean term per distinct position."""
        layout = layout or self.layout
        term = self(lprobs, pad_mask, layout=layout)
        logs["consistency_sum"] = term.detach() * layout.repeats
        return loss + self.alpha * term

    def cross_entropy(self, logits: Tensor, target: Tensor, epsilon: float, logs: dict[str, Any], *,
                      ignore_index: int | None = 0, layout: CopyLayout | None = None,
                      chunk_rows: int | None = None, compiled: bool = False) -> tuple[Tensor, Tensor]:
        """Label-smoothed cross-entropy + ``alpha × term`` fused from the logits; logs the term as :meth:`add` does.

        ``seqba.fused_consistency.cross_entropy_with_consistency``: the same sums (up to float rounding) as
        ``label_smoothed_cross_entropy(logits, ...)`` followed by :meth:`add` on ``log_softmax(logits.float())``
        with ``pad_mask = target.eq(ignore_index)``, without the (M·B, ..., V) float32 log-probabilities. Tasks call
        :func:`seqba.losses.cross_entropy_with_term`, which takes the unfused pair where it is faster (a GPU).

        Args:
            logits: (M·B, ..., V) unnormalised scores, any float dtype; target: (M·B, ...) int64 gold ids.
            epsilon: label smoothing mass in [0, 1); ignore_index: the padding id (None: no padding).
            logs: gets ``"consistency_sum"`` (term × M, detached).
            layout: overrides the constructor's layout; chunk_rows: rows per chunk (default: cache-sized);
            compiled: each chunk through ``torch.compile`` (see ``cross_entropy_with_consistency``).

        Returns:
            ``(loss_sum, nll_sum)``, 0-d: CE + alpha × term (differentiable) and the NLL sum (not).

        Raises:
            ValueError: no layout at all, or what ``cross_entropy_with_consistency`` raises.
        """
        layout = layout or self.layout
        if layout is None:
            raise ValueError("ConsistencyTerm: no copy layout given (pass layout= here or to the constructor)")
        loss, nll, term = cross_entropy_with_consistency(logits, target, epsilon, layout, self.kind, self.alpha,
                                                         ignore_index=ignore_index, chunk_rows=chunk_rows,
                                                         compiled=compiled)
        logs["consistency_sum"] = term.detach() * layout.repeats
        return loss, nll
