"""Gradient statistics of Batch Augmentation: per-sample gradients, Pearson correlation, per-copy statistics.

The BA paper (Hoffer et al., "Augment your batch", CVPR 2020) argues from two measurements, both built here:

* **Table 1**: the Pearson correlation ρ between the per-sample gradients of an image and its augmentation is high
  (ResNet-44 CIFAR-10: 0.99 at initialisation, 0.56 after 5 epochs, 0.13 converged), that of two different images
  is about zero (−0.11 / −0.04 / 0). :func:`per_sample_grads` + :func:`pearson` (used by
  ``python -m seqba.analyze grad-correlation``).
* **Figure 1**: the L2 norm of the update's gradient falls as M grows. :class:`GradStats` logs it during training,
  together with the norms of the M copies' gradients, their mean pairwise cosine and their variance
  (``train.grad_stats_interval``; ``python -m seqba.analyze grad-norm`` plots it).

Definitions (P = number of parameter entries, M = copies, B = distinct samples, N = M·B rows)::

    per-sample gradient    g_i = ∇θ loss(sample i)                               (P,)
    Pearson ρ(a, b)        cos(a - mean(a), b - mean(b)), means over the P entries  (Table 1)
    copy gradient          g_c = ∇θ [Σ_{rows r of copy c} loss_r] / (S / M)       copy c = one of the M copies of
                                                                                   every sample; S = sample size
    full gradient          ḡ = (1/M) Σ_c g_c = ∇θ Σ_r loss_r / S                  the update's gradient (data term)
    grad_var_copies        1/(M-1) Σ_c ||g_c - ḡ||²                               unbiased, summed over entries

Training-time statistics (:class:`GradStats`, a :class:`~seqba.callbacks.Callback`): every
``train.grad_stats_interval`` updates, after the optimizer step, one extra forward of the update's (last) expanded
batch in training mode and M extra backward passes (``torch.autograd.grad`` of each copy's summed loss, graph
retained). Every one of those backward passes traverses the whole M·B-row graph (rows of other copies get zero
gradients but are still computed, and BatchNorm couples them), so a measured update costs about ``(1 + 2M) / 3``
updates more, i.e. that divided by the interval per update on average. Measured costs are in
``benchmarks/results/gradstats.json`` (``benchmarks/bench_gradstats.py``); use a large interval for long runs.

The extra passes leave the training trajectory exactly as it was (tested bit for bit on CPU): they write no
``.grad``, do not touch the optimizer, restore the torch (and CUDA) RNG state that dropout draws from and the
model's buffers (BatchNorm running statistics), and only read the state a task carries between batches (a language
model's hidden state before the window). They see the parameters after the step and fresh dropout masks, so ``grad_norm_full`` estimates ``gnorm`` (logged before the step, with the
regularisers of the loss) rather than repeating it. The loss is the task's data term, per row
(:meth:`seqba.tasks.base.Task.row_losses`; regularisers and ``ba.consistency`` are left out, they are not sums over
copies).

Keys written to ``metrics.jsonl`` (one record per measured update, with ``step`` and ``epoch``):
``grad_norm_full`` ||ḡ||, ``grad_norm_copy_mean`` mean_c ||g_c||, ``grad_cos_copies`` mean over pairs c < c' of
cos(g_c, g_c') (nan for M = 1), ``grad_var_copies`` (nan for M = 1), ``grad_stats_seconds`` (wall time of the
extra passes).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from seqba.callbacks import Callback, MetricsLogger

# The observed object is a seqba.trainer.Trainer; it is not imported here (the trainer builds this observer through
# seqba.observers).
Trainer = Any

__all__ = ["per_sample_grads", "flatten_grads", "centred_unit", "pearson", "copy_grad_stats", "GradStats"]


# -- per-sample gradients and Pearson correlation ---------------------------------------------------------------


def per_sample_grads(loss_fn: Callable[..., Tensor], params: Mapping[str, Tensor], *samples: Tensor,
                     method: str = "vmap", chunk_size: int | None = None) -> dict[str, Tensor]:
    """Gradients of ``loss_fn`` for every sample, by ``torch.func`` (``vmap(grad)``) or by a loop of backward passes.

    Args:
        loss_fn: ``loss_fn(params, *sample) -> 0-dim loss`` of ONE sample (tensors without the sample dimension),
            usually ``torch.func.functional_call(model, params, ...)`` inside.
        params: name -> parameter (P_k entries each); the gradients are taken with respect to these.
        samples: tensors of n samples each, (n, ...); ``sample = [s[i] for s in samples]``.
        method: ``vmap``: ``torch.func.vmap(torch.func.grad(loss_fn), randomness="different")`` (each sample
            draws its own dropout mask; needs a model whose ops all have batching rules and whose samples do not
            interact, e.g. the Transformer, or the ResNet with BatchNorm in eval mode). ``loop``: one
            ``torch.autograd.grad`` per sample: any model, e.g. the AWD-LSTM, whose fused LSTM kernel has no vmap
            batching rule (vmap works but loops internally), or training-mode (Ghost) BN, which vmap cannot
            split into samples. Both give the same gradients when the model draws no randomness (tested).
        chunk_size: samples per vectorised chunk (``vmap`` only; ``None``: all at once).

    Returns:
        name -> float (n, *shape) gradients, detached.

    Raises:
        ValueError: an unknown ``method`` or samples of different lengths.
    """
    n = {len(s) for s in samples}
    if len(n) != 1:
        raise ValueError(f"per_sample_grads: samples of different lengths {sorted(n)}")
    if method == "vmap":
        dims = (None,) + (0,) * len(samples)
        fn = torch.func.vmap(torch.func.grad(loss_fn), in_dims=dims, randomness="different", chunk_size=chunk_size)
        detached = {k: v.detach() for k, v in params.items()}
        return {k: v.detach() for k, v in fn(detached, *samples).items()}
    if method == "loop":
        names = list(params)
        out: dict[str, list[Tensor]] = {k: [] for k in names}
        for i in range(n.pop()):
            loss = loss_fn(params, *(s[i] for s in samples))
            grads = torch.autograd.grad(loss, [params[k] for k in names], allow_unused=True)
            for k, g in zip(names, grads):
                out[k].append(torch.zeros_like(params[k]) if g is None else g.detach())
        return {k: torch.stack(v) for k, v in out.items()}
    raise ValueError(f"per_sample_grads: method must be 'vmap' or 'loop', got {method!r}")


def flatten_grads(grads: Mapping[str, Tensor]) -> Tensor:
    """Concatenate per-sample gradients (name -> (n, *shape)) into one float32 (n, P) matrix, in ``grads`` order."""
    parts = [g.reshape(g.shape[0], -1).float() for g in grads.values()]
    return torch.cat(parts, dim=1)


def centred_unit(x: Tensor) -> Tensor:
    """Rows of ``x`` (n, P) minus their mean, scaled to unit L2 norm; a constant row becomes all-NaN.

    ``centred_unit(a) @ centred_unit(b).T`` is the matrix of Pearson correlations between the rows.
    """
    x = x.double()
    x = x - x.mean(dim=-1, keepdim=True)
    norm = x.norm(dim=-1, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.full_like(norm, float("nan")))


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation ρ between the entries of two gradients (any shapes with equal numbers of entries).

    Returns a float in [-1, 1], or NaN when either is constant (e.g. all zero). Raises ``ValueError`` for
    different numbers of entries.
    """
    if a.numel() != b.numel():
        raise ValueError(f"pearson: {a.numel()} and {b.numel()} entries")
    ua, ub = centred_unit(a.reshape(1, -1)), centred_unit(b.reshape(1, -1))
    return float((ua * ub).sum().clamp(-1.0, 1.0))


