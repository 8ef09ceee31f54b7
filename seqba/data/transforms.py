"""Batched, per-row image augmentation on the device, for Batch Augmentation (BA).

BA (Hoffer et al., "Augment your batch", CVPR 2020) trains on M copies of each of the B images in a batch,
each copy with its own augmentation. Images are decoded and moved to the device once (B rows); the core's
``repeat_batch`` expands them to M*B rows there, and the functions below then draw an independent crop,
flip and cutout for every row, in one vectorized call (no Python loop over samples)::

    repeat_batch(layout="tiled"), M = 3          random_crop / random_hflip / cutout
    row 0  a  ─┐                                  row 0  a, crop (1, 7), no flip, hole at (3, 20)
    row 1  b   │ copy 0                           row 1  b, crop (4, 0), flip,    hole at (30, 2)
    row 2  a  ─┐                                  row 2  a, crop (8, 2), flip,    hole at (12, 9)
    row 3  b   │ copy 1          ──────────►      row 3  b, ...
    row 4  a  ─┐                                  row 4  a, ...   (three different views of a)
    row 5  b   │ copy 2                           row 5  b, ...

Shape notation: N = rows (M*B under BA), C = channels, H = height, W = width, K = classes.

Randomness: every function takes an optional ``torch.Generator``. Random numbers are drawn on the
generator's device (on ``x.device`` when no generator is given, from the global torch RNG) and moved to
``x.device``: a CUDA generator with CUDA data costs no transfer; a CPU generator with CUDA data gives the same
draws as on CPU (a transfer of a few integers per call). The same generator state and input give the same
output. Draw order per call is fixed and documented per function.

Tiny CPU example::

    >>> aug = Augment(mean=CIFAR10_MEAN, std=CIFAR10_STD, crop_padding=4, flip=True, cutout_size=16)
    >>> x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    >>> aug(x, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([8, 3, 32, 32])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


def _check_images(x: torch.Tensor, where: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{where}: expected images of shape (N, C, H, W), got {shape}")


def _randint(high: int, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``n`` int64 draws uniform in ``[0, high)``, drawn on the generator's device, returned on ``device``."""
    draw_device = generator.device if generator is not None else device
    out = torch.randint(0, high, (n,), generator=generator, device=draw_device)
    return out.to(device)


def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``n`` float32 draws uniform in ``[0, 1)``, drawn on the generator's device, returned on ``device``."""
    draw_device = generator.device if generator is not None else device
    return torch.rand((n,), generator=generator, device=draw_device).to(device)


