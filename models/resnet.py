"""One configurable ResNet covering the torchvision, timm (SE) and CIFAR-paper layouts.

Module and attribute names are chosen so that ``state_dict()`` keys equal those of torchvision's
``ResNet``, timm's ``ResNet`` (with ``attn_layer='se'``) and the akamaster CIFAR ResNets: their
published checkpoints then load as they are, with no key renaming. The forward order matches those
implementations too (SE after the block's last BN and before the residual add; downsample conv then
BN; max-pool stem; global average pool, flatten, linear head).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import ResidualBlock, check_shape, init_weights

BlockType = Literal["basic", "bottleneck"]
ShortcutType = Literal["A", "B"]
StemType = Literal["imagenet", "deep", "cifar"]


def se_reduced_channels(channels: int) -> int:
    """Hidden width of timm's SE module: channels/16 rounded to a multiple of 8, at least 8."""
    return max(8, int(channels / 16 + 4) // 8 * 8)


class SqueezeExcite(nn.Module):
    """Channel attention as timm's ``SEModule``: mean -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid -> scale."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = se_reduced_channels(channels)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.fc2(self.act(self.fc1(scale)))
        return x * torch.sigmoid(scale)


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut of the CIFAR paper: subsample by 2, zero-pad the new channels (no parameters).

    Pads ``extra_channels // 2`` on each side of the channel dimension, as the implementation that
    trained the shipped CIFAR-10 checkpoints does (``planes // 4`` per side when channels double).
    """

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_each_side = extra_channels // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_each_side, self.pad_each_side))


def _projection_shortcut(in_channels: int, out_channels: int, stride: int, avg_down: bool) -> nn.Sequential:
    """Option-B shortcut: 1x1 conv + BN (``downsample.0/.1``), or timm's avg-down (``downsample.1/.2``)."""
    if avg_down:
        pool: nn.Module = (
            nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride != 1 else nn.Identity()
        )
        return nn.Sequential(
            pool,
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class _ResNetBlock(ResidualBlock):
    """What BasicBlock and Bottleneck share: the SE after the branch's last BN, the shortcut, the add.

    ``_build_branch`` creates the branch's modules first, so the keys keep torchvision's and timm's
    order (convs and BNs, then ``se``, then ``downsample``).
    """

    expansion: ClassVar[int]

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int,
        shortcut: nn.Module | None,
        *,
        groups: int = 1,
        width_per_group: int = 64,
        se: bool = False,
    ) -> None:
        super().__init__()
        self._build_branch(in_channels, planes, stride, groups, width_per_group)
        self.relu = nn.ReLU(inplace=True)
        self.se = SqueezeExcite(planes * self.expansion) if se else None
        self.downsample = shortcut

    def _build_branch(
        self, in_channels: int, planes: int, stride: int, groups: int, width_per_group: int
    ) -> None:
        raise NotImplementedError

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self._branch(x)
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + identity)


class BasicBlock(_ResNetBlock):
    """Two 3x3 convs (ResNet-18/34 and the CIFAR nets)."""

    expansion = 1

    def _build_branch(
        self, in_channels: int, planes: int, stride: int, groups: int, width_per_group: int
    ) -> None:
        if groups != 1 or width_per_group != 64:
            raise ValueError("BasicBlock supports only groups=1 and width_per_group=64")
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

    @property
    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))


class Bottleneck(_ResNetBlock):
    """1x1 reduce, 3x3 (stride and groups here: ResNet v1.5), 1x1 expand by 4."""

    expansion = 4

    def _build_branch(
        self, in_channels: int, planes: int, stride: int, groups: int, width_per_group: int
    ) -> None:
        width = int(planes * (width_per_group / 64.0)) * groups
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)

    @property
    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


BLOCKS: dict[str, type[_ResNetBlock]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """ResNet with a configurable block, stage depths, widths, grouping, SE, shortcut and stem.

    ``head_name`` is ``"fc"`` (torchvision, timm) or ``"linear"`` (the CIFAR checkpoints).
    """

    def __init__(
        self,
        *,
        block: BlockType,
        layers: Sequence[int],
        num_classes: int = 1000,
        stage_widths: Sequence[int] = (64, 128, 256, 512),
        groups: int = 1,
        width_per_group: int = 64,
        se: bool = False,
        shortcut: ShortcutType = "B",
        stem: StemType = "imagenet",
        stem_width: int = 64,
        avg_down: bool = False,
        head_name: str = "fc",
    ) -> None:
        super().__init__()
        check_shape(num_classes, layers, stage_widths)
        block_cls = BLOCKS[block]
        self.head_name = head_name
        in_channels = self._build_stem(stem, stem_width, stage_widths[0])

        self.stage_names: tuple[str, ...] = tuple(f"layer{index + 1}" for index in range(len(layers)))
        for index, (depth, planes) in enumerate(zip(layers, stage_widths, strict=True)):
            stride = 1 if index == 0 else 2
            blocks: list[nn.Module] = []
            for block_index in range(depth):
                block_stride = stride if block_index == 0 else 1
                out_channels = planes * block_cls.expansion
                needs_shortcut = block_stride != 1 or in_channels != out_channels
                shortcut_module: nn.Module | None = None
                if needs_shortcut:
                    if shortcut == "A":
                        shortcut_module = ZeroPadShortcut(block_stride, out_channels - in_channels)
                    else:
                        shortcut_module = _projection_shortcut(
                            in_channels, out_channels, block_stride, avg_down
                        )
                blocks.append(
                    block_cls(
                        in_channels,
                        planes,
                        block_stride,
                        shortcut_module,
                        groups=groups,
                        width_per_group=width_per_group,
                        se=se,
                    )
                )
                in_channels = out_channels
            setattr(self, self.stage_names[index], nn.Sequential(*blocks))

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = in_channels
        setattr(self, head_name, nn.Linear(in_channels, num_classes))
        init_weights(self)

    def _build_stem(self, stem: StemType, stem_width: int, first_stage_width: int) -> int:
        """Create conv1/bn1/relu(/maxpool); return the channel count the first stage receives."""
        self.conv1: nn.Module
        self.maxpool: nn.Module | None
        if stem == "cifar":
            self.conv1 = nn.Conv2d(3, first_stage_width, 3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(first_stage_width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = None
            return first_stage_width
        if stem == "deep":
            out_channels = stem_width * 2
            self.conv1 = nn.Sequential(
                nn.Conv2d(3, stem_width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(stem_width),
                nn.ReLU(inplace=True),
                nn.Conv2d(stem_width, stem_width, 3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(stem_width),
                nn.ReLU(inplace=True),
                nn.Conv2d(stem_width, out_channels, 3, stride=1, padding=1, bias=False),
            )
        else:
            out_channels = stem_width
            self.conv1 = nn.Conv2d(3, out_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        return out_channels

    @property
    def head(self) -> nn.Linear:
        """The classifier, whatever it is called in this layout."""
        head = getattr(self, self.head_name)
        assert isinstance(head, nn.Linear)
        return head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and stages: the last feature map before pooling."""
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.head(x)
