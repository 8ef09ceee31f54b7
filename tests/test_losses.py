"""Label-smoothed NLL against the smoothed-target formula and F.nll_loss; the fused loss against the unfused one;
AR/TAR on tiny tensors."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from seqba.losses import (activation_regularization, label_smoothed_cross_entropy, label_smoothed_nll_loss,
                          temporal_activation_regularization)

PAD = 0


def reference_loss(lprobs, target, epsilon):
    """-sum_tokens sum_v q(v) log p(v), q = 1 - eps on the gold class and eps / (V - 1) elsewhere; pads skipped."""
    lprobs, target = lprobs.reshape(-1, lprobs.size(-1)), target.reshape(-1)
    vocab = lprobs.size(-1)
    q = torch.full_like(lprobs, epsilon / (vocab - 1))
    q.scatter_(1, target[:, None], 1.0 - epsilon)
    keep = target.ne(PAD)
    return -(q * lprobs)[keep].sum()


@pytest.mark.parametrize("shape", [(11,), (3, 4)])
@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.3])
def test_matches_smoothed_target_formula(shape, epsilon):
    g = torch.Generator().manual_seed(0)
    lprobs = torch.randn(*shape, 7, generator=g, dtype=torch.float64).log_softmax(-1)
    target = torch.randint(1, 7, shape, generator=g)
    target.view(-1)[[2, 5]] = PAD
    loss, nll = label_smoothed_nll_loss(lprobs, target, epsilon)
    torch.testing.assert_close(loss, reference_loss(lprobs, target, epsilon))
    flat_lprobs, flat_target = lprobs.reshape(-1, 7), target.reshape(-1)
    torch.testing.assert_close(nll, F.nll_loss(flat_lprobs, flat_target, ignore_index=PAD, reduction="sum"))
    assert loss.dim() == 0 and nll.dim() == 0


def test_zero_epsilon_is_nll_loss():
    g = torch.Generator().manual_seed(1)
    lprobs = torch.randn(9, 5, generator=g).log_softmax(-1)
    target = torch.tensor([1, 2, 0, 4, 3, 0, 1, 1, 2])
    loss, nll = label_smoothed_nll_loss(lprobs, target, 0.0)
    expected = F.nll_loss(lprobs, target, ignore_index=PAD, reduction="sum")
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(nll, expected)


def test_no_ignore_index_keeps_every_token():
    lprobs = torch.randn(4, 5).log_softmax(-1)
    target = torch.tensor([0, 1, 0, 2])
    _, nll = label_smoothed_nll_loss(lprobs, target, 0.1, ignore_index=None)
    torch.testing.assert_close(nll, F.nll_loss(lprobs, target, reduction="sum"))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="target shape"):
        label_smoothed_nll_loss(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long), 0.1)


def test_activation_regularization():
    h = torch.tensor([[[1.0, -2.0]], [[3.0, 0.0]]])  # (T=2, B=1, H=2)
    torch.testing.assert_close(activation_regularization(h, 2.0), torch.tensor(2.0 * (1 + 4 + 9 + 0) / 4))


def test_temporal_activation_regularization():
    h = torch.tensor([[[1.0, -2.0]], [[3.0, 0.0]], [[3.0, 1.0]]])  # (T=3, B=1, H=2)
    # differences along time: (2, 2), (0, 1) -> mean of squares (4 + 4 + 0 + 1) / 4
    torch.testing.assert_close(temporal_activation_regularization(h, 0.5), torch.tensor(0.5 * 9 / 4))


# -- the fused loss against the unfused one (the slow, obvious reference) ------------------------------------

@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 4), vocab=st.integers(2, 13), epsilon=st.sampled_from([0.0, 0.1, 0.4]),
       chunk_rows=st.integers(1, 40), ignore=st.sampled_from([None, PAD]), seed=st.integers(0, 2**16))
def test_fused_matches_unfused_loss_and_gradient(rows, cols, vocab, epsilon, chunk_rows, ignore, seed):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(rows, cols, vocab, generator=g, dtype=torch.float64)).requires_grad_()
    target = torch.randint(0, vocab, (rows, cols), generator=g)
    before = logits.detach().clone()
    loss, nll = label_smoothed_cross_entropy(logits, target, epsilon, ignore, chunk_rows=chunk_rows)
    (grad,) = torch.autograd.grad(loss * 1.7, logits)
    ref_logits = before.clone().requires_grad_()
    ref_loss, ref_nll = label_smoothed_nll_loss(F.log_softmax(ref_logits, -1), target, epsilon, ignore)
    (ref_grad,) = torch.autograd.grad(ref_loss * 1.7, ref_logits)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(nll, ref_nll)
    torch.testing.assert_close(grad, ref_grad)
    assert torch.equal(logits.detach(), before)  # backward recomputes softmax in a copy, never in the logits


def test_fused_bf16_logits_give_float32_sums_and_bf16_gradient():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, 50, generator=g).bfloat16().requires_grad_()
    target = torch.randint(0, 50, (6, 5), generator=g)
    loss, nll = label_smoothed_cross_entropy(logits, target, 0.1)
    loss.backward()
    assert loss.dtype == nll.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    ref = label_smoothed_nll_loss(F.log_softmax(logits.detach().float(), -1), target, 0.1)[0]
    torch.testing.assert_close(loss, ref)  # float32 arithmetic on the bf16 values
    assert not nll.requires_grad


def test_fused_gradcheck():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1, 0, 5, 2])
    assert torch.autograd.gradcheck(lambda x: label_smoothed_cross_entropy(x, target, 0.2, chunk_rows=3)[0], (logits,))


def test_fused_errors():
    with pytest.raises(ValueError, match="does not match"):
        label_smoothed_cross_entropy(torch.zeros(3, 5), torch.zeros(4, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match="chunk_rows"):
        label_smoothed_cross_entropy(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long), 0.1, chunk_rows=0)