def random_crop(x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad each image by ``padding`` pixels, then crop it back to (H, W) at its own random offset.

    Same result as torchvision ``RandomCrop(size=(H, W), padding=padding)`` applied row by row (the CIFAR
    recipe of He et al. 2016, Sec. 4.2), computed by index arithmetic instead of materializing the padding.

    Args:
        x: (N, C, H, W) images, any dtype, any device.
        padding: pixels of zeros on each side, >= 0. ``0`` returns a copy of ``x``.
        generator: optional RNG. Draws N top offsets, then N left offsets, each uniform in [0, 2*padding].

    Returns:
        (N, C, H, W) tensor, same dtype and device as ``x``, contiguous.

    Raises:
        ValueError: ``x`` is not 4-D or ``padding`` is negative.
    """
    _check_images(x, "random_crop")
    if padding < 0:
        raise ValueError(f"random_crop: padding must be >= 0, got {padding}")
    if padding == 0:
        return x.clone()
    n, _, h, w = x.shape
    top = _randint(2 * padding + 1, n, generator, x.device) - padding  # (N,) shift in [-p, p]
    left = _randint(2 * padding + 1, n, generator, x.device) - padding
    rows = top[:, None] + torch.arange(h, device=x.device)  # (N, H) source row of each output row
    cols = left[:, None] + torch.arange(w, device=x.device)  # (N, W)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # (N, H, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indices separated by a slice go first: result is (N, H, W, C).
    out = x[batch, :, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]
    out = out.masked_fill(~inside[..., None], 0)
    return out.permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)


def random_hflip(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``, independently per row.

    Args:
        x: (N, C, H, W) images, any dtype, any device.
        p: flip probability in [0, 1].
        generator: optional RNG. Draws N uniforms; row i is flipped when its draw is < p.

    Returns:
        (N, C, H, W) tensor, same dtype and device as ``x``.

    Raises:
        ValueError: ``x`` is not 4-D or ``p`` is outside [0, 1].
    """
    _check_images(x, "random_hflip")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"random_hflip: p must be in [0, 1], got {p}")
    flip = _rand(x.shape[0], generator, x.device) < p  # (N,)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def cutout(x: torch.Tensor, size: int = 16, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero one square patch per image, all channels (DeVries & Taylor 2017, "Improved regularization of
    convolutional neural networks with cutout").

    Matches the reference implementation (github.com/uoguelph-mlrg/Cutout, ``util/cutout.py``): the centre
    (cy, cx) is uniform over all H*W pixels, the patch covers rows ``[cy - size//2, cy + size//2)`` and
    columns likewise, clipped at the borders; so its side is ``2*(size//2)`` when it lies inside the image,
    and smaller where it is clipped. The reference applies it after normalization, so zero = the mean pixel.

    Args:
        x: (N, C, H, W) images, any dtype, any device.
        size: patch side in pixels, >= 0. ``0`` returns a copy of ``x``.
        generator: optional RNG. Draws N centre rows in [0, H), then N centre columns in [0, W).

    Returns:
        (N, C, H, W) tensor, same dtype and device as ``x``.

    Raises:
        ValueError: ``x`` is not 4-D or ``size`` is negative.
    """
    _check_images(x, "cutout")
    if size < 0:
        raise ValueError(f"cutout: size must be >= 0, got {size}")
    if size == 0:
        return x.clone()
    n, _, h, w = x.shape
    cy = _randint(h, n, generator, x.device)  # (N,)
    cx = _randint(w, n, generator, x.device)
    half = size // 2
    ys = torch.arange(h, device=x.device)
    xs = torch.arange(w, device=x.device)
    in_rows = (ys >= (cy - half)[:, None]) & (ys < (cy + half)[:, None])  # (N, H)
    in_cols = (xs >= (cx - half)[:, None]) & (xs < (cx + half)[:, None])  # (N, W)
    hole = in_rows[:, :, None] & in_cols[:, None, :]  # (N, H, W)
    return x.masked_fill(hole[:, None], 0)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel ``(x - mean[c]) / std[c]``.

    Args:
        x: (N, C, H, W) floating images (usually in [0, 1]).
        mean, std: C values each (sequences or 1-D tensors); ``std`` entries must be > 0.

    Returns:
        (N, C, H, W) tensor, dtype and device of ``x``.

    Raises:
        ValueError: ``x`` is not 4-D floating point, or ``mean``/``std`` do not have C entries, or a std <= 0.
    """
    _check_images(x, "normalize")
    if not x.is_floating_point():
        raise ValueError(f"normalize: expected floating images, got dtype {x.dtype}; convert uint8 first")
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).flatten()
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).flatten()
    c = x.shape[1]
    if mean_t.numel() != c or std_t.numel() != c:
        raise ValueError(
            f"normalize: images have C={c} channels but mean has {mean_t.numel()} and std {std_t.numel()}"
        )
    if bool((std_t <= 0).any()):
        raise ValueError(f"normalize: std must be > 0, got {std_t.tolist()}")
    return (x - mean_t[:, None, None]) / std_t[:, None, None]


