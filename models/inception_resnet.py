"""Inception-ResNet-v2 (Szegedy et al. 2016, "Inception-v4, Inception-ResNet and ..."), timm layout.

Keys equal timm's ``inception_resnet_v2`` (itself the layout of Cadene's port of the TensorFlow
weights): ``conv2d_1a`` .. ``conv2d_4a`` stem, ``mixed_5b``, ``repeat`` (10 x Block35), ``mixed_6a``,
``repeat_1`` (20 x Block17), ``mixed_7a``, ``repeat_2`` (9 x Block8), ``block8``, ``conv2d_7b``,
``classif``. Every convolution but the residual projections is conv + BN (eps 1e-3, TensorFlow's)
+ ReLU, unpadded unless stated: the network is sized for 299x299 input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.layers import check_shape, init_weights

#: TensorFlow's batch-norm epsilon, which the ported checkpoints were trained with.
BN_EPS = 1e-3


class ConvBN(nn.Module):
    """Convolution without bias, BN, ReLU (``conv``, ``bn``): timm's ``ConvNormAct``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


#: One convolution of a branch: (in, out, kernel, stride, padding).
ConvSpec = tuple[int, int, int | tuple[int, int], int, int | tuple[int, int]]
#: A residual block's inception branches, each a chain of convolutions.
Branches = tuple[tuple[ConvSpec, ...], ...]


def _chain(*convs: ConvSpec) -> nn.Module:
    """A branch of ConvBNs: one is the module itself (``branch0.conv``), more a Sequential (``branch1.0.conv``)."""
    if len(convs) == 1:
        return ConvBN(*convs[0])
    return nn.Sequential(*(ConvBN(*spec) for spec in convs))


class Mixed5b(nn.Module):
    """35x35 grid entry: 192 -> 320 channels (1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = ConvBN(192, 96, 1)
        self.branch1 = _chain((192, 48, 1, 1, 0), (48, 64, 5, 1, 2))
        self.branch2 = _chain((192, 64, 1, 1, 0), (64, 96, 3, 1, 1), (96, 96, 3, 1, 1))
        self.branch3 = nn.Sequential(
            nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), ConvBN(192, 64, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


#: 35x35 residual block on 320 channels.
BLOCK35: Branches = (
    ((320, 32, 1, 1, 0),),
    ((320, 32, 1, 1, 0), (32, 32, 3, 1, 1)),
    ((320, 32, 1, 1, 0), (32, 48, 3, 1, 1), (48, 64, 3, 1, 1)),
)
#: 17x17 residual block on 1088 channels (factorised 1x7 / 7x1).
BLOCK17: Branches = (
    ((1088, 192, 1, 1, 0),),
    ((1088, 128, 1, 1, 0), (128, 160, (1, 7), 1, (0, 3)), (160, 192, (7, 1), 1, (3, 0))),
)
#: 8x8 residual block on 2080 channels (factorised 1x3 / 3x1).
BLOCK8: Branches = (
    ((2080, 192, 1, 1, 0),),
    ((2080, 192, 1, 1, 0), (192, 224, (1, 3), 1, (0, 1)), (224, 256, (3, 1), 1, (1, 0))),
)


class Residual(nn.Module):
    """Inception branches, concatenated, projected by a biased 1x1 (``conv2d``), scaled, added, ReLU.

    The block keeps its input width (the branches' input); ``conv2d`` takes what they concatenate.
    """

    def __init__(self, branches: Branches, scale: float, relu: bool = True) -> None:
        super().__init__()
        for index, convs in enumerate(branches):
            self.add_module(f"branch{index}", _chain(*convs))
        self.branch_names = tuple(f"branch{index}" for index in range(len(branches)))
        channels = branches[0][0][0]
        mixed = sum(convs[-1][1] for convs in branches)
        self.conv2d = nn.Conv2d(mixed, channels, 1, bias=True)
        self.scale = scale
        self.act: nn.Module | None = nn.ReLU(inplace=True) if relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([getattr(self, name)(x) for name in self.branch_names], 1)
        out = self.conv2d(mixed) * self.scale + x
        return self.act(out) if self.act is not None else out


class Mixed6a(nn.Module):
    """35 -> 17 reduction: 320 -> 1088 channels (3x3/2 | 1x1-3x3-3x3/2 | maxpool/2)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = ConvBN(320, 384, 3, stride=2)
        self.branch1 = _chain((320, 256, 1, 1, 0), (256, 256, 3, 1, 1), (256, 384, 3, 2, 0))
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class Mixed7a(nn.Module):
    """17 -> 8 reduction: 1088 -> 2080 channels (three conv branches and a max-pool)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = _chain((1088, 256, 1, 1, 0), (256, 384, 3, 2, 0))
        self.branch1 = _chain((1088, 256, 1, 1, 0), (256, 288, 3, 2, 0))
        self.branch2 = _chain((1088, 256, 1, 1, 0), (256, 288, 3, 1, 1), (288, 320, 3, 2, 0))
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class InceptionResNetV2(nn.Module):
    """The paper's Inception-ResNet-v2 (residual scales 0.17 / 0.10 / 0.20), 1536 features, linear head."""

    def __init__(self, *, num_classes: int = 1000, blocks: Sequence[int] = (10, 20, 9)) -> None:
        super().__init__()
        check_shape(num_classes)
        self.conv2d_1a = ConvBN(3, 32, 3, stride=2)
        self.conv2d_2a = ConvBN(32, 32, 3)
        self.conv2d_2b = ConvBN(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = ConvBN(64, 80, 1)
        self.conv2d_4a = ConvBN(80, 192, 3)
        self.maxpool_5a = nn.MaxPool2d(3, stride=2)
        self.mixed_5b = Mixed5b()
        self.repeat = nn.Sequential(*(Residual(BLOCK35, 0.17) for _ in range(blocks[0])))
        self.mixed_6a = Mixed6a()
        self.repeat_1 = nn.Sequential(*(Residual(BLOCK17, 0.10) for _ in range(blocks[1])))
        self.mixed_7a = Mixed7a()
        self.repeat_2 = nn.Sequential(*(Residual(BLOCK8, 0.20) for _ in range(blocks[2])))
        self.block8 = Residual(BLOCK8, 1.0, relu=False)
        self.conv2d_7b = ConvBN(2080, 1536, 1)
        self.num_features = 1536
        self.classif = nn.Linear(1536, num_classes)
        # The residual scales (not a last norm) keep random activations finite; zero head bias.
        init_weights(self)
        nn.init.zeros_(self.classif.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, the three residual grids with their reductions, and the final 1x1 to 1536 channels."""
        x = self.maxpool_3a(self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x))))
        x = self.maxpool_5a(self.conv2d_4a(self.conv2d_3b(x)))
        x = self.repeat(self.mixed_5b(x))
        x = self.repeat_1(self.mixed_6a(x))
        x = self.block8(self.repeat_2(self.mixed_7a(x)))
        return self.conv2d_7b(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classif(self.forward_features(x).mean((2, 3)))
