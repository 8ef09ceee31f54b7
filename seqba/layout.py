"""Where the M copies of each sample sit in an expanded Batch Augmentation batch: one object for every question.

A BA batch holds M copies ("repeats") of each of B distinct samples along its batch axis (Hoffer et al., "Augment
your batch", CVPR 2020). Two layouts, for B = 3 samples ``a, b, c`` and M = 2::

    row             0  1  2  3  4  5
    adjacent        a  a  b  b  c  c      copy c of sample b is row b·M + c      (sample-major)
    tiled           a  b  c  a  b  c      copy c of sample b is row c·B + b      (copy-major)

    copies()        [[a, b, c],           the (M, B, ...) view of both: [c, b] is copy c of sample b
                     [a, b, c]]

:class:`CopyLayout` answers, for one ``(repeats, kind)``: expand indices, a tensor or a nested batch
(:meth:`~CopyLayout.expand_indices`, :meth:`~CopyLayout.expand`, :meth:`~CopyLayout.expand_batch`); view rows as
copies and back (:meth:`~CopyLayout.copies`, :meth:`~CopyLayout.rows`); which copy each row is
(:meth:`~CopyLayout.copy_of_rows`); the rows of copy c (:meth:`~CopyLayout.rows_of_copy`); the chunks of an
expanded batch cut on sample boundaries (:meth:`~CopyLayout.sample_chunks`). ``adjacent`` is what
``torch.repeat_interleave`` gives, ``tiled`` what ``Tensor.repeat`` gives (fairseq R-Drop duplicates its batch
this way, and copy c is then a contiguous slice).

Shape notation: B = distinct samples, M = repeats (copies per sample). Only torch and numpy are needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["CopyLayout", "LAYOUTS", "check_layout", "check_repeats"]

LAYOUTS = ("adjacent", "tiled")


def check_layout(layout: str) -> None:
    """Raise ``ValueError`` unless ``layout`` is one of :data:`LAYOUTS`."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def check_repeats(repeats: Any) -> None:
    """Raise ``ValueError`` unless ``repeats`` is an int >= 1 (bools and floats are refused; numpy ints pass)."""
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")


