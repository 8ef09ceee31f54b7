"""seqba.models.dropout against the definition of inverted dropout (Bernoulli(1 - p) keep, scale 1 / (1 - p))."""
import pytest
import torch
from torch import nn

from seqba.models.dropout import Dropout, dropout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_keeps_one_minus_p_and_scales_the_kept(dtype, p):
    torch.manual_seed(0)
    x = torch.ones(200_000, dtype=dtype)
    y = dropout(x, p)
    kept = y != 0
    assert y.dtype == dtype
    # 200k Bernoulli draws: the kept fraction is within 5 standard deviations of 1 - p
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * (p * (1 - p) / x.numel()) ** 0.5
    torch.testing.assert_close(y[kept].float(), torch.full((int(kept.sum()),), 1 / (1 - p)).to(dtype).float())


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(1)
    x = torch.randn(64, 33, requires_grad=True)
    y = dropout(x, 0.25)
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    torch.testing.assert_close(grad, (y.detach() != 0).float() / 0.75)


def test_identity_and_edge_probabilities():
    x = torch.randn(5, 7)
    assert dropout(x, 0.4, training=False) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match="p=1.5"):
        dropout(x, 1.5)


def test_module_is_an_nn_dropout_that_follows_train_and_eval():
    torch.manual_seed(2)
    module = Dropout(0.5)
    assert isinstance(module, nn.Dropout) and repr(module) == repr(nn.Dropout(0.5))
    x = torch.ones(1000)
    assert (module(x) == 0).any()
    assert torch.equal(module.eval()(x), x)


def test_masks_differ_between_copies_of_a_row():
    # BA: M copies of a sample in one batch must get independent masks
    torch.manual_seed(3)
    y = dropout(torch.ones(4, 256), 0.3)
    assert len({tuple(row.tolist()) for row in (y != 0)}) == 4
