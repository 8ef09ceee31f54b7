"""CIFAR ResNet (He et al. 2016, "Deep residual learning for image recognition", Sec. 4.2) with Ghost BN.

Architecture for depth = 6n + 2 (ResNet-44: n = 7), width w = 16::

    conv3x3(in_channels -> w) - BN - ReLU                       (N, w,  H,   W)
    stage 1: n basic blocks, w channels,  stride 1              (N, w,  H,   W)
    stage 2: n basic blocks, 2w channels, first block stride 2  (N, 2w, H/2, W/2)
    stage 3: n basic blocks, 4w channels, first block stride 2  (N, 4w, H/4, W/4)
    global average pool - linear(4w -> num_classes)             (N, num_classes)

    basic block: x -> conv3x3 - BN - ReLU - conv3x3 - BN -> (+ shortcut(x)) -> ReLU

Shortcuts are "option A" (Sec. 4.2): identity, or where the shape changes, stride-2 subsampling and
zero-padded extra channels, parameter-free. Every BN is a ``GhostBatchNorm2d`` (plain BatchNorm when
``ghost_batch_size`` is None). Convolutions and the classifier are Kaiming-normal initialized (He et al.
2015, Eq. 10, fan_in, ReLU gain), BN weight 1 and bias 0, classifier bias 0. This follows the widely used
reimplementation github.com/akamaster/pytorch_resnet_cifar10 (ResNet-44: 0.66M parameters).

Size: ResNet-44 with 10 classes has 658,586 parameters (all trainable; conv 654,768 + BN 3,168 +
linear 650). Any H, W work (global pooling): 1x28x28 MNIST ends with 7x7 maps, 3x32x32 CIFAR with 8x8.

Tiny CPU example::

    >>> model = cifar_resnet(depth=8, num_classes=10, in_channels=1)
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])

Shape notation: N = batch (M*B rows under Batch Augmentation), C = channels, H = height, W = width.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from seqba.errors import FieldError
from seqba.models.ghost_bn import GhostBatchNorm2d


@dataclass
class ResNetConfig:
    """CIFAR ResNet hyper-parameters (He et al. 2016, Sec. 4.2): depth 6n + 2, stage widths w, 2w, 4w. A recipe's
    ``model:`` section for images.

    Attributes:
        depth: 6n + 2 layers (8, 14, 20, 32, 44, 56); 44 in the BA paper's CIFAR-10 run.
        width: channels of the first stage (16 in the paper).
        ghost_batch_size: rows per BN ghost batch (``None``: ordinary BN over the whole forward). With BA use
            layout "tiled" and ghost_batch_size <= B (see :mod:`seqba.models.ghost_bn`).
    """

    depth: int = 44
    width: int = 16
    ghost_batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.depth < 8 or (self.depth - 2) % 6 != 0:
            raise FieldError("depth", f"must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56), got {self.depth}")
        if self.width < 1:
            raise FieldError("width", f"must be >= 1, got {self.width}")
        if self.ghost_batch_size is not None and self.ghost_batch_size < 1:
            raise FieldError("ghost_batch_size", f"must be >= 1 or null, got {self.ghost_batch_size}")


class _ShortcutA(nn.Module):
    """Option A shortcut: (N, C_in, H, W) -> (N, C_out, ceil(H/2), ceil(W/2)), subsample and zero-pad channels."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pad_front = (out_channels - in_channels) // 2
        self.pad_back = out_channels - in_channels - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))  # pads dim 1 (channels)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection: (N, C_in, H, W) -> (N, C_out, H/stride, W/stride)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, ghost_batch_size: int | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = GhostBatchNorm2d(out_channels, ghost_batch_size)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = GhostBatchNorm2d(out_channels, ghost_batch_size)
        if stride != 1 or in_channels != out_channels:
            if stride != 2 or out_channels < in_channels:
                raise ValueError(
                    f"BasicBlock: option A shortcut needs stride 2 and out_channels >= in_channels, "
                    f"got stride {stride}, {in_channels} -> {out_channels}"
                )
            self.shortcut: nn.Module = _ShortcutA(in_channels, out_channels)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet of depth 6n + 2 for small images; see the module docstring. Use ``cifar_resnet`` to build one.

    Forward: images (N, in_channels, H, W) float -> logits (N, num_classes) float.
    """

    def __init__(self, config: ResNetConfig, num_classes: int, in_channels: int) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            if value < 1:
                raise ValueError(f"cifar_resnet: {name} must be >= 1, got {value}")
        self.config = config
        depth, width, ghost_batch_size = config.depth, config.width, config.ghost_batch_size
        blocks_per_stage = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = GhostBatchNorm2d(width, ghost_batch_size)
        stages = []
        channels = width
        for stage, out_channels in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, out_channels, stride, ghost_batch_size))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stage1, self.stage2, self.stage3 = stages
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (N, w, H, W)
        out = self.stage3(self.stage2(self.stage1(out)))  # (N, 4w, H/4, W/4)
        out = out.mean(dim=(2, 3))  # (N, 4w)
        return self.fc(out)  # (N, num_classes)


def cifar_resnet(num_classes: int = 10, in_channels: int = 3, **fields) -> CifarResNet:
    """Build the CIFAR ResNet of He et al. 2016, Sec. 4.2 (option A shortcuts), BN as ``GhostBatchNorm2d``.

    Args:
        num_classes: output logits K.
        in_channels: 3 for CIFAR, 1 for MNIST.
        fields: :class:`ResNetConfig` fields (``depth``, ``width``, ``ghost_batch_size``).

    Returns:
        ``CifarResNet``: images (N, in_channels, H, W) float -> logits (N, K) float.

    Raises:
        ValueError: depth not 6n + 2, or a non-positive size.
    """
    return CifarResNet(ResNetConfig(**fields), num_classes, in_channels)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into two optimizer groups: with and without weight decay.

    Decay applies to the ``weight`` of convolutions and linear layers; BN/GhostBN weights and biases and all
    biases get ``weight_decay = 0`` (as timm ``param_groups_weight_decay``). Parameters shared between
    modules appear once.

    Args:
        model: any module.
        weight_decay: L2 coefficient for the first group, >= 0.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay}, {"params": [...], "weight_decay": 0.0}]``; pass it
        to ``torch.optim.SGD(groups, lr=..., momentum=...)``. Parameters with ``requires_grad=False`` are left out.

    Raises:
        ValueError: negative ``weight_decay``.
    """
    if weight_decay < 0:
        raise ValueError(f"param_groups: weight_decay must be >= 0, got {weight_decay}")
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            is_weight = name == "weight" and isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))
            (decay if is_weight else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
