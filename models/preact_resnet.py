"""Pre-activation ResNets (He et al. 2016, "Identity Mappings in Deep Residual Networks"), timm layout.

Module names follow timm's ``ResNetV2`` built with ``norm_layer=BatchNormAct2d`` and plain
(symmetrically padded) convolutions, as ``resnetv2_50``/``resnetv2_101`` are, so their checkpoints
load as they are: ``stem.conv``, ``stages.N.blocks.M.{downsample.conv, norm1, conv1, norm2, conv2,
norm3, conv3}``, ``norm``, ``head.fc`` (a 1x1 convolution, timm's ``use_conv=True`` head).

Each block normalises and activates its input once (``norm1``), and a projection shortcut takes
that pre-activated tensor, as in the paper's code; the residual branch ends in a convolution, with
no BN after the addition, and the whole network ends in one BN + ReLU (``norm``) before pooling.
The CIFAR variants of the paper use the same modules with a 3x3 stem and no max-pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from models.layers import ResidualBlock, check_shape, init_weights

BlockType = Literal["basic", "bottleneck"]
StemType = Literal["imagenet", "cifar"]


class BatchNormAct(nn.BatchNorm2d):
    """BN then ReLU in one module, as timm's ``BatchNormAct2d``: its parameters keep the BN's key names."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class ProjectionShortcut(nn.Module):
    """1x1 convolution (with the stride) on the pre-activated input; no BN (``downsample.conv``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _PreActBlock(ResidualBlock):
    """What both blocks share: the shortcut (created first, so the key order equals timm's), ``norm1``
    on the input, and the add with no BN or ReLU after it."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        needs_projection = stride != 1 or in_channels != out_channels
        self.downsample = ProjectionShortcut(in_channels, out_channels, stride) if needs_projection else None
        self.norm1 = BatchNormAct(in_channels)

    def _branch(self, preact: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = self.norm1(x)
        shortcut = x if self.downsample is None else self.downsample(preact)
        return self._branch(preact) + shortcut


class PreActBasic(_PreActBlock):
    """BN-ReLU-3x3-BN-ReLU-3x3 (the paper's CIFAR ResNet-110), stride on the first convolution."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm2 = BatchNormAct(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)

    @property
    def last_norm(self) -> nn.BatchNorm2d:
        return self.norm2

    def _branch(self, preact: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.norm2(self.conv1(preact)))


class PreActBottleneck(_PreActBlock):
    """BN-ReLU-1x1, BN-ReLU-3x3 (stride here, as timm), BN-ReLU-1x1 expanding to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(in_channels, out_channels, stride)
        mid = out_channels // 4
        self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.norm2 = BatchNormAct(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.norm3 = BatchNormAct(mid)
        self.conv3 = nn.Conv2d(mid, out_channels, 1, bias=False)

    @property
    def last_norm(self) -> nn.BatchNorm2d:
        return self.norm3

    def _branch(self, preact: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.norm3(self.conv2(self.norm2(self.conv1(preact)))))


BLOCKS: dict[str, type[_PreActBlock]] = {"basic": PreActBasic, "bottleneck": PreActBottleneck}


class Stage(nn.Module):
    """``depth`` blocks (``blocks.M``), the first one strided and projecting."""

    def __init__(
        self, block: BlockType, in_channels: int, out_channels: int, depth: int, stride: int
    ) -> None:
        super().__init__()
        block_cls = BLOCKS[block]
        self.blocks = nn.Sequential(
            *(
                block_cls(
                    in_channels if index == 0 else out_channels, out_channels, stride if index == 0 else 1
                )
                for index in range(depth)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ConvHead(nn.Module):
    """Global average pool, 1x1 convolution, flatten: timm's ``ClassifierHead(use_conv=True)``."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(in_channels, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.fc(x.mean((2, 3), keepdim=True)), 1)


class PreActResNet(nn.Module):
    """Pre-activation ResNet: ``channels`` are the stages' output widths (a bottleneck's is 4x its middle)."""

    def __init__(
        self,
        *,
        block: BlockType,
        layers: Sequence[int],
        channels: Sequence[int] = (256, 512, 1024, 2048),
        num_classes: int = 1000,
        stem: StemType = "imagenet",
        stem_width: int = 64,
    ) -> None:
        super().__init__()
        check_shape(num_classes, layers, channels)
        self.stem = nn.Sequential()
        if stem == "cifar":
            self.stem.add_module("conv", nn.Conv2d(3, stem_width, 3, stride=1, padding=1, bias=False))
        else:
            # timm's '' stem with preact=True: 7x7/2 conv, no norm (each block normalises its input).
            self.stem.add_module("conv", nn.Conv2d(3, stem_width, 7, stride=2, padding=3, bias=False))
            self.stem.add_module("pool", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.stages = nn.Sequential()
        in_channels = stem_width
        for index, (depth, width) in enumerate(zip(layers, channels, strict=True)):
            self.stages.add_module(
                str(index), Stage(block, in_channels, width, depth, 1 if index == 0 else 2)
            )
            in_channels = width
        self.num_features = in_channels
        self.norm = BatchNormAct(in_channels)
        self.head = ConvHead(in_channels, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, stages and the final BN + ReLU: the last feature map before pooling."""
        return self.norm(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