@dataclass(frozen=True)
class CopyLayout:
    """M copies per sample laid out ``adjacent`` or ``tiled`` along the batch axis (see the module docstring).

    Args:
        repeats: M, an int >= 1 (numpy ints accepted, stored as int).
        kind: ``"adjacent"`` (``[a, a, b, b]``) or ``"tiled"`` (``[a, b, a, b]``).

    Raises:
        ValueError: ``repeats`` not an int >= 1, or an unknown ``kind`` (naming :data:`LAYOUTS`).
    """

    repeats: int
    kind: str = "adjacent"

    def __post_init__(self) -> None:
        check_repeats(self.repeats)
        check_layout(self.kind)
        object.__setattr__(self, "repeats", int(self.repeats))

    # -- sizes -----------------------------------------------------------------------------------------------

    def samples(self, rows: int) -> int:
        """B, the distinct samples of an expanded batch of ``rows`` (= M·B) rows.

        Raises:
            ValueError: ``rows`` not a multiple of M.
        """
        if rows % self.repeats:
            raise ValueError(f"{rows} rows are not a multiple of repeats={self.repeats}")
        return rows // self.repeats

    # -- expand ----------------------------------------------------------------------------------------------

    def expand_indices(self, indices: np.ndarray) -> np.ndarray:
        """(B,) sample indices -> (M·B,) row indices in this layout (``np.repeat`` / ``np.tile``)."""
        if self.kind == "adjacent":
            return np.repeat(indices, self.repeats)
        return np.tile(indices, self.repeats)

    def expand(self, x: Tensor, dim: int = 0) -> Tensor:
        """(..., B, ...) -> (..., M·B, ...) along axis ``dim`` (a new tensor, on ``x``'s device).

        Raises:
            ValueError: ``x`` has no axis ``dim`` (naming its shape).
        """
        if not -x.dim() <= dim < x.dim():
            raise ValueError(f"batch axis dim={dim} is outside a tensor of shape {tuple(x.shape)}; a batch that "
                             "mixes batch axes needs one expansion per axis")
        if self.kind == "adjacent":
            return x.repeat_interleave(self.repeats, dim=dim)
        reps = [1] * x.dim()
        reps[dim] = self.repeats
        return x.repeat(*reps)

    def expand_batch(self, batch: Any, dim: int = 0, count_keys: Sequence[str] = ("ntokens", "nsentences")) -> Any:
        """:meth:`expand` every tensor of a nested batch; see :func:`seqba.repeat.repeat_batch` for the rules.

        Tensors with at least one dimension are expanded along ``dim``; dicts, namedtuples, tuples and lists are
        recursed into; numbers under a key in ``count_keys`` are multiplied by M; anything else is returned as is.
        M = 1 returns ``batch`` itself.

        Raises:
            ValueError: ``dim`` not an int, or a tensor without axis ``dim``.
        """
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise ValueError(f"batch axis dim must be an int, got {dim!r}")
        if self.repeats == 1:
            return batch
        dim = int(dim)

        def walk(x: Any, key: str | None = None) -> Any:
            if isinstance(x, torch.Tensor):
                return x if x.dim() == 0 else self.expand(x, dim)
            if isinstance(x, Mapping):
                return type(x)({k: walk(v, k) for k, v in x.items()})
            if isinstance(x, tuple) and hasattr(x, "_fields"):  # namedtuple
                return type(x)(*(walk(v) for v in x))
            if isinstance(x, (tuple, list)):
                return type(x)(walk(v) for v in x)
            if key in count_keys and isinstance(x, (int, float)) and not isinstance(x, bool):
                return x * self.repeats
            return x

        return walk(batch)

    # -- rows as copies --------------------------------------------------------------------------------------

    def copies(self, x: Tensor) -> Tensor:
        """View rows as (copy, sample): (M·B, ...) -> (M, B, ...), no data copied; ``[c, b]`` is copy c of sample b.

        The inverse of :meth:`expand`: ``copies(expand(x))[c]`` is ``x`` for every copy c. ``adjacent`` gives a
        transposed, non-contiguous view; ``tiled`` a contiguous one when ``x`` is.

        Raises:
            ValueError: a 0-d ``x`` or a row count that is not a multiple of M.
        """
        if x.dim() == 0 or x.size(0) % self.repeats != 0:
            raise ValueError(f"rows of shape {tuple(x.shape)} are not a multiple of repeats={self.repeats}")
        batch = x.size(0) // self.repeats
        if self.kind == "tiled":
            return x.view(self.repeats, batch, *x.shape[1:])
        return x.view(batch, self.repeats, *x.shape[1:]).transpose(0, 1)

    def rows(self, copies: Tensor) -> Tensor:
        """Inverse of :meth:`copies`: (M, B, ...) -> (M·B, ...) rows in this layout (a copy when not viewable)."""
        rows = copies.transpose(0, 1) if self.kind == "adjacent" else copies
        return rows.reshape(-1, *copies.shape[2:])

    # -- row indices -----------------------------------------------------------------------------------------

    def copy_of_rows(self, rows: int, device: torch.device | str = "cpu") -> Tensor:
        """(rows,) int64: the copy (0 .. M-1) of every row; ``adjacent``: r % M, ``tiled``: r // B.

        Raises:
            ValueError: ``rows`` not a multiple of M.
        """
        samples = self.samples(rows)
        r = torch.arange(rows, device=device)
        return r % self.repeats if self.kind == "adjacent" else r // samples

    def rows_of_copy(self, copy: int, rows: int, device: torch.device | str = "cpu") -> Tensor:
        """(B,) int64: the rows of copy ``copy``, in sample order (``adjacent``: b·M + c, ``tiled``: c·B + b).

        Raises:
            ValueError: ``rows`` not a multiple of M, or ``copy`` outside 0 .. M-1.
        """
        samples = self.samples(rows)
        if not 0 <= copy < self.repeats:
            raise ValueError(f"copy must be in 0 .. {self.repeats - 1}, got {copy!r}")
        b = torch.arange(samples, device=device)
        return b * self.repeats + copy if self.kind == "adjacent" else b + copy * samples

    def sample_chunks(self, rows: int, chunks: int, device: torch.device | str = "cpu") -> list[Tensor]:
        """Row indices of ``chunks`` chunks of an expanded batch, cut on sample boundaries.

        Chunk i takes the samples of ``arange(B).tensor_split(chunks)[i]`` with ALL their copies, in this layout
        (so a loss across copies can be computed per chunk). Empty chunks (``chunks`` > B) are dropped.

        Returns:
            a list of int64 (M·b_i,) index tensors on ``device``; together they cover every row exactly once.

        Raises:
            ValueError: ``rows`` not a multiple of M.
        """
        samples = self.samples(rows)
        copies = torch.arange(self.repeats, device=device)
        out = []
        for part in torch.arange(samples, device=device).tensor_split(min(chunks, max(samples, 1))):
            if len(part) == 0:
                continue
            if self.kind == "adjacent":
                out.append((part[:, None] * self.repeats + copies[None, :]).flatten())  # (b, M) sample-major
            else:
                out.append((copies[:, None] * samples + part[None, :]).flatten())  # (M, b) copy-major
        return out
