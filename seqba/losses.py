"""Training losses: label-smoothed cross-entropy (translation), AR/TAR (AWD-LSTM language models), and the
cross-copy consistency term of Batch Augmentation.

* ``label_smoothed_nll_loss``: Szegedy et al. 2016 ("Rethinking the Inception Architecture", Sec. 7), exactly as
  fairseq ``fairseq/criterions/label_smoothed_cross_entropy.py``: summed over non-pad tokens; the caller
  divides by the number of target tokens.
* ``label_smoothed_cross_entropy``: the same loss computed from the logits in one fused pass (log-sum-exp
  forward, ``softmax - smoothed target`` backward, in row chunks), without materialising the (N, V)
  log-probabilities; what the translation task trains with unless a consistency term needs the log-probabilities.
* ``activation_regularization`` / ``temporal_activation_regularization``: Merity et al. 2017 ("Regularizing
  and Optimizing LSTM Language Models", Sec. 4.6), as salesforce/awd-lstm-lm ``main.py``.
* ``consistency_loss``: agreement between the M copies of each sample of a BA batch, R-Drop's symmetric KL
  (Liang et al., NeurIPS 2021; fairseq ``criterions/label_smoothed_cross_entropy_with_rdrop.py``) and AugMix's
  Jensen-Shannon term (Hendrycks et al., ICLR 2020; timm ``loss/jsd.py``), both generalised from 2 or 3 copies to
  any M. ``copies_view`` shows the expanded batch's rows as (copy, sample).

Shape notation: B = batch (distinct samples), M = repeats (copies per sample), T = time, N = tokens
(flattened), V = vocab (or classes), H = hidden size.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "label_smoothed_nll_loss",
    "label_smoothed_cross_entropy",
    "activation_regularization",
    "temporal_activation_regularization",
    "consistency_loss",
    "copies_view",
    "CONSISTENCY_KINDS",
]

CONSISTENCY_KINDS = ("sym_kl", "js")
_LAYOUTS = ("adjacent", "tiled")  # as seqba.samplers.LAYOUTS; kept here so this module needs torch only


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
    Speed against the unfused loss: ``benchmarks/bench_kernels.py``.

    Args:
        logits: (N, V) or (B, T, V) unnormalised scores, any float dtype (bf16 under autocast).
        target: gold ids (N,) or (B, T), int64.
        epsilon: smoothing mass in [0, 1).
        ignore_index: target id that contributes nothing (pad); ``None`` keeps every token.
        chunk_rows: rows per float32 chunk; default 64 on the CPU (a chunk of 8k-vocabulary rows stays in cache),
            4096 elsewhere (fewer kernel launches on a GPU).

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
        chunk_rows = 64 if logits.device.type == "cpu" else 4096
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

    The inverse of :func:`seqba.samplers.repeat_batch`: ``copies_view(repeat_batch(x, M, layout), M, layout)[c]``
    is ``x`` for every copy c. With samples a, b, c and M = 2::

        rows of x       adjacent           tiled
                        row  sample copy   row  sample copy
                        0    a      0      0    a      0
                        1    a      1      1    b      0
                        2    b      0      2    c      0
                        3    b      1      3    a      1
                        4    c      0      4    b      1
                        5    c      1      5    c      1
        copies_view     [[a, b, c],        [[a, b, c],
                         [a, b, c]]         [a, b, c]]

    Args:
        x: (M·B, ...) tensor, rows laid out as ``layout`` says.
        repeats: M, an int >= 1.
        layout: ``"adjacent"`` (copies of sample b are rows b·M ... b·M+M-1; the result is a transposed,
            non-contiguous view) or ``"tiled"`` (copy c of sample b is row c·B+b; the result is contiguous
            when ``x`` is).

    Returns:
        (M, B, ...) view of ``x``: ``[c, b]`` is copy c of sample b.

    Raises:
        ValueError: for an unknown ``layout``, ``repeats`` not an int >= 1, a 0-d ``x``, or a row count that is
            not a multiple of ``repeats``.
    """
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if x.dim() == 0 or x.size(0) % repeats != 0:
        raise ValueError(f"rows of shape {tuple(x.shape)} are not a multiple of repeats={repeats}")
    batch = x.size(0) // repeats
    if layout == "tiled":
        return x.view(repeats, batch, *x.shape[1:])
    return x.view(batch, repeats, *x.shape[1:]).transpose(0, 1)


