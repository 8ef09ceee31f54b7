"""The cross-entropy fused with the consistency term (seqba.fused_consistency) against the unfused pair and the slow
pair-loop reference of tests/test_consistency.py: values and gradients, both layouts, M = 2..4, padding, all-padded
rows, bf16 logits, gradcheck, a kind without fused hooks, what is kept for the backward, compiled chunks."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from seqba.consistency import CONSISTENCY, ConsistencyKind, ConsistencyTerm, consistency_kind, register_consistency
from seqba.fused_consistency import cross_entropy_with_consistency
from seqba.layout import LAYOUTS, CopyLayout
from seqba.losses import consistency_loss, label_smoothed_cross_entropy, label_smoothed_nll_loss
from test_consistency import reference

PAD = 0
KINDS = ("sym_kl", "js")


def make(repeats, batch, positions, vocab, layout, seed, pad=0.3, dtype=torch.float64, scale=2.0):
    """(M·B, *positions, V) logits and (M·B, *positions) targets shared by the copies, PAD at about ``pad``."""
    g = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(repeats * batch, *positions, vocab, generator=g, dtype=torch.float64)).to(dtype)
    distinct = torch.randint(1, vocab, (batch, *positions), generator=g)
    distinct[torch.rand(distinct.shape, generator=g) < pad] = PAD
    return logits, CopyLayout(repeats, layout).expand(distinct)


def fused(logits, target, layout, kind, alpha=2.0, epsilon=0.1, weights=(1.3, 0.7), **kwargs):
    """(loss, nll, term) and the gradient of weights[0]·loss + weights[1]·term."""
    x = logits.detach().clone().requires_grad_(True)
    loss, nll, term = cross_entropy_with_consistency(x, target, epsilon, layout, consistency_kind(kind), alpha,
                                                     ignore_index=PAD, **kwargs)
    (grad,) = torch.autograd.grad(weights[0] * loss + weights[1] * term, x)
    return loss, nll, term, grad


def unfused(logits, target, layout, kind, alpha=2.0, epsilon=0.1, weights=(1.3, 0.7), slow=False):
    """The same from log_softmax -> label_smoothed_nll_loss + consistency_loss (or the slow pair loop)."""
    x = logits.detach().clone().requires_grad_(True)
    lprobs = F.log_softmax(x.float() if x.dtype != torch.float64 else x, dim=-1)
    ce, nll = label_smoothed_nll_loss(lprobs, target, epsilon, ignore_index=PAD)
    pad_mask = target.eq(PAD)
    if slow:
        term = reference(lprobs, layout.repeats, layout.kind, pad_mask if lprobs.dim() > 2 else None, kind)
    else:
        term = consistency_loss(lprobs, layout.repeats, layout=layout.kind, pad_mask=pad_mask, kind=kind)
    loss = ce + alpha * term
    (grad,) = torch.autograd.grad(weights[0] * loss + weights[1] * term, x)
    return loss, nll, term, grad


def assert_all_close(got, expected, **tol):
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b.to(a.dtype), **tol)


@settings(max_examples=60, deadline=None)
@given(repeats=st.integers(2, 4), batch=st.integers(1, 3), length=st.integers(1, 5), vocab=st.integers(2, 9),
       layout=st.sampled_from(LAYOUTS), kind=st.sampled_from(KINDS), pad=st.sampled_from([0.0, 0.3, 1.0]),
       epsilon=st.sampled_from([0.0, 0.1]), chunk_rows=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_matches_the_slow_reference(repeats, batch, length, vocab, layout, kind, pad, epsilon, chunk_rows, seed):
    logits, target = make(repeats, batch, (length,), vocab, layout, seed, pad=pad)
    copies = CopyLayout(repeats, layout)
    got = fused(logits, target, copies, kind, epsilon=epsilon, chunk_rows=chunk_rows)
    assert_all_close(got, unfused(logits, target, copies, kind, epsilon=epsilon, slow=True))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_images_one_position_per_sample(kind, layout):
    logits, target = make(3, 5, (), 10, layout, seed=1, pad=0.0)
    copies = CopyLayout(3, layout)
    for chunk_rows in (1, 6, 100):
        assert_all_close(fused(logits, target, copies, kind, chunk_rows=chunk_rows),
                         unfused(logits, target, copies, kind, slow=True))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("repeats", [2, 3, 4])
def test_float32_equals_the_unfused_functions(kind, layout, repeats):
    """Today's pair (label_smoothed_cross_entropy + consistency_loss on log_softmax in float32) at a real-ish
    vocabulary, with all-padded sentences and padded tails, chunks cut inside and across sentences."""
    logits, target = make(repeats, 4, (7,), 1000, layout, seed=repeats, dtype=torch.float32, scale=4.0)
    copies = CopyLayout(repeats, layout)
    target_view = copies.copies(target)
    target_view[:, 1] = PAD  # sentence 1 all padding
    target_view[:, 2, 4:] = PAD
    for chunk_rows in (None, 5 * repeats, 16 * repeats):
        got = fused(logits, target, copies, kind, chunk_rows=chunk_rows)
        x = logits.clone().requires_grad_(True)
        ce, nll = label_smoothed_cross_entropy(x, target, 0.1, ignore_index=PAD)
        term = consistency_loss(F.log_softmax(x, -1), repeats, layout=layout, pad_mask=target.eq(PAD), kind=kind)
        (grad,) = torch.autograd.grad(1.3 * (ce + 2.0 * term) + 0.7 * term, x)
        assert_all_close(got, (ce + 2.0 * term, nll, term, grad), rtol=1e-5, atol=1e-5)
        assert got[3][target.eq(PAD)].abs().max() == 0  # padding gets no gradient


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_everything_padded_gives_zero(kind, layout):
    logits, target = make(2, 3, (4,), 6, layout, seed=2, pad=1.0)
    loss, nll, term, grad = fused(logits, target, CopyLayout(2, layout), kind)
    assert loss == nll == term == 0 and grad.abs().max() == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_bf16_logits_close_to_float32(kind, layout):
    """bf16 logits: float32 sums (float32 arithmetic on the bf16 values) and a bf16 gradient."""
    logits, target = make(4, 3, (6,), 300, layout, seed=3, dtype=torch.bfloat16, scale=3.0)
    copies = CopyLayout(4, layout)
    loss, nll, term, grad = fused(logits, target, copies, kind)
    assert loss.dtype == nll.dtype == term.dtype == torch.float32 and grad.dtype == torch.bfloat16
    ref = fused(logits.float(), target, copies, kind)
    assert_all_close((loss, nll, term), ref[:3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.float(), ref[3], rtol=1e-2, atol=1e-4)  # rounded to bf16 once


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck(kind, layout):
    logits, target = make(3, 2, (3,), 4, layout, seed=4)
    copies = CopyLayout(3, layout)

    def fn(x):
        loss, _, term = cross_entropy_with_consistency(x, target, 0.2, copies, consistency_kind(kind), 1.5,
                                                       chunk_rows=4)
        return loss, term

    assert torch.autograd.gradcheck(fn, (logits.clone().requires_grad_(True),))


@pytest.fixture
def plain_kind():
    """A test-only kind without fused hooks (autograd of forward): the symmetric KL written as a pair loop."""

    @register_consistency("pairs_test")
    class Pairs(ConsistencyKind):
        def forward(self, copies):  # (M, n..., V) log-probs -> (n...)
            m = copies.size(0)
            pairs = [((copies[i].exp() - copies[j].exp()) * (copies[i] - copies[j])).sum(-1) / 2
                     for i in range(m) for j in range(i + 1, m)]
            return sum(pairs) / len(pairs)

    yield "pairs_test"
    del CONSISTENCY["pairs_test"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_kind_without_fused_hooks_works_fused(plain_kind, layout):
    logits, target = make(3, 3, (4,), 7, layout, seed=5)
    copies = CopyLayout(3, layout)
    got = fused(logits, target, copies, plain_kind, chunk_rows=4)
    assert_all_close(got, unfused(logits, target, copies, plain_kind))
    assert_all_close(got, fused(logits, target, copies, "sym_kl", chunk_rows=4))  # the same function


def test_nothing_of_size_rows_by_vocab_is_kept():
    """Between forward and backward only the logits themselves carry a vocabulary axis."""
    logits, target = make(4, 3, (5,), 50, "adjacent", seed=6)
    logits.requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        cross_entropy_with_consistency(logits, target, 0.1, CopyLayout(4, "adjacent"), consistency_kind("sym_kl"), 1.0)
    big = [t for t in saved if t.numel() >= logits[..., 0].numel() * 50]
    assert len(big) == 1 and big[0].untyped_storage().data_ptr() == logits.untyped_storage().data_ptr()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_term_cross_entropy_logs_as_add_does(layout):
    logits, target = make(2, 3, (4,), 8, layout, seed=7, dtype=torch.float32)
    copies = CopyLayout(2, layout)
    term = ConsistencyTerm("js", 3.0, copies)
    logs = {}
    loss, nll = term.cross_entropy(logits, target, 0.1, logs, ignore_index=PAD)
    ref_logs = {}
    ce, ref_nll = label_smoothed_cross_entropy(logits, target, 0.1, ignore_index=PAD)
    ref = term.add(ce, ref_logs, F.log_softmax(logits, -1), target.eq(PAD))
    assert_all_close((loss, nll, logs["consistency_sum"]), (ref, ref_nll, ref_logs["consistency_sum"]))
    with pytest.raises(ValueError, match="no copy layout"):
        ConsistencyTerm("js", 1.0).cross_entropy(logits, target, 0.1, {})


@pytest.mark.parametrize("kwargs, match", [
    (dict(target=torch.zeros(4, 4, dtype=torch.long)), "does not match"),
    (dict(layout=CopyLayout(1)), "repeats >= 2"),
    (dict(layout=CopyLayout(3)), "multiple of repeats"),
    (dict(chunk_rows=0), "chunk_rows"),
])
def test_errors(kwargs, match):
    args = dict(logits=torch.randn(4, 5, 6), target=torch.zeros(4, 5, dtype=torch.long), epsilon=0.1,
                layout=CopyLayout(2), kind=consistency_kind("sym_kl"), alpha=1.0) | kwargs
    with pytest.raises(ValueError, match=match):
        cross_entropy_with_consistency(**args)


@pytest.mark.parametrize("vocab", [7, 100, 8000])
def test_cross_entropy_chunking_changes_no_bit_at_small_vocabularies(vocab):
    """The CPU default chunk (a fixed number of elements) gives the fixed 64-row chunk's numbers bit for bit."""
    g = torch.Generator().manual_seed(vocab)
    logits = (3 * torch.randn(130, vocab, generator=g)).requires_grad_(True)
    target = torch.randint(0, vocab, (130,), generator=g)
    results = []
    for chunk_rows in (64, None):
        loss, nll = label_smoothed_cross_entropy(logits, target, 0.1, chunk_rows=chunk_rows)
        results.append((loss, nll, *torch.autograd.grad(loss, logits)))
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_compiled_chunks_match_eager():
    pytest.importorskip("torch._inductor")
    logits, target = make(4, 3, (6,), 64, "adjacent", seed=8, dtype=torch.float32)
    copies = CopyLayout(4, "adjacent")
    try:
        got = fused(logits, target, copies, "sym_kl", chunk_rows=8, compiled=True)
    except Exception as error:  # no C++ compiler for inductor on this machine
        pytest.skip(f"torch.compile unavailable: {type(error).__name__}")
    assert_all_close(got, fused(logits, target, copies, "sym_kl", chunk_rows=8), rtol=1e-5, atol=1e-6)
