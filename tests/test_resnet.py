"""GhostBatchNorm2d against nn.BatchNorm2d and per-slice BatchNorm; CIFAR ResNet size, shapes, one step."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seqba.models.ghost_bn import GhostBatchNorm2d, set_ghost_batch_size
from seqba.models.resnet import cifar_resnet, param_groups


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def make_pair(c=3, ghost=None, momentum=0.1):
    ref = nn.BatchNorm2d(c, momentum=momentum)
    gbn = GhostBatchNorm2d(c, ghost_batch_size=ghost, momentum=momentum)
    with torch.no_grad():
        ref.weight.copy_(torch.rand(c, generator=gen(1)) + 0.5)
        ref.bias.copy_(torch.randn(c, generator=gen(2)))
    gbn.load_state_dict(ref.state_dict())
    return ref, gbn


@pytest.mark.parametrize("ghost", [None, 8, 100])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_equals_batchnorm_when_ghost_covers_batch(ghost, momentum):
    ref, gbn = make_pair(ghost=ghost, momentum=momentum)
    x = torch.randn(8, 3, 5, 5, generator=gen(3)) * 2 + 1
    for _ in range(2):
        xr, xg = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_r, out_g = ref(xr), gbn(xg)
        (out_r * torch.arange(8.0)[:, None, None, None]).sum().backward()
        (out_g * torch.arange(8.0)[:, None, None, None]).sum().backward()
        assert torch.equal(out_r, out_g)
        assert torch.equal(xr.grad, xg.grad)
    assert torch.equal(ref.weight.grad, gbn.weight.grad) and torch.equal(ref.bias.grad, gbn.bias.grad)
    for name, buf in ref.state_dict().items():
        assert torch.equal(buf, gbn.state_dict()[name]), name


@pytest.mark.parametrize("n, ghost", [(12, 4), (10, 4), (9, 3)])
def test_each_slice_normalized_independently(n, ghost):
    ref, gbn = make_pair(ghost=ghost)
    x = torch.randn(n, 3, 4, 4, generator=gen(4)) * torch.arange(1.0, n + 1)[:, None, None, None]
    xr, xg = x.clone().requires_grad_(), x.clone().requires_grad_()
    slices = [xr[i : i + ghost] for i in range(0, n, ghost)]
    expected = torch.cat([F.batch_norm(s, None, None, ref.weight, ref.bias, True, 0.0, ref.eps) for s in slices])
    out = gbn(xg)
    assert torch.allclose(out, expected, atol=1e-5)
    weights = torch.randn(n, 3, 4, 4, generator=gen(5))
    (expected * weights).sum().backward()
    (out * weights).sum().backward()
    assert torch.allclose(xg.grad, xr.grad, atol=1e-4)
    assert torch.allclose(gbn.weight.grad, ref.weight.grad, atol=1e-4)
    # running stats: row-count-weighted mean of ghost means and unbiased ghost variances
    counts = torch.tensor([float(len(s)) for s in slices])
    means = torch.stack([s.detach().mean(dim=(0, 2, 3)) for s in slices])
    variances = torch.stack([s.detach().transpose(0, 1).flatten(1).var(dim=1) for s in slices])
    w = (counts / counts.sum())[:, None]
    assert torch.allclose(gbn.running_mean, 0.1 * (w * means).sum(0), atol=1e-5)
    assert torch.allclose(gbn.running_var, 0.9 + 0.1 * (w * variances).sum(0), atol=1e-4)
    assert int(gbn.num_batches_tracked) == 1


def test_eval_uses_running_stats():
    ref, gbn = make_pair(ghost=2)
    with torch.no_grad():
        gbn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        gbn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
    gbn.eval()
    x = torch.randn(6, 3, 3, 3, generator=gen(6))
    expected = F.batch_norm(x, gbn.running_mean, gbn.running_var, gbn.weight, gbn.bias, False, 0.0, gbn.eps)
    before = gbn.running_mean.clone()
    assert torch.allclose(gbn(x), expected, atol=1e-6)
    assert torch.equal(gbn.running_mean, before)


def test_ghost_bn_errors_and_setter():
    with pytest.raises(ValueError, match="ghost_batch_size"):
        GhostBatchNorm2d(4, ghost_batch_size=0)
    with pytest.raises(ValueError, match="need more than 1"):
        GhostBatchNorm2d(2, ghost_batch_size=2)(torch.randn(3, 2, 1, 1))  # tail of 1 row of 1x1
    model = cifar_resnet(depth=8, ghost_batch_size=4)
    assert set_ghost_batch_size(model, 2) == 7
    assert all(m.ghost_batch_size == 2 for m in model.modules() if isinstance(m, GhostBatchNorm2d))


def test_resnet44_parameter_count():
    model = cifar_resnet(depth=44, num_classes=10)
    # He et al. 2016 Sec. 4.2, option A: conv 27*16 + sum over stages of 9*c_in*c_out, BN 2 per channel, fc.
    n = 7
    stages = 2 * n * 16 * 16 + (16 * 32 + (2 * n - 1) * 32 * 32) + (32 * 64 + (2 * n - 1) * 64 * 64)
    conv = 3 * 9 * 16 + 9 * stages
    bn = 2 * (16 + 2 * n * (16 + 32 + 64))
    assert conv + bn + 64 * 10 + 10 == 658_586
    assert sum(p.numel() for p in model.parameters()) == 658_586
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) + 1 == 44  # 43 convs + 1 linear
    assert sum(isinstance(m, GhostBatchNorm2d) for m in model.modules()) == 43


@pytest.mark.parametrize("in_channels, size", [(1, 28), (3, 32)])
def test_forward_shapes(in_channels, size):
    model = cifar_resnet(depth=20, num_classes=7, in_channels=in_channels, ghost_batch_size=2)
    out = model(torch.randn(4, in_channels, size, size, generator=gen()))
    assert out.shape == (4, 7) and out.dtype == torch.float32
    model.eval()
    assert model(torch.randn(1, in_channels, size, size, generator=gen())).shape == (1, 7)


def test_bad_depth():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        cifar_resnet(depth=10)


def test_param_groups_split():
    model = cifar_resnet(depth=8)
    decay, no_decay = param_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 4 for p in decay["params"][:-1]) and decay["params"][-1] is model.fc.weight
    assert all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_tiny_resnet_trains_one_step():
    torch.manual_seed(0)
    model = cifar_resnet(depth=8, num_classes=10, in_channels=1, width=4, ghost_batch_size=4)
    opt = torch.optim.SGD(param_groups(model, 1e-4), lr=0.1, momentum=0.9)
    x = torch.randn(8, 1, 28, 28, generator=gen(1))
    y = torch.arange(8) % 10
    before = [p.detach().clone() for p in model.parameters()]
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert F.cross_entropy(model(x), y) < loss


def test_no_affine_no_running_stats_uses_ghost_stats_in_eval_too():
    gbn = GhostBatchNorm2d(2, ghost_batch_size=3, affine=False, track_running_stats=False).eval()
    x = torch.randn(6, 2, 3, 3, generator=gen(7))
    expected = torch.cat([F.batch_norm(s, None, None, training=True) for s in x.split(3)])
    assert torch.allclose(gbn(x), expected, atol=1e-5)
