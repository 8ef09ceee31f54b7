"""Batched per-row augmentation: shapes, determinism, per-copy independence, slow references."""
import pytest
import torch
import torch.nn.functional as F

from seqba.data.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    MNIST_MEAN,
    MNIST_STD,
    Augment,
    cutout,
    mixup,
    normalize,
    random_crop,
    random_hflip,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def copies(n=32, c=3, h=12, w=12, seed=0):
    """n identical rows of one random image, as repeat_batch would give for one sample."""
    img = torch.rand(1, c, h, w, generator=gen(seed))
    return img.expand(n, c, h, w).contiguous()


def distinct_rows(x):
    return len({tuple(row.flatten().tolist()) for row in x})


def reference_crop(img, padding, top, left):
    """Slow, obvious crop of one (C, H, W) image: pad with zeros, slice at (top, left) of the padded image."""
    h, w = img.shape[-2:]
    return F.pad(img, (padding,) * 4)[:, top : top + h, left : left + w]


@pytest.mark.parametrize("fn", [random_crop, random_hflip, cutout])
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_shape_dtype_and_determinism(fn, dtype):
    x = (torch.rand(6, 3, 10, 9, generator=gen()) * 255).to(dtype)
    a, b = fn(x, generator=gen(7)), fn(x, generator=gen(7))
    assert a.shape == x.shape and a.dtype == dtype and a.device == x.device
    assert torch.equal(a, b)


@pytest.mark.parametrize("fn", [random_crop, random_hflip, cutout])
def test_copies_of_one_image_differ(fn):
    x = copies()
    out = fn(x, generator=gen(1))
    assert distinct_rows(out) >= (2 if fn is random_hflip else 10)


def test_crop_padding_zero_is_identity():
    x = torch.rand(4, 3, 8, 8, generator=gen())
    assert torch.equal(random_crop(x, padding=0, generator=gen()), x)


def test_crop_matches_slow_reference_at_some_offset():
    padding, (h, w) = 3, (7, 9)
    x = torch.rand(16, 2, h, w, generator=gen(3)) + 0.1  # positive, so padding zeros are unambiguous
    out = random_crop(x, padding=padding, generator=gen(4))
    offsets = set()
    for i in range(len(x)):
        matches = [
            (top, left)
            for top in range(2 * padding + 1)
            for left in range(2 * padding + 1)
            if torch.equal(out[i], reference_crop(x[i], padding, top, left))
        ]
        assert len(matches) == 1, f"row {i}: {len(matches)} matching offsets"
        offsets.add(matches[0])
    assert len(offsets) > 4


def test_flip_twice_is_identity_and_rows_are_flipped_or_not():
    x = torch.rand(20, 3, 5, 6, generator=gen())
    once = random_hflip(x, generator=gen(2))
    assert torch.equal(random_hflip(once, generator=gen(2)), x)
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(once, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(once, x)])
    assert bool((flipped ^ kept).all()) and 0 < int(flipped.sum()) < len(x)
    assert torch.equal(random_hflip(x, p=0.0, generator=gen()), x)
    assert torch.equal(random_hflip(x, p=1.0, generator=gen()), x.flip(-1))


def reference_hole(h, w, size, cy, cx):
    """DeVries & Taylor reference: np.clip(c -/+ size // 2, 0, H) bounds, as a (H, W) bool mask."""
    y1, y2 = max(cy - size // 2, 0), min(cy + size // 2, h)
    x1, x2 = max(cx - size // 2, 0), min(cx + size // 2, w)
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[y1:y2, x1:x2] = True
    return mask


@pytest.mark.parametrize("size", [6, 5])
def test_cutout_zeroes_exactly_a_clipped_square(size):
    h, w = 10, 11
    x = torch.rand(40, 3, h, w, generator=gen()) + 0.5
    out = cutout(x, size=size, generator=gen(5))
    candidates = torch.stack([reference_hole(h, w, size, cy, cx) for cy in range(h) for cx in range(w)])
    clipped = 0
    for i in range(len(x)):
        zero = out[i] == 0  # (C, H, W)
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2]), "same hole in every channel"
        assert torch.equal(out[i][~zero], x[i][~zero]), "pixels outside the hole untouched"
        assert bool((candidates == zero[0]).flatten(1).all(1).any()), f"row {i}: hole is not a clipped square"
        clipped += int(zero[0].sum()) < (2 * (size // 2)) ** 2
    assert clipped > 0  # some holes hit a border on a 10x11 image


def test_normalize_and_errors():
    x = torch.rand(2, 3, 4, 4, generator=gen())
    out = normalize(x, CIFAR10_MEAN, CIFAR10_STD)
    assert torch.allclose(out[:, 1], (x[:, 1] - CIFAR10_MEAN[1]) / CIFAR10_STD[1])
    with pytest.raises(ValueError, match="C=3"):
        normalize(x, MNIST_MEAN, MNIST_STD)
    with pytest.raises(ValueError, match="uint8"):
        normalize(x.to(torch.uint8), CIFAR10_MEAN, CIFAR10_STD)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        random_crop(torch.rand(3, 4, 4))


def test_mixup_soft_targets():
    x = torch.rand(8, 1, 4, 4, generator=gen())
    y = torch.arange(8) % 4
    xm, ym = mixup(x, y, alpha=1.0, num_classes=4, generator=gen(1))
    xm2, ym2 = mixup(x, y, alpha=1.0, num_classes=4, generator=gen(1))
    assert torch.equal(xm, xm2) and torch.equal(ym, ym2)
    assert xm.shape == x.shape and ym.shape == (8, 4) and ym.dtype == torch.float32
    assert torch.allclose(ym.sum(1), torch.ones(8))
    x0, y0 = mixup(x, y, alpha=0.0, num_classes=4, generator=gen())
    assert torch.equal(x0, x) and torch.equal(y0, F.one_hot(y, 4).float())
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        mixup(x, y, alpha=1.0, num_classes=3)


def test_augment_uint8_train_and_eval():
    x = (copies(n=16, c=3, h=32, w=32) * 255).to(torch.uint8)
    aug = Augment(mean=CIFAR10_MEAN, std=CIFAR10_STD, crop_padding=4, flip=True, cutout_size=16)
    out = aug(x, generator=gen(3))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.equal(out, aug(x, generator=gen(3)))
    assert distinct_rows(out) == 16
    evaluated = aug(x, train=False)
    assert torch.allclose(evaluated, normalize(x.float() / 255, CIFAR10_MEAN, CIFAR10_STD))
    assert torch.equal(aug(x.float() / 255, train=False), evaluated)
    with pytest.raises(ValueError, match="std"):
        Augment(mean=(0.5,), std=(0.0,))
    with pytest.raises(ValueError, match="C=3"):
        Augment(mean=MNIST_MEAN, std=MNIST_STD)(x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generator_on_device():
    x = torch.rand(8, 3, 8, 8, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    aug = Augment(mean=CIFAR10_MEAN, std=CIFAR10_STD, cutout_size=4)
    out = aug(x, generator=g)
    assert out.device == x.device
    cpu = Augment(mean=CIFAR10_MEAN, std=CIFAR10_STD, cutout_size=4)
    assert torch.allclose(cpu(x, generator=gen(1)).cpu(), cpu(x.cpu(), generator=gen(1)))
