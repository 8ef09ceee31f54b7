"""Forked Batch Augmentation: BA's M copies made inside the model, after its first k layers (``ba.fork_layer``).

BA (Hoffer et al., CVPR 2020) repeats every sample M times at the input, so every layer runs M times per
distinct sample. Multi-sample dropout (Inoue, 2019) makes the copies only after the shared body. A fork at
layer k interpolates: the model's first k layers run once per sample (one dropout mask per sample there), their
output is repeated M times, and the layers above run on the M·B rows, whose dropout masks make the copies differ::

    k = 0          repeat -> L1 -> L2 -> ... -> Ln -> head      today's BA (done by the task, not the model)
    k = 2          L1 -> L2 -> repeat -> L3 -> ... -> Ln -> head
    k = n - 1      L1 -> ... -> Ln-1 -> repeat -> Ln -> head

Layers are counted bottom-up; an encoder-decoder counts its encoder layers, then its decoder layers
(``k = encoder_layers`` runs the whole encoder once per sample). The backward pass through the repeat sums the M
copies' gradients into the shared rows: the shared layers get the gradient of the sum of the copies' losses,
exactly as if the repeat were written by hand at layer k (tests/test_fork.py checks this against such a
reference).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from seqba.repeat import LAYOUTS, repeat_batch

__all__ = ["Fork"]


@dataclass(frozen=True)
class Fork:
    """Where and how a model makes BA's copies: after ``layer`` layers, ``repeats`` copies, rows in ``layout``.

    Attributes:
        layer: k >= 1, layers run once per distinct sample before the copies are made.
        repeats: M >= 2, copies per sample.
        layout: ``"adjacent"`` (copies of sample b are rows b·M .. b·M+M-1) or ``"tiled"`` (copy c of sample b is
            row c·B+b), as :func:`seqba.repeat.repeat_batch` lays them out.

    Raises:
        ValueError: ``layer`` < 1 (k = 0 is BA at the input, which the task does), ``repeats`` < 2, or an
            unknown ``layout``.
    """

    layer: int
    repeats: int
    layout: str = "adjacent"

    def __post_init__(self) -> None:
        if not isinstance(self.layer, int) or self.layer < 1:
            raise ValueError(f"Fork: layer must be an int >= 1 (0 is BA at the input), got {self.layer!r}")
        if not isinstance(self.repeats, int) or self.repeats < 2:
            raise ValueError(f"Fork: repeats must be an int >= 2, got {self.repeats!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"Fork: layout must be one of {LAYOUTS}, got {self.layout!r}")

    def copy(self, x: Tensor, dim: int = 0) -> Tensor:
        """(B, ...) -> (M·B, ...) along ``dim``, rows in this fork's layout."""
        return repeat_batch(x, self.repeats, self.layout, dim=dim)

    @property
    def shares_rows(self) -> bool:
        """Whether the M copies of a sample are consecutive rows (``adjacent``), so that a tensor of B rows can
        serve them without being repeated (cross-attention memory: ``beam = M``)."""
        return self.layout == "adjacent"
