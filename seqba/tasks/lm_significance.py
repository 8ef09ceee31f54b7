"""A paired significance test for perplexity: two models scored on the same test stream, block by block.

Two language models evaluated on the same split score the same tokens, so the one with the lower perplexity is
the one with the lower summed NLL. ``seqba.eval --output FILE`` writes that sum per block of ``BLOCK_TOKENS``
consecutive stream positions (one line per block, nats; a position's NLL is the loss of predicting the token
there); :func:`paired_randomization` tests the per-block differences by approximate randomization (Noreen 1989,
"Computer-Intensive Methods for Testing Hypotheses"; the paired test of Riezler and Maxwell 2005 for MT metrics):
under the null hypothesis the two models are exchangeable in every block, so each block's difference is as likely
negated. Blocks of consecutive text, not single tokens, are the unit because a token's loss depends on its context.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["BLOCK_TOKENS", "block_nll", "block_references", "paired_randomization", "write_block_nll"]

#: Stream positions per block of the test (about four Penn Treebank sentences).
BLOCK_TOKENS = 100


def block_nll(token_nll: Tensor) -> list[float]:
    """Summed NLL per block of ``BLOCK_TOKENS`` positions of a (L,) float64 per-position NLL (NaN where the
    evaluation scored nothing, e.g. the first token), ``ceil(L / BLOCK_TOKENS)`` values."""
    scored = torch.nan_to_num(token_nll.double().cpu(), nan=0.0)
    padded = torch.nn.functional.pad(scored, (0, -len(scored) % BLOCK_TOKENS))
    return padded.view(-1, BLOCK_TOKENS).sum(1).tolist()


def write_block_nll(token_nll: Tensor, path: str) -> None:
    """One line per block: its summed NLL (nats), in stream order (``repr`` of the float, read back exactly)."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{value!r}\n" for value in block_nll(token_nll))


def block_references(cfg, split: str) -> list[str]:
    """The tokens of each block of ``split`` (what a study's outputs are checked against: one line per block)."""
    from seqba.tasks.lm_streams import load_lm_corpus

    length = len(getattr(load_lm_corpus(cfg.data), split))
    return [str(min(BLOCK_TOKENS, length - start)) for start in range(0, length, BLOCK_TOKENS)]


def paired_randomization(baseline: list[str], systems: dict[str, list[str]], references: list[str],
                         rounds: int = 10000, seed: int = 12345) -> dict[str, float]:
    """Two-sided p-value of each system's perplexity against ``baseline`` on the same blocks, by approximate
    randomization of the per-block NLL differences.

    With ``d`` the system's minus the baseline's summed NLL per block, the p-value is the share of ``rounds``
    random sign flips of ``d`` whose total is at least as far from 0 as ``sum(d)``, counting the observed one:
    ``(1 + hits) / (rounds + 1)`` (an unbiased Monte Carlo p-value; seeded, so a study's p-values are
    reproducible). 1.0 when every difference is 0.

    Args:
        baseline, systems: summed NLL per block (strings, one per block, as ``seqba.eval --output`` writes them).
        references: one entry per block (:func:`block_references`); only their number is used.
        rounds: random sign flips.
        seed: of the random generator (numpy PCG64).

    Raises:
        ValueError: a system with another number of blocks than ``references``, or a value that is not a finite
            number.
    """
    def values(name: str, lines: list[str]) -> np.ndarray:
        if len(lines) != len(references):
            raise ValueError(f"{name}: {len(lines)} blocks for {len(references)} in the split")
        out = np.array([float(v) for v in lines], dtype=np.float64)
        if not np.isfinite(out).all():
            raise ValueError(f"{name}: a block's NLL is not a finite number")
        return out

    base = values("<baseline>", baseline)
    out = {}
    for name, lines in systems.items():
        d = values(name, lines) - base
        observed = abs(d.sum())
        if not np.any(d):
            out[name] = 1.0
            continue
        tolerance = 1e-9 * np.abs(d).sum()  # float sums of the same terms in another order
        rng, hits, done = np.random.default_rng(seed), 0, 0
        while done < rounds:
            n = min(1000, rounds - done)
            signs = rng.integers(0, 2, size=(n, d.size), dtype=np.int8) * 2 - 1
            hits += int((np.abs(signs @ d) >= observed - tolerance).sum())
            done += n
        out[name] = (1 + hits) / (rounds + 1)
    return out

