"""Perplexity's paired test: per-position NLL of the AWD-LSTM evaluation against a slow whole-stream reference, the
per-block sums, and the approximate randomization against the exact enumeration of every sign pattern."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from seqba.tasks.language_modeling import corpus_nll
from seqba.tasks.lm_models import LMModelConfig, build_lm_model
from seqba.tasks.lm_significance import BLOCK_TOKENS, block_nll, paired_randomization

V = 17


def exact_randomization(d: list[float]) -> float:
    """The exact two-sided p-value of the sign-flip test: the share of all 2^n sign patterns whose total is at
    least as far from 0 as the observed one (the slow, obvious reference)."""
    n, observed = len(d), abs(math.fsum(d))
    tolerance = 1e-9 * math.fsum(abs(x) for x in d)
    hits = sum(abs(math.fsum(x if mask >> i & 1 else -x for i, x in enumerate(d))) >= observed - tolerance
               for mask in range(2 ** n))
    return hits / 2 ** n


@pytest.mark.parametrize("batch_size,bptt", [(1, 5), (3, 4), (2, 50)])
def test_corpus_nll_fills_each_scored_position(batch_size, bptt):
    """Every stream read with its state carried equals one forward over that whole stream (eval mode), so each
    scored position's NLL is the whole-stream reference's, and the positions sum to the reported total."""
    torch.manual_seed(0)
    model = build_lm_model(LMModelConfig(emb_size=8, hidden_size=12, num_layers=2), V).eval()
    data = torch.randint(0, V, (53,), generator=torch.Generator().manual_seed(1))
    token_nll = torch.full((53,), math.nan, dtype=torch.float64)
    with torch.no_grad():
        total, words = corpus_nll(model, data, batch_size, bptt, token_nll)
        rows = 53 // batch_size
        expected = torch.full((53,), math.nan, dtype=torch.float64)
        for b in range(batch_size):  # each stream alone, in one window
            stream = data[b * rows:(b + 1) * rows]
            logits = model(stream[:-1, None], model.init_hidden(1))[0]  # (rows - 1, 1, V)
            expected[b * rows + 1:(b + 1) * rows] = F.cross_entropy(logits[:, 0], stream[1:], reduction="none").double()
    assert words == (rows - 1) * batch_size == int((~torch.isnan(token_nll)).sum())
    assert torch.equal(torch.isnan(token_nll), torch.isnan(expected))
    assert torch.allclose(token_nll.nan_to_num(), expected.nan_to_num(), rtol=1e-5, atol=1e-6)
    assert token_nll.nansum().item() == pytest.approx(total, rel=1e-9)


def test_block_sums():
    token_nll = torch.arange(2 * BLOCK_TOKENS + 7, dtype=torch.float64)
    token_nll[0] = math.nan
    blocks = block_nll(token_nll)
    assert len(blocks) == 3
    assert blocks == [sum(range(1, BLOCK_TOKENS)), sum(range(BLOCK_TOKENS, 2 * BLOCK_TOKENS)),
                      sum(range(2 * BLOCK_TOKENS, 2 * BLOCK_TOKENS + 7))]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 50), st.floats(0, 50)), min_size=1, max_size=10))
def test_randomization_matches_the_exact_test(pairs):
    """The Monte Carlo p-value is within 5 standard errors (plus one round) of the exact one over all 2^n sign
    patterns; the generator is seeded, so the same inputs give the same p-value."""
    base = [repr(a) for a, _ in pairs]
    system = [repr(b) for _, b in pairs]
    rounds = 4000
    p = paired_randomization(base, {"s": system}, ["x"] * len(pairs), rounds=rounds)["s"]
    d = [b - a for a, b in pairs]
    exact = 1.0 if not any(d) else exact_randomization(d)
    assert abs(p - exact) <= 5 * math.sqrt(exact * (1 - exact) / rounds) + 2 / rounds
    assert paired_randomization(base, {"s": system}, ["x"] * len(pairs), rounds=rounds)["s"] == p


def test_randomization_values_and_errors():
    base = [repr(float(i)) for i in range(40)]
    assert paired_randomization(base, {"same": base}, ["x"] * 40) == {"same": 1.0}
    worse = [repr(float(i) + 1.0) for i in range(40)]  # every block worse by 1 nat: no sign pattern reaches 40
    assert paired_randomization(base, {"worse": worse}, ["x"] * 40, rounds=999)["worse"] == 1 / 1000
    with pytest.raises(ValueError, match="s: 2 blocks for 40"):
        paired_randomization(base, {"s": base[:2]}, ["x"] * 40)
    with pytest.raises(ValueError, match="not a finite number"):
        paired_randomization(base, {"s": base[:-1] + ["nan"]}, ["x"] * 40)