def consistency_loss(
    lprobs: Tensor,
    repeats: int,
    *,
    layout: str = "adjacent",
    pad_mask: Tensor | None = None,
    kind: str = "sym_kl",
) -> Tensor:
    """Disagreement between the M copies of each sample, summed over the B distinct samples and their positions.

    At each position (a target token, or an image) with the M copies' distributions p_1 ... p_M over V classes
    (l_i = log p_i):

    * ``"sym_kl"``: the mean over the M(M-1)/2 unordered pairs of ½·(KL(p_i‖p_j) + KL(p_j‖p_i)); at M = 2 this
      is R-Drop's per-token term. Computed without the pair loop, from the identity
      ``Σ_{i<j} ½(KL_ij + KL_ji) = ½ Σ_{i<j} Σ_v (p_i - p_j)(l_i - l_j) = ½ [M Σ_i Σ_v p_i l_i - Σ_v (Σ_i p_i)(Σ_j l_j)]
      = ½ M Σ_i Σ_v p_i (l_i - l̄)``, with l̄ = (1/M) Σ_j l_j, so the term is
      ``(1 / (M-1)) Σ_i Σ_v p_i (l_i - l̄)``. The last form is the one computed: it subtracts log-probabilities
      before multiplying, so it does not cancel two large sums when the copies nearly agree.
    * ``"js"``: the generalised Jensen-Shannon divergence ``(1/M) Σ_i KL(p_i ‖ p̄)``, p̄ = (1/M) Σ_i p_i (the
      AugMix / timm ``JsdCrossEntropy`` form, there with M = 3), in [0, log M]. Numerical safety: p̄ is clamped
      below at ``tiny``, the dtype's smallest normal number (1.2e-38 in float32), before the log, so log p̄ is
      finite even where every copy's probability underflows. Where the clamp acts every p_i < M·tiny, so it moves
      the term by less than about M·tiny·log M per entry: nothing. timm clamps p̄ at 1e-7, which changes the term
      wherever p̄ < 1e-7 (most of a large vocabulary). (``logsumexp_i(l_i) - log M`` would need no clamp, but made
      the term slower on CPU.) In float16, tiny is 6.1e-5: use float32.

    Cost: O(M·V) time per position for both kinds (the pair loop would be O(M²·V)). Memory: two temporary
    (M·B, ..., V) tensors in forward and two in backward, none kept between them: the backward is written out
    (see ``_Consistency``) and recomputes p from ``lprobs``, which log_softmax keeps anyway. Measured by
    ``benchmarks/bench_consistency.py``. Both kinds are >= 0 and 0 when the copies agree. Differentiable once
    (no double backward).

    Normalisation, and the correspondence to R-Drop's alpha (fairseq ``--rdrop-alpha``, ``reg_alpha`` in the
    R-Drop code). Let N be the number of distinct (un-repeated) non-pad target tokens, CE_c the cross-entropy
    summed over copy c's tokens, and C this function's value (one term per distinct token). seqba's loss is
    ``(Σ_c CE_c + alpha·C) / (M·N)`` (the CE is a mean over the M·N rows). fairseq R-Drop duplicates the batch
    (tiled, M = 2), sums the CE over both copies, adds ``reg_alpha · compute_kl_loss``, whose value is exactly C at
    M = 2, and divides by the un-doubled count N: ``(CE_1 + CE_2 + reg_alpha·C) / N``. So at M = 2, with
    ``consistency_alpha = reg_alpha`` seqba's loss is exactly fairseq's divided by 2 (a factor on the whole loss,
    which Adam ignores up to its epsilon; with SGD double the learning rate). Per distinct token, R-Drop weighs
    ½·reg_alpha·(pair term) against the copies' mean CE, and seqba weighs (alpha / M)·C against it, so

        consistency_alpha = (M / 2) × reg_alpha

    keeps R-Drop's balance at any M (= reg_alpha at M = 2). For images, timm ``JsdCrossEntropy`` per image is
    ``CE + alpha_timm · JS`` (its CE on the clean split only), so ``consistency_alpha = M × alpha_timm`` gives the
    same balance against seqba's mean CE over the copies (AugMix: M = 3, alpha_timm = 12 -> 36).

    Args:
        lprobs: (M·B, ..., V) float log-probabilities (log_softmax of the logits) of the expanded batch, e.g.
            (M·B, T, V) for text or (M·B, V) for images; rows laid out as ``layout`` says. Must be finite (a -inf
            entry gives NaN: clamp, e.g. ``lprobs.clamp(min=-1e4)``); compute it in float32 for fp16/bf16 models.
        repeats: M, an int >= 2.
        layout: ``"adjacent"`` (copies of sample b are rows b·M ... b·M+M-1) or ``"tiled"`` (copy c of sample b is
            row c·B+b), as :func:`seqba.samplers.repeat_batch`; see :func:`copies_view`.
        pad_mask: optional (M·B, ...) bool, True at positions to ignore (padding). The copies share their padding,
            so only the first copy's mask is read (no check of the others, which would cost a device sync).
        kind: ``"sym_kl"`` or ``"js"`` (``CONSISTENCY_KINDS``).

    Returns:
        0-d tensor, differentiable: the per-position term summed over the B samples and their kept positions
        (nats). The caller normalises it like the cross-entropy (see above).

    Raises:
        ValueError: for an unknown ``kind`` or ``layout``; ``repeats`` not an int >= 2 (with one copy there is
            nothing to agree with: a consistency term at M = 1 is a configuration mistake, so it is refused rather
            than returned as 0); ``lprobs`` with fewer than 2 dimensions or a row count not a multiple of
            ``repeats``; a ``pad_mask`` that is not bool or not of shape ``lprobs.shape[:-1]``.
    """
    if kind not in CONSISTENCY_KINDS:
        raise ValueError(f"kind must be one of {CONSISTENCY_KINDS}, got {kind!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 2:
        raise ValueError(f"consistency_loss needs repeats as an int >= 2 (copies to compare), got {repeats!r}")
    if lprobs.dim() < 2:
        raise ValueError(f"lprobs must be (M·B, ..., V), got shape {tuple(lprobs.shape)}")
    if pad_mask is not None and (pad_mask.shape != lprobs.shape[:-1] or pad_mask.dtype != torch.bool):
        raise ValueError(
            f"pad_mask must be a bool tensor of shape {tuple(lprobs.shape[:-1])} (lprobs without its vocab "
            f"dimension), got {pad_mask.dtype} {tuple(pad_mask.shape)}"
        )
    keep = None if pad_mask is None else ~copies_view(pad_mask, repeats, layout)[0]  # (B, ...)
    return _Consistency.apply(lprobs, keep, repeats, layout, kind)


def _reference_point(lp: Tensor, probs: Tensor, kind: str) -> Tensor:
    """(M, B, ..., V) copies -> (B, ..., V): l̄ = mean_i l_i (sym_kl), or log p̄ clamped at tiny (js)."""
    if kind == "sym_kl":
        return lp.mean(dim=0)
    return probs.mean(dim=0).clamp_min(torch.finfo(probs.dtype).tiny).log()


class _Consistency(torch.autograd.Function):
    """consistency_loss with a hand-written backward that keeps no (M·B, ..., V) tensor of its own.

    Autograd through the plain expression would save p and l - r (two tensors the size of ``lprobs``) and make
    about a dozen passes over them; here backward recomputes p from ``lprobs``, which log_softmax keeps anyway.
    With r the reference point of :func:`_reference_point` and g the incoming gradient of each kept position:

    * sym_kl, S = (1/(M-1)) Σ_i Σ_v p_i (l_i - l̄):  ∂S/∂l_k = (p_k (l_k - l̄ + 1) - p̄) / (M-1)  (Σ_i ∂l̄/∂l_k = 1);
    * js, J = (1/M) Σ_i Σ_v p_i (l_i - log p̄):        ∂J/∂l_k = p_k (l_k - log p̄) / M  (Σ_i p_i ∂log p̄/∂l_k = p_k);
      where p̄ is clamped at tiny this is the unclamped function's gradient, which differs by < M·tiny.

    Checked against autograd of the plain expression by ``torch.autograd.gradcheck`` in the tests.
    """

    @staticmethod
    def forward(ctx, lprobs: Tensor, keep: Tensor | None, repeats: int, layout: str, kind: str) -> Tensor:
        lp = copies_view(lprobs, repeats, layout)  # (M, B, ..., V)
        probs = lp.exp()
        diff = lp - _reference_point(lp, probs, kind)
        term = diff.mul_(probs).sum(dim=-1).sum(dim=0)  # (B, ...)
        term = term / (repeats - 1 if kind == "sym_kl" else repeats)
        if keep is not None:
            term = term.masked_fill(~keep, 0.0)
        ctx.save_for_backward(lprobs, keep)
        ctx.repeats, ctx.layout, ctx.kind = repeats, layout, kind
        return term.sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        lprobs, keep = ctx.saved_tensors
        repeats, layout, kind = ctx.repeats, ctx.layout, ctx.kind
        lp = copies_view(lprobs, repeats, layout)  # (M, B, ..., V)
        probs = lp.exp()
        out = lp - _reference_point(lp, probs, kind)
        if kind == "sym_kl":
            out.add_(1.0).mul_(probs).sub_(probs.mean(dim=0))
            scale = grad / (repeats - 1)
        else:
            out.mul_(probs)
            scale = grad / repeats
        out.mul_(scale if keep is None else (keep * scale).unsqueeze(-1))
        return _rows(out, layout), None, None, None, None


def _rows(copies: Tensor, layout: str) -> Tensor:
    """Inverse of :func:`copies_view`: (M, B, ...) -> (M·B, ...), rows laid out as ``layout`` says."""
    rows = copies.transpose(0, 1) if layout == "adjacent" else copies
    return rows.reshape(-1, *copies.shape[2:])