# -- per-copy statistics (training time) --------------------------------------------------------------------------


def copy_grad_stats(losses: Tensor, copy_index: Tensor, copies: int, params: list[Tensor],
                    normaliser: float) -> dict[str, float]:
    """Statistics of the M copy gradients of summed per-row losses, in M backward passes (graph retained).

    Args:
        losses: (N,) per-row losses of ONE forward, with a graph to ``params``.
        copy_index: (N,) int64, the copy (0 .. M-1) each row belongs to.
        copies: M.
        params: the parameters to differentiate (their ``.grad`` is left untouched: ``torch.autograd.grad``).
        normaliser: S / M, so that g_c = ∇ Σ_{r in c} losses_r / normaliser and ḡ = mean_c g_c.

    Returns:
        ``grad_norm_full``, ``grad_norm_copy_mean``, ``grad_cos_copies``, ``grad_var_copies`` (floats; the last two
        NaN for M = 1; see the module docstring).

    Streams over copies with two (P,) float64 accumulators (Σ g_c and Σ g_c/||g_c||), never M·P memory.

    Raises:
        ValueError: ``normaliser`` not > 0, or a copy with no rows.
    """
    if not normaliser > 0:
        raise ValueError(f"copy_grad_stats: normaliser must be > 0, got {normaliser}")
    total = unit_total = None
    norms: list[float] = []
    for c in range(copies):
        rows = copy_index == c
        if not bool(rows.any()):
            raise ValueError(f"copy_grad_stats: copy {c} of {copies} has no rows")
        grads = torch.autograd.grad(losses[rows].sum() / normaliser, params, retain_graph=c < copies - 1,
                                    allow_unused=True)
        g = torch.cat([(torch.zeros_like(p) if d is None else d).reshape(-1).double()
                       for p, d in zip(params, grads)])  # (P,)
        norm = float(g.norm())
        norms.append(norm)
        total = g if total is None else total + g
        unit = g / norm if norm > 0 else torch.zeros_like(g)
        unit_total = unit if unit_total is None else unit_total + unit
    mean = total / copies
    sq = sum(v * v for v in norms)
    full = float(mean.norm())
    m = copies
    stats = dict(grad_norm_full=full, grad_norm_copy_mean=sum(norms) / m,
                      grad_cos_copies=float("nan"), grad_var_copies=float("nan"))
    if m > 1:
        # Σ_{c≠c'} cos = ||Σ u_c||² - Σ||u_c||²; Σ||g_c - ḡ||² = Σ||g_c||² - M ||ḡ||²
        units = sum(1.0 for v in norms if v > 0)
        stats["grad_cos_copies"] = (float(unit_total.pow(2).sum()) - units) / (m * (m - 1))
        stats["grad_var_copies"] = max(sq - m * full * full, 0.0) / (m - 1)
    return stats


