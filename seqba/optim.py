"""Optimizers and learning-rate schedules from :class:`seqba.config.OptimConfig`.

* ``inverse_sqrt``: linear warmup from ``warmup_init_lr`` to ``lr`` over ``warmup_updates`` steps, then
  ``lr * sqrt(warmup_updates / step)`` (Vaswani et al. 2017, Sec. 5.3, as fairseq's ``inverse_sqrt``).
* ``step``: ``lr * lr_gamma ** (number of milestones in lr_steps <= step)`` (He et al. 2016's CIFAR regime).
* ``constant``: ``lr``.

The schedule is a pure function of the update number (:func:`lr_multiplier`): the training loop sets each group's
``lr`` before every step, so nothing but the update counter needs checkpointing.
"""
from __future__ import annotations

import bisect
import math

import torch

from seqba.config import OptimConfig

__all__ = ["build_optimizer", "lr_multiplier"]


def build_optimizer(cfg: OptimConfig, param_groups: list[dict]) -> torch.optim.Optimizer:
    """Adam or AdamW (``betas``, ``eps``) or SGD (``momentum``, ``nesterov``) with ``weight_decay`` as the group
    default (a task's groups may set 0 for parameters it exempts).

    ``adamw`` is ``torch.optim.AdamW`` (Loshchilov & Hutter 2019, "Decoupled weight decay regularization",
    Algorithm 2): the decay multiplies the parameter by 1 - lr x weight_decay before the Adam step instead of
    entering the moments, so it is not rescaled by the adaptive denominator (nanoGPT's and torchtune's optimizer).

    Raises:
        ValueError: for an unknown ``optimizer``.
    """
    if cfg.optimizer in ("adam", "adamw"):
        kind = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        return kind(param_groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    raise ValueError(f"optim.optimizer must be 'adam', 'adamw' or 'sgd', got {cfg.optimizer!r}")


def lr_multiplier(cfg: OptimConfig, step: int) -> float:
    """Multiplier of ``cfg.lr`` at update ``step`` (0-based: the multiplier used for the first update is step 0).

    Raises:
        ValueError: for an unknown ``lr_scheduler``.
    """
    if cfg.lr_scheduler == "constant":
        return 1.0
    if cfg.lr_scheduler == "step":
        return cfg.lr_gamma ** bisect.bisect_right(sorted(cfg.lr_steps), step)
    if cfg.lr_scheduler == "inverse_sqrt":
        update = step + 1
        warmup = max(cfg.warmup_updates, 0)
        if warmup and update < warmup:
            init = cfg.warmup_init_lr / cfg.lr if cfg.lr else 0.0
            return init + (1.0 - init) * update / warmup
        return math.sqrt(warmup / update) if warmup else 1.0 / math.sqrt(update)
    raise ValueError(f"optim.lr_scheduler must be inverse_sqrt, step or constant, got {cfg.lr_scheduler!r}")
