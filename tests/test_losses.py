"""Label-smoothed NLL against the smoothed-target formula and F.nll_loss; AR/TAR on tiny tensors."""

import pytest
import torch
import torch.nn.functional as F

from seqba.losses import activation_regularization, label_smoothed_nll_loss, temporal_activation_regularization

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