def mixup(
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float,
    num_classes: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each row with a random partner: ``lam * x + (1 - lam) * x[perm]`` (Zhang et al. 2018, "mixup:
    Beyond empirical risk minimization", Eq. 1; one ``lam ~ Beta(alpha, alpha)`` per batch and a random
    permutation, as in the reference github.com/facebookresearch/mixup-cifar10 ``mixup_data``).

    Args:
        x: (N, C, H, W) floating images (any N-leading float tensor works).
        y: (N,) int64 class ids, or (N, K) float soft targets.
        alpha: Beta concentration; ``alpha <= 0`` means no mixing (``lam = 1``).
        num_classes: K.
        generator: optional RNG. Draws one int64 seed for ``lam`` (numpy's Beta sampler, as torch's Beta
            takes no generator), then a permutation of N.

    Returns:
        ``(x_mixed, y_soft)``: (N, C, H, W) of ``x``'s dtype, and (N, K) soft targets (float32, or ``y``'s
        dtype when ``y`` is already soft) whose rows sum to 1.

    Raises:
        ValueError: ``x`` is not floating, ``y`` has the wrong shape, or a class id is outside [0, K).
    """
    if not x.is_floating_point():
        raise ValueError(f"mixup: expected floating images, got dtype {x.dtype}")
    n = x.shape[0]
    if y.dim() == 1 and not y.is_floating_point():
        if y.shape[0] != n:
            raise ValueError(f"mixup: {n} images but {y.shape[0]} labels")
        if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"mixup: labels must be in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")
        y_soft = torch.nn.functional.one_hot(y, num_classes).to(torch.float32)
    elif y.dim() == 2 and y.is_floating_point() and tuple(y.shape) == (n, num_classes):
        y_soft = y
    else:
        raise ValueError(
            f"mixup: y must be (N,) int class ids or (N, {num_classes}) float targets with N={n}, "
            f"got {tuple(y.shape)} {y.dtype}"
        )
    draw_device = generator.device if generator is not None else x.device
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=draw_device))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha)) if alpha > 0 else 1.0
    perm = torch.randperm(n, generator=generator, device=draw_device).to(x.device)
    x_mixed = lam * x + (1.0 - lam) * x[perm]
    y_mixed = lam * y_soft + (1.0 - lam) * y_soft[perm.to(y_soft.device)]
    return x_mixed, y_mixed


@dataclass
class Augment:
    """The CIFAR/MNIST training augmentation, applied to a whole (M*B)-row batch on its device.

    Training order follows the cutout reference (DeVries & Taylor 2017): ``random_crop`` -> ``random_hflip``
    -> scale to [0, 1] -> ``normalize`` -> ``cutout`` (holes are 0 after normalization, i.e. the mean pixel).
    Crop and flip run on the input dtype, so uint8 batches are only converted to float once.

    Fields:
        mean, std: per-channel statistics of [0, 1]-scaled images (e.g. ``CIFAR10_MEAN``/``CIFAR10_STD``).
        crop_padding: ``random_crop`` padding in pixels; 0 disables cropping.
        flip: apply ``random_hflip`` with p = 0.5 (disable for digits).
        cutout_size: ``cutout`` side in pixels; 0 disables it (the BA paper's CIFAR-10 ResNet-44 uses 16).

    Call: ``augment(images, train=True, generator=None)``:
        images: (N, C, H, W) uint8 in [0, 255] or floating in [0, 1].
        train: ``False`` only scales and normalizes (evaluation).
        Returns (N, C, H, W) float32 (or the input's floating dtype).

    Raises:
        ValueError: on construction, for mismatched/invalid fields; on call, for non-4-D input or a channel
        count different from ``len(mean)``.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 4
    flip: bool = True
    cutout_size: int = 0

    def __post_init__(self) -> None:
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"Augment: mean {self.mean} and std {self.std} must have the same, non-zero length")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Augment: std must be > 0, got {self.std}")
        if self.crop_padding < 0:
            raise ValueError(f"Augment: crop_padding must be >= 0, got {self.crop_padding}")
        if self.cutout_size < 0:
            raise ValueError(f"Augment: cutout_size must be >= 0, got {self.cutout_size}")

    def __call__(
        self, images: torch.Tensor, train: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        _check_images(images, "Augment")
        if images.shape[1] != len(self.mean):
            raise ValueError(f"Augment: images have C={images.shape[1]} channels, mean/std have {len(self.mean)}")
        x = images
        if train and self.crop_padding > 0:
            x = random_crop(x, self.crop_padding, generator)
        if train and self.flip:
            x = random_hflip(x, 0.5, generator)
        x = x.to(torch.float32).div_(255.0) if not x.is_floating_point() else x
        x = normalize(x, self.mean, self.std)
        if train and self.cutout_size > 0:
            x = cutout(x, self.cutout_size, generator)
        return x