class GradStats(Callback):
    """Training-time gradient statistics every ``interval`` updates (``train.grad_stats_interval``); see the
    module docstring for what is measured, what it costs and why the trajectory is unchanged.

    An ordinary observer: the ``on_train_batch`` event hands it every expanded batch of an update with the state
    the task carried into it (:meth:`seqba.tasks.base.Task.batch_state`: a recurrent task's hidden state, else
    None); it measures the update's last one after the update. Writes through the run's
    :class:`~seqba.callbacks.MetricsLogger` (main process). Each rank measures its own batch on the unwrapped model
    (no collective); the main process's numbers are logged.

    Raises:
        ValueError: ``interval`` < 1.
    """

    def __init__(self, interval: int) -> None:
        if interval < 1:
            raise ValueError(f"GradStats: interval must be >= 1, got {interval}")
        self.interval = interval
        self._last: tuple[Any, Any] | None = None  # (expanded batch, state before it) of the current update

    def on_train_begin(self, trainer: Trainer) -> None:
        self.logger = next((c for c in trainer.callbacks if isinstance(c, MetricsLogger)), None)

    def on_train_batch(self, trainer: Trainer, batch: Any, state: Any) -> None:
        self._last = (batch, state)

    def on_update_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        step = trainer.state["num_updates"]
        if step % self.interval == 0 and self._last is not None:
            stats = self.measure(trainer, *self._last)
            if self.logger is not None:
                self.logger.write({"step": step, "epoch": trainer.state["epoch"], **stats})
        self._last = None

    def measure(self, trainer: Trainer, batch: Any, state: Any = None) -> dict[str, float]:
        """The statistics of the expanded ``batch`` (starting from the task's carried ``state``) on the current
        parameters; restores all state it touches."""
        task = trainer.task
        model = trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False)  # eager, no DDP hooks
        params = [p for p in model.parameters() if p.requires_grad]
        start = time.perf_counter()
        saved = _save_state(model)
        try:
            model.train()
            losses, copy_index = task.row_losses(model, batch, state)
            copies = int(copy_index.max()) + 1
            stats = copy_grad_stats(losses, copy_index, copies, params, trainer.ba.sample_size(batch) / copies)
        finally:
            _restore_state(model, saved)
        stats["grad_stats_seconds"] = time.perf_counter() - start
        return {k: (v if math.isfinite(v) else None) for k, v in stats.items()}


def _save_state(model: nn.Module) -> dict[str, Any]:
    """RNG states (dropout) and buffers (BN running statistics), to restore after the extra passes (``row_losses``
    leaves the task's own state alone)."""
    return {"rng": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "buffers": [b.detach().clone() for b in model.buffers()]}


def _restore_state(model: nn.Module, saved: dict[str, Any]) -> None:
    torch.set_rng_state(saved["rng"])
    if saved["cuda"] is not None:
        torch.cuda.set_rng_state_all(saved["cuda"])
    with torch.no_grad():
        for b, old in zip(model.buffers(), saved["buffers"]):
            b.copy_(old)
